from rtc_common.service import run_service

from .app import create_app
from .settings import SignalSettings

if __name__ == "__main__":
    # Its sockets are closed first (on_shutdown); what is left to wait for is websocket close
    # handshakes that aiohttp, stopping, no longer reads: no reason to wait the default 5 s.
    run_service(SignalSettings, create_app, shutdown_timeout=1.0)
