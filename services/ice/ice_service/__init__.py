"""ice-service: short-lived STUN/TURN credentials for WebRTC clients."""
