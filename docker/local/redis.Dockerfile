# Redis from Debian's package, for running docker-compose.yml where the hub's redis image is out of reach
# (REDIS_IMAGE). The compose service passes its own command; as on the hub image, any interface is served.
ARG BASE_IMAGE=localhost/debian-base:bookworm
FROM ${BASE_IMAGE}
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/*
# the package's own user; its uid is assigned when the package installs
# hadolint ignore=DL3066
USER redis
WORKDIR /var/lib/redis
EXPOSE 6379
HEALTHCHECK --interval=5s --timeout=3s --retries=10 CMD ["redis-cli", "ping"]
CMD ["redis-server", "--protected-mode", "no"]
