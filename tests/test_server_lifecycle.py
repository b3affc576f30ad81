"""`serve` through its life: sync requests that hold no thread, SIGTERM/SIGINT drains, frozen workers replaced,
one queue order across crashes, and secrets kept off command lines, environments and world-readable files.

Jobs are held running by the stand-in's gate file (created when the test is ready), never by fixed sleeps.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from server_support import (ALICE, BOB, DEV, KEYS, ServeProcess, StandIn, children, data_uri, local_server,  # noqa: I001
                            wait_done, wait_for_workers)
from packloader import submodule
from server_load import run_counts, serve_args, serve_env

config_module = submodule("pipelines.server.config")
jobs = submodule("pipelines.server.jobs")
queue_module = submodule("pipelines.server.queue")
service_module = submodule("pipelines.server.service")
store_module = submodule("pipelines.server.store")
supervisor = submodule("pipelines.server.supervisor")
validation = submodule("pipelines.server.validation")
worker_module = submodule("pipelines.server.worker")
server_cli = submodule("pipelines.cli")

BODY = {"image_url": data_uri(), "image_size": {"width": 256, "height": 256}, "num_inference_steps": 1}
WAVESPEED = "/api/v3/wavespeed-ai/flux-redux-dev"


def wait_until(predicate, what: str, timeout: float = 60.0, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout:g} s: {what}"
        time.sleep(every)


def status_of(http: httpx.Client, job: dict, headers=ALICE) -> dict:
    return http.get(job["status_url"], headers=headers, params={"logs": "1"}).json()


def serve(tmp_path: Path, *extra: str, workers: int = 1, env: dict | None = None, log="serve.log") -> ServeProcess:
    settings = dict(serve_env(tmp_path / "runs.txt", 0.01), REDUX_STANDIN_GATE=str(tmp_path / "gate"),
                    REDUX_SERVER_KEYS=",".join(f"{name}={key}" for name, key in KEYS.items()), **(env or {}))
    return ServeProcess([*serve_args(workers), "--state-dir", str(tmp_path / "state"), *extra], settings,
                        tmp_path / log)


# --- 1. sync requests hold no thread --------------------------------------------------------------------

def post_in_threads(count: int, make_request) -> tuple[list, list[threading.Thread]]:
    replies: list = []

    def one(number: int) -> None:
        with httpx.Client(timeout=120) as http:
            replies.append(make_request(http, number))
    threads = [threading.Thread(target=one, args=(n,), daemon=True) for n in range(count)]
    for thread in threads:
        thread.start()
    return replies, threads


def test_waiting_sync_requests_hold_no_thread(tmp_path):
    """More sync waits than starlette's 40 pool threads: every one is accepted, and another key's status call
    still answers while they wait (before: the 41st waited for a thread, and so did every status call)."""
    gate, count = tmp_path / "gate", 45
    with local_server(tmp_path, [StandIn(seconds=0.0, gate=str(gate))], max_active_per_key=1000,
                      max_sync_waits_per_key=100) as server, httpx.Client(timeout=10) as http:
        queued = http.post(f"{server.url}/{DEV}", json=BODY, headers=BOB).json()
        replies, threads = post_in_threads(count, lambda client, n: client.post(
            f"{server.url}/sync/{DEV}", json=dict(BODY, seed=n), headers=ALICE))
        wait_until(lambda: server.service.store.active_count("alice") == count, f"{count} sync requests submitted")
        wait_until(lambda: server.service.waits.waiting() == count, f"{count} sync requests waiting")
        status = http.get(queued["status_url"], headers=BOB)  # 10 s client timeout: it must not queue for a thread
        assert status.status_code == 202 and status.json()["status"] in ("IN_QUEUE", "IN_PROGRESS")
        gate.touch()
        for thread in threads:
            thread.join(timeout=120)
        assert sorted(reply.json()["seed"] for reply in replies) == list(range(count))
        assert all(reply.status_code == 200 for reply in replies)


def test_sync_waits_per_key_are_bounded_with_429(tmp_path):
    gate = tmp_path / "gate"
    with local_server(tmp_path, [StandIn(seconds=0.0, gate=str(gate))], max_active_per_key=100,
                      max_sync_waits_per_key=2) as server, httpx.Client(timeout=30) as http:
        replies, threads = post_in_threads(2, lambda client, n: client.post(
            f"{server.url}/sync/{DEV}", json=dict(BODY, seed=n), headers=ALICE))
        wait_until(lambda: server.service.waits.waiting() == 2, "two sync requests waiting")
        refused = http.post(f"{server.url}/sync/{DEV}", json=BODY, headers=ALICE)
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
        assert "2 sync requests waiting" in refused.json()["detail"]
        wavespeed = http.post(server.url + WAVESPEED, headers=ALICE,
                              json={"image": data_uri(), "size": "256*256", "enable_sync_mode": True})
        assert wavespeed.status_code == 429 and wavespeed.json()["code"] == 429
        assert server.service.store.active_count("alice") == 2  # nothing was queued for the refused ones
        assert http.post(f"{server.url}/{DEV}", json=BODY, headers=ALICE).status_code == 200  # the queue is open
        others, other_threads = post_in_threads(1, lambda client, n: client.post(
            f"{server.url}/sync/{DEV}", json=dict(BODY, seed=9), headers=BOB))
        wait_until(lambda: server.service.waits.waiting() == 3, "the other key's sync request waiting")
        gate.touch()
        for thread in threads + other_threads:
            thread.join(timeout=60)
        assert [reply.status_code for reply in replies + others] == [200, 200, 200]
        assert http.post(f"{server.url}/sync/{DEV}", json=dict(BODY, seed=5), headers=ALICE).json()["seed"] == 5


# --- 2. SIGTERM and SIGINT drain ---------------------------------------------------------------------------

def started(record: Path, seed: int) -> list[int]:
    """The worker pids that started a run of this seed (the stand-in's record), in order."""
    lines = record.read_text().splitlines() if record.exists() else []
    return [int(pid) for what, job_seed, pid in map(str.split, lines) if what == "start" and int(job_seed) == seed]


def running_job(http: httpx.Client, server: ServeProcess, seed: int) -> dict:
    """A job submitted and seen running in the engine (held there by the gate)."""
    job = http.post(f"{server.url}/{DEV}", json=dict(BODY, seed=seed), headers=ALICE).json()
    record = Path(server.env["REDUX_STANDIN_RECORD"])
    wait_until(lambda: started(record, seed), "the job started", timeout=120)
    assert status_of(http, job)["status"] == "IN_PROGRESS"
    return job


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_drains_the_running_job_and_exits_0(tmp_path, signum):
    server = serve(tmp_path, "--drain-timeout", "120")
    with server, httpx.Client(timeout=10) as http:
        job = running_job(http, server, seed=5)
        server.process.send_signal(signum)  # serve only, as docker and Kubernetes send it
        refused = wait_until(lambda: (reply := http.post(f"{server.url}/{DEV}", json=BODY, headers=ALICE))
                             .status_code == 503 and reply, "submits refused with 503 while draining")
        assert int(refused.headers["Retry-After"]) > 0 and refused.json()["error_type"] == "service_unavailable"
        assert status_of(http, job)["status"] == "IN_PROGRESS"  # status is still served while it drains
        (tmp_path / "gate").touch()
        assert server.process.wait(timeout=120) == 0
        server.start()
        done = wait_done(http, job["status_url"], ALICE)
        assert "error" not in done and http.get(job["response_url"], headers=ALICE).json()["seed"] == 5
    starts, ends, _ = run_counts(tmp_path / "runs.txt")
    assert (starts[5], ends[5]) == (1, 1)  # ran once, finished before the exit: exactly one result
    assert "Traceback" not in (tmp_path / "serve.log").read_text()


def test_a_job_past_the_drain_timeout_goes_back_in_its_place_and_runs_once(tmp_path):
    server = serve(tmp_path, "--drain-timeout", "0.5")
    with server, httpx.Client(timeout=10) as http:
        first = running_job(http, server, seed=1)
        second = http.post(f"{server.url}/{DEV}", json=dict(BODY, seed=2), headers=ALICE).json()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=120) == 0
        (tmp_path / "gate").touch()
        server.start()
        for job, seed in ((first, 1), (second, 2)):
            done = wait_done(http, job["status_url"], ALICE, timeout=120)
            assert "error" not in done and http.get(job["response_url"], headers=ALICE).json()["seed"] == seed
        assert any("handed back" in line["message"] for line in done["logs"]) is False
        assert any("handed back" in line["message"] for line in status_of(http, first)["logs"])
    starts, ends, _ = run_counts(tmp_path / "runs.txt")
    assert (starts[1], ends[1], starts[2], ends[2]) == (2, 1, 1, 1)
    order = [line.split()[1] for line in (tmp_path / "runs.txt").read_text().splitlines() if line.startswith("start")]
    assert order == ["1", "1", "2"]  # after the restart the handed-back job ran first: it kept its place


