"""Load test of the API server (loopback only, bounded in count and time) with the fast engine stand-in.

Starts `python -m pipelines serve --engine benchmarks.server_standin:StandIn`, then CLIENTS threads each
submit their share of JOBS (distinct seeds) over the fal queue protocol, poll every status until
COMPLETED, and fetch each result. Checks: every acknowledged job completes with its own seed (nothing
lost), each ran exactly once (the stand-in's run record), and every job's queue_position only went down.
Prints p50/p99 latency of submit and status requests. With --kill-after N the server is killed with
kill -9 once N jobs have completed and started again on the same state; then "nothing lost" still holds
and runs are counted (a job interrupted mid-run runs again: it may show two starts, never two results).

    .venv/bin/python benchmarks/server_load.py [--jobs 500] [--clients 50] [--workers 2] [--kill-after 200]
    .venv/bin/python benchmarks/server_load.py --sync-waits 100 --clients 50 [--seconds 10]
        # sync starvation: 100 POST /sync requests wait (jobs held by the stand-in's gate) while 50 other
        # clients poll status; prints the status p50/p99 and the load average, then releases the jobs
    .venv/bin/python benchmarks/server_load.py --models-dir ComfyUI/models --gpus 0,1 --jobs 40 --clients 8 \
        --size 1024 --steps 28        # real FLUX on GPUs: end-to-end throughput and latencies
"""

from __future__ import annotations

import argparse
import base64
import collections
import io
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
KEYS = {f"client-group-{n}": f"load-test-key-{n}-0123456789abcdef" for n in range(5)}
MODEL = "fal-ai/flux-1/dev/redux"
RETRY_S = 60.0  # how long a client keeps retrying while the server is down (kill -9 and restart)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServeProcess:
    """`python -m pipelines serve ...` in its own process group, as a user would start it."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path, port: int | None = None,
                 timeout_s: float = 90.0):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [sys.executable, "-m", "pipelines", "serve", "--port", str(self.port), *args]
        self.env = dict(os.environ, **env)
        self.log_path = Path(log_path)
        self.process: subprocess.Popen | None = None
        self.timeout_s = timeout_s

    def start(self, wait: bool = True) -> "ServeProcess":
        """Start it and (wait=True) return once /health answers; wait=False for a --workers-only host."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("this server is already running")
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command, cwd=ROOT, env=self.env, stdout=log, stderr=log,
                                            start_new_session=True)
        if not wait:
            return self
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited early:\n{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"serve did not come up within {self.timeout_s} s:\n{self.log_path.read_text()[-3000:]}")

    def kill9(self) -> None:
        """kill -9 of the serve process only: its workers must go down by themselves."""
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.process.wait(timeout=60)  # serve drains: its running jobs get --drain-timeout (25 s) to finish
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> "ServeProcess":
        running = self.process is not None and self.process.poll() is None
        return self if running else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def image_uri() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (90, 60, 30)).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@dataclass
class LoadResult:
    jobs: int
    acknowledged: int = 0
    completed: dict = field(default_factory=dict)  # seed -> request id
    errors: list = field(default_factory=list)
    positions_rose: list = field(default_factory=list)
    submit_s: list = field(default_factory=list)
    status_s: list = field(default_factory=list)
    wall_s: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def lost(self) -> int:
        return self.jobs - len(self.completed)


def _call(http: httpx.Client, method: str, url: str, timings: list | None, **kwargs) -> httpx.Response:
    """One request, retried while the server is down (connection refused during a restart)."""
    deadline = time.monotonic() + RETRY_S
    while True:
        started = time.perf_counter()
        try:
            reply = http.request(method, url, **kwargs)
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
            continue
        if timings is not None:
            timings.append(time.perf_counter() - started)
        if reply.status_code == 429:
            time.sleep(float(reply.headers.get("Retry-After", "1")))
            continue
        return reply


