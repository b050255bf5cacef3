from rtc_common.service import run_service

from .app import create_app
from .settings import IceSettings

if __name__ == "__main__":
    run_service(IceSettings, create_app)
