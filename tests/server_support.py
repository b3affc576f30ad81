"""Helpers for the server tests: keys, tiny input images, an in-process server, a `serve` subprocess."""

from __future__ import annotations

import base64
import io
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
from PIL import Image

from packloader import ROOT, submodule

sys.path.insert(0, str(ROOT / "benchmarks"))
from server_standin import StandIn  # noqa: E402

server_config = submodule("pipelines.server.config")
server_auth = submodule("pipelines.server.auth")
runtime = submodule("pipelines.server.runtime")

KEYS = {"alice": "alice-key-0123456789abcdef", "bob": "bob-key-0123456789abcdef00"}
ALICE = {"Authorization": f"Key {KEYS['alice']}"}
BOB = {"Authorization": f"Bearer {KEYS['bob']}"}
DEV = "fal-ai/flux-1/dev/redux"
SCHNELL = "fal-ai/flux-1/schnell/redux"
__all__ = ["StandIn"]


def data_uri(color=(200, 30, 30), size=(16, 16), fmt="PNG") -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buffer.getvalue()).decode()


def local_server(tmp_path: Path, engines: list, **config) -> "runtime.LocalServer":
    settings = server_config.ServerConfig(state_dir=str(tmp_path / "state"), **config)
    return runtime.LocalServer(settings, server_auth.ApiKeys(KEYS), engines)


def wait_done(client: httpx.Client, status_url: str, headers: dict, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        reply = client.get(status_url, params={"logs": "1"}, headers=headers)
        if reply.status_code == 200:
            return reply.json()
        assert reply.status_code == 202, reply.text
        assert time.monotonic() < deadline, f"not completed within {timeout} s: {reply.json()}"
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServeProcess:
    """`python -m pipelines serve ...` in its own process group, as a user would start it."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [sys.executable, "-m", "pipelines", "serve", "--port", str(self.port), *args]
        self.env = dict(os.environ, **env)
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> "ServeProcess":
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.command, cwd=ROOT, env=self.env, stdout=log, stderr=log,
                                        start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"serve exited early:\n{self.log_path.read_text()[-3000:]}"
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"serve did not come up:\n{self.log_path.read_text()[-3000:]}")

    def kill9(self) -> None:
        """kill -9 of the serve process only; its workers must follow by themselves."""
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@contextmanager
def serve_process(args: list[str], env: dict[str, str], log_path: Path):
    server = ServeProcess(args, env, log_path).start()
    try:
        yield server
    finally:
        server.stop()
