"""relay-service: the store-and-forward fallback when the peer-to-peer path fails."""
