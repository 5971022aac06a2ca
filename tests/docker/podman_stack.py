"""docker-compose.yml run for real with rootful podman and podman-compose: the local images
(docker/local/build-images.sh), a compose project of its own (unique name, free host ports, its own network and
volumes) and a teardown that leaves nothing behind, even after a failure. Used by test_compose_podman.py."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
LOCAL = ROOT / "docker" / "local"
BIN = Path(sys.executable).parent
PROJECT_LABEL = "io.podman.compose.project"


def missing_requirements() -> str | None:
    """Why this machine cannot run the stack with podman, or None when it can."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        return "needs Linux and root (rootful podman; debootstrap builds the base image)"
    for tool in ("podman", "runc", "debootstrap", "tar"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (.ci/run installs podman, runc, netavark, aardvark-dns, debootstrap)"
    if not Path("/usr/lib/podman/netavark").exists() and shutil.which("netavark") is None:
        return "netavark is not installed (service names resolve through its aardvark-dns)"
    if compose_binary() is None:
        return "podman-compose >= 1.2 is not installed (pip install podman-compose, in the dev extra)"
    info = subprocess.run(["podman", "info"], capture_output=True, text=True, timeout=120)
    if info.returncode != 0:
        return f"podman cannot run here: {info.stderr.strip()[-300:]}"
    return None


def compose_binary() -> str | None:
    """podman-compose from this environment (Debian's 1.0.3 lacks profiles and !reset, so it is not used)."""
    path = BIN / "podman-compose"
    return str(path) if path.exists() else None


def run(
    cmd: list[str], env: dict, timeout: float, check: bool = True, **kw: object
) -> subprocess.CompletedProcess:
    """subprocess.run in a session of its own: on timeout the whole group (podman and what it started) is
    killed, not only the direct child."""
    if "stdout" not in kw:
        kw |= {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    with subprocess.Popen(cmd, env=env, text=True, start_new_session=True, **kw) as popen:
        try:
            out, err = popen.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(popen.pid, signal.SIGKILL)
            popen.communicate()
            raise
    proc = subprocess.CompletedProcess(cmd, popen.returncode, out or "", err or "")
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} -> {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


def podman_env(conf_dir: Path) -> dict:
    """The environment of every podman call: CONTAINERS_CONF written by docker/local/containers-conf.sh."""
    conf = subprocess.run([str(LOCAL / "containers-conf.sh"), str(conf_dir / "containers.conf")],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    return {**os.environ, "CONTAINERS_CONF": conf}


def build_images(env: dict, log: Path) -> dict[str, float]:
    """docker/local/build-images.sh (base once, then the three images, cached layers reused); seconds taken."""
    start = time.monotonic()
    with open(log, "w") as out:
        proc = run(
            [str(LOCAL / "build-images.sh")], env, 3000, check=False, stdout=out, stderr=subprocess.STDOUT
        )
    text = log.read_text()
    assert proc.returncode == 0, f"build-images.sh failed:\n{text[-6000:]}"
    times = {line.split(":")[0]: float(line.rsplit(" ", 1)[1].rstrip("s")) for line in text.splitlines()
             if line.endswith("s") and line.split(":")[0] in ("base image", "redis and prometheus images",
                                                                "pcgen image")}  # fmt: skip
    times["total"] = time.monotonic() - start
    return times


def image_names() -> dict[str, str]:
    """API_IMAGE, REDIS_IMAGE, PROMETHEUS_IMAGE from docker/local/podman.env."""
    lines = (LOCAL / "podman.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


class Stack:
    """One compose project: `compose(...)` runs podman-compose on docker-compose.yml + docker/compose.cpu.yml +
    the test's override file with this project's name and environment."""

    def __init__(self, workdir: Path, env: dict, override: dict, variables: dict[str, str]) -> None:
        self.project = f"pcgen-it-{uuid.uuid4().hex[:8]}"
        self.workdir = workdir
        override_file = workdir / "compose.test.yml"
        override_file.write_text(yaml.safe_dump(override))
        self.files = [ROOT / "docker-compose.yml", ROOT / "docker" / "compose.cpu.yml", override_file]
        # only these variables interpolate the compose files: no ./.env of the checkout leaks in
        empty_env = workdir / "empty.env"
        empty_env.write_text("")
        self.env = {**env, **image_names(), **variables}
        self.base = [compose_binary(), "--env-file", str(empty_env), "-p", self.project]
        for f in self.files:
            self.base += ["-f", str(f)]

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        return run([*self.base, *args], self.env, timeout, check)

    def podman(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        return run(["podman", *args], self.env, timeout, check)

    def container(self, service: str) -> str:
        """The container of a service (podman-compose names them PROJECT_SERVICE_1)."""
        return f"{self.project}_{service}_1"

    def inspect(self, service: str) -> dict:
        return json.loads(self.podman("inspect", self.container(service)).stdout)[0]

    def logs(self, service: str, tail: int = 60) -> str:
        proc = self.podman("logs", "--tail", str(tail), self.container(service), check=False)
        return f"--- {service} ---\n{proc.stdout}{proc.stderr}"

    def all_logs(self) -> str:
        return "\n".join(self.logs(s) for s in ("api", "redis", "prometheus"))

    def healthcheck(self, service: str) -> bool:
        """The image's/compose's HEALTHCHECK, run now (podman runs it on a systemd timer; none here)."""
        return self.podman("healthcheck", "run", self.container(service), check=False).returncode == 0

    def leftovers(self) -> dict[str, list[str]]:
        """Containers, volumes and networks of this project that still exist."""
        label = f"label={PROJECT_LABEL}={self.project}"
        found = {
            "containers": self.podman("ps", "-a", "--filter", label, "--format", "{{.Names}}").stdout.split(),
            "volumes": [
                v
                for v in self.podman("volume", "ls", "--format", "{{.Name}}").stdout.split()
                if v.startswith(self.project)
            ],  # fmt: skip
            "networks": [
                n
                for n in self.podman("network", "ls", "--format", "{{.Name}}").stdout.split()
                if n.startswith(self.project)
            ],  # fmt: skip
        }
        return {kind: names for kind, names in found.items() if names}

    def remove_everything(self) -> None:
        """Teardown that works whatever state the test left: compose down -v, then by label and name."""
        self.compose("down", "-v", "-t", "5", timeout=300, check=False)
        rest = self.leftovers()
        if rest.get("containers"):
            self.podman("rm", "-f", "-v", "-t", "0", *rest["containers"], check=False)
        if rest.get("volumes"):
            self.podman("volume", "rm", "-f", *rest["volumes"], check=False)
        if rest.get("networks"):
            self.podman("network", "rm", "-f", *rest["networks"], check=False)
