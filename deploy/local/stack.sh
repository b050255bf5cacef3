#!/usr/bin/env bash
# The local stack, embedded defaults: redis, coturn, ice-service and the nginx gateway on
# http://127.0.0.1:8080, run by honcho from a Procfile generated into the run folder.
#   stack.sh bootstrap   install what is missing (apt packages, uv, the .venv)
#   stack.sh run         foreground; Ctrl-C stops everything
#   stack.sh up          background; returns once every service is ready
#   stack.sh down        stops what `up` started
# MONITORING=1 (make run MONITORING=1): also a Prometheus on 127.0.0.1:${RTC_PROMETHEUS_PORT:-9390}
# scraping the services and evaluating deploy/prometheus/alerts.yml.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
RUN_DIR=${RTC_RUN_DIR:-$ROOT/.run}
mkdir -p "$RUN_DIR"
RUN_DIR=$(cd "$RUN_DIR" && pwd)
export RTC_RUN_DIR=$RUN_DIR
VENV=$ROOT/.venv
PIDFILE=$RUN_DIR/honcho.pid
GATEWAY_PORT=${RTC_GATEWAY_PORT:-8080}
# Not 9090: Debian's own prometheus package starts a system Prometheus there.
MONITORING=${MONITORING:-}
case "$MONITORING" in 1 | true | yes) MONITORING=1 ;; *) MONITORING= ;; esac

say() { printf '==> %s\n' "$*"; }

bootstrap() {
    local missing=()
    command -v nginx >/dev/null || missing+=(nginx)
    command -v redis-server >/dev/null || missing+=(redis-server)
    command -v turnserver >/dev/null || missing+=(coturn)
    [ -z "$MONITORING" ] || command -v prometheus >/dev/null || missing+=(prometheus)
    if ((${#missing[@]})); then
        say "installing ${missing[*]} (apt)"
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo=sudo
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    if ! command -v uv >/dev/null; then
        say "installing uv (pip)"
        python3 -m pip install -q uv
    fi
    if [ ! -x "$VENV/bin/rtcctl" ] || [ uv.lock -nt "$VENV/pyvenv.cfg" ]; then
        say "creating .venv (uv sync)"
        uv sync --all-packages --frozen -q
        touch "$VENV/pyvenv.cfg"
    fi
}

is_running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

start_background() {
    if is_running; then
        echo "the local stack is already running (pid $(cat "$PIDFILE")); 'make down' stops it" >&2
        exit 1
    fi
    "$VENV/bin/rtcctl" local prepare ${MONITORING:+--monitoring} >/dev/null
    # setsid: honcho leads its own session, so `down` can stop it without touching our shell.
    setsid "$VENV/bin/honcho" --no-colour -d "$ROOT" -e "$RUN_DIR/env" -f "$RUN_DIR/Procfile" start \
        >>"$RUN_DIR/logs/stack.log" 2>&1 < /dev/null &
    echo $! >"$PIDFILE"
}

wait_and_seed() {
    say "waiting for the services"
    if ! "$VENV/bin/rtcctl" local wait; then
        echo "see $RUN_DIR/logs/ (stack.log and one file per service)" >&2
        return 1
    fi
    "$VENV/bin/rtcctl" flags enable rtc.ice --if-missing
}

banner() {
    cat <<MSG

RTC backplane is up: http://127.0.0.1:$GATEWAY_PORT
  token:  TOKEN=\$(.venv/bin/rtcctl token 0xabc)
  ICE:    curl -H "Authorization: Bearer \$TOKEN" http://127.0.0.1:$GATEWAY_PORT/api/v1/rtc/ice
  logs:   $RUN_DIR/logs/
MSG
    if [ -n "$MONITORING" ]; then
        echo "  prometheus: http://127.0.0.1:${RTC_PROMETHEUS_PORT:-9390} (alerts: /alerts)"
    fi
}

stop() {
    if ! is_running; then
        rm -f "$PIDFILE"
        echo "the local stack is not running"
        return 0
    fi
    local pid
    pid=$(cat "$PIDFILE")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$PIDFILE"
    say "stopped"
}

case "${1:-}" in
    bootstrap) bootstrap ;;
    up)
        bootstrap
        start_background
        if ! wait_and_seed; then stop; exit 1; fi
        banner
        echo "  stop:   make down"
        ;;
    run)
        bootstrap
        start_background
        trap 'echo; stop; exit 0' INT TERM
        if ! wait_and_seed; then stop; exit 1; fi
        banner
        echo "  stop:   Ctrl-C"
        echo
        tail -n +1 -F "$RUN_DIR/logs/stack.log" &
        tail_pid=$!
        trap 'kill $tail_pid 2>/dev/null; echo; stop; exit 0' INT TERM
        while is_running; do sleep 1; done
        kill $tail_pid 2>/dev/null || true
        echo "the stack stopped by itself; see $RUN_DIR/logs/" >&2
        exit 1
        ;;
    down) stop ;;
    *) echo "usage: $0 bootstrap|run|up|down" >&2; exit 2 ;;
esac
