"""Private-memory probes for load tests and benchmarks (Linux): read, sample and cap a process's private RAM.

- `status()`: /proc/self/status in bytes (RssAnon: private resident memory; RssFile: file-backed pages the kernel
  can drop; VmData: the private writable mappings RLIMIT_DATA counts; VmHWM: peak resident, both kinds).
- `PeakSampler`: a thread sampling RssAnon and VmData every few milliseconds; the peaks above the baseline.
- `cap_private_memory(extra)`: RLIMIT_DATA at the current VmData plus `extra` bytes: an allocation past it fails
  (since Linux 4.7 the limit counts private anonymous and private writable file mappings).
- `ForkServer`: one process imports the heavy modules once, then forks a fresh child for each measurement, so a
  dozen measured loads do not each pay the imports (about 10 s for torch + diffusers on 2 busy cores).

Imported by path (tests/test_load_limits.py, benchmarks/load_memory.py); no dependency beyond the standard library.
"""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import select
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

FIELDS = ("RssAnon", "RssFile", "VmData", "VmHWM", "VmRSS")


def status(pid: int | str = "self") -> dict[str, int]:
    """The memory fields of /proc/PID/status, in bytes."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in FIELDS:
                values[name] = int(rest.split()[0]) * 1024
    return values


class PeakSampler(threading.Thread):
    """Samples this process's RssAnon and VmData until stopped. Start it before taking the baseline: its own
    thread stack is private memory too."""

    def __init__(self, interval_s: float = 0.005):
        super().__init__(daemon=True)
        self.interval_s, self._done = interval_s, threading.Event()
        self.peak = status()
        self.start()

    def run(self) -> None:
        while not self._done.is_set():
            self._sample()
            self._done.wait(self.interval_s)

    def _sample(self) -> None:
        now = status()
        self.peak = {k: max(v, self.peak.get(k, 0)) for k, v in now.items()}

    def reset(self) -> dict[str, int]:
        """Start the peaks again from now; returns the baseline."""
        self.peak = status()
        return dict(self.peak)

    def stop(self) -> dict[str, int]:
        self._done.set()
        self.join()
        self._sample()
        return self.peak


def cap_private_memory(extra_bytes: int) -> int:
    """RLIMIT_DATA (soft) at the VmData now plus `extra_bytes`; returns that limit."""
    limit = status()["VmData"] + int(extra_bytes)
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    return limit


def load_by_path(path: str | Path):
    """A module from its file, cached under its stem (tests/ and benchmarks/ are not packages)."""
    path = Path(path).resolve()
    name = path.stem
    module = sys.modules.get(name)
    if module is not None and Path(getattr(module, "__file__", "")).resolve() == path:
        return module
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class ForkServer:
    """Runs `function(**kwargs)` of a module file in a fresh child forked from a process that already imported
    `preload` (module files), and returns its JSON-able result. The server never runs torch code itself, so the
    children start clean; each child's limits and memory are its own.

    A child that raises returns {"error": traceback}; one killed (by a signal, or the kernel) returns
    {"error": "exit status ..."}."""

    def __init__(self, preload: list[str | Path], env: dict | None = None):
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", *map(str, preload)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env={**os.environ, **(env or {})})
        ready = self._reply(600)
        if ready.get("ready") is not True:
            raise RuntimeError(f"fork server did not start: {ready}")

    def _reply(self, timeout_s: float) -> dict:
        readable, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        line = self.proc.stdout.readline() if readable else ""
        if not line:
            self.close()
            raise TimeoutError(f"fork server gave no answer within {timeout_s:.0f} s")
        return json.loads(line)

    def run(self, module: str | Path, function: str, timeout_s: float = 600, **kwargs) -> dict:
        with tempfile.NamedTemporaryFile("r", suffix=".json") as result:
            request = {"module": str(module), "function": function, "kwargs": kwargs, "result": result.name}
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            reply = self._reply(timeout_s)
            text = Path(result.name).read_text()
        if reply["status"] != 0 and not text:
            return {"error": f"exit status {reply['status']} (killed by signal {reply['status'] & 0x7f})"
                             if reply["status"] & 0x7f else f"exit status {reply['status'] >> 8}"}
        return json.loads(text)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _serve(preload: list[str]) -> None:
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # the children's prints go to stderr, never into the replies
    for path in preload:
        load_by_path(path)
    replies.write(json.dumps({"ready": True}) + "\n")
    replies.flush()
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request)
        _, code = os.waitpid(pid, 0)
        replies.write(json.dumps({"status": code}) + "\n")
        replies.flush()


def _child(request: dict) -> None:
    code = 0
    try:
        function = getattr(load_by_path(request["module"]), request["function"])
        result = function(**request["kwargs"])
    except BaseException:
        result, code = {"error": traceback.format_exc(limit=-8)}, 1
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    resource.setrlimit(resource.RLIMIT_DATA, (hard, hard))  # room to report, whatever the function capped
    try:
        Path(request["result"]).write_text(json.dumps(result))
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__" and sys.argv[1:2] == ["--serve"]:
    _serve(sys.argv[2:])
elif __name__ == "__main__":
    raise SystemExit(f"usage: import {Path(__file__).name} (it is a helper module, not a benchmark)")
