"""Key leaks: whatever a server echoes or reflects (error texts, request ids, statuses, output URLs), the key
never reaches an error, a log line, `info` or another host; a loopback base URL never goes through a proxy."""

from __future__ import annotations

import json
import logging

import pytest

from fakes.helpers import (CUSTOM_KEY, FAL_KEY, WAVESPEED_KEY, custom_settings, exception_texts, fal_settings,
                           remote, solid, wavespeed_settings)
from fakes.fal import FakeFal
from fakes.server import FakeServer, Response

pytest_plugins = ["fakes.fixtures"]


@pytest.fixture
def logs(caplog):
    caplog.set_level(logging.DEBUG)
    return caplog


def run_failing(settings, request=remote.RemoteRequest()):
    with pytest.raises(remote.RemoteError) as info:
        remote.run_remote_variation(solid((1, 2, 3)), request, settings=settings)
    return exception_texts(info.value)


WAVESPEED_ECHOES = {
    "envelope 401": Response(200, {"code": 401, "message": f"invalid key Bearer {WAVESPEED_KEY}", "data": None}),
    "envelope 400": Response(200, {"code": 400, "message": f"bad request from {WAVESPEED_KEY}", "data": None}),
    "http 401": Response(401, {"code": 401, "message": f"Unauthorized: {WAVESPEED_KEY}", "data": None}),
    "http 500": Response(500, f"proxy error for Authorization: Bearer {WAVESPEED_KEY}", content_type="text/plain"),
    "not json": Response(200, f"<html>{WAVESPEED_KEY}</html>", content_type="text/html"),
}


@pytest.mark.parametrize("case", list(WAVESPEED_ECHOES))
def test_wavespeed_echoed_key_is_redacted(tmp_path, wavespeed_fake, logs, case):
    wavespeed_fake.fault("submit", WAVESPEED_ECHOES[case])
    text = run_failing(wavespeed_settings(tmp_path, wavespeed_fake), remote.RemoteRequest(provider="wavespeed"))
    assert "***" in text or case == "http 500"
    assert WAVESPEED_KEY not in text and WAVESPEED_KEY not in logs.text


def test_wavespeed_failed_task_echoing_the_key(tmp_path, wavespeed_fake, logs):
    wavespeed_fake.fail_with = (f"auth header was Bearer {WAVESPEED_KEY}", 1403)
    text = run_failing(wavespeed_settings(tmp_path, wavespeed_fake), remote.RemoteRequest(provider="wavespeed"))
    assert "task failed" in text and WAVESPEED_KEY not in text and WAVESPEED_KEY not in logs.text


def test_key_reflected_in_request_ids_stays_out_of_logs_info_and_progress(tmp_path, logs):
    fake = FakeFal(key=CUSTOM_KEY, scheme="Bearer", prefix="/v1/fal", id_prefix=f"req-{CUSTOM_KEY}-").start()
    try:
        events = []
        request = remote.RemoteRequest(provider="custom", base_url=fake.queue_url, sync_mode=True)  # inline images
        [result] = remote.run_remote_variation(solid((1, 2, 3)), request, settings=custom_settings(tmp_path),
                                               on_progress=events.append)
    finally:
        fake.stop()
    assert result.request_id.startswith("req-***-") and result.images
    assert CUSTOM_KEY not in json.dumps(result.info()) and CUSTOM_KEY not in logs.text
    assert all(CUSTOM_KEY not in (event.request_id or "") for event in events)


def test_key_reflected_in_a_status_and_a_failing_id(tmp_path, fal_fake, logs):
    fal_fake.fault("status", Response(202, {"status": f"WAITING-{FAL_KEY}\x1b[31m", "logs": []}))
    fal_fake.fault("result", Response(500, {"detail": f"crashed with key {FAL_KEY}"}), *[
        Response(500, {"detail": f"crashed with key {FAL_KEY}"})] * 4)
    text = run_failing(fal_settings(tmp_path, fal_fake))
    assert FAL_KEY not in text and FAL_KEY not in logs.text
    assert "WAITING-***" in logs.text and "\x1b" not in logs.text  # control characters never reach a log


def test_submit_reply_with_the_key_as_request_id(tmp_path, fal_fake, logs):
    fal_fake.fault("submit", Response(200, {"request_id": FAL_KEY, "status": "IN_QUEUE"}))
    text = run_failing(fal_settings(tmp_path, fal_fake))
    assert FAL_KEY not in text and FAL_KEY not in logs.text


def test_output_url_carrying_the_key_is_not_fetched(tmp_path, fal_fake, logs):
    fal_fake.fault("result", Response(200, {"images": [{"url": f"{fal_fake.cdn.url}/files/x.png?token={FAL_KEY}"}]}))
    text = run_failing(fal_settings(tmp_path, fal_fake))
    assert "its URL contains the API key; not fetched" in text and not fal_fake.hits_on("file")
    assert FAL_KEY not in text and FAL_KEY not in logs.text


def test_fal_key_id_and_secret_halves_are_redacted(tmp_path, fal_fake, logs):
    fal_fake.key = "identifier-1:secret-part-2"
    fal_fake.fault("submit", Response(403, {"detail": "bad secret secret-part-2 for id identifier-1"}))
    text = run_failing(fal_settings(tmp_path, fal_fake, environ={"FAL_KEY_ID": "identifier-1",
                                                                 "FAL_KEY_SECRET": "secret-part-2"}))
    assert "secret-part-2" not in text and "identifier-1" not in text and "secret-part-2" not in logs.text


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"])
def test_loopback_base_url_never_goes_through_a_proxy(tmp_path, monkeypatch, variable):
    proxied = []
    proxy = FakeServer(lambda hit: proxied.append(hit) or Response(502, "proxy")).start()
    fake = FakeFal(key=CUSTOM_KEY, scheme="Bearer", prefix="/v1/fal").start()
    try:
        monkeypatch.setenv(variable, proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        [result] = remote.run_remote_variation(
            solid((1, 2, 3)), remote.RemoteRequest(provider="custom", base_url=fake.queue_url),
            settings=custom_settings(tmp_path))
    finally:
        proxy.stop()
        fake.stop()
    assert result.images and not proxied  # the key went straight to 127.0.0.1, not in clear to the proxy


def test_requests_would_otherwise_use_the_proxy_for_loopback(monkeypatch):
    """The case the rule above guards: requests applies proxy variables to 127.0.0.1 too."""
    import requests
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    settings = requests.Session().merge_environment_settings("http://127.0.0.1:8080/x", {}, None, None, None)
    assert settings["proxies"].get("http") == "http://127.0.0.1:9"
