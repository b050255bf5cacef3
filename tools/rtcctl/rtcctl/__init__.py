"""rtcctl: operator CLI and local-stack helpers for the RTC backplane."""
