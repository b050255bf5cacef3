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
#      e.g. $http_x_forwarded_for behind a load balancer, after real_ip).
#      GATEWAY_WEB_ROOT (/usr/share/rtc-gateway/web: the web SDK and demo page served at /demo/).
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
        {
            gsub(/\{\{run_dir\}\}/, ENVIRON["R_RUN_DIR"])
            gsub(/\{\{log_dir\}\}/, ENVIRON["R_LOG_DIR"])
            gsub(/\{\{listen\}\}/, ENVIRON["R_LISTEN"])
            gsub(/\{\{workers\}\}/, ENVIRON["R_WORKERS"])
            gsub(/\{\{affinity_key\}\}/, ENVIRON["R_AFFINITY_KEY"])
            gsub(/\{\{web_root\}\}/, ENVIRON["R_WEB_ROOT"])
            gsub(/\{\{daemon\}\}/, "off")
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