# --- 3. the supervisor owns worker liveness ----------------------------------------------------------------

def test_a_frozen_worker_is_killed_and_replaced_and_its_job_retried_once(tmp_path):
    record = tmp_path / "runs.txt"
    server = serve(tmp_path, "--heartbeat-timeout", "2")
    with server, httpx.Client(timeout=10) as http:
        job = running_job(http, server, seed=1)
        frozen = children(server.process.pid)
        assert len(frozen) == 1
        os.kill(frozen[0], signal.SIGSTOP)
        second = wait_until(lambda: [pid for pid in started(record, 1) if pid != frozen[0]],
                            "the job restarted on a new worker", timeout=180)
        assert not supervisor.process_alive(frozen[0])  # killed (SIGKILL works on a stopped process)
        os.kill(int(second[0]), signal.SIGSTOP)  # frozen again on its second run: it fails with the reason
        failed = wait_done(http, job["status_url"], ALICE, timeout=180)
        assert failed["error_type"] == "worker_lost" and "stopped responding" in failed["error"]
        assert "2 attempts" in failed["error"]
        later = http.post(f"{server.url}/{DEV}", json=dict(BODY, seed=3), headers=ALICE).json()
        (tmp_path / "gate").touch()
        assert "error" not in wait_done(http, later["status_url"], ALICE, timeout=180)  # the queue goes on
        assert http.get(job["response_url"], headers=ALICE).status_code == 500
    starts, ends, by_worker = run_counts(record)
    assert (starts[1], ends[1], ends[3]) == (2, 0, 1)
    assert "no heartbeat" in (tmp_path / "serve.log").read_text()


