"""ICE configuration shared by ice-service and the operator tools (`rtcctl doctor`).

`settings`: ice-service's environment (the provider selection, Twilio and coturn variables and
their rules); `turn`: the TURN REST credential formula coturn verifies.
"""
