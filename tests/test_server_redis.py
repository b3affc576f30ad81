"""The Redis backend (several GPU hosts) on a real redis-server (Debian's package; .ci/run installs it),
started by these tests on a free loopback port."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid

import httpx
import pytest
import redis

from server_support import (ALICE, BOB, DEV, Receiver, ServeProcess, StandIn, data_uri, free_port,  # noqa: I001
                            local_server, wait_done, wait_for_workers)
from server_load import report, run_counts, run_load, serve_args, serve_env


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed: apt-get install redis-server (.ci/run does this)"
    port, folder = free_port(), tmp_path_factory.mktemp("redis")
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                "--dir", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline and process.poll() is None, "redis-server did not start"
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def namespace():
    return f"test-{uuid.uuid4().hex[:8]}"


def test_protocol_on_the_redis_store(tmp_path, redis_url, namespace):
    settings = dict(queue_url=redis_url, namespace=namespace, max_active_per_key=3, result_ttl_s=1.0)
    with local_server(tmp_path, [StandIn(seconds=2.0)], **settings) as server, httpx.Client(timeout=10) as http:
        url, body = f"{server.url}/{DEV}", {"image_url": data_uri(), "image_size": "square"}
        jobs = [http.post(url, json=dict(body, seed=n), headers=ALICE).json() for n in range(3)]
        assert http.post(url, json=body, headers=ALICE).status_code == 429
        while http.get(jobs[0]["status_url"], headers=ALICE).json()["status"] == "IN_QUEUE":
            time.sleep(0.02)
        assert http.get(jobs[2]["status_url"], headers=ALICE).json()["queue_position"] == 2
        assert http.put(jobs[1]["cancel_url"], headers=ALICE).status_code == 202
        assert http.get(jobs[2]["status_url"], headers=ALICE).json()["queue_position"] == 1
        assert http.get(jobs[2]["status_url"], headers=BOB).status_code == 404
        done = wait_done(http, jobs[2]["status_url"], ALICE)
        assert "error" not in done
        result = http.get(jobs[2]["response_url"], headers=ALICE).json()
        assert result["seed"] == 2 and http.get(result["images"][0]["url"]).status_code == 200
        time.sleep(2.5)  # Redis drops the records and files by itself (EXPIREAT)
        assert http.get(jobs[2]["status_url"], headers=ALICE).status_code == 404
        assert http.get(result["images"][0]["url"]).status_code == 404


def test_two_workers_on_redis_run_every_job_exactly_once(tmp_path, redis_url, namespace):
    record = tmp_path / "runs.txt"
    env = serve_env(record, job_seconds=0.01)
    common = ["--state-dir", str(tmp_path / "state")]
    api = ServeProcess([*serve_args(0, redis_url), *common], env, tmp_path / "api.log")
    gpu_host = ServeProcess(["--workers-only", *serve_args(2, redis_url), *common], env, tmp_path / "workers.log")
    with api, gpu_host.start(wait=False):
        wait_for_workers(tmp_path / "workers.log", 2)
        result = run_load(api.url, jobs=80, clients=10)
    starts, ends, by_worker = run_counts(record)
    print("\n" + report(result, starts, ends, by_worker))
    assert result.errors == [] and result.lost() == 0
    assert all(starts[seed] == 1 and ends[seed] == 1 for seed in range(80))
    assert len(by_worker) == 2 and min(by_worker.values()) > 0  # both workers took jobs
    assert result.positions_rose == []


def test_redis_keeps_inputs_once_apart_from_the_record(tmp_path, redis_url, namespace):
    big = data_uri() + "A" * 2_000_000  # checked for its prefix at submit; the worker never sees it here
    client = redis.Redis.from_url(redis_url)
    with local_server(tmp_path, [], queue_url=redis_url, namespace=namespace) as server, \
            httpx.Client(timeout=10) as http:
        job = http.post(f"{server.url}/{DEV}", json={"image_url": big}, headers=ALICE).json()
        record, inputs = f"{namespace}:job:{job['request_id']}", f"{namespace}:input:{job['request_id']}"
        assert client.strlen(record) < 20_000 and client.strlen(inputs) > len(big)
        assert server.service.store.inputs(job["request_id"])["image"] == big
        assert http.put(job["cancel_url"], headers=ALICE).status_code == 202  # finished: the inputs go
        assert not client.exists(inputs) and client.strlen(record) < 20_000
        assert server.service.store.inputs(job["request_id"]) is None


def test_webhooks_and_start_timeouts_on_the_redis_store(tmp_path, redis_url, namespace):
    receiver = Receiver(500, 200)
    settings = dict(queue_url=redis_url, namespace=namespace, webhooks=True, url_allow_hosts=(receiver.host,),
                    webhook_retry_s=(0.05,))
    try:
        with local_server(tmp_path, [StandIn(seconds=2.0)], **settings) as server, httpx.Client(timeout=10) as http:
            url, body = f"{server.url}/{DEV}", {"image_url": data_uri(), "image_size": "square"}
            busy = http.post(url, json=body, params={"fal_webhook": receiver.url}, headers=ALICE).json()
            late = http.post(url, json=body, headers={**ALICE, "X-Fal-Request-Timeout": "1"}).json()
            assert wait_done(http, late["status_url"], ALICE)["error_type"] == "request_timeout"
            first, second = receiver.wait_for(2)  # the first try got a 500, the retry went through
            assert first.json() == second.json() and second.json()["request_id"] == busy["request_id"]
            assert second.json()["status"] == "OK"
            client = redis.Redis.from_url(redis_url)
            deadline = time.monotonic() + 10
            while client.zcard(f"{namespace}:webhooks"):  # delivered: nothing left to send
                assert time.monotonic() < deadline
                time.sleep(0.02)
            assert len(receiver.hits) == 2 and client.zcard(f"{namespace}:starts") == 0
    finally:
        receiver.stop()
