from rtc_common.service import run_service

from .app import create_app
from .settings import SignalSettings

if __name__ == "__main__":
    run_service(SignalSettings, create_app)
