#!/bin/sh
# Renders /etc/rtc-coturn/turnserver.conf.template into /tmp/turnserver.conf and runs turnserver.
set -eu
: "${TURN_SECRET:?TURN_SECRET is required (the same secret as ice-service)}"
export TURN_SECRET_PREVIOUS="${TURN_SECRET_PREVIOUS:-}"
export TURN_PORT="${TURN_PORT:-3478}"
export TURN_MIN_PORT="${TURN_MIN_PORT:-49160}"
export TURN_MAX_PORT="${TURN_MAX_PORT:-49999}"
export TURN_REALM="${TURN_REALM:-rtc.local}"
export TURN_LISTENING_IP="${TURN_LISTENING_IP:-}"
export TURN_RELAY_IP="${TURN_RELAY_IP:-}"
export TURN_EXTERNAL_IP="${TURN_EXTERNAL_IP:-}"
export TURN_TLS_CERT="${TURN_TLS_CERT:-}"
export TURN_TLS_KEY="${TURN_TLS_KEY:-}"
if [ -n "$TURN_TLS_CERT" ] && [ -n "$TURN_TLS_KEY" ]; then
    export TURN_TLS_PORT="${TURN_TLS_PORT:-5349}" TURN_NO_TLS=""
else
    export TURN_TLS_PORT="" TURN_NO_TLS="no-tls"
fi
case "${TURN_ALLOW_LOOPBACK_PEERS:-false}" in
    true | 1 | yes) export TURN_ALLOW_LOOPBACK_PEERS="allow-loopback-peers" ;;
    *) export TURN_ALLOW_LOOPBACK_PEERS="" ;;
esac
# Private ranges are denied as peers unless TURN_DENY_PRIVATE_PEERS=false (a LAN deployment).
case "${TURN_DENY_PRIVATE_PEERS:-true}" in
    false | 0 | no) export TURN_DENIED_PEERS="" ;;
    *) export TURN_DENIED_PEERS="denied-peer-ip=10.0.0.0-10.255.255.255
denied-peer-ip=172.16.0.0-172.31.255.255
denied-peer-ip=192.168.0.0-192.168.255.255
denied-peer-ip=169.254.0.0-169.254.255.255" ;;
esac

awk '
    {
        line = $0
        while (match(line, /\$\{[A-Z_]+\}/)) {
            name = substr(line, RSTART + 2, RLENGTH - 3)
            value = ENVIRON[name]
            if (value == "") { line = ""; skip = 1; break }
            line = substr(line, 1, RSTART - 1) value substr(line, RSTART + RLENGTH)
        }
        if (skip) { skip = 0; next }
        print line
    }' /etc/rtc-coturn/turnserver.conf.template >/tmp/turnserver.conf
chmod 600 /tmp/turnserver.conf
echo "coturn: listening on ${TURN_LISTENING_IP:-all addresses} port $TURN_PORT, relay ports $TURN_MIN_PORT-$TURN_MAX_PORT, realm $TURN_REALM" >&2
exec turnserver -c /tmp/turnserver.conf "$@"
