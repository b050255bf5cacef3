#!/usr/bin/python3
"""The gateway image's entrypoint: rtc_gateway (next to this script) renders nginx.conf from the
GATEWAY_* variables, checks it and runs nginx; a refused value exits 64 naming the variable."""

from rtc_gateway.image import main

if __name__ == "__main__":
    raise SystemExit(main())