def _client(base_url: str, key: str, seeds: list[int], result: LoadResult, poll_s: float, job: dict) -> None:
    headers, uri = {"Authorization": f"Key {key}"}, image_uri()
    submit_s, status_s, pending = [], [], {}
    with httpx.Client(timeout=30) as http:
        for seed in seeds:
            reply = _call(http, "POST", f"{base_url}/{MODEL}", submit_s, headers=headers,
                          json={"image_url": uri, "seed": seed, **job})
            if reply.status_code != 200:
                result.errors.append(f"submit {seed}: HTTP {reply.status_code} {reply.text[:200]}")
                continue
            body = reply.json()
            pending[seed] = (body, [body["queue_position"]])
        with result.lock:
            result.acknowledged += len(pending)
        while pending:
            for seed, (body, positions) in list(pending.items()):
                reply = _call(http, "GET", body["status_url"], status_s, headers=headers)
                status = reply.json()
                if status.get("status") == "IN_QUEUE":
                    positions.append(status["queue_position"])
                if reply.status_code == 202:
                    continue
                del pending[seed]
                _collect(http, seed, body, status, positions, headers, result)
            time.sleep(poll_s)
    with result.lock:
        result.submit_s += submit_s
        result.status_s += status_s


def _collect(http, seed, body, status, positions, headers, result: LoadResult) -> None:
    if any(later > earlier for earlier, later in zip(positions, positions[1:])):
        result.positions_rose.append((seed, positions))
    if status.get("status") != "COMPLETED" or status.get("error"):
        result.errors.append(f"job {seed}: {status.get('status')} {status.get('error')}")
        return
    output = _call(http, "GET", body["response_url"], None, headers=headers).json()
    if output.get("seed") != seed or not output.get("images"):
        result.errors.append(f"job {seed}: wrong result {str(output)[:200]}")
        return
    with result.lock:
        result.completed[seed] = body["request_id"]


SMALL_JOB = {"image_size": {"width": 256, "height": 256}, "num_inference_steps": 1}


