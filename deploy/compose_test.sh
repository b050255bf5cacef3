#!/usr/bin/env bash
# `make compose-test`: the compose stack for real, on a machine with no Docker engine and no
# registry. Debian's podman runs the containers and serves the Docker API on a socket in a temp
# folder; docker-compose 1.29 drives it with docker-compose.yml + deploy/compose.test.yml (local
# base images: a debootstrap'ed Debian bookworm, cached in podman's image store after the first
# run). First an operator's first start (deploy/compose_fresh.py): deploy/env.example from a
# temp folder with only its secrets filled, no ICE provider; gateway, signaling and relay must
# serve, ICE answer ice_unavailable. Then, through the published gateway port only,
# deploy/compose_check.py checks ICE
# credentials against the coturn profile (a real TURN allocation), signaling between users on
# different signal-service replicas, a relay message enqueued and pulled, and a replica stopped
# with its client reconnecting to another; then signal-service is scaled 2 -> 4 -> 2 while
# clients signal through the gateway (deploy/compose_scale.py); then, two replicas of each
# service, each replica is restarted in turn under load (deploy/compose_rolling.py). Before
# those, every container's hardening (read-only root, no capabilities, no-new-privileges,
# memory and pids limits) and the networks (the stores reachable from the services only, the
# services' /metrics from the monitoring network, Redis only with its password). Everything is
# torn down at the end (also on failure): containers, networks, volumes, the podman service
# this script started.
#
# Env: SIGNAL_REPLICAS (3), KEEP_STACK=1 (leave the stack up and print how to reach it),
#      COMPOSE_ROLLING=0 (skip the rolling restart under load),
#      DEBIAN_MIRROR (from /etc/apt/sources*), RTC_COMPOSE_PROJECT (rtc-compose-test).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
started=$(date +%s)
step() { echo "==> [$(($(date +%s) - started))s] $*"; }
fail() {
    # The check's own reason again, after the logs printed since (CI shows the end of the output).
    [ ! -s "${CHECK_REPORT:-}" ] || sed 's/^/compose-test: CHECK FAILED: /' "$CHECK_REPORT" >&2
    echo "compose-test: FAILED: $*" >&2
    exit 1
}

PROJECT=${RTC_COMPOSE_PROJECT:-rtc-compose-test}
FRESH_PROJECT=$PROJECT-fresh
REPLICAS=${SIGNAL_REPLICAS:-3}
PY=$ROOT/.venv/bin/python
[ "$(id -u)" = 0 ] || SUDO=sudo
SUDO=${SUDO:-}

# --- 1. tools --------------------------------------------------------------------------------
# catatonit: podman's init for `init: true`; netavark with aardvark-dns: service-name DNS (every
# replica of a service resolves by its name) for containers on several networks, and on internal
# ones. CNI's dnsname answers only for the network listed first in resolv.conf, in random order,
# and not at all on an internal network.
packages=(podman docker-compose debootstrap runc catatonit netavark aardvark-dns iptables)
missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    step "apt-get install ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi
[ -x "$PY" ] || { step "make bootstrap (.venv)"; make -s bootstrap; }

RUN=$(mktemp -d /tmp/rtc-compose-test.XXXXXX)
chmod 700 "$RUN"
export CHECK_REPORT=$RUN/check-failed
# podman's defaults fail on these machines: crun cannot raise RLIMIT_NOFILE, and the cgroup
# layout is hybrid without systemd. This file is used by the podman CLI and by the service.
# exit_command_delay: the conmon of an exec session (`compose exec redis redis-cli`) outlives it
# by this long (300 s by default) so that the API client can read its exit code.
cat >"$RUN/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
# As Docker: a read-only container gets no writable /run or /var/tmp it did not ask for.
read_only_tmpfs = false
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
exit_command_delay = 5
[network]
network_backend = "netavark"
EOF
export CONTAINERS_CONF=$RUN/containers.conf
export DOCKER_HOST=unix://$RUN/podman.sock
# The main stack takes its secrets as files (deploy/compose.secrets.yml, SECRETS_DIR in its env).
COMPOSE=(docker-compose -p "$PROJECT" --env-file "$RUN/env" -f docker-compose.yml
         -f deploy/compose.secrets.yml -f deploy/compose.test.yml --profile coturn)

