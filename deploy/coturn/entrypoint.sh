#!/bin/sh
# The coturn image's entrypoint: renders turnserver.conf.template (and denied-peers.txt) into
# $TURN_RUN_DIR/turnserver.conf and runs turnserver with it.
#
# Env (deploy/env.example, docs/deploying.md): TURN_SECRET (required),
#   TURN_SECRET_PREVIOUS, TURN_PORT (3478), TURN_MIN_PORT (49160), TURN_MAX_PORT (49999),
#   TURN_REALM (rtc.local), TURN_LISTENING_IP, TURN_RELAY_IP, TURN_EXTERNAL_IP, TURN_TLS_PORT
#   (5349), TURN_TLS_CERT, TURN_TLS_KEY.
# Admin CLI: TURN_ADMIN_PASSWORD (unset: no-cli) opens it on TURN_CLI_IP (127.0.0.1) and
#   TURN_CLI_PORT (5766) for ice-service's revocations (docs/operating.md).
# Peer policy: every range of denied-peers.txt is denied (loopback, private, link-local with the
#   cloud metadata services, CGNAT, multicast, reserved, and their IPv6 counterparts).
#   TURN_ALLOWED_PEER_IPS: comma-separated exceptions coturn may relay to after all: addresses,
#     networks (10.1.2.0/24, fd12:3456::/48) or ranges (10.1.2.10-10.1.2.20).
#   TURN_ALLOW_LOOPBACK_PEERS (false): tests on one machine only; allows every loopback peer.
#   TURN_DENY_PRIVATE_PEERS (true): deprecated; false is TURN_ALLOWED_PEER_IPS with the RFC 1918
#     ranges 10/8, 172.16/12 and 192.168/16 (the rest of the list stays denied).
# Limits: TURN_TCP_RELAY (false: no-tcp-relay), TURN_USER_QUOTA (12 allocations per user),
#   TURN_TOTAL_QUOTA (800 allocations), TURN_MAX_BPS (1000000 bytes/s per session); 0: no limit.
# Secrets as files (compose secrets): TURN_SECRET_FILE, TURN_SECRET_PREVIOUS_FILE and
#   TURN_ADMIN_PASSWORD_FILE instead of the values (one trailing newline is dropped).
# A value that is not what its variable takes stops the start (exit 64) with a message.
# Test hooks (tests/service/test_coturn_peers.py): TURN_CONFIG_DIR (/etc/rtc-coturn: the template and
#   denied-peers.txt), TURN_RUN_DIR (/tmp: the rendered config, pid file and user db),
#   TURNSERVER (turnserver: the program run with the config).
set -eu

CONFIG_DIR=${TURN_CONFIG_DIR:-/etc/rtc-coturn}
export TURN_RUN_DIR="${TURN_RUN_DIR:-/tmp}"
CONF=$TURN_RUN_DIR/turnserver.conf
TURNSERVER=${TURNSERVER:-turnserver}

