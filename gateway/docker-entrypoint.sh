#!/bin/sh
# The gateway container: renders nginx.conf from nginx.conf.template with the current address of
# every replica of each service, runs nginx in the foreground, and every GATEWAY_RESOLVE_SECONDS
# looks the names up again; when the set of addresses changed (a service scaled with
# `docker compose up --scale`, a replica restarted with a new address) it re-renders and reloads
# nginx gracefully. nginx before 1.27.3 (Debian has 1.22) resolves upstream names only when it
# starts, and has no `resolve` parameter for upstream servers.
#
# Env: ICE_UPSTREAM (ice-service:8101), SIGNAL_UPSTREAM (signal-service:8201),
#      RELAY_UPSTREAM (relay-service:8301), GATEWAY_LISTEN (8080), GATEWAY_WORKERS (auto),
#      GATEWAY_RESOLVE_SECONDS (10), GATEWAY_RUN_DIR (/tmp/rtc-gateway),
#      GATEWAY_AFFINITY_KEY ($remote_addr: the nginx variable hashed over the signal replicas;
#      behind a load balancer, the real client's once GATEWAY_REAL_IP_FROM is set).
#      GATEWAY_WEB_ROOT (/usr/share/rtc-gateway/web: the web SDK and demo page served at /demo/).
#      Per-client limits (README "Configuration"; the same defaults as rtcctl's GatewayLimits):
#      GATEWAY_RATE_LIMIT (50 requests/s per client address; off or 0: no limit),
#      GATEWAY_RATE_BURST (100), GATEWAY_CONN_LIMIT (100 open connections per address; off or 0),
#      GATEWAY_MAX_BODY_SIZE (128k), GATEWAY_RELAY_MAX_BODY_SIZE (512k),
#      GATEWAY_MAX_HEADER_SIZE (8k), GATEWAY_CLIENT_HEADER_TIMEOUT (10s),
#      GATEWAY_CLIENT_BODY_TIMEOUT (10s), GATEWAY_SEND_TIMEOUT (30s).
#      GATEWAY_REAL_IP_FROM (empty: comma-separated addresses or CIDRs of the load balancers in
#      front; the client address is then read from their X-Forwarded-For),
#      GATEWAY_DEMO (false: true serves the web SDK and the demo page at /demo/).
set -eu

TEMPLATE=${GATEWAY_TEMPLATE:-/etc/rtc-gateway/nginx.conf.template}
RUN_DIR=${GATEWAY_RUN_DIR:-/tmp/rtc-gateway}
CONF=$RUN_DIR/nginx.conf
NGINX=${NGINX:-/usr/sbin/nginx}
INTERVAL=${GATEWAY_RESOLVE_SECONDS:-10}

log() { echo "gateway: $*" >&2; }

# One nginx variable, nothing else: the value is pasted into the config.
AFFINITY_KEY=${GATEWAY_AFFINITY_KEY:-\$remote_addr}
case $AFFINITY_KEY in
    \$*) case ${AFFINITY_KEY#?} in '' | *[!a-z_]*) affinity_ok=no ;; *) affinity_ok=yes ;; esac ;;
    *) affinity_ok=no ;;
esac
if [ "$affinity_ok" != yes ]; then
    log "GATEWAY_AFFINITY_KEY must be one nginx variable matching ^\\\$[a-z_]+\$" \
        "(e.g. \$remote_addr, \$http_x_forwarded_for), got: '$AFFINITY_KEY'"
    exit 64
fi

