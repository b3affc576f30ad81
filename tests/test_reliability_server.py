"""Hostile API clients (issue 18, class 3): bodies the server must refuse with a 4xx and a JSON reply, never a
500 and never a job whose result cannot be read; a full --state-dir answered with 507 and a message; a busy
port refused at start-up in one line with exit code 2."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys

import httpx
import pytest

from packloader import ROOT, submodule
from server_support import ALICE, BOB, DEV, KEYS, SCHNELL, StandIn, data_uri, local_server

store_module = submodule("pipelines.server.store")
web = submodule("pipelines.server.web")
IMAGE = data_uri()
WAVESPEED = "/api/v3/wavespeed-ai/flux-redux-dev"


def deep(levels: int, open_: str = "[", close: str = "]", inner: str = "1") -> str:
    return open_ * levels + inner + close * levels


DEEP_SIZE = deep(900, '{"w":', "}")
HOSTILE_BODIES = {
    "NaN seed": f'{{"image_url": "{IMAGE}", "seed": NaN}}',
    "Infinity guidance": f'{{"image_url": "{IMAGE}", "guidance_scale": Infinity}}',
    "-Infinity steps": f'{{"image_url": "{IMAGE}", "num_inference_steps": -Infinity}}',
    "NaN inside image_size": f'{{"image_url": "{IMAGE}", "image_size": {{"width": NaN, "height": 512}}}}',
    "NaN in an unknown field": f'{{"image_url": "{IMAGE}", "extra": [1, 2, NaN]}}',
    "1e999 overflows to inf": f'{{"image_url": "{IMAGE}", "seed": 1e999}}',
    "-1e999 in num_images": f'{{"image_url": "{IMAGE}", "num_images": -1e999}}',
    "100,000 nested arrays": deep(100_000),
    "20,000 nested objects": deep(20_000, '{"a":', "}", "1"),
    "nesting just past the limit": deep(web.MAX_JSON_DEPTH + 1),
    "deep value in a field": f'{{"image_url": "{IMAGE}", "seed": {deep(5000)}}}',
    "deep image_size": f'{{"image_url": "{IMAGE}", "image_size": {DEEP_SIZE}}}',
    "10,000-digit integer": f'{{"image_url": "{IMAGE}", "seed": {"9" * 10_000}}}',
    "truncated JSON": f'{{"image_url": "{IMAGE}", "seed": 1',
    "trailing garbage": f'{{"image_url": "{IMAGE}"}} x',
    "single quotes": "{'image_url': 'x'}",
}
BAD_BYTES = {
    "invalid UTF-8": b'{"image_url": "\xff\xfe\xfd"}',
    "lone surrogate escape": b'{"image_url": "\\ud800"}',  # valid JSON; must not break the reply encoder
    "NUL bytes": b"\x00\x00\x00\x00",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with local_server(tmp_path_factory.mktemp("hostile"), [StandIn(seconds=0.01)], max_active_per_key=1000) as running:
        yield running


@pytest.fixture(scope="module")
def client():
    with httpx.Client(timeout=30) as http:
        yield http


def post(client, url, content: str | bytes, headers):
    data = content.encode() if isinstance(content, str) else content
    return client.post(url, content=data, headers={**headers, "Content-Type": "application/json"})


def jobs_in_store(server) -> int:
    return server.service.store._connection().execute("select count(*) from jobs").fetchone()[0]


@pytest.mark.parametrize("case", list(HOSTILE_BODIES))
@pytest.mark.parametrize("path", [f"/{DEV}", f"/sync/{SCHNELL}"])
def test_fal_refuses_hostile_json_with_422_and_makes_no_job(server, client, case, path):
    before = jobs_in_store(server)
    reply = post(client, server.url + path, HOSTILE_BODIES[case], ALICE)
    assert reply.status_code == 422, reply.text[:300]
    (issue,) = reply.json()["detail"]
    assert issue["loc"] == ["body"] and issue["type"] == "json_invalid" and issue["msg"].startswith("Invalid JSON")
    assert len(reply.content) < 1000  # no echo of the hostile body
    assert jobs_in_store(server) == before  # nothing stored whose result could never be read


@pytest.mark.parametrize("case, words", [("NaN seed", "NaN is not a JSON number"),
                                         ("Infinity guidance", "Infinity is not a JSON number"),
                                         ("1e999 overflows to inf", "too large for a number"),
                                         ("100,000 nested arrays", f"nested deeper than {web.MAX_JSON_DEPTH}"),
                                         ("deep value in a field", "nested deeper")])
def test_the_422_says_what_was_wrong(server, client, case, words):
    reply = post(client, f"{server.url}/{DEV}", HOSTILE_BODIES[case], ALICE)
    assert words in reply.json()["detail"][0]["msg"]


@pytest.mark.parametrize("case", list(HOSTILE_BODIES))
def test_wavespeed_refuses_hostile_json_in_its_envelope(server, client, case):
    body = HOSTILE_BODIES[case].replace('"image_url"', '"image"')
    reply = post(client, server.url + WAVESPEED, body, BOB)
    assert reply.status_code == 400, reply.text[:300]
    envelope = reply.json()
    assert envelope["code"] == 400 and envelope["data"] is None and envelope["message"].startswith("Invalid JSON")


@pytest.mark.parametrize("case", list(BAD_BYTES))
def test_undecodable_bytes_are_4xx(server, client, case):
    for path, headers in ((f"/{DEV}", ALICE), (f"/sync/{DEV}", ALICE), (WAVESPEED, BOB)):
        reply = post(client, server.url + path, BAD_BYTES[case], headers)
        assert 400 <= reply.status_code < 500, (path, reply.status_code, reply.text[:300])
        reply.json()  # a JSON reply, not a text 500


def test_nesting_up_to_the_limit_is_read_normally(server, client):
    """The limit refuses stack-overflowing bodies, not ordinary ones: a body at the limit parses, and its
    bad field is reported like any other validation error (a job COMPLETED with 422 on the queue)."""
    assert web.parse_json(deep(web.MAX_JSON_DEPTH).encode()) is not None
    body = f'{{"image_url": "{IMAGE}", "image_size": {deep(web.MAX_JSON_DEPTH - 1)}}}'
    reply = post(client, f"{server.url}/sync/{DEV}", body, ALICE)
    assert reply.status_code == 422 and reply.json()["detail"][0]["loc"][:2] == ["body", "image_size"]


def test_server_stays_healthy_after_hostile_bodies(server, client):
    for body in HOSTILE_BODIES.values():
        post(client, f"{server.url}/{DEV}", body, ALICE)
    assert client.get(f"{server.url}/health").status_code == 200
    ok = post(client, f"{server.url}/sync/{DEV}", f'{{"image_url": "{IMAGE}", "image_size": "square"}}', ALICE)
    assert ok.status_code == 200 and ok.json()["images"]


# -- a full --state-dir ------------------------------------------------------------------------------------

@contextlib.contextmanager
def small_disk(folder, monkeypatch, size_kib: int = 1024):
    """A folder that fills up after about size_kib: a real tmpfs where this user may mount one (root, as on
    CI); elsewhere SQLite's own page cap on the job store, which fails writes the same way (SQLITE_FULL)."""
    folder.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(folder)], capture_output=True).returncode == 0
    cap = [size_kib // 4]  # SQLite pages of 4 KiB
    if not mounted:
        real = store_module.SqliteJobStore._connection

        def capped(self):
            db = real(self)
            db.execute(f"pragma max_page_count={cap[0]}")  # on every use: grow() reaches open connections too
            return db
        monkeypatch.setattr(store_module.SqliteJobStore, "_connection", capped)

    def grow() -> None:
        """Free space, as an operator would: later writes must succeed again."""
        if mounted:
            subprocess.run(["mount", "-o", f"remount,size={size_kib * 8}k", str(folder)], check=True)
        else:
            cap[0] *= 8
    try:
        yield folder, grow
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def test_full_state_dir_answers_507_with_a_json_message(tmp_path, monkeypatch):
    big_image = IMAGE + "A" * 60_000  # checked for its prefix at submit; about 60 KB to store
    with small_disk(tmp_path / "disk", monkeypatch) as (disk, grow), \
            local_server(disk, [], max_active_per_key=1000) as server, \
            httpx.Client(timeout=30) as client:
        accepted, refused = [], None
        for _ in range(200):
            reply = client.post(f"{server.url}/{DEV}", json={"image_url": big_image}, headers=ALICE)
            if reply.status_code != 200:
                refused = reply
                break
            accepted.append(reply.json())
        assert refused is not None, "the small disk never filled up"
        assert accepted, "not even one job fitted: the test disk is too small"
        assert refused.status_code == 507 and refused.headers["content-type"] == "application/json"
        body = refused.json()
        assert body["error_type"] == "storage_full" and "storage is full" in body["detail"]
        assert "--state-dir" in body["detail"] and str(disk) not in body["detail"]  # no server paths to clients
        assert refused.headers["X-Fal-Error-Type"] == "storage_full" and int(refused.headers["Retry-After"]) > 0
        wavespeed = client.post(server.url + WAVESPEED, json={"image": big_image}, headers=BOB)
        assert wavespeed.status_code == 507 and wavespeed.json()["code"] == 507
        assert "storage is full" in wavespeed.json()["message"]
        sync = client.post(f"{server.url}/sync/{DEV}", json={"image_url": big_image}, headers=ALICE)
        assert sync.status_code == 507 and sync.json()["error_type"] == "storage_full"
        # reads still work: the jobs already accepted can be followed, the server answers
        assert client.get(accepted[0]["status_url"], headers=ALICE).status_code in (200, 202)
        assert client.get(f"{server.url}/health").status_code == 200
        grow()  # and once there is room again, submits are accepted: no write was left half done
        again = client.post(f"{server.url}/{DEV}", json={"image_url": big_image}, headers=ALICE)
        assert again.status_code == 200 and again.json()["status"] == "IN_QUEUE"


def test_storage_failures_are_classified():
    full = store_module.storage_failure(OSError(28, "No space left on device"))
    assert full[0] == 507 and full[1] == "storage_full"
    locked = store_module.storage_failure(store_module.sqlite3.OperationalError("database is locked"))
    assert locked[0] == 503 and "database is locked" in locked[2]
    assert store_module.storage_failure(ValueError("x")) is None
    assert store_module.storage_failure(OSError(2, "No such file")) is None


# -- a busy port -------------------------------------------------------------------------------------------

def serve_command(port: int, state_dir) -> list[str]:
    return [sys.executable, "-m", "pipelines", "serve", "--port", str(port), "--gpus", "none",
            "--state-dir", str(state_dir)]


def test_busy_port_is_one_line_and_exit_2(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(serve_command(port, tmp_path / "state"), cwd=ROOT, capture_output=True, text=True,
                              timeout=120, env=dict(os.environ, REDUX_SERVER_KEYS=f"alice={KEYS['alice']}"))
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: port=") and str(port) in lines[0]
    assert "already in use" in lines[0] and "--port" in lines[0]


def test_address_of_another_machine_is_one_line_and_exit_2(tmp_path):
    command = serve_command(8184, tmp_path / "state") + ["--host", "192.0.2.1"]  # TEST-NET-1: never local
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, REDUX_SERVER_KEYS=f"alice={KEYS['alice']}"))
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: host=") and "cannot listen there" in lines[0]
