# The image of one Python service (ice, signal or relay). Build from the repository root (the uv
# workspace is the build context), naming the service and its port:
#   docker build -f deploy/service.Dockerfile --build-arg SERVICE=ice --build-arg PORT=8101 \
#       -t rtc/ice-service .
# SERVICE: the workspace member services/$SERVICE (package $SERVICE-service, module
# ${SERVICE}_service); PORT: where it listens. docker-compose.yml passes both.
# BASE_IMAGE: any Debian-like image with Python 3.11 as `python` (the tests swap in a local one).
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG UV_VERSION=0.13.9
ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_NO_CACHE=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
RUN python -m pip install "uv==${UV_VERSION}"
# Declared after the line above, so that its layer is shared by every service.
ARG SERVICE
RUN case "$SERVICE" in ice | signal | relay) ;; \
        *) echo "--build-arg SERVICE must be ice, signal or relay, got: '$SERVICE'" >&2; exit 1 ;; \
    esac
WORKDIR /src
# Dependency layer: the lock and every service's pyproject.toml (uv checks the workspace),
# nothing else, so a change of source code does not reinstall the dependencies.
COPY pyproject.toml uv.lock ./
COPY services/common/pyproject.toml services/common/
COPY services/ice/pyproject.toml services/ice/
COPY services/signal/pyproject.toml services/signal/
COPY services/relay/pyproject.toml services/relay/
COPY tools/rtcctl/pyproject.toml tools/rtcctl/
RUN uv sync --frozen --no-dev --package "${SERVICE}-service" --no-install-workspace
# The workspace packages this service needs, installed as wheels (not editable) into the venv.
COPY services/common/rtc_common services/common/rtc_common
COPY services/${SERVICE}/${SERVICE}_service services/${SERVICE}/${SERVICE}_service
RUN uv sync --frozen --no-dev --package "${SERVICE}-service" --no-editable

FROM ${BASE_IMAGE}
ARG SERVICE
ARG PORT
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOST=0.0.0.0 \
    PORT=${PORT} \
    RTC_SERVICE_MODULE=${SERVICE}_service
RUN test -n "$PORT" || { echo "--build-arg PORT is required" >&2; exit 1; }
RUN useradd --system --user-group --uid 10001 --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin rtc
COPY --from=build /app/.venv /app/.venv
COPY deploy/healthcheck.py /app/healthcheck.py
# The one-shot `directory-init` service of docker-compose.yml runs this with the ice image.
COPY deploy/directory_init.py /app/directory_init.py
WORKDIR /app
USER rtc
EXPOSE ${PORT}
# SIGTERM is a graceful stop: requests in flight get the service's shutdown timeout, then its
# own cleanup runs (background tasks, queued pushes; a stop still running after a while is
# logged). The orchestrator's grace period (stop_grace_period in docker-compose.yml) must cover
# both. Run it under an init (`init: true` in compose, `docker run --init`) so the signal
# reaches python at once.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=5s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "/app/healthcheck.py"]
# exec: python takes the shell's place (the signal goes to it).
CMD ["sh", "-c", "exec python -m \"$RTC_SERVICE_MODULE\""]
