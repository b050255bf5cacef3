"""signal-service: WebRTC signaling and presence over Socket.IO, scaled through Redis."""