log() { echo "coturn: $*" >&2; }
bad_value() {
    log "$1 must be $2, got: '$3'"
    exit 64
}
is_true() { # VARIABLE DEFAULT: true or false; any other value stops the start
    eval "value=\${$1:-$2}"
    case $value in
        true | TRUE | True | yes | YES | Yes | on | ON | 1) return 0 ;;
        false | FALSE | False | no | NO | No | off | OFF | 0) return 1 ;;
    esac
    bad_value "$1" "true or false" "$value"
}
count() { # VARIABLE DEFAULT: exported as a number of 1-10 digits (0: coturn's "no limit")
    eval "value=\${$1:-$2}"
    case $value in '' | *[!0-9]*) bad_value "$1" "a number (0: no limit)" "$value" ;; esac
    [ ${#value} -le 10 ] || bad_value "$1" "a number of at most 10 digits" "$value"
    export "$1=$value"
}

# Peer addresses -> coturn lines. stdin: one entry a line (an address, NET/LEN or FIRST-LAST;
# with list=1 the first word of a line, `#` lines and blank lines skipped); out: KEY=FIRST-LAST
# (KEY=ADDRESS for one address). Every entry is checked here, because coturn 4.6 takes no CIDR,
# resolves what is no address as a host name, skips a malformed line with a logged error, and
# matches a range its own way: a bound of 0.0.0.0 or :: is no bound at all (for any address
# family: a range from :: matches every IPv4 peer too), and IPv6 addresses are compared byte by
# byte (each byte between the two ends' bytes), which is the range only when the ends differ
# from their first differing byte on as 00... and ...ff (every network does).
# What: the source named in the messages. POSIX awk (mawk, busybox): no intervals, no strtonum.
peer_lines() { # KEY WHAT [list]
    awk -v key="$1" -v what="$2" -v list="${3:-0}" '
        function octets(s, a,   i) {
            if (split(s, a, ".") != 4) return 0
            for (i = 1; i <= 4; i++)
                if (a[i] !~ /^(0|[1-9][0-9]?[0-9]?)$/ || a[i] + 0 > 255) return 0
            return 1
        }
        function hex(s,   i, v) {
            v = 0
            for (i = 1; i <= length(s); i++)
                v = v * 16 + index("0123456789abcdef", tolower(substr(s, i, 1))) - 1
            return v
        }
        function groups(s, g,   n, i, p) { # "a:b:c" -> g[1..n]; "" -> 0; -1: malformed
            if (s == "") return 0
            n = split(s, p, ":")
            for (i = 1; i <= n; i++) {
                if (p[i] !~ /^[0-9A-Fa-f]+$/ || length(p[i]) > 4) return -1
                g[i] = hex(p[i])
            }
            return n
        }
        # An address -> u[1..n]: 4 units of 8 bits (IPv4) or 8 of 16 bits (IPv6); 0: none.
        function parse(s, u,   a, i, n, parts, h, t, nh, nt) {
            if (s ~ /^[0-9.]+$/) {
                if (!octets(s, a)) return 0
                for (i = 1; i <= 4; i++) u[i] = a[i] + 0
                return 4
            }
            if (s !~ /^[0-9A-Fa-f:.]+$/ || index(s, ":") == 0) return 0
            if (index(s, ".")) { # a dotted IPv4 tail: ::ffff:10.0.0.1
                match(s, /[^:]*$/)
                if (!octets(substr(s, RSTART), a)) return 0
                s = substr(s, 1, RSTART - 1) sprintf("%x:%x", a[1] * 256 + a[2], a[3] * 256 + a[4])
            }
            n = split(s, parts, "::")
            if (n > 2) return 0
            nh = groups(parts[1], h)
            if (nh < 0) return 0
            nt = 0
            if (n == 2) {
                nt = groups(parts[2], t)
                if (nt < 0 || nh + nt > 7) return 0
            } else if (nh != 8) return 0
            for (i = 1; i <= 8; i++) u[i] = 0
            for (i = 1; i <= nh; i++) u[i] = h[i]
            for (i = 1; i <= nt; i++) u[8 - nt + i] = t[i]
            return 8
        }
        function text(u, n,   i, s) {
            s = n == 4 ? u[1] : sprintf("%x", u[1])
            for (i = 2; i <= n; i++) s = s (n == 4 ? "." u[i] : sprintf(":%x", u[i]))
            return s
        }
        function zero(u, n,   i) {
            for (i = 1; i <= n; i++) if (u[i]) return 0
            return 1
        }
        function bytewise(lo, hi,   i, a, b, differ) { # an IPv6 range as coturn 4.6 matches it
            differ = 0
            for (i = 1; i <= 16; i++) {
                a = i % 2 ? int(lo[(i + 1) / 2] / 256) : lo[i / 2] % 256
                b = i % 2 ? int(hi[(i + 1) / 2] / 256) : hi[i / 2] % 256
                if (differ && (a != 0 || b != 255)) return 0
                if (a != b) differ = 1
            }
            return 1
        }
        function fail(entry, why) {
            printf "coturn: %s: '\''%s'\'' %s\n", what, entry, why > "/dev/stderr"
            bad = 1
        }
        {
            if (list) {
                if ($0 ~ /^[ \t]*#/ || NF == 0) next
                entry = $1
            } else {
                entry = $0
                gsub(/^[ \t]+|[ \t]+$/, "", entry)
                if (entry == "") next
            }
            split("", lo); split("", hi)
            if (index(entry, "/")) {
                slash = index(entry, "/")
                len = substr(entry, slash + 1)
                n = parse(substr(entry, 1, slash - 1), lo)
                width = n == 4 ? 8 : 16
                if (!n) { fail(entry, "is not a network (ADDRESS/LENGTH)"); next }
                if (len !~ /^(0|[1-9][0-9]*)$/ || len + 0 > n * width) {
                    fail(entry, "has a prefix length outside 0-" n * width); next
                }
                host = 0
                for (i = 1; i <= n; i++) {
                    bits = len - (i - 1) * width
                    if (bits < 0) bits = 0
                    if (bits > width) bits = width
                    size = 2 ^ (width - bits)
                    if (lo[i] % size) host = 1
                    lo[i] = int(lo[i] / size) * size
                    hi[i] = lo[i] + size - 1
                }
                if (host) { fail(entry, "has host bits set: the network is " text(lo, n) "/" len); next }
            } else if (index(entry, "-")) {
                dash = index(entry, "-")
                n = parse(substr(entry, 1, dash - 1), lo)
                m = parse(substr(entry, dash + 1), hi)
                if (!n || !m) { fail(entry, "is not a range (FIRST-LAST)"); next }
                if (n != m) { fail(entry, "mixes IPv4 and IPv6"); next }
                for (i = 1; i <= n && lo[i] == hi[i]; i++) ;
                if (i <= n && lo[i] > hi[i]) { fail(entry, "ends before it starts"); next }
                if (n == 8 && !bytewise(lo, hi)) {
                    fail(entry, "is an IPv6 range coturn 4.6 cannot match (it compares byte by byte): give it as networks (ADDRESS/LENGTH)")
                    next
                }
            } else {
                n = parse(entry, lo)
                if (!n) { fail(entry, "is not an IP address, network (ADDRESS/LENGTH) or range (FIRST-LAST)"); next }
                for (i = 1; i <= n; i++) hi[i] = lo[i]
            }
            if (n == 8 && zero(lo, 8)) {
                fail(entry, "starts at ::, which coturn reads as no lower bound (every IPv4 peer would match too): start above ::")
                next
            }
            if (zero(hi, n)) { fail(entry, "ends at " text(hi, n) ", which coturn reads as no bound (any peer would match)"); next }
            first = text(lo, n); last = text(hi, n)
            print key "=" (first == last ? first : first "-" last)
        }
        END { exit bad ? 64 : 0 }'
}

# NAME from the file NAME_FILE names, as the services read their *_FILE variables.
from_file() {
    eval "value=\${$1:-} path=\${$1_FILE:-}"
    [ -n "$path" ] || return 0
    [ -z "$value" ] || { log "$1 and $1_FILE are both set: use one of them"; exit 64; }
    [ -r "$path" ] || { log "$1_FILE cannot be read"; exit 64; }
    value=$(cat "$path")
    [ -n "$value" ] || { log "$1_FILE is empty"; exit 64; }
    export "$1=$value"
}
from_file TURN_SECRET
from_file TURN_SECRET_PREVIOUS
from_file TURN_ADMIN_PASSWORD
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
# The admin CLI (where ice-service ends revoked wallets' sessions) only with a password.
if [ -n "${TURN_ADMIN_PASSWORD:-}" ]; then
    case $TURN_ADMIN_PASSWORD in *[!A-Za-z0-9._~+/=-]*)
        bad_value TURN_ADMIN_PASSWORD "letters, digits and ._~+/=- only" "(not shown)" ;;
    esac
    count TURN_CLI_PORT 5766
    export TURN_CLI="cli-ip=${TURN_CLI_IP:-127.0.0.1}
cli-port=$TURN_CLI_PORT
cli-password=$TURN_ADMIN_PASSWORD"
else
    export TURN_CLI="no-cli"
fi

# The peer policy: the denied list always; the exceptions the operator named.
denied=$(peer_lines denied-peer-ip "$CONFIG_DIR/denied-peers.txt" 1 <"$CONFIG_DIR/denied-peers.txt")
allowed=$(printf '%s\n' "${TURN_ALLOWED_PEER_IPS:-}" | tr ',' '\n' |
    peer_lines allowed-peer-ip TURN_ALLOWED_PEER_IPS) ||
    bad_value TURN_ALLOWED_PEER_IPS \
        "comma-separated IP addresses, networks (ADDRESS/LENGTH) or ranges (FIRST-LAST)" \
        "${TURN_ALLOWED_PEER_IPS:-}"
if ! is_true TURN_DENY_PRIVATE_PEERS true; then
    log "TURN_DENY_PRIVATE_PEERS=false is deprecated: it allows the RFC 1918 ranges only" \
        "(10/8, 172.16/12, 192.168/16); name the networks coturn may relay to in TURN_ALLOWED_PEER_IPS"
    allowed="$allowed
allowed-peer-ip=10.0.0.0-10.255.255.255
allowed-peer-ip=172.16.0.0-172.31.255.255
allowed-peer-ip=192.168.0.0-192.168.255.255"
fi
# coturn refuses loopback peers without allow-loopback-peers whatever the lists say; with it,
# the denied 127/8 and ::1 still apply unless allowed.
if is_true TURN_ALLOW_LOOPBACK_PEERS false; then
    log "TURN_ALLOW_LOOPBACK_PEERS=true: loopback peers allowed (tests on one machine only)"
    export TURN_ALLOW_LOOPBACK_PEERS="allow-loopback-peers"
    allowed="$allowed
allowed-peer-ip=127.0.0.0-127.255.255.255
allowed-peer-ip=0:0:0:0:0:0:0:1"
else
    export TURN_ALLOW_LOOPBACK_PEERS=""
fi
export TURN_DENIED_PEERS="$denied"
TURN_ALLOWED_PEERS=$(printf '%s\n' "$allowed" | sed '/^$/d')
export TURN_ALLOWED_PEERS

if is_true TURN_TCP_RELAY false; then
    export TURN_NO_TCP_RELAY=""
else
    export TURN_NO_TCP_RELAY="no-tcp-relay"
fi
count TURN_USER_QUOTA 12
count TURN_TOTAL_QUOTA 800
count TURN_MAX_BPS 1000000

mkdir -p "$TURN_RUN_DIR"
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
    }' "$CONFIG_DIR/turnserver.conf.template" >"$CONF"
chmod 600 "$CONF"
echo "coturn: listening on ${TURN_LISTENING_IP:-all addresses} port $TURN_PORT, relay ports $TURN_MIN_PORT-$TURN_MAX_PORT, realm $TURN_REALM;" \
    "peers: $(printf '%s\n' "$TURN_DENIED_PEERS" | grep -c .) ranges denied," \
    "$(printf '%s\n' "$TURN_ALLOWED_PEERS" | grep -c . || true) allowed" >&2
exec "$TURNSERVER" -c "$CONF" "$@"
