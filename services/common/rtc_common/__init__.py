"""rtc_common: the library shared by ice-service, signal-service and relay-service."""