# Limits, sizes and timeouts: checked here (they are pasted into the config), exported for render.
bad_value() {
    log "$1 must be $2, got: '$3'"
    exit 64
}
is_count() { # 1-7 ASCII digits
    case $1 in '' | *[!0-9]*) return 1 ;; esac
    [ ${#1} -le 7 ]
}
per_address() { # VARIABLE VALUE -> KEY, LIMIT; off (or 0): an empty key, never counted
    case $2 in
        off | OFF | Off | 0) KEY='""' LIMIT=1 ;;
        *) is_count "$2" || bad_value "$1" "a number of 1 to 7 digits, or off" "$2"
           KEY='$binary_remote_addr' LIMIT=$2 ;;
    esac
}
nginx_size() { # VARIABLE VALUE: 128k, 1m, 4096
    case $2 in [1-9]*) ;; *) bad_value "$1" "an nginx size such as 128k or 1m" "$2" ;; esac
    is_count "${2%[kKmM]}" || bad_value "$1" "an nginx size such as 128k or 1m" "$2"
}
nginx_time() { # VARIABLE VALUE: 10s, 500ms, 1m, 30
    case $2 in *ms) t=${2%ms} ;; *) t=${2%[sm]} ;; esac
    case $t in [1-9]*) ;; *) bad_value "$1" "an nginx time such as 10s or 500ms" "$2" ;; esac
    is_count "$t" || bad_value "$1" "an nginx time such as 10s or 500ms" "$2"
}
per_address GATEWAY_RATE_LIMIT "${GATEWAY_RATE_LIMIT:-50}"
export R_rate_key="$KEY" R_rate_limit="$LIMIT"
per_address GATEWAY_CONN_LIMIT "${GATEWAY_CONN_LIMIT:-100}"
export R_conn_key="$KEY" R_conn_limit="$LIMIT"
R_rate_burst=${GATEWAY_RATE_BURST:-100}
case $R_rate_burst in
    0*) bad_value GATEWAY_RATE_BURST "a number from 1, of at most 7 digits" "$R_rate_burst" ;;
    *) is_count "$R_rate_burst" ||
        bad_value GATEWAY_RATE_BURST "a number from 1, of at most 7 digits" "$R_rate_burst" ;;
esac
export R_rate_burst
export R_max_body_size="${GATEWAY_MAX_BODY_SIZE:-128k}"
export R_relay_max_body_size="${GATEWAY_RELAY_MAX_BODY_SIZE:-512k}"
export R_max_header_size="${GATEWAY_MAX_HEADER_SIZE:-8k}"
export R_client_header_timeout="${GATEWAY_CLIENT_HEADER_TIMEOUT:-10s}"
export R_client_body_timeout="${GATEWAY_CLIENT_BODY_TIMEOUT:-10s}"
export R_send_timeout="${GATEWAY_SEND_TIMEOUT:-30s}"
nginx_size GATEWAY_MAX_BODY_SIZE "$R_max_body_size"
nginx_size GATEWAY_RELAY_MAX_BODY_SIZE "$R_relay_max_body_size"
nginx_size GATEWAY_MAX_HEADER_SIZE "$R_max_header_size"
nginx_time GATEWAY_CLIENT_HEADER_TIMEOUT "$R_client_header_timeout"
nginx_time GATEWAY_CLIENT_BODY_TIMEOUT "$R_client_body_timeout"
nginx_time GATEWAY_SEND_TIMEOUT "$R_send_timeout"

demo=$(printf '%s' "${GATEWAY_DEMO:-false}" | tr 'A-Z' 'a-z')
case $demo in
    true | 1 | yes | on) export R_demo=on ;;
    false | 0 | no | off) export R_demo=off ;;
    *) bad_value GATEWAY_DEMO "true or false" "$GATEWAY_DEMO" ;;
esac