# --- 4. one queue order --------------------------------------------------------------------------------------

def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_requeued_job_keeps_its_place_and_positions_never_rise(tmp_path):
    config = config_module.ServerConfig(state_dir=str(tmp_path / "state"))
    store = store_module.open_store(None, config.state_path, config.namespace)
    queue = queue_module.JobQueue(None, config.state_path, config.namespace)
    service = service_module.JobService(config, store, queue)
    inputs, _ = validation.validate_fal("dev", dict(BODY), config)
    first, second, third = (service.submit("alice", "fal", DEV, inputs) for _ in range(3))
    gone = f"{socket.gethostname()}:{dead_pid()}"  # a worker that took the first job, then died with serve
    queue.huey.dequeue()
    store.update(first.id, lambda job: jobs.claim(job, gone, 30.0))
    positions = [[service.position(store.get(job.id)) for job in (second, third)]]
    supervisor.recover(store, queue, config)
    positions.append([service.position(store.get(job.id)) for job in (second, third)])
    assert positions == [[1, 2], [1, 2]]  # the re-queued job was counted before, and is still: nothing rose
    ran = []

    class Recording(StandIn):
        def run(self, job_inputs, picture, should_abort, log):
            ran.append(current[0])
            return super().run(job_inputs, picture, should_abort, log)
    runner = worker_module.JobRunner(config, store, Recording(seconds=0.0), "test-worker")
    current = [None]
    original = runner._run

    def run(job):
        current[0] = job.id
        positions.append([service.position(store.get(j.id)) for j in (second, third)
                          if store.get(j.id).state == jobs.QUEUED])
        original(job)
    runner._run = run
    queue._handler = runner
    while (task := queue.huey.dequeue()) is not None:
        queue.huey.execute(task)
    assert ran == [first.id, second.id, third.id]  # the re-queued job first: it kept its place
    assert all(store.get(job.id).done for job in (first, second, third))
    assert positions[2:] == [[1, 2], [1], []]  # (queued ones) while the first ran again, the second, the third


