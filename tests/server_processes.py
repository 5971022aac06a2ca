"""Real processes for the service tests: `pcgen serve` (forked from a warm template, or cold) and a throwaway
redis-server, each on a free loopback port."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from server_template import ForkedProcess, template

ROOT = Path(__file__).resolve().parents[1]  # the repository: servers import its code
MAX_NEW_TOKENS = 12  # every test server caps max_new_tokens here: a few seconds per test on 2 cores


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env() -> dict[str, str]:
    """A test server's environment before its own PCGEN_* settings: offline, CPU."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "PCGEN_DEVICE": "cpu"}  # fmt: skip


class Server:
    """`python -m pcgen.cli serve` on a free loopback port, configured through PCGEN_* variables."""

    def __init__(self, log_dir: Path, env: dict[str, str], name: str = "server") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_dir) / f"{name}-{self.port}.log"
        self.env = {**base_env(), **env}
        self.proc: subprocess.Popen | ForkedProcess | None = None

    def start(self, timeout: float = 420.0) -> Server:  # seconds on a quiet machine, minutes on a crowded one
        args = ["serve", "--host", "127.0.0.1", "--port", str(self.port)]
        warm = template(base_env())
        if warm is not None and not warm.wants_cold_start(self.env):
            self.log_path.write_text("")
            self.proc = warm.serve(args, self.env, self.log_path)  # forked from the warm template
        else:
            log = open(self.log_path, "w")  # noqa: SIM115 - closed with the process
            cmd = [sys.executable, "-m", "pcgen.cli", *args]
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                r = httpx.get(self.url + "/health/ready", timeout=2)
                if r.status_code == 200:
                    return self
                if r.json().get("status") == "error":
                    raise RuntimeError(f"server failed to load: {r.text}\n{self.log()}")
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"server not ready after {timeout} s:\n{self.log()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def log(self) -> str:
        try:
            return self.log_path.read_text()[-6000:]
        except OSError:
            return ""

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=120, **kwargs)

    def metrics(self, headers: dict | None = None) -> str:
        r = httpx.get(self.url + "/metrics", headers=headers, timeout=10)
        r.raise_for_status()
        return r.text


class RedisServer:
    """A throwaway redis-server on a free port (no persistence); kill() and start() again on the same port."""

    def __init__(self, log_dir: Path) -> None:
        self.binary = shutil.which("redis-server")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log_dir = Path(log_dir)
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> RedisServer:
        cmd = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--protected-mode", "no", "--dir", str(self.log_dir)]  # fmt: skip
        log = open(self.log_dir / f"redis-{self.port}.log", "a")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ping():
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            time.sleep(0.05)
        raise RuntimeError("redis-server did not answer")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
