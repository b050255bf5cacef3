"""Benchmarks: the three hot paths against baselines measured in the same run (`make bench`)."""