# --- 6. secrets and files -----------------------------------------------------------------------------------

def proc_text(pid: int, name: str) -> str:
    return Path(f"/proc/{pid}/{name}").read_bytes().replace(b"\0", b" ").decode(errors="replace")


def test_workers_get_no_secrets_and_state_files_are_private(tmp_path):
    server = serve(tmp_path, "--result-ttl", "100")
    with server, httpx.Client(timeout=10) as http:
        wait_for_workers(tmp_path / "serve.log", 1)
        (tmp_path / "gate").touch()
        job = http.post(f"{server.url}/{DEV}", json=BODY, headers=ALICE).json()
        done = wait_done(http, job["status_url"], ALICE, timeout=120)
        (workers,) = [children(server.process.pid)]
        assert len(workers) == 1
        command, environ = proc_text(workers[0], "cmdline"), proc_text(workers[0], "environ")
        assert "state_dir" not in command and "{" not in command  # no settings JSON on the command line
        assert "REDUX_SERVER_KEYS" not in environ and next(iter(KEYS.values())) not in environ
        folder = tmp_path / "state"
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        files = [path for path in folder.iterdir() if path.is_file()]
        assert len(files) >= 3 and all(stat.S_IMODE(path.stat().st_mode) == 0o600 for path in files), \
            {path.name: oct(stat.S_IMODE(path.stat().st_mode)) for path in files}
        messages = " ".join(line["message"] for line in done["logs"])
        assert socket.gethostname() not in messages and str(workers[0]) not in messages
        image = http.get(job["response_url"], headers=ALICE).json()["images"][0]["url"]
        cache = http.get(image).headers["Cache-Control"]
        assert cache.startswith("private, max-age=") and 0 < int(cache.rsplit("=", 1)[1]) <= 100


def test_a_queue_password_is_refused_on_the_command_line(capsys):
    assert server_cli.main(["serve", "--gpus", "none", "--queue", "redis://:s3cret-pass@127.0.0.1:6379/0"]) == 2
    error = capsys.readouterr().err
    assert "REDUX_SERVER_QUEUE" in error and "s3cret-pass" not in error


def test_the_queue_url_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("REDUX_SERVER_QUEUE", "redis://:s3cret-pass@127.0.0.1:6379/0")
    args = server_cli.build_parser().parse_args(["serve", "--gpus", "none"])
    assert submodule("pipelines.server.cli").config_from(args).queue_url.endswith("@127.0.0.1:6379/0")


@pytest.fixture
def redis_with_password(tmp_path):
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed: apt-get install redis-server (.ci/run does this)"
    from server_support import free_port
    import redis

    port, password = free_port(), "s3cret-redis-pass"
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                                "no", "--dir", str(tmp_path), "--requirepass", password],
                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    client = redis.Redis(port=port, password=password)
    wait_until(lambda: _pings(client) or process.poll() is not None, "redis-server answering", timeout=20)
    yield f"redis://:{password}@127.0.0.1:{port}/0", password
    process.terminate()
    process.wait(timeout=10)


def _pings(client) -> bool:
    import redis
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def test_a_redis_password_is_in_no_command_line_and_no_worker_environment(tmp_path, redis_with_password):
    url, password = redis_with_password
    server = serve(tmp_path, env={"REDUX_SERVER_QUEUE": url})
    with server, httpx.Client(timeout=10) as http:
        wait_for_workers(tmp_path / "serve.log", 1)
        (tmp_path / "gate").touch()
        job = http.post(f"{server.url}/{DEV}", json=BODY, headers=ALICE).json()
        assert "error" not in wait_done(http, job["status_url"], ALICE, timeout=120)  # the worker reached Redis
        processes = [server.process.pid, *children(server.process.pid)]
        assert len(processes) == 2
        assert not any(password in proc_text(pid, "cmdline") for pid in processes)
        assert password not in proc_text(processes[1], "environ")
        listing = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        assert password not in listing
