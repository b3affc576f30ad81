"""Hangs: a server that trickles its reply (alive, but never done) cannot hold a run past its deadline, and
an interrupt ends every read at once: status, result, downloads and the one-request sync mode; the worker
threads stop too."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time

import pytest

from fakes.helpers import abort_later, fal_settings, remote, solid, wavespeed_settings
from fakes.server import FakeServer, Response

pytest_plugins = ["fakes.fixtures"]

TRICKLE = 0.05  # seconds per byte: far below any gap timeout, so only a whole-read limit can end it


def trickling(body, count=40, **kwargs) -> list[Response]:
    return [Response(200, body, trickle=TRICKLE, **kwargs) for _ in range(count)]


def worker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("redux-remote")]


def wait_for_no_workers(limit: float = 3.0) -> bool:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if not worker_threads():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("route", ["status", "result", "file"])
def test_fal_trickle_ends_at_the_deadline(tmp_path, fal_fake, route):
    body = {"status": "IN_PROGRESS", "logs": [], "queue_position": None} if route == "status" else {"images": []}
    fal_fake.fault(route, *trickling(body if route != "file" else b"\x89PNG" + b"0" * 400,
                                     content_type="image/png" if route == "file" else None))
    settings = fal_settings(tmp_path, fal_fake, deadline_s=1.5, timeouts=remote.Timeouts(connect=1.0, read=0.4))
    started = time.monotonic()
    with pytest.raises(remote.RemoteTimeoutError, match="deadline"):
        remote.run_remote_variation(solid((10, 20, 30)), remote.RemoteRequest(), settings=settings)
    assert time.monotonic() - started < 1.5 + 1.0
    assert wait_for_no_workers()
    if route == "status":
        assert fal_fake.cancels  # the queued job was cancelled, not left running and billed


def test_wavespeed_trickle_ends_at_the_deadline(tmp_path, wavespeed_fake):
    wavespeed_fake.fault("result", *trickling({"code": 200, "message": "success", "data": {"status": "created"}}))
    settings = wavespeed_settings(tmp_path, wavespeed_fake, deadline_s=1.5,
                                  timeouts=remote.Timeouts(connect=1.0, read=0.4))
    started = time.monotonic()
    with pytest.raises(remote.RemoteTimeoutError):
        remote.run_remote_variation(solid((10, 20, 30)), remote.RemoteRequest(provider="wavespeed"),
                                    settings=settings)
    assert time.monotonic() - started < 2.5
    assert wavespeed_fake.cancels


@pytest.mark.parametrize("route, sync", [("status", False), ("file", False), ("run", True)])
def test_interrupt_ends_a_trickling_read_and_the_worker(tmp_path, fal_fake, route, sync):
    body = b"\x89PNG" + b"0" * 400 if route == "file" else {"status": "IN_PROGRESS", "logs": []}
    fal_fake.fault(route, *trickling(body, content_type="image/png" if route == "file" else None))
    settings = fal_settings(tmp_path, fal_fake, deadline_s=60, timeouts=remote.Timeouts(connect=1.0, read=30))
    asked = time.monotonic() + 0.4
    started = time.monotonic()
    with pytest.raises(remote.RemoteCancelledError):
        remote.run_remote_variation(solid((10, 20, 30)), remote.RemoteRequest(sync_mode=sync), settings=settings,
                                    should_abort=lambda: time.monotonic() > asked)
    assert time.monotonic() - started < 0.4 + 1.5  # not the 30 s read timeout, not the 60 s deadline
    assert wait_for_no_workers(), [t.name for t in worker_threads()]


def test_whole_read_limit_of_one_call_without_a_deadline():
    server = FakeServer(lambda hit: Response(200, {"status": "x" * 200}, trickle=TRICKLE)).start()
    try:
        client = remote.HttpClient("fal", timeouts=remote.Timeouts(connect=1.0, read=0.3),
                                   retry=remote.RetryPolicy(attempts=2, base_delay=0.01))
        started = time.monotonic()
        with pytest.raises(remote.ServiceUnavailableError, match="no complete reply within 1.3 s"):
            client.call("GET", server.url + "/status", what="status")
        assert time.monotonic() - started < 2 * 1.3 + 1.0  # two attempts, each cut at connect + read
        with pytest.raises(remote.ServiceUnavailableError, match="job may have been created"):
            client.call("POST", server.url + "/submit", what="submit", json={}, submit=True)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1, made with the openssl command."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return str(cert), str(key)


def test_the_watch_works_over_tls(certificate, monkeypatch):
    cert, key = certificate
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", cert)  # requests prefers this variable over session.verify
    replies = iter([Response(200, {"status": "ok"}), Response(200, {"status": "x" * 200}, trickle=TRICKLE)])
    server = FakeServer(lambda hit: next(replies)).use_tls(cert, key).start()
    try:
        abort = threading.Event()
        client = remote.HttpClient("fal", timeouts=remote.Timeouts(connect=1.0, read=30), abort=abort,
                                   retry=remote.RetryPolicy(attempts=1))
        assert client.call("GET", server.url + "/status", what="status").data == {"status": "ok"}
        aborted_at = abort_later(abort, 0.3)
        started = time.monotonic()
        with pytest.raises(remote.RemoteCancelledError):
            client.call("GET", server.url + "/status", what="status")
        ended = time.monotonic()
        assert ended - aborted_at[0] < 1.5  # the read was cut when the abort came, not when the reply ended
        assert ended - started < 286 * TRICKLE - 1  # the whole 286-byte reply would take 14.3 s
    finally:
        server.stop()


def test_server_url_input_that_trickles_ends_at_its_time_cap():
    """The API server's opt-in image URLs: a reply sent one byte at a time cannot hold a GPU worker past
    url_timeout_s (requests' own read timeout only bounds the gap between bytes)."""
    from packloader import submodule

    inputs = submodule("pipelines.server.inputs")
    server = FakeServer(lambda hit: Response(200, b"\x89PNG" + b"x" * 400, content_type="image/png",
                                             trickle=0.05)).start()
    try:
        limits = inputs.InputLimits(url_timeout_s=1.0, urls_allowed=True, allow_hosts=("127.0.0.1",))
        started = time.monotonic()
        with pytest.raises(inputs.InputError, match="download took longer than 1.0 s"):
            inputs.fetch_url("image_url", server.url + "/ref.png", limits)
        assert time.monotonic() - started < 2.0  # the whole reply would take over 20 s
    finally:
        server.stop()
