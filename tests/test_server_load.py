"""`python -m pipelines serve` as a user starts it (own process, worker processes), under load and crashes:
a smaller run of benchmarks/server_load.py, kill -9 in the middle of it, and a job that kills its worker."""

from __future__ import annotations

import time

import httpx
import pytest

from server_support import ServeProcess, children, data_uri, wait_for_workers  # noqa: I001  (puts benchmarks/ on sys.path first)
from packloader import submodule
from server_load import KEYS, kill_and_restart, report, run_counts, run_load, serve_args, serve_env

supervisor = submodule("pipelines.server.supervisor")
HEADERS = {"Authorization": f"Key {next(iter(KEYS.values()))}"}


@pytest.fixture
def record(tmp_path):
    return tmp_path / "runs.txt"


def serve(tmp_path, record, workers=2, job_seconds=0.01, extra_env=None):
    env = dict(serve_env(record, job_seconds), **(extra_env or {}))
    return ServeProcess(serve_args(workers) + ["--state-dir", str(tmp_path / "state")], env, tmp_path / "serve.log")


def test_load_nothing_lost_each_job_once_positions_only_go_down(tmp_path, record):
    with serve(tmp_path, record) as server:
        wait_for_workers(tmp_path / "serve.log", 2)
        result = run_load(server.url, jobs=120, clients=12)
    starts, ends, by_worker = run_counts(record)
    print("\n" + report(result, starts, ends, by_worker))
    assert result.errors == [] and result.lost() == 0 and result.acknowledged == 120
    assert all(starts[seed] == 1 and ends[seed] == 1 for seed in range(120))
    assert sum(ends.values()) == 120 and len(by_worker) == 2  # both workers took jobs
    assert result.positions_rose == []
    assert len(result.submit_s) == 120 and len(result.status_s) >= 120


def test_kill9_mid_load_loses_nothing_and_positions_never_rise(tmp_path, record):
    server = serve(tmp_path, record, job_seconds=0.03)
    old_workers = []
    during = kill_and_restart(server, after_completed=30, before_kill=lambda: old_workers.extend(
        children(server.process.pid)))
    with server:
        result = run_load(server.url, jobs=100, clients=10, during=during)
    starts, ends, by_worker = run_counts(record)
    print("\n" + report(result, starts, ends, by_worker))
    assert result.errors == [] and result.lost() == 0
    assert all(ends[seed] >= 1 and starts[seed] <= 2 for seed in range(100))
    assert result.positions_rose == []  # re-queued jobs kept their place: no position went up, not even at restart
    assert len(old_workers) == 2 and not any(map(supervisor.process_alive, old_workers))  # they followed serve (no orphans)
    assert set(by_worker) - set(map(str, old_workers))  # the restarted server's workers finished the load


def test_a_job_that_kills_or_hangs_its_worker_fails_and_the_next_one_runs(tmp_path, record):
    env = {"REDUX_STANDIN_CRASH_SEED": "666", "REDUX_STANDIN_HANG_SEED": "667"}
    server = serve(tmp_path, record, workers=1, extra_env=env)
    server.command += ["--job-timeout", "2"]
    with server, httpx.Client(timeout=10) as http:
        url = f"{server.url}/fal-ai/flux-1/dev/redux"
        jobs = [http.post(url, headers=HEADERS, json={"image_url": data_uri(), "seed": seed}).json()
                for seed in (666, 667, 7)]
        statuses = {}
        deadline = time.monotonic() + 120
        while len(statuses) < 3 and time.monotonic() < deadline:
            for job in jobs:
                reply = http.get(job["status_url"], headers=HEADERS)
                if reply.status_code == 200:
                    statuses[job["request_id"]] = reply.json()
            time.sleep(0.1)
        crashed, hung, done = (statuses[job["request_id"]] for job in jobs)
        assert crashed["error_type"] == "worker_crashed" and "exit code 3" in crashed["error"]
        assert hung["error_type"] == "timeout" and "longer than 2 s" in hung["error"]
        assert http.get(jobs[0]["response_url"], headers=HEADERS).status_code == 500
        assert "error" not in done and http.get(jobs[2]["response_url"], headers=HEADERS).json()["seed"] == 7
    log = (tmp_path / "serve.log").read_text()
    assert "exited with code 3" in log and "exited with code -9" in log