def run_load(base_url: str, jobs: int, clients: int, poll_s: float = 0.1, during=None,
             job: dict | None = None) -> LoadResult:
    """Run the clients to the end; `during(result)` runs alongside them (e.g. a kill -9 and restart)."""
    result = LoadResult(jobs)
    keys = list(KEYS.values())
    threads = [threading.Thread(target=_client, args=(base_url, keys[n % len(keys)],
                                                      list(range(n, jobs, clients)), result, poll_s,
                                                      job or SMALL_JOB))
               for n in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    if during is not None:
        during(result)
    for thread in threads:
        thread.join()
    result.wall_s = time.perf_counter() - started
    return result


def run_counts(record: Path) -> tuple[collections.Counter, collections.Counter, collections.Counter]:
    """How often each seed started and ended, and how many runs each worker process ended."""
    starts, ends, by_worker = collections.Counter(), collections.Counter(), collections.Counter()
    if record.exists():
        for line in record.read_text().splitlines():
            what, seed, pid = line.split()
            (starts if what == "start" else ends)[int(seed)] += 1
            by_worker[pid] += what == "end"
    return starts, ends, by_worker


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def report(result: LoadResult, starts, ends, by_worker) -> str:
    ms = lambda values, q: percentile(values, q) * 1000  # noqa: E731
    runs = [] if not by_worker else [
        f"runs: ended exactly once {sum(1 for s in result.completed if ends[s] == 1)}, ended twice or more "
        f"{sum(1 for s in result.completed if ends[s] > 1)}, restarted after a crash "
        f"{sum(1 for s in result.completed if starts[s] > 1)}",
        f"runs per worker process: {sorted(by_worker.values(), reverse=True)}"]
    return "\n".join([
        f"jobs {result.jobs}: acknowledged {result.acknowledged}, completed {len(result.completed)}, "
        f"lost {result.lost()}, errors {len(result.errors)}",
        *runs,
        f"queue positions that went up: {len(result.positions_rose)}",
        f"submit latency: p50 {ms(result.submit_s, 0.5):.1f} ms, p99 {ms(result.submit_s, 0.99):.1f} ms "
        f"({len(result.submit_s)} requests)",
        f"status latency: p50 {ms(result.status_s, 0.5):.1f} ms, p99 {ms(result.status_s, 0.99):.1f} ms "
        f"({len(result.status_s)} requests)",
        f"wall {result.wall_s:.1f} s, {len(result.completed) / result.wall_s:.1f} jobs/s",
    ])


def serve_args(workers: int, queue_url: str | None = None) -> list[str]:
    args = ["--engine", "benchmarks.server_standin:StandIn", "--gpus", ",".join(["cpu"] * workers) or "none",
            "--max-jobs-per-key", "100000", "--lease", "5"]
    return args + (["--queue", queue_url] if queue_url else [])


def serve_env(record: Path, job_seconds: float) -> dict[str, str]:
    return {"REDUX_SERVER_KEYS": ",".join(f"{name}={key}" for name, key in KEYS.items()),
            "REDUX_STANDIN_RECORD": str(record), "REDUX_STANDIN_SECONDS": str(job_seconds)}


def kill_and_restart(server: ServeProcess, after_completed: int, log=print, before_kill=None):
    """A `during` hook: kill -9 once enough jobs completed, then start the server again on the same port."""
    def during(result: LoadResult) -> None:
        while len(result.completed) < after_completed:
            time.sleep(0.02)
        if before_kill is not None:
            before_kill()
        server.kill9()
        log(f"killed -9 after {len(result.completed)} completed jobs")
        server.start()
        log("restarted")
    return during


def _sync_requests(base_url: str, count: int, replies: list, job: dict) -> threading.Thread:
    """`count` POST /sync requests at once (one asyncio loop: a waiting request costs the client no thread)."""
    import asyncio

    async def one(http, n: int):
        key = list(KEYS.values())[n % len(KEYS)]
        reply = await http.post(f"{base_url}/sync/{MODEL}", headers={"Authorization": f"Key {key}"},
                                json={"image_url": image_uri(), "seed": 10_000 + n, **job})
        replies.append((n, reply.status_code, reply.json().get("seed") if reply.status_code == 200 else None))

    async def everything():
        async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=count + 10)) as http:
            await asyncio.gather(*(one(http, n) for n in range(count)))
    thread = threading.Thread(target=lambda: asyncio.run(everything()), daemon=True)
    thread.start()
    return thread


def _unfinished_jobs(http: httpx.Client, base_url: str) -> int:
    """How many unfinished jobs the server has: a probe's queue_position (then the probe is cancelled)."""
    headers = {"Authorization": f"Key {next(iter(KEYS.values()))}"}
    body = _call(http, "POST", f"{base_url}/{MODEL}", None, headers=headers, json={"image_url": image_uri()}).json()
    http.put(body["cancel_url"], headers=headers)
    return body["queue_position"]


