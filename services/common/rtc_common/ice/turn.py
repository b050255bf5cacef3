"""TURN REST API credentials (coturn's `use-auth-secret`), minted where coturn verifies them.

ice-service issues them to clients; `rtcctl doctor` mints its own to probe coturn. Both must
compute exactly what coturn checks, so the formula lives here once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac


def coturn_credentials(secret: str, wallet: str, expiry: int) -> tuple[str, str]:
    """coturn's `use-auth-secret` scheme (TURN REST API): HMAC-SHA1 over `<expiry>:<user>`."""
    username = f"{expiry}:{wallet}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()
