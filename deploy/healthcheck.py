"""Container healthcheck: exit 0 when this service's /readyz answers 200 (the images have no curl).

Run by the images' HEALTHCHECK as `python /app/healthcheck.py`; the port is the service's PORT.
"""

import os
import sys
import urllib.error
import urllib.request

url = f"http://127.0.0.1:{os.environ.get('PORT', '8000')}/readyz"
try:
    with urllib.request.urlopen(url, timeout=2) as response:
        sys.exit(0 if response.status == 200 else 1)
except urllib.error.HTTPError as exc:  # 503 names the failing dependency
    print(f"not ready: {exc.code} {exc.read(500).decode(errors='replace')}", file=sys.stderr)
except (urllib.error.URLError, OSError) as exc:
    print(f"not ready: {exc}", file=sys.stderr)
sys.exit(1)
