"""WaveSpeed provider against the fake v3 API: envelope, polling, sync mode (incl. 5004), failures, cancel."""

from __future__ import annotations

import pytest

from fakes.helpers import WAVESPEED_KEY, close, params, pixel, remote, solid, wavespeed_settings
from fakes.server import Response

pytest_plugins = ["fakes.fixtures"]  # fal_fake, wavespeed_fake, custom_fake

BLUE = (20, 40, 220)


def run(fake, tmp_path, settings=None, **request):
    request.setdefault("image_size", "square")
    request.setdefault("output_format", "png")
    return remote.run_remote_variation([solid(BLUE)], remote.RemoteRequest(provider="wavespeed", **request),
                                       settings=settings or wavespeed_settings(tmp_path, fake))


def test_async_success_polls_created_processing_completed(wavespeed_fake, tmp_path):
    events = []
    (result,) = remote.run_remote_variation(
        [solid(BLUE)], remote.RemoteRequest(provider="wavespeed", image_size="square", output_format="png",
                                            num_inference_steps=30, guidance_scale=4.0, enable_safety_checker=True),
        settings=wavespeed_settings(tmp_path, wavespeed_fake), on_progress=events.append)
    submit = wavespeed_fake.hits_on("submit")[0]
    body = submit.json()
    assert submit.header("Authorization") == f"Bearer {WAVESPEED_KEY}"
    assert body["image"].startswith("data:image/png;base64,")
    assert {k: v for k, v in body.items() if k != "image"} == {
        "size": "512*512", "num_inference_steps": 30, "guidance_scale": 4.0, "num_images": 1, "seed": -1,
        "enable_sync_mode": False, "enable_base64_output": False, "output_format": "png",
        "enable_safety_checker": True}
    assert len(wavespeed_fake.hits_on("result")) == 3
    assert [e.state for e in events] == ["submitting", "queued", "running", "downloading", "done"]
    assert result.images[0].size == (512, 512) and close(pixel(result.images[0]), BLUE)
    assert result.seed is None  # -1 sent, and WaveSpeed does not report the seed it picked
    assert result.timings["inference_s"] == pytest.approx(1.234)
    assert all(hit.header("Authorization") is None for hit in wavespeed_fake.hits_on("file"))
    assert not wavespeed_fake.hits_on("decoy")  # urls.get is never trusted


def test_seed_and_webp_and_four_images(wavespeed_fake, tmp_path):
    (result,) = run(wavespeed_fake, tmp_path, seed=2**31 - 1, output_format="webp", num_images=4,
                    image_size="custom", width=1536, height=256)
    body = wavespeed_fake.hits_on("submit")[0].json()
    assert body["seed"] == 2**31 - 1 and body["output_format"] == "webp" and body["size"] == "1536*256"
    assert result.seed == 2**31 - 1 and len(result.images) == 4 and result.images[0].size == (1536, 256)


@pytest.mark.parametrize("style", ["raw", "data_uri"])
def test_sync_mode_returns_inline_base64(wavespeed_fake, tmp_path, style):
    wavespeed_fake.base64_style = style
    (result,) = run(wavespeed_fake, tmp_path, sync_mode=True, num_images=2)
    body = wavespeed_fake.hits_on("submit")[0].json()
    assert body["enable_sync_mode"] is True and body["enable_base64_output"] is True
    assert not wavespeed_fake.hits_on("result") and not wavespeed_fake.hits_on("file")
    assert [pixel(image)[0] for image in result.images] == [20, 28]


def test_sync_mode_server_timeout_5004_falls_back_to_polling(wavespeed_fake, tmp_path):
    wavespeed_fake.sync = "timeout"
    (result,) = run(wavespeed_fake, tmp_path, sync_mode=True)
    assert len(wavespeed_fake.hits_on("result")) >= 1 and result.images
    assert not wavespeed_fake.hits_on("decoy")


def test_failed_task_reports_error_and_code(wavespeed_fake, tmp_path):
    wavespeed_fake.fail_with = ("content flagged", 1200)
    with pytest.raises(remote.ProviderError) as caught:
        run(wavespeed_fake, tmp_path)
    assert "failed: content flagged; code 1200: rejected by moderation" in str(caught.value)
    assert not wavespeed_fake.cancels  # a finished task needs no cancel


def test_error_envelope_with_http_200(wavespeed_fake, tmp_path):
    wavespeed_fake.fault("submit", Response(200, {"code": 500, "message": "internal error", "data": None}))
    with pytest.raises(remote.ProviderError, match="internal error"):
        run(wavespeed_fake, tmp_path)


def test_http_400_envelope_message(wavespeed_fake, tmp_path):
    wavespeed_fake.fault("submit", Response(400, {"code": 400, "message": "invalid parameter: image is required",
                                                  "data": None}))
    with pytest.raises(remote.ProviderError, match="invalid parameter: image is required"):
        run(wavespeed_fake, tmp_path)


def test_wrong_key(wavespeed_fake, tmp_path):
    settings = wavespeed_settings(tmp_path, wavespeed_fake, environ={"WAVESPEED_API_KEY": "not-the-right-key"})
    with pytest.raises(remote.KeyRejectedError, match="invalid api key") as caught:
        run(wavespeed_fake, tmp_path, settings=settings)
    assert "not-the-right-key" not in str(caught.value) and "WAVESPEED_API_KEY" in str(caught.value)


def test_result_poll_429_then_success(wavespeed_fake, tmp_path):
    wavespeed_fake.fault("result", Response(429, {"code": 429, "message": "rate limited"},
                                            headers={"Retry-After": "0"}))
    (result,) = run(wavespeed_fake, tmp_path)
    assert result.images and len(wavespeed_fake.hits_on("submit")) == 1


def test_interrupt_deletes_the_task(wavespeed_fake, tmp_path):
    wavespeed_fake.plan = (1000, 0)
    seen = []
    with pytest.raises(remote.RemoteCancelledError):
        remote.run_remote_variation([solid(BLUE)], remote.RemoteRequest(provider="wavespeed", image_size="square"),
                                    settings=wavespeed_settings(tmp_path, wavespeed_fake), on_progress=seen.append,
                                    should_abort=lambda: any(event.state == "queued" for event in seen))
    assert wavespeed_fake.cancels == list(wavespeed_fake.tasks)
    assert wavespeed_fake.hits_on("cancel")[0].method == "DELETE"


@pytest.mark.parametrize("case, name", [
    (dict(model="schnell"), "model"), (dict(image_size="custom", width=2048, height=512), "width"),
    (dict(image_size="custom", width=512, height=128), "height"), (dict(seed=2**31), "seed"),
    (dict(acceleration="regular"), "acceleration"), (dict(output_format="gif"), "output_format"),
    (dict(num_inference_steps=51), "num_inference_steps"),
])
def test_validation_before_network(wavespeed_fake, tmp_path, case, name):
    with pytest.raises(params.ParameterError) as caught:
        run(wavespeed_fake, tmp_path, **case)
    assert caught.value.name == name
    assert wavespeed_fake.hits == []


def test_missing_key_message(wavespeed_fake, tmp_path):
    with pytest.raises(remote.MissingKeyError, match="WAVESPEED_API_KEY"):
        run(wavespeed_fake, tmp_path, settings=wavespeed_settings(tmp_path, wavespeed_fake, environ={}))
    assert wavespeed_fake.hits == []
