# otel-bridge: the OTLP receiver (`otel-bridge serve`) and its CLI, as a container image.
#
#   docker build -t otel-bridge .                                              # receiver + CLI
#   docker build -t otel-bridge-demo --build-arg EXTRAS=server,instrumentation,demo .   # + `otel-bridge demo`
#
# EXTRAS are the pyproject.toml extras to install: `server` is the receiver, the migrations and the
# database tooling; `otel-bridge demo` also needs `instrumentation` (the example app's OTel SDK) and
# `demo` (Starlette, uvicorn, httpx). The image never starts an embedded PostgreSQL in practice:
# set OTEL_BRIDGE_DATABASE_URL (docker-compose.yml does).

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: install the package and its dependencies into a virtualenv ------------------------
FROM ${PYTHON_IMAGE} AS build
ARG EXTRAS=server
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# A current pip first (as `make install` does): the OpenTelemetry contrib instrumentations pin
# each other exactly, and older resolvers give up on the server,instrumentation,demo set.
RUN python -m venv /opt/otel-bridge \
 && /opt/otel-bridge/bin/pip install --upgrade pip
WORKDIR /src
# Only what the package is built from (.dockerignore keeps everything else out of the context).
COPY pyproject.toml README.md ./
COPY otel_bridge/ otel_bridge/
COPY exporters/ exporters/
COPY instrumentation/ instrumentation/
COPY migrations/ migrations/
RUN /opt/otel-bridge/bin/pip install ".[${EXTRAS}]" \
 && /opt/otel-bridge/bin/pip check

# --- runtime -------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="otel-bridge" \
      org.opencontainers.image.description="OpenTelemetry (OTLP) receiver writing user analytics, APM and crash rows to PostgreSQL" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed, non-root uid/gid; its home is the data directory (IP hash key when
# OTEL_BRIDGE_IP_HASH_KEY is unset, demo logs). Mount a volume there to keep it.
RUN groupadd --system --gid 10001 otel-bridge \
 && useradd --system --uid 10001 --gid otel-bridge --home-dir /var/lib/otel-bridge \
            --no-log-init --shell /usr/sbin/nologin otel-bridge \
 && install -d -o otel-bridge -g otel-bridge -m 0750 /var/lib/otel-bridge

COPY --from=build /opt/otel-bridge /opt/otel-bridge

# PYTHONSAFEPATH: never import from the working directory (no shadowing of the installed package);
# PYTHONDONTWRITEBYTECODE: the installed tree stays read-only for the runtime user.
ENV PATH=/opt/otel-bridge/bin:$PATH \
    PYTHONSAFEPATH=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/var/lib/otel-bridge \
    OTEL_BRIDGE_DATA_DIR=/var/lib/otel-bridge

USER 10001:10001
WORKDIR /var/lib/otel-bridge

# 4317: OTLP/gRPC (+ grpc.health.v1). 4318: OTLP/HTTP and GET /otel-bridge.js.
EXPOSE 4317 4318

# Healthy once the gRPC receiver answers SERVING on the standard health service (it is set after
# the migrations ran and the pool is up; it turns NOT_SERVING while draining on SIGTERM). The
# start period covers the migrations `serve` applies on start.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import sys, grpc; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; s = g.HealthStub(grpc.insecure_channel('127.0.0.1:4317')).Check(h.HealthCheckRequest(), timeout=3).status; sys.exit(0 if s == h.HealthCheckResponse.SERVING else 1)"]

# SIGTERM: stop accepting, finish and acknowledge the exports in flight, close the pool.
STOPSIGNAL SIGTERM
CMD ["otel-bridge", "serve", "--grpc-listen", "0.0.0.0:4317", "--http-listen", "0.0.0.0:4318"]
