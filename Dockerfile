# syntax=docker/dockerfile:1
# syncd container image (docs/deployment.md).
#
#   docker build -t syncd:0.1.0 .                                  # core sinks
#   docker build -t syncd:0.1.0 --build-arg SYNCD_EXTRAS=all .     # + redis/nats/mqtt/amqp clients
#   docker run -d --name syncd --env-file syncd.env \
#       -v /etc/syncd/syncd.toml:/etc/syncd/syncd.toml:ro -v syncd-state:/var/lib/syncd syncd:0.1.0
#
# The config must say [daemon] state_dir = "/var/lib/syncd" (the volume). `syncd health`
# (the HEALTHCHECK) asks the daemon on 127.0.0.1 inside the container, so the default
# listen = "127.0.0.1:9108" is enough; set listen = "0.0.0.0:9108" only to publish
# /metrics (docker run -p 127.0.0.1:9108:9108 ...).

# --- stage 1: wheels for syncd and every dependency ------------------------------------
FROM python:3.11-slim AS build
# Extras to bake in: "" (core), "all", or e.g. "redis,nats".
ARG SYNCD_EXTRAS=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml README.md ./
COPY syncd/ syncd/
RUN pip wheel --no-deps -w /wheels . \
 && pip wheel -w /wheels ".${SYNCD_EXTRAS:+[$SYNCD_EXTRAS]}"

# --- stage 2: the runtime, no compiler, no pip cache, no sources ------------------------
FROM python:3.11-slim
ARG SYNCD_EXTRAS=""
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    SYNCD_CONFIG=/etc/syncd/syncd.toml

# The wheels are bind-mounted from stage 1 (BuildKit), so they never become a layer.
# --no-index: only those wheels, built from this tree, so the versions are pinned by stage 1.
# hadolint ignore=DL3013
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels "syncd${SYNCD_EXTRAS:+[$SYNCD_EXTRAS]}" \
 && groupadd --system --gid 10001 syncd \
 && useradd --system --uid 10001 --gid syncd --no-create-home \
        --home-dir /var/lib/syncd --shell /usr/sbin/nologin syncd \
 && install -d -o syncd -g syncd -m 0700 /var/lib/syncd \
 && install -d -o root -g root -m 0755 /etc/syncd

# Created above with the right owner, so a new named volume starts out owned by syncd.
VOLUME /var/lib/syncd
WORKDIR /var/lib/syncd
USER 10001:10001

EXPOSE 9108
STOPSIGNAL SIGTERM
# /healthz answers 200 while the scheduler heartbeat is fresh; start-period covers the
# first database migration.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["syncd", "health"]

# syncd runs as PID 1: it handles SIGTERM itself (clean stop in < 10 s, exit 0) and
# starts no child processes, so no init shim is needed.
ENTRYPOINT ["syncd"]
CMD ["run"]
