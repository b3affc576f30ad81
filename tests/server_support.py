"""Helpers for the server tests: keys, tiny input images, an in-process server, a `serve` subprocess."""

from __future__ import annotations

import base64
import io
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
from PIL import Image

from fakes.server import FakeServer, Response
from packloader import ROOT, submodule

sys.path.insert(0, str(ROOT / "benchmarks"))  # the stand-in engine and the load driver
from server_load import ServeProcess, free_port  # noqa: E402
from server_standin import StandIn  # noqa: E402

server_config = submodule("pipelines.server.config")
server_auth = submodule("pipelines.server.auth")
runtime = submodule("pipelines.server.runtime")

KEYS = {"alice": "alice-key-0123456789abcdef", "bob": "bob-key-0123456789abcdef00"}
ALICE = {"Authorization": f"Key {KEYS['alice']}"}
BOB = {"Authorization": f"Bearer {KEYS['bob']}"}
DEV = "fal-ai/flux-1/dev/redux"
SCHNELL = "fal-ai/flux-1/schnell/redux"
__all__ = ["StandIn", "ServeProcess", "free_port"]


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


@contextmanager
def serve_process(args: list[str], env: dict[str, str], log_path: Path):
    server = ServeProcess(args, env, log_path).start()
    try:
        yield server
    finally:
        server.stop()


def wait_for_workers(log_path: Path, count: int, timeout: float = 120.0) -> None:
    """Until `count` worker processes logged that they are ready (they import torch: seconds each)."""
    deadline = time.monotonic() + timeout
    while log_path.read_text(errors="replace").count(" ready on ") < count:
        assert time.monotonic() < deadline, f"{count} workers not ready:\n{log_path.read_text()[-2000:]}"
        time.sleep(0.1)


class Receiver:
    """A webhook receiver on 127.0.0.1 that answers with the given statuses in turn (the last one repeats)."""

    def __init__(self, *statuses: int):
        self.statuses, self.hits, self.changed = list(statuses) or [200], [], threading.Condition()
        self.server = FakeServer(self._answer).start()
        self.url = self.server.url + "/hook?token=abc"
        self.host = self.server.url.split("//")[1]

    def _answer(self, hit):
        with self.changed:
            self.hits.append(hit)
            status = self.statuses[min(len(self.hits), len(self.statuses)) - 1]
            self.changed.notify_all()
        return Response(status, {"ok": status < 300})

    def wait_for(self, count: int, timeout: float = 30.0) -> list:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.hits) >= count, timeout), f"{len(self.hits)} hits"
            return list(self.hits)

    def stop(self):
        self.server.stop()


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (serve's workers), read from /proc."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            if f"\nPPid:\t{pid}\n" in status.read_text():
                found.append(int(status.parent.name))
        except OSError:
            continue  # a process that ended meanwhile
    return found
