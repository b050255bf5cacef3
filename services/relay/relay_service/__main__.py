from rtc_common.service import run_service

from .app import create_app
from .settings import RelaySettings

if __name__ == "__main__":
    run_service(RelaySettings, create_app)