# GATEWAY_REAL_IP_FROM -> the real_ip lines (none when empty). The same check as rtcctl's:
# plain IPv4 or IPv6 (no embedded IPv4; a "::" for two groups at least, which nginx parses before
# a prefix), no host bits set (a mistyped mask would trust more than meant), no /0 (every client
# could pick its address). Prints the first bad entry on failure.
REAL_IP_AWK='
function fail(entry) { print entry; exit 1 }
function hex(s,   i, v) {
    v = 0
    for (i = 1; i <= length(s); i++) v = v * 16 + index("0123456789abcdef", substr(s, i, 1)) - 1
    return v
}
function group(s) { return s ~ /^[0-9a-f]+$/ && length(s) <= 4 }
function v4(a, bits,   p, i, v) {
    if (split(a, p, ".") != 4) return 0
    v = 0
    for (i = 1; i <= 4; i++) {
        if (p[i] !~ /^(0|[1-9][0-9]?[0-9]?)$/ || p[i] + 0 > 255) return 0
        v = v * 256 + p[i]
    }
    return v % (2 ^ (32 - bits)) == 0
}
function v6(a, bits,   k, l, r, nl, nr, L, R, P, g, i) {
    k = index(a, "::")
    if (k) {
        l = substr(a, 1, k - 1)
        r = substr(a, k + 2)
        nl = l == "" ? 0 : split(l, L, ":")
        nr = r == "" ? 0 : split(r, R, ":")
        if (nl + nr > 6) return 0
        for (i = 1; i <= 8; i++) g[i] = 0
        for (i = 1; i <= nl; i++) { if (!group(L[i])) return 0; g[i] = hex(L[i]) }
        for (i = 1; i <= nr; i++) { if (!group(R[i])) return 0; g[8 - nr + i] = hex(R[i]) }
    } else {
        if (split(a, P, ":") != 8) return 0
        for (i = 1; i <= 8; i++) { if (!group(P[i])) return 0; g[i] = hex(P[i]) }
    }
    for (i = 1; i <= 8; i++) {
        if (bits >= i * 16) continue
        if (bits <= (i - 1) * 16) { if (g[i] != 0) return 0 }
        else if (g[i] % (2 ^ (i * 16 - bits)) != 0) return 0
    }
    return 1
}
BEGIN {
    n = split(ENVIRON["GATEWAY_REAL_IP_FROM"], items, ",")
    out = ""
    for (i = 1; i <= n; i++) {
        e = tolower(items[i])
        gsub(/^[ \t\r\n]+|[ \t\r\n]+$/, "", e)
        if (e == "") continue
        a = e
        bits = -1
        s = index(e, "/")
        if (s) {
            a = substr(e, 1, s - 1)
            b = substr(e, s + 1)
            if (b !~ /^[0-9]+$/ || length(b) > 3) fail(e)
            bits = b + 0
        }
        if (a ~ /^[0-9.]+$/) {
            if (bits < 0) bits = 32
            if (bits < 1 || bits > 32 || !v4(a, bits)) fail(e)
        } else if (a ~ /^[0-9a-f:]+$/) {
            if (bits < 0) bits = 128
            if (bits < 1 || bits > 128 || !v6(a, bits)) fail(e)
        } else fail(e)
        out = out "    set_real_ip_from " e ";\n"
    }
    if (out != "") printf "%s    real_ip_header X-Forwarded-For;\n    real_ip_recursive on;\n", out
}'
if ! R_real_ip=$(GATEWAY_REAL_IP_FROM=${GATEWAY_REAL_IP_FROM:-} awk "$REAL_IP_AWK"); then
    bad_value GATEWAY_REAL_IP_FROM "comma-separated IPv4/IPv6 addresses or CIDRs (no host bits\
 set, prefix from 1, '::' for two groups at least)" "$R_real_ip"
fi
export R_real_ip

LIMIT_NAMES="rate_key rate_limit rate_burst conn_key conn_limit max_body_size relay_max_body_size"
LIMIT_NAMES="$LIMIT_NAMES max_header_size client_header_timeout client_body_timeout send_timeout"
export LIMIT_NAMES="$LIMIT_NAMES demo"

# "host:port" -> one `server addr:port;` line per address the name resolves to (every replica of
# a compose service), sorted so that an unchanged set renders the same file. A name that does not
# resolve yet gets a placeholder marked down: nginx answers 503 until the next look-up finds it.
servers() {
    host=${1%:*}
    port=${1##*:}
    addrs=$(getent ahosts "$host" 2>/dev/null | awk '{print $1}' | sort -u || true)
    if [ -z "$addrs" ]; then
        echo "        server 127.0.0.1:$port down;  # $host does not resolve yet"
        return
    fi
    for addr in $addrs; do
        case $addr in *:*) addr="[$addr]" ;; esac
        echo "        server $addr:$port max_fails=1 fail_timeout=5s;"
    done
}

