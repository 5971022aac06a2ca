#!/usr/bin/env bash
# Builds the images docker-compose.yml runs, with podman and no image registry: a Debian bookworm base made by
# debootstrap (kept as localhost/debian-base:bookworm, built once), then on it
#   localhost/pcgen:local             docker/Dockerfile (CPU torch)        -> API_IMAGE
#   localhost/pcgen-redis:local       docker/local/redis.Dockerfile        -> REDIS_IMAGE
#   localhost/pcgen-prometheus:local  docker/local/prometheus.Dockerfile   -> PROMETHEUS_IMAGE
# (docker/local/podman.env names them for compose). podman's layer cache makes a rebuild after a source change
# take seconds. pip in the pcgen build trusts PIP_CERT (a CA bundle, e.g. a proxy's) and, when PIP_FIND_LINKS
# (or the host pip's find-links) names a wheel directory, installs torch from it (the CPU wheel of the pinned
# version) with PIP_INDEX_URL (or PyPI) for the rest; both are mounted into the build only. Without a wheel
# directory torch comes from the PyTorch CPU index, as for any user. Needs: podman, runc, netavark (and iptables),
# aardvark-dns, debootstrap; run as root.
set -euo pipefail
cd "$(dirname "$0")/../.."
for tool in podman debootstrap iptables; do  # netavark runs iptables for a build's network
  command -v "$tool" >/dev/null || PATH="$PATH:/usr/sbin:/sbin" command -v "$tool" >/dev/null || {
    echo "build-images.sh: $tool not found (Debian: podman runc netavark aardvark-dns iptables debootstrap)" >&2
    exit 1
  }
done
export CONTAINERS_CONF=${CONTAINERS_CONF:-$(docker/local/containers-conf.sh)}
TAG=${TAG:-local}
BASE=localhost/debian-base:bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

SECONDS=0
exec 9>"${TMPDIR:-/tmp}/pcgen-debian-base.lock"
flock 9  # one debootstrap at a time
if ! podman image exists "$BASE"; then
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  debootstrap --variant=minbase bookworm "$root" "$MIRROR" >"$root.log" 2>&1 || { tail -20 "$root.log"; exit 1; }
  tar -C "$root" -c . | podman import - "$BASE" >/dev/null
  rm -rf "$root" "$root.log"
fi
flock -u 9
echo "base image: ${SECONDS}s"

build=(podman build --format docker --build-arg "BASE_IMAGE=$BASE"
       --build-arg "PCGEN_COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)")  # docker format keeps HEALTHCHECK
SECONDS=0
"${build[@]}" -f docker/local/redis.Dockerfile -t "localhost/pcgen-redis:$TAG" docker/local
"${build[@]}" -f docker/local/prometheus.Dockerfile -t "localhost/pcgen-prometheus:$TAG" docker/local
echo "redis and prometheus images: ${SECONDS}s"

# pip's settings as the host has them: the environment, else the host pip's configuration, else the system CA
# bundle (the image's own lacks a proxy's CA)
host_pip() { python3 -m pip config get "$1" 2>/dev/null || true; }
cert=${PIP_CERT:-$(host_pip global.cert)}
[ -z "$cert" ] && cert=/etc/ssl/certs/ca-certificates.crt
wheels=${PIP_FIND_LINKS:-$(host_pip global.find-links)}
pip=()
if [ -f "$cert" ]; then
  pip+=(-v "$cert:/run/pip-ca.crt:ro" --build-arg PIP_CERT=/run/pip-ca.crt)
fi
if [ -n "$wheels" ] && [ -d "$wheels" ]; then
  pip+=(-v "$wheels:/run/wheels:ro" --build-arg PIP_FIND_LINKS=/run/wheels
        --build-arg "TORCH_INDEX=${PIP_INDEX_URL:-https://pypi.org/simple}")
fi
[ -n "${PIP_INDEX_URL:-}" ] && pip+=(--build-arg "PIP_INDEX_URL=$PIP_INDEX_URL")
SECONDS=0
"${build[@]}" "${pip[@]}" -f docker/Dockerfile -t "localhost/pcgen:$TAG" .
echo "pcgen image: ${SECONDS}s"
# the images these tags replaced (their layers stay cached only while a tagged image uses them)
podman image prune -f >/dev/null