# The gateway is published on 127.0.0.1 only. Connections to it arrive source-NATed (every
# client has the same address), so deploy/compose.test.yml sets the gateway's affinity key to
# the X-RTC-Test-Client header, and compose_check.py gives each client its own value: the
# clients still spread over the signal replicas.
SERVICE_PID=
HEALTH_PID=
# Whatever `down` left of a project (a failed start): its containers, networks and volumes, by
# the project's label.
remove_leftovers() { # PROJECT
    local label="label=com.docker.compose.project=$1" leftovers
    leftovers=$(podman ps -aq --filter "$label")
    [ -z "$leftovers" ] || podman rm -f -t 0 $leftovers >/dev/null 2>&1 || true
    for net in $(podman network ls -q --filter "$label"); do
        podman network rm -f "$net" >/dev/null 2>&1 || true
    done
    for vol in $(podman volume ls -q --filter "$label"); do
        podman volume rm -f "$vol" >/dev/null 2>&1 || true
    done
}
fresh_down() {
    [ -n "${FRESH_COMPOSE[*]:-}" ] || return 0
    "${FRESH_COMPOSE[@]}" down -v --remove-orphans -t 5 >"$RUN/fresh-down.log" 2>&1 || true
    remove_leftovers "$FRESH_PROJECT"
}
cleanup() {
    status=$?
    trap - EXIT INT TERM
    if [ -n "$SERVICE_PID" ] && [ -z "${KEEP_STACK:-}" ]; then
        step "tear down"
        fresh_down
        ids=$(podman ps -aq --no-trunc --filter "label=com.docker.compose.project=$PROJECT" \
            | paste -sd '|' -)
        "${COMPOSE[@]}" down -v --remove-orphans -t 5 >"$RUN/down.log" 2>&1 \
            || { echo "compose down failed:"; tail -n 20 "$RUN/down.log"; }
        remove_leftovers "$PROJECT"
        # The conmons of the last exec sessions end exit_command_delay after them.
        conmon_of_ours="^/usr/bin/conmon .* -c (${ids:-none}) "
        for _ in $(seq 40); do
            pgrep -f "$conmon_of_ours" >/dev/null || break
            sleep 0.25
        done
        left=$(podman ps -aq --filter "label=com.docker.compose.project=$PROJECT" | wc -l)
        nets=$(podman network ls -q --filter "label=com.docker.compose.project=$PROJECT" | wc -l)
        conmons=$(pgrep -fc "$conmon_of_ours" || true)
        echo "    left behind: $left containers, $nets networks, $conmons conmon processes"
    fi
    [ -z "$HEALTH_PID" ] || kill "$HEALTH_PID" 2>/dev/null || true
    if [ -n "$SERVICE_PID" ] && [ -z "${KEEP_STACK:-}" ]; then
        kill "$SERVICE_PID" 2>/dev/null || true
        wait "$SERVICE_PID" 2>/dev/null || true
    fi
    if [ -z "${KEEP_STACK:-}" ]; then
        rm -rf "$RUN"
    else
        echo "stack kept: DOCKER_HOST=$DOCKER_HOST CONTAINERS_CONF=$CONTAINERS_CONF ${COMPOSE[*]} ps"
        echo "podman service pid $SERVICE_PID; stop it with: kill $SERVICE_PID"
    fi
    if [ "$status" = 0 ]; then
        step "compose-test passed"
    else
        echo "compose-test: failed (status $status) after $(($(date +%s) - started)) s" >&2
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- 2. base images (cached) -----------------------------------------------------------------
if ! podman image exists localhost/debian:bookworm; then
    mirror=${DEBIAN_MIRROR:-$( { grep -rhoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' \
        /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null || true; } | head -n 1 \
        | awk '{print $2}')}
    mirror=${mirror:-http://deb.debian.org/debian}
    step "debootstrap --variant=minbase bookworm ($mirror) -> localhost/debian:bookworm"
    $SUDO debootstrap --variant=minbase bookworm "$RUN/rootfs" "$mirror" >"$RUN/debootstrap.log" 2>&1 \
        || { tail -n 20 "$RUN/debootstrap.log"; fail "debootstrap"; }
    $SUDO tar -C "$RUN/rootfs" -c . | podman import -q - localhost/debian:bookworm >/dev/null
    $SUDO rm -rf "$RUN/rootfs"
fi
step "test base images (Debian's python3.11, nginx, redis, coturn)"
mkdir -p "$RUN/base-context/extra-ca"
cp /usr/local/share/ca-certificates/*.crt "$RUN/base-context/extra-ca/" 2>/dev/null || true
for base in python nginx redis coturn; do
    podman build -q -f "deploy/test/$base.Containerfile" -t "localhost/rtc-test/$base:bookworm" \
        "$RUN/base-context" >"$RUN/base-$base.log" 2>&1 \
        || { tail -n 30 "$RUN/base-$base.log"; fail "base image $base"; }
done

# --- 3. the Docker API ------------------------------------------------------------------------
step "podman system service on $RUN/podman.sock"
podman system service --time=0 "unix://$RUN/podman.sock" >"$RUN/podman-service.log" 2>&1 &
SERVICE_PID=$!
for _ in $(seq 100); do [ -S "$RUN/podman.sock" ] && break; sleep 0.1; done
[ -S "$RUN/podman.sock" ] || fail "podman service did not start"

# podman runs healthchecks through systemd timers, and there is no systemd here: run every
# container's HEALTHCHECK ourselves (what dockerd does), so `depends_on: service_healthy` works.
(
    while sleep 2; do
        for project in "$PROJECT" "$FRESH_PROJECT"; do
            for id in $(podman ps -q --filter "label=com.docker.compose.project=$project" 2>/dev/null); do
                podman healthcheck run "$id" >/dev/null 2>&1 || true
            done
        done
    done
) &
HEALTH_PID=$!

# --- 4. the stack -----------------------------------------------------------------------------
free_port() {
    "$PY" -c 'import socket,sys
s=socket.socket(socket.AF_INET, getattr(socket, sys.argv[1])); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' "$1"
}
GATEWAY_PORT=$(free_port SOCK_STREAM)
TURN_PORT=$(free_port SOCK_DGRAM)
new_secret() { "$PY" -c 'import secrets; print(secrets.token_urlsafe(32))'; }
JWT_SECRET=$("$PY" -c 'import secrets; print(secrets.token_urlsafe(48))')
TURN_SECRET=$(new_secret)
REDIS_PASSWORD=$(new_secret)
# Required by docker-compose.yml; no MongoDB runs here (the directory is Redis).
MONGO_PASSWORD=$(new_secret)
ADMIN_TOKEN=$(new_secret)
# The main stack's secrets as an operator lays them out for deploy/compose.secrets.yml: a 0700
# folder of 0444 files (the containers read them as their own users). Tokens are RS256, checked
# with a multi-line PEM public key; the checks sign with its private key.
SECRETS_DIR=$RUN/secrets
mkdir -m 700 "$SECRETS_DIR"
printf '%s\n' "$REDIS_PASSWORD" >"$SECRETS_DIR/redis_password"
printf '%s\n' "$MONGO_PASSWORD" >"$SECRETS_DIR/mongo_password"
printf '%s\n' "$TURN_SECRET" >"$SECRETS_DIR/turn_secret"
printf '%s\n' "$ADMIN_TOKEN" >"$SECRETS_DIR/admin_token"
new_secret >"$SECRETS_DIR/log_pseudonym_key"
"$PY" - "$RUN/jwt_private_key.pem" "$SECRETS_DIR/jwt_public_key.pem" <<'PYEOF'
import sys
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
with open(sys.argv[1], "wb") as out:
    out.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()))
with open(sys.argv[2], "wb") as out:
    out.write(key.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo))
PYEOF
chmod 600 "$RUN/jwt_private_key.pem"
chmod 444 "$SECRETS_DIR"/*
JWT_PRIVATE_KEY=$(cat "$RUN/jwt_private_key.pem")
cat >"$RUN/env" <<EOF
GATEWAY_BIND=127.0.0.1
GATEWAY_PORT=$GATEWAY_PORT
GATEWAY_RESOLVE_SECONDS=2
SECRETS_DIR=$SECRETS_DIR
JWT_ALGORITHMS=RS256
MONGO_INITDB_ROOT_USERNAME=rtc
ALLOW_BEARER_AUTH=true
RTC_PROVIDER=coturn
TURN_URIS=turn:127.0.0.1:$TURN_PORT?transport=udp,turn:127.0.0.1:$TURN_PORT?transport=tcp
TURN_PORT=$TURN_PORT
TURN_LISTENING_IP=127.0.0.1
TURN_RELAY_IP=127.0.0.1
TURN_MIN_PORT=49300
TURN_MAX_PORT=49340
TURN_ALLOW_LOOPBACK_PEERS=true
ICE_RATE_LIMIT_PER_MIN=100000
RELAY_RATE_LIMIT_PER_MIN=100000
# Every test client arrives from one (source-NATed) address: the per-address limits are raised
# for the rolling restart's load (400 requests/s and 100 sockets through the gateway).
GATEWAY_RATE_LIMIT=5000
GATEWAY_RATE_BURST=5000
GATEWAY_CONN_LIMIT=5000
EOF
chmod 600 "$RUN/env"

# --- 4a. an operator's first start: deploy/env.example, only its secrets filled --------------
# From a folder of its own (never a developer's .env), passed with --env-file; the gateway is
# published on a free loopback port (8080 may be taken here). The test override supplies the
# locally built images and the Redis directory (no MongoDB image here), as for the rest.
FRESH=$RUN/fresh
mkdir -p "$FRESH"
FRESH_PORT=$(free_port SOCK_STREAM)
sed -e "s|^JWT_SECRET=.*|JWT_SECRET=$JWT_SECRET|" \
    -e "s|^REDIS_PASSWORD=.*|REDIS_PASSWORD=$REDIS_PASSWORD|" \
    -e "s|^MONGO_INITDB_ROOT_USERNAME=.*|MONGO_INITDB_ROOT_USERNAME=rtc|" \
    -e "s|^MONGO_INITDB_ROOT_PASSWORD=.*|MONGO_INITDB_ROOT_PASSWORD=$MONGO_PASSWORD|" \
    -e "s|^GATEWAY_BIND=.*|GATEWAY_BIND=127.0.0.1|" \
    -e "s|^GATEWAY_PORT=.*|GATEWAY_PORT=$FRESH_PORT|" \
    deploy/env.example >"$FRESH/.env"
chmod 600 "$FRESH/.env"
FRESH_COMPOSE=(docker-compose -p "$FRESH_PROJECT"
               --env-file "$FRESH/.env" -f "$ROOT/docker-compose.yml" -f "$ROOT/deploy/compose.test.yml")
step "an operator's first start: deploy/env.example with its secrets only (gateway on 127.0.0.1:$FRESH_PORT)"
if ! "${FRESH_COMPOSE[@]}" up -d --build >"$RUN/fresh-up.log" 2>&1; then
    tail -n 40 "$RUN/fresh-up.log"
    fail "docker-compose up (env.example)"
fi
export COMPOSE_CMD="${FRESH_COMPOSE[*]}"
if ! "$PY" deploy/compose_check.py wait --gateway "http://127.0.0.1:$FRESH_PORT" --replicas 1 \
    || ! JWT_SECRET=$JWT_SECRET "$PY" deploy/compose_check.py fresh \
        --gateway "http://127.0.0.1:$FRESH_PORT" --env-file "$FRESH/.env"; then
    "${FRESH_COMPOSE[@]}" ps || true
    "${FRESH_COMPOSE[@]}" logs --tail 30 2>&1 | tail -n 80 || true
    fail "an operator's first start"
fi
fresh_down
FRESH_COMPOSE=()

step "docker-compose up -d --build --scale signal-service=$REPLICAS (gateway on 127.0.0.1:$GATEWAY_PORT)"
if ! "${COMPOSE[@]}" up -d --build --scale "signal-service=$REPLICAS" >"$RUN/up.log" 2>&1; then
    tail -n 40 "$RUN/up.log"
    "${COMPOSE[@]}" logs --tail 30 2>&1 | tail -n 80 || true
    fail "docker-compose up"
fi
grep -E "^(Creating|Starting|Successfully (built|tagged))" "$RUN/up.log" | sed 's/^/    /' || true

step "waiting for the gateway and every replica"
export COMPOSE_CMD="${COMPOSE[*]}"
if ! "$PY" deploy/compose_check.py wait --gateway "http://127.0.0.1:$GATEWAY_PORT" \
        --replicas "$REPLICAS"; then
    "${COMPOSE[@]}" ps || true
    "${COMPOSE[@]}" logs --tail 30 2>&1 | tail -n 80 || true
    fail "the stack did not become ready"
fi

# --- 5. the checks ----------------------------------------------------------------------------
# What the checks know of the stack's secrets (to use them, and to look for them where they must
# not be: logs, command lines, the containers' environment).
export REDIS_PASSWORD MONGO_PASSWORD TURN_SECRET ADMIN_TOKEN JWT_PRIVATE_KEY SECRETS_AS_FILES=1

step "hardening and networks of every container"
"$PY" deploy/compose_check.py hardening --project "$PROJECT" --replicas "$REPLICAS" \
    || fail "hardening"

step "checks through the gateway"
"$PY" deploy/compose_check.py run \
    --gateway "http://127.0.0.1:$GATEWAY_PORT" --turn "127.0.0.1:$TURN_PORT" \
    --replicas "$REPLICAS" \
    || { "${COMPOSE[@]}" logs --tail 40 gateway signal-service 2>&1 | tail -n 120 || true; fail "checks"; }

step "signal-service scaled 2 -> 4 -> 2 under signaling load"
"$PY" deploy/compose_check.py scale \
    --gateway "http://127.0.0.1:$GATEWAY_PORT" \
    || { "${COMPOSE[@]}" logs --tail 40 gateway signal-service 2>&1 | tail -n 120 || true; fail "scale"; }

if [ "${COMPOSE_ROLLING:-1}" != 0 ]; then
    step "rolling restart of every service, one replica at a time, under load"
    "$PY" deploy/compose_check.py rolling \
        --gateway "http://127.0.0.1:$GATEWAY_PORT" \
        || { "${COMPOSE[@]}" logs --tail 40 gateway 2>&1 | tail -n 60 || true; fail "rolling"; }
fi
