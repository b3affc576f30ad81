"""The shared HTTP layer on its own: Retry-After parsing, backoff with jitter, deadlines, redaction,
what counts as "never sent", and size-capped downloads."""

from __future__ import annotations

import socket
import threading
import time
from email.utils import format_datetime
from datetime import datetime, timedelta, timezone

import pytest
import requests

from fakes.helpers import abort_later, remote
from fakes.server import FakeServer, Response
from packloader import submodule

http = submodule("pipelines.remote.http")


@pytest.mark.parametrize("value, expected", [("2", 2.0), ("0.25", 0.25), ("-3", 0.0), ("soon", None), (None, None)])
def test_retry_after_seconds(value, expected):
    assert http.parse_retry_after(value) == expected


def test_retry_after_http_date():
    later = datetime.now(timezone.utc) + timedelta(seconds=30)
    assert 25 <= http.parse_retry_after(format_datetime(later, usegmt=True)) <= 30


def test_backoff_grows_exponentially_with_jitter_and_a_cap():
    policy = remote.RetryPolicy(base_delay=0.5, max_delay=4.0)
    assert [policy.backoff(n, 0.5) for n in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 4.0]  # jitter factor 1.0
    assert policy.backoff(2, 0.0) == 0.5 and policy.backoff(2, 0.999) == pytest.approx(1.499)


def test_pause_wakes_up_on_abort():
    abort = threading.Event()
    client = remote.HttpClient("fal", abort=abort)
    aborted_at = abort_later(abort, 0.05)
    with pytest.raises(remote.RemoteCancelledError):
        client.pause(5.0)
    assert time.monotonic() - aborted_at[0] < 1  # woken by the abort, not at the end of the 5 s pause


def test_pause_longer_than_the_deadline_raises_at_once():
    client = remote.HttpClient("fal", deadline=remote.Deadline(0.2))
    started = time.monotonic()
    with pytest.raises(remote.RemoteTimeoutError):
        client.pause(1.0)
    assert time.monotonic() - started < 0.1


def test_redaction_of_keys_and_key_halves():
    key = submodule("pipelines.remote.keys").ApiKey("identifier-1:secret-part-2", "test")
    client = remote.HttpClient("fal", secrets=key.secrets())
    assert client.redact("a identifier-1:secret-part-2 b secret-part-2 c") == "a *** b *** c"
    assert "secret" not in repr(key) and "secret" not in str(key)


def test_never_sent_tells_refused_from_read_timeout():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(requests.ConnectionError) as refused:
        requests.get(f"http://127.0.0.1:{port}/", timeout=1)
    assert http.never_sent(refused.value)
    server = FakeServer(lambda hit: Response(200, {}, delay=0.3)).start()
    try:
        with pytest.raises(requests.ReadTimeout) as slow:
            requests.post(server.url, json={}, timeout=(1, 0.05))
        assert not http.never_sent(slow.value)
    finally:
        server.stop()


def test_download_counts_bytes_when_no_content_length_is_sent():
    body = b"x" * 200_000
    server = FakeServer(lambda hit: Response(200, body, content_type="image/png", chunked=True)).start()
    try:
        client = remote.HttpClient("fal")
        with pytest.raises(remote.DownloadError, match="larger than"):
            client.download(server.url + "/big.png", max_bytes=100_000)
        data, kind = client.download(server.url + "/big.png", max_bytes=300_000)
        assert len(data) == 200_000 and kind == "image/png"
    finally:
        server.stop()


def test_deadline_caps_the_read_timeout_of_a_slow_call():
    server = FakeServer(lambda hit: Response(200, {}, delay=1.0)).start()
    try:
        client = remote.HttpClient("fal", deadline=remote.Deadline(0.2),
                                   retry=remote.RetryPolicy(attempts=3, base_delay=0.01))
        started = time.monotonic()
        with pytest.raises(remote.RemoteTimeoutError):
            client.call("GET", server.url + "/slow", what="status")
        assert time.monotonic() - started < 0.6
    finally:
        server.stop()