render() {
    R_ICE=$(servers "${ICE_UPSTREAM:-ice-service:8101}") \
    R_SIGNAL=$(servers "${SIGNAL_UPSTREAM:-signal-service:8201}") \
    R_RELAY=$(servers "${RELAY_UPSTREAM:-relay-service:8301}") \
    R_RUN_DIR=$RUN_DIR R_LOG_DIR=$RUN_DIR/logs \
    R_LISTEN=${GATEWAY_LISTEN:-8080} R_WORKERS=${GATEWAY_WORKERS:-auto} \
    R_AFFINITY_KEY=$AFFINITY_KEY \
    R_WEB_ROOT=${GATEWAY_WEB_ROOT:-/usr/share/rtc-gateway/web} \
    awk '
        /^\{\{ice_servers\}\}$/ { print ENVIRON["R_ICE"]; next }
        /^\{\{signal_servers\}\}$/ { print ENVIRON["R_SIGNAL"]; next }
        /^\{\{relay_servers\}\}$/ { print ENVIRON["R_RELAY"]; next }
        /^\{\{extra_(upstreams|locations)\}\}$/ { next }
        /^\{\{real_ip\}\}$/ { if (ENVIRON["R_real_ip"] != "") print ENVIRON["R_real_ip"]; next }
        {
            gsub(/\{\{run_dir\}\}/, ENVIRON["R_RUN_DIR"])
            gsub(/\{\{log_dir\}\}/, ENVIRON["R_LOG_DIR"])
            gsub(/\{\{listen\}\}/, ENVIRON["R_LISTEN"])
            gsub(/\{\{workers\}\}/, ENVIRON["R_WORKERS"])
            gsub(/\{\{affinity_key\}\}/, ENVIRON["R_AFFINITY_KEY"])
            gsub(/\{\{web_root\}\}/, ENVIRON["R_WEB_ROOT"])
            gsub(/\{\{daemon\}\}/, "off")
            n = split(ENVIRON["LIMIT_NAMES"], names, " ")
            for (i = 1; i <= n; i++) gsub("\\{\\{" names[i] "\\}\\}", ENVIRON["R_" names[i]])
            print
        }' "$TEMPLATE"
}

summary() { # "ice 1, signal 3, relay 1" (live upstream servers in a rendered file)
    awk '
        /upstream ice_service/ { u = "ice" } /upstream signal_service/ { u = "signal" }
        /upstream relay_service/ { u = "relay" }
        /^ *server [0-9[]/ && !/ down;/ { n[u]++ }
        END { printf "ice %d, signal %d, relay %d", n["ice"], n["signal"], n["relay"] }' "$1"
}

mkdir -p "$RUN_DIR/logs" "$RUN_DIR/nginx-tmp"
# The access log goes to the container's stdout (JSON lines), errors to stderr.
ln -sf /dev/stdout "$RUN_DIR/logs/gateway-access.log"
render >"$CONF"
log "upstreams: $(summary "$CONF"); signal affinity key $AFFINITY_KEY"
"$NGINX" -t -q -e stderr -c "$CONF" -p "$RUN_DIR/"

if [ "$INTERVAL" != 0 ]; then
    # Started in a subshell that exits at once, so the loop is the init's child, not nginx's.
    (
        while sleep "$INTERVAL"; do
            render >"$CONF.next" || continue
            if ! cmp -s "$CONF.next" "$CONF"; then
                if "$NGINX" -t -q -e stderr -c "$CONF.next" -p "$RUN_DIR/"; then
                    mv "$CONF.next" "$CONF"
                    log "upstreams changed: $(summary "$CONF"); reloading"
                    "$NGINX" -s reload -e stderr -c "$CONF" -p "$RUN_DIR/" || log "reload failed"
                fi
            fi
        done
    ) &
fi

exec "$NGINX" -e stderr -c "$CONF" -p "$RUN_DIR/"
