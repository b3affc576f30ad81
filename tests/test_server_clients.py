"""Real clients against the server running the real engine on tiny models: the pack's remote client
(provider custom, as the remote node uses it), the official fal-client, and the official WaveSpeed SDK."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
import time

import fal_client
import fal_client.client as fal_client_module
import httpx
import numpy as np
import pytest
import wavespeed
from PIL import Image

from fakes.helpers import settings as client_settings
from packloader import submodule
from server_support import ALICE, DEV, KEYS, SCHNELL, Receiver, StandIn, data_uri, local_server

remote = submodule("pipelines.remote")
server_engine = submodule("pipelines.server.engine")
validation = submodule("pipelines.server.validation")
cache = submodule("pipelines.cache")
params = submodule("pipelines.params")
TINY = {"image_size": {"width": 256, "height": 256}, "num_inference_steps": 1}


@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    engine = server_engine.ReduxEngine(models["root"], device="cpu")
    with local_server(tmp_path_factory.mktemp("server"), [engine]) as running:
        yield running


@pytest.fixture
def fal(server, monkeypatch):
    monkeypatch.setattr(fal_client_module, "QUEUE_URL_FORMAT", server.url + "/")
    monkeypatch.setattr(fal_client_module, "RUN_URL_FORMAT", server.url + "/sync/")
    return fal_client.SyncClient(key=KEYS["alice"])


def custom_request(server, **fields):
    values = dict(provider="custom", base_url=server.url, image_size="custom", width=256, height=256,
                  num_inference_steps=1)
    values.update(fields)
    return remote.RemoteRequest(**values)


def custom_settings(tmp_path, **overrides):
    overrides.setdefault("deadline_s", 600.0)  # a bound, not a target: a loaded CI machine is slow
    return client_settings(tmp_path, environ={"REDUX_CUSTOM_API_KEY": KEYS["bob"]}, **overrides)


@pytest.mark.parametrize("model", ["dev", "schnell"])
def test_remote_client_custom_provider(server, tmp_path, model):
    seen = []
    (result,) = remote.run_remote_variation([Image.new("RGB", (40, 40), (10, 120, 230))],
                                            custom_request(server, model=model, seed=11, output_format="png"),
                                            settings=custom_settings(tmp_path), on_progress=seen.append)
    assert result.seed == 11 and result.images[0].size == (256, 256) and result.has_nsfw == [False]
    assert result.timings["inference_s"] > 0
    assert {"queued", "done"} <= {event.state for event in seen}
    job = server.service.store.get(result.request_id)
    assert job.owner == "bob" and job.model == f"fal-ai/flux-1/{model}/redux"
    loads = cache.CACHE.loads
    remote.run_remote_variation([Image.new("RGB", (40, 40), (9, 9, 9))], custom_request(server, model=model),
                                settings=custom_settings(tmp_path))
    assert cache.CACHE.loads == loads  # the worker kept its models loaded


def test_server_output_is_the_engines_output(server, models, tmp_path):
    picture = Image.new("RGB", (40, 40), (240, 200, 10))
    (result,) = remote.run_remote_variation([picture], custom_request(server, seed=5, output_format="png",
                                                                      sync_mode=True),
                                            settings=custom_settings(tmp_path))
    engine = server_engine.ReduxEngine(models["root"], device="cpu")
    generation = params.validate_generation("dev", "custom", 256, 256, 1, None, 5)
    inputs = validation.JobInputs(generation, "", "png", True)
    direct = engine.run(inputs, picture, lambda: False, lambda line: None).images[0]
    assert np.array_equal(np.asarray(result.images[0]), np.asarray(direct))


def test_remote_client_interrupt_cancels_the_running_job(server, tmp_path):
    seen = []
    with pytest.raises(remote.RemoteCancelledError):
        remote.run_remote_variation([Image.new("RGB", (40, 40), (1, 2, 3))],
                                    custom_request(server, num_inference_steps=50),
                                    settings=custom_settings(tmp_path, poll_interval=0.05), on_progress=seen.append,
                                    should_abort=lambda: any(event.state == "running" for event in seen))
    request_id = next(event.request_id for event in seen if event.request_id)
    deadline = time.monotonic() + 120
    while not (job := server.service.store.get(request_id)).done:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert job.error_type == "request_cancelled"
    steps = [line["message"] for line in job.logs if line["message"].startswith("step ")]
    assert len(steps) < 50  # stopped between steps, well before the end


def test_fal_client_queue_events_and_result(fal):
    handle = fal.submit(DEV, arguments={"image_url": data_uri(), **TINY, "seed": 2**63 + 1, "output_format": "png"})
    events = list(handle.iter_events(with_logs=True, interval=0.05))
    assert isinstance(events[-1], fal_client.Completed) and events[-1].metrics["inference_time"] > 0
    assert any(isinstance(event, (fal_client.Queued, fal_client.InProgress)) for event in events[:-1])
    result = handle.get()
    assert result["seed"] == 2**63 + 1
    picture = Image.open(io.BytesIO(httpx.get(result["images"][0]["url"]).content))
    assert picture.size == (256, 256)


def test_fal_client_cancel_and_422(fal, server):
    busy = fal.submit(DEV, arguments={"image_url": data_uri(), **TINY, "num_inference_steps": 8})
    waiting = fal.submit(SCHNELL, arguments={"image_url": data_uri(), **TINY})
    waiting.cancel()
    status = waiting.status()
    assert isinstance(status, fal_client.Completed) and status.error == "Request was cancelled"
    invalid = fal.submit(SCHNELL, arguments={"image_url": data_uri(), "num_inference_steps": 28})
    with pytest.raises(fal_client.FalClientHTTPError) as caught:
        invalid.get()
    assert caught.value.status_code == 422
    assert caught.value.message[0]["loc"] == ["body", "num_inference_steps"]
    assert busy.get()["images"]


def test_fal_client_sync_run_and_subscribe(fal):
    result = fal.run(SCHNELL, arguments={"image_url": data_uri(), **TINY, "sync_mode": True})
    assert result["images"][0]["url"].startswith("data:image/jpeg;base64,")
    updates = []
    result = fal.subscribe(DEV, arguments={"image_url": data_uri(), **TINY}, with_logs=True, interval=0.05,
                           on_queue_update=updates.append)
    assert result["images"] and isinstance(updates[-1], fal_client.Completed)


def test_wavespeed_sdk(server):
    client = wavespeed.Client(api_key=KEYS["alice"], base_url=server.url, retry_interval=0.05)
    body = {"image": data_uri(), "size": "256*256", "num_inference_steps": 1, "seed": -1}
    output = client.run("wavespeed-ai/flux-redux-dev", body, poll_interval=0.05)
    picture = Image.open(io.BytesIO(httpx.get(output["outputs"][0]).content))
    assert picture.size == (256, 256)
    inline = client.run("wavespeed-ai/flux-redux-dev", dict(body, enable_base64_output=True, output_format="webp"),
                        enable_sync_mode=True)
    assert Image.open(io.BytesIO(base64.b64decode(inline["outputs"][0]))).format == "WEBP"
    with pytest.raises(RuntimeError, match="HTTP 400.*size"):
        client.run("wavespeed-ai/flux-redux-dev", dict(body, size="2048*2048"))
    with pytest.raises(RuntimeError, match="HTTP 401"):
        wavespeed.Client(api_key="wrong-key-0123456789", base_url=server.url).run("wavespeed-ai/flux-redux-dev", body)
    assert httpx.post(f"{server.url}/api/v3/wavespeed-ai/flux-redux-schnell", json=body, headers=ALICE).status_code == 404


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1, made with the openssl command (Debian's openssl package)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


def test_https_with_the_servers_own_certificate(tmp_path, certificate, monkeypatch):
    cert, key = certificate
    with local_server(tmp_path, [StandIn(seconds=0.01)], tls_cert=str(cert), tls_key=str(key)) as server:
        assert server.url.startswith("https://127.0.0.1:")
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))  # the client trusts this certificate only
        (result,) = remote.run_remote_variation([Image.new("RGB", (8, 8), (0, 0, 200))],
                                                custom_request(server, seed=3), settings=custom_settings(tmp_path))
        assert result.seed == 3 and result.images[0].size == (256, 256)
        with pytest.raises(httpx.HTTPError):
            httpx.get(server.url.replace("https", "http") + "/health")


def test_real_engine_serves_custom_sizes_fal_accepts(fal):
    """Sizes that are not multiples of 16 (fal takes any whole number): rounded, generated, and reported."""
    result = fal.run(DEV, arguments={"image_url": data_uri(), "image_size": {"width": 100, "height": 250},
                                     "num_inference_steps": 1, "output_format": "png", "sync_mode": True})
    image = result["images"][0]
    assert (image["width"], image["height"]) == (96, 256)
    picture = Image.open(io.BytesIO(base64.b64decode(image["url"].split(",", 1)[1])))
    assert picture.size == (96, 256)


def test_fal_client_start_timeout_priority_and_webhook_switched_off(fal):
    result = fal.subscribe(SCHNELL, arguments={"image_url": data_uri(), **TINY}, priority="normal",
                           start_timeout=60)
    assert result["images"]
    with pytest.raises(fal_client.FalClientHTTPError) as low:
        fal.submit(SCHNELL, arguments={"image_url": data_uri(), **TINY}, priority="low")
    assert low.value.status_code == 422 and "arrival order" in str(low.value.message)
    with pytest.raises(fal_client.FalClientHTTPError) as hook:
        fal.submit(SCHNELL, arguments={"image_url": data_uri(), **TINY}, webhook_url="https://example.com/hook")
    assert hook.value.status_code == 422 and "--allow-webhooks" in str(hook.value.message)


def test_fal_client_webhook_url(tmp_path, monkeypatch):
    receiver = Receiver()
    settings = dict(webhooks=True, url_allow_hosts=(receiver.host,))
    try:
        with local_server(tmp_path, [StandIn(seconds=0.01)], **settings) as server:
            monkeypatch.setattr(fal_client_module, "QUEUE_URL_FORMAT", server.url + "/")
            client = fal_client.SyncClient(key=KEYS["alice"])
            handle = client.submit(DEV, arguments={"image_url": data_uri(), "image_size": "square", "seed": 9},
                                   webhook_url=receiver.url)
            (hit,) = receiver.wait_for(1)
            body = hit.json()
            assert body["request_id"] == handle.request_id and body["status"] == "OK"
            assert body["payload"] == handle.get() and body["payload"]["seed"] == 9
    finally:
        receiver.stop()


FAL_OVER_HTTPS = """
import base64, io, sys
import fal_client
from PIL import Image
buffer = io.BytesIO()
Image.new("RGB", (8, 8), (0, 200, 0)).save(buffer, "PNG")
image = fal_client.encode_image(Image.open(buffer), "png")  # a data URI: nothing goes to fal's storage
out = fal_client.run("fal-ai/flux-1/schnell/redux", arguments={"image_url": image, "image_size": "square",
                                                               "sync_mode": True})
handle = fal_client.submit("fal-ai/flux-1/dev/redux", arguments={"image_url": image, "image_size": "square"})
print(out["images"][0]["width"], handle.get()["images"][0]["url"].split("://")[0])
"""


def test_fal_client_over_https_as_the_readme_says(tmp_path, certificate):
    """fal-client builds https:// URLs from FAL_QUEUE_RUN_HOST / FAL_RUN_HOST: the README's recipe (serve
    --tls-cert, the client trusting it with SSL_CERT_FILE, images as encode_image data URIs) end to end."""
    cert, key = certificate
    with local_server(tmp_path, [StandIn(seconds=0.01)], tls_cert=str(cert), tls_key=str(key)) as server:
        host = server.url.removeprefix("https://")
        env = {"FAL_KEY": KEYS["alice"], "FAL_QUEUE_RUN_HOST": host, "FAL_RUN_HOST": f"{host}/sync",
               "SSL_CERT_FILE": str(cert), "PATH": "/usr/bin:/bin"}
        done = subprocess.run([sys.executable, "-c", FAL_OVER_HTTPS], capture_output=True, text=True, timeout=120,
                              env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["512", "https"]
