#!/usr/bin/env bash
# Writes a containers.conf for rootful podman on hosts like the CI machines and prints its path; point
# CONTAINERS_CONF at it. Why each line:
# - runc: crun fails there (setrlimit RLIMIT_NPROC, then "cgroups in hybrid mode not supported");
# - ulimits no higher than this process's own: podman's defaults (nofile 1048576) need CAP_SYS_RESOURCE,
#   which the host does not grant, and nproc no higher than pid_max (what podman's conmon runs with);
# - netavark: its aardvark-dns resolves service names (api, redis) on compose networks.
set -euo pipefail
out=${1:-${TMPDIR:-/tmp}/pcgen-containers-$(id -u).conf}
nofile=$(ulimit -Hn)
nproc=$(ulimit -Hu)
pid_max=$(cat /proc/sys/kernel/pid_max 2>/dev/null || echo 32768)
[ "$nofile" = unlimited ] && nofile=1048576
{ [ "$nproc" = unlimited ] || [ "$nproc" -gt "$pid_max" ]; } && nproc=$pid_max
cat >"$out.tmp" <<CONF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]

[network]
network_backend = "netavark"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
CONF
mv "$out.tmp" "$out"
echo "$out"