def run_sync_starvation(base_url: str, gate: Path, sync: int, pollers: int, seconds: float, job: dict) -> int:
    """`pollers` clients each submit a job and poll its status while `sync` sync requests wait; all jobs are
    held by the gate until the measurement ends. Prints status latency and the load average."""
    status_s, replies, lock = [], [], threading.Lock()
    stop = threading.Event()

    def poller(n: int, ready: threading.Barrier) -> None:
        headers = {"Authorization": f"Key {list(KEYS.values())[n % len(KEYS)]}"}
        with httpx.Client(timeout=120) as http:
            body = _call(http, "POST", f"{base_url}/{MODEL}", None, headers=headers,
                         json={"image_url": image_uri(), "seed": n, **job}).json()
            ready.wait()
            mine = []
            while not stop.is_set():
                started = time.perf_counter()
                http.get(body["status_url"], headers=headers)
                mine.append(time.perf_counter() - started)
                time.sleep(0.1)  # fal-client's poll interval
        with lock:
            status_s.extend(mine)

    ready = threading.Barrier(pollers + 1)
    threads = [threading.Thread(target=poller, args=(n, ready), daemon=True) for n in range(pollers)]
    for thread in threads:
        thread.start()
    with httpx.Client(timeout=120) as http:
        while _unfinished_jobs(http, base_url) < pollers:
            time.sleep(0.2)
        sync_thread = _sync_requests(base_url, sync, replies, job)
        while _unfinished_jobs(http, base_url) < pollers + sync:  # every sync request accepted and waiting
            time.sleep(0.2)
    load_before = os.getloadavg()
    ready.wait()
    time.sleep(seconds)  # the measurement window (not a test: a benchmark)
    stop.set()
    for thread in threads:
        thread.join()
    load_after = os.getloadavg()
    released = time.perf_counter()
    gate.touch()
    sync_thread.join(timeout=600)
    ms = lambda q: percentile(status_s, q) * 1000  # noqa: E731
    good = sum(1 for n, code, seed in replies if code == 200 and seed == 10_000 + n)
    print(f"{sync} sync requests waiting, {pollers} clients polling status for {seconds:g} s: status p50 "
          f"{ms(0.5):.1f} ms, p99 {ms(0.99):.1f} ms, max {ms(1.0):.1f} ms ({len(status_s)} requests)")
    print(f"load average (1/5/15 min) before {load_before[0]:.1f}/{load_before[1]:.1f}/{load_before[2]:.1f}, "
          f"after {load_after[0]:.1f}/{load_after[1]:.1f}/{load_after[2]:.1f} on {os.cpu_count()} cores")
    print(f"sync replies: {good} of {sync} with their own result, all within "
          f"{time.perf_counter() - released:.1f} s of the release")
    return 0 if good == sync else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2, help="worker processes (stand-in engines)")
    parser.add_argument("--job-seconds", type=float, default=0.01, help="stand-in run time per job")
    parser.add_argument("--kill-after", type=int, help="kill -9 the server after this many completed jobs")
    parser.add_argument("--queue", help="redis://... (default: SQLite)")
    parser.add_argument("--models-dir", help="run the real engine from this ComfyUI models/ folder instead of the "
                                             "stand-in (GPU hosts: with --gpus)")
    parser.add_argument("--gpus", default="auto", help="with --models-dir: serve's --gpus")
    parser.add_argument("--size", type=int, default=256, help="output side in pixels (square)")
    parser.add_argument("--steps", type=int, default=1, help="denoising steps per job")
    parser.add_argument("--sync-waits", type=int, help="sync-starvation run: this many sync requests waiting while "
                                                       "--clients poll status (stand-in only)")
    parser.add_argument("--seconds", type=float, default=10.0, help="with --sync-waits: the measuring window")
    args = parser.parse_args()
    job = {"image_size": {"width": args.size, "height": args.size}, "num_inference_steps": args.steps}
    with tempfile.TemporaryDirectory() as tmp:
        record = Path(tmp) / "runs.txt"
        serve = serve_args(args.workers, args.queue)
        if args.sync_waits:
            gate = Path(tmp) / "gate"
            env = dict(serve_env(record, args.job_seconds), REDUX_STANDIN_GATE=str(gate))
            with ServeProcess(serve + ["--state-dir", str(Path(tmp) / "state"), "--max-sync-waits-per-key",
                                       str(args.sync_waits)], env, Path(tmp) / "serve.log") as server:
                return run_sync_starvation(server.url, gate, args.sync_waits, args.clients, args.seconds, job)
        if args.models_dir:  # the real engine: same flags without the stand-in
            serve = [a for a in serve if a not in ("--engine", "benchmarks.server_standin:StandIn")]
            serve[serve.index("--gpus") + 1] = args.gpus
            serve += ["--models-dir", args.models_dir]
        server = ServeProcess(serve + ["--state-dir", str(Path(tmp) / "state")],
                              serve_env(record, args.job_seconds), Path(tmp) / "serve.log", timeout_s=600)
        with server:
            during = kill_and_restart(server, args.kill_after) if args.kill_after else None
            result = run_load(server.url, args.jobs, args.clients, during=during, job=job)
        print(report(result, *run_counts(record)))
        for error in result.errors[:10]:
            print("error:", error)
    ok = result.lost() == 0 and not result.errors and not result.positions_rose
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
