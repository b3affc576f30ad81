"""The fakes checked against the official clients (test-only dependencies): if fal-client and the wavespeed
SDK can drive them, the fakes speak the protocols our client is tested against."""

from __future__ import annotations

import base64
import io

import fal_client
import fal_client.client as fal_client_module
import httpx
import pytest
import wavespeed
from PIL import Image

from fakes.helpers import FAL_KEY, WAVESPEED_KEY
from fakes.pictures import render

pytest_plugins = ["fakes.fixtures"]  # fal_fake, wavespeed_fake, custom_fake

DEV = "fal-ai/flux-1/dev/redux"
SCHNELL = "fal-ai/flux-1/schnell/redux"


def data_uri(color=(9, 99, 199)) -> str:
    return "data:image/png;base64," + base64.b64encode(render(color, 16, 16, "png")).decode()


@pytest.fixture
def fal(fal_fake, monkeypatch):
    """fal-client pointed at the fake: its URL prefixes are module globals read at call time."""
    monkeypatch.setattr(fal_client_module, "QUEUE_URL_FORMAT", fal_fake.queue_url + "/")
    monkeypatch.setattr(fal_client_module, "RUN_URL_FORMAT", fal_fake.run.url + "/")
    return fal_client.SyncClient(key=FAL_KEY)


def test_fal_client_queue_round_trip(fal, fal_fake):
    handle = fal.submit(DEV, arguments={"image_url": data_uri(), "image_size": "square", "num_images": 2,
                                        "output_format": "png", "seed": 2**63 + 1})
    events = list(handle.iter_events(with_logs=True, interval=0.01))
    assert [type(event).__name__ for event in events] == ["Queued", "InProgress", "Completed"]
    assert events[0].position == 0 and events[1].logs and events[2].metrics == {"inference_time": 0.01}
    result = handle.get()
    assert result["seed"] == 2**63 + 1 and len(result["images"]) == 2
    picture = Image.open(io.BytesIO(httpx.get(result["images"][0]["url"]).content))
    assert picture.size == (512, 512) and picture.convert("RGB").getpixel((0, 0)) == (9, 99, 199)
    assert fal_fake.hits_on("status")[0].query == {"logs": "true"}


def test_fal_client_cancel(fal, fal_fake):
    fal_fake.default_plan = (1000, 0)
    handle = fal.submit(SCHNELL, arguments={"image_url": data_uri()})
    assert isinstance(handle.status(), fal_client.Queued)
    handle.cancel()
    assert fal_fake.cancels == [handle.request_id]


def test_fal_client_sees_422_detail_list(fal, fal_fake):
    handle = fal.submit(SCHNELL, arguments={"image_url": data_uri(), "num_inference_steps": 28})
    with pytest.raises(fal_client.FalClientHTTPError) as caught:
        handle.get()
    assert caught.value.status_code == 422
    assert caught.value.message[0]["msg"] == "Input should be less than or equal to 12"
    assert caught.value.message[0]["loc"] == ["body", "num_inference_steps"]


def test_fal_client_sync_run_gets_data_uris(fal):
    result = fal.run(DEV, arguments={"image_url": data_uri(), "image_size": "square", "sync_mode": True})
    assert result["images"][0]["url"].startswith("data:image/jpeg;base64,")


def test_fal_client_subscribe_with_queue_updates(fal):
    updates = []
    result = fal.subscribe(DEV, arguments={"image_url": data_uri(), "image_size": "square"}, with_logs=True,
                           interval=0.01, on_queue_update=updates.append)
    assert result["images"] and isinstance(updates[-1], fal_client.Completed)


def test_fal_client_rejected_key(fal_fake, monkeypatch):
    monkeypatch.setattr(fal_client_module, "QUEUE_URL_FORMAT", fal_fake.queue_url + "/")
    with pytest.raises(fal_client.FalClientHTTPError) as caught:
        fal_client.SyncClient(key="wrong").submit(DEV, arguments={"image_url": data_uri()})
    assert caught.value.status_code == 401


@pytest.fixture
def ws(wavespeed_fake):
    return wavespeed.Client(api_key=WAVESPEED_KEY, base_url=wavespeed_fake.url, retry_interval=0.01)


def test_wavespeed_sdk_async_run(ws, wavespeed_fake):
    output = ws.run("wavespeed-ai/flux-redux-dev", {"image": data_uri(), "size": "512*256", "num_images": 2},
                    poll_interval=0.01)
    assert len(output["outputs"]) == 2 and output["outputs"][0].startswith(wavespeed_fake.url + "/media/")
    picture = Image.open(io.BytesIO(httpx.get(output["outputs"][1]).content))
    assert picture.size == (512, 256)
    assert len(wavespeed_fake.hits_on("result")) == 3


def test_wavespeed_sdk_sync_mode(ws, wavespeed_fake):
    output = ws.run("wavespeed-ai/flux-redux-dev", {"image": data_uri(), "enable_base64_output": True},
                    enable_sync_mode=True)
    assert base64.b64decode(output["outputs"][0])[:2] == b"\xff\xd8"  # a JPEG, inline
    assert not wavespeed_fake.hits_on("result")


def test_wavespeed_sdk_sync_timeout_5004(ws, wavespeed_fake):
    wavespeed_fake.sync = "timeout"
    outcome = ws.run_no_throw("wavespeed-ai/flux-redux-dev", {"image": data_uri()}, enable_sync_mode=True)
    assert outcome["status"] == "processing" and outcome["task_id"] in wavespeed_fake.tasks
    polled = ws.get_result(outcome["task_id"])
    assert polled["data"]["status"] in ("processing", "completed")


def test_wavespeed_sdk_failed_task(ws, wavespeed_fake):
    wavespeed_fake.fail_with = ("bad input image", 1402)
    with pytest.raises(RuntimeError, match="Prediction failed .*bad input image"):
        ws.run("wavespeed-ai/flux-redux-dev", {"image": data_uri()}, poll_interval=0.01)


def test_wavespeed_sdk_rejected_key_and_invalid_size(wavespeed_fake):
    with pytest.raises(RuntimeError, match="HTTP 401"):
        wavespeed.Client(api_key="wrong", base_url=wavespeed_fake.url).run(
            "wavespeed-ai/flux-redux-dev", {"image": data_uri()})
    with pytest.raises(RuntimeError, match="HTTP 400.*size"):
        wavespeed.Client(api_key=WAVESPEED_KEY, base_url=wavespeed_fake.url).run(
            "wavespeed-ai/flux-redux-dev", {"image": data_uri(), "size": "2048*2048"})

