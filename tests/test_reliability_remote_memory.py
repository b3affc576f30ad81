"""Memory: replies are checked against the request (image count, pixel size) before decoding, API replies
have a size cap, and huge input images are shrunk before they are encoded."""

from __future__ import annotations

import base64
import io
import time

import pytest
from PIL import Image

from fakes.cli_runs import bomb_png
from fakes.helpers import exception_texts, fal_settings, params, remote, solid, wavespeed_settings
from fakes.pictures import render
from fakes.server import Response

pytest_plugins = ["fakes.fixtures"]


def data_uri(content: bytes, kind: str = "image/png") -> str:
    return f"data:{kind};base64,{base64.b64encode(content).decode()}"


def result_with(images: list[str]) -> Response:
    return Response(200, {"images": [{"url": url} for url in images], "seed": 1, "has_nsfw_concepts": [],
                          "timings": {"inference": 0.1}})


def test_more_images_than_requested_are_refused(tmp_path, fal_fake):
    one = data_uri(render((1, 2, 3), 512, 512, "png"))
    fal_fake.fault("result", result_with([one] * 40))
    with pytest.raises(remote.ProviderError, match="returned 40 images for num_images=1; refused"):
        remote.run_remote_variation(solid((1, 2, 3)), remote.RemoteRequest(image_size="square"),
                                    settings=fal_settings(tmp_path, fal_fake))


def test_wavespeed_outputs_beyond_num_images_are_refused(tmp_path, wavespeed_fake):
    picture = base64.b64encode(render((1, 2, 3), 256, 256, "png")).decode()
    envelope = {"code": 200, "message": "success",
                "data": {"id": "t1", "status": "completed", "outputs": [picture] * 3}}
    wavespeed_fake.fault("submit", Response(200, envelope))
    with pytest.raises(remote.ProviderError, match="returned 3 images for num_images=2"):
        remote.run_remote_variation(solid((1, 2, 3)), remote.RemoteRequest(provider="wavespeed", num_images=2,
                                                                           sync_mode=True),
                                    settings=wavespeed_settings(tmp_path, wavespeed_fake))


def test_a_tiny_file_claiming_huge_pixels_is_refused_before_decoding(tmp_path, fal_fake):
    bomb = bomb_png(tmp_path / "bomb.png", side=12000).read_bytes()
    assert len(bomb) < 1000
    fal_fake.fault("result", result_with([data_uri(bomb)]))
    started = time.monotonic()
    with pytest.raises(remote.DownloadError, match="is 12000x12000 pixels for a requested 512x512; refused"):
        remote.run_remote_variation(solid((1, 2, 3)), remote.RemoteRequest(image_size="square"),
                                    settings=fal_settings(tmp_path, fal_fake))
    assert time.monotonic() - started < 5


def test_a_slightly_different_output_size_is_accepted(tmp_path, fal_fake):
    fal_fake.fault("result", result_with([data_uri(render((9, 9, 9), 528, 512, "png"))]))
    [result] = remote.run_remote_variation(solid((1, 2, 3)), remote.RemoteRequest(image_size="square"),
                                           settings=fal_settings(tmp_path, fal_fake))
    assert result.images[0].size == (528, 512)


@pytest.mark.parametrize("chunked", [False, True])
def test_oversized_status_reply_is_refused_while_reading(tmp_path, fal_fake, chunked):
    huge = {"status": "IN_PROGRESS", "logs": [{"message": "x" * 1024}] * 5000}  # about 5.2 MB
    fal_fake.fault("status", Response(202, huge, chunked=chunked))
    with pytest.raises(remote.DownloadError, match=r"the status reply is larger than the 4.0 MB limit"):
        remote.run_remote_variation(solid((1, 2, 3)), remote.RemoteRequest(),
                                    settings=fal_settings(tmp_path, fal_fake))
    assert fal_fake.cancels  # the job does not keep running


def test_inline_images_get_room_in_the_result_reply(tmp_path, fal_fake):
    """The cap on replies that carry images scales with num_images and the per-image limit."""
    noisy = Image.frombytes("RGB", (1200, 1200), bytes(range(256)) * (1200 * 1200 * 3 // 256))
    buffer = io.BytesIO()
    noisy.save(buffer, format="PNG", compress_level=0)  # about 4.3 MB: over the plain reply cap
    fal_fake.fault("result", result_with([data_uri(buffer.getvalue())]))
    [result] = remote.run_remote_variation(solid((1, 2, 3)), remote.RemoteRequest(),
                                           settings=fal_settings(tmp_path, fal_fake))
    assert result.images[0].size == (1200, 1200)


def test_huge_input_images_are_shrunk_before_encoding():
    started = time.monotonic()
    uri = remote.encode_input_image(Image.new("RGB", (8000, 6000), (200, 10, 10)))
    elapsed = time.monotonic() - started
    with Image.open(io.BytesIO(base64.b64decode(uri.partition(",")[2]))) as sent:
        assert sent.size == (2048, 1536)
    assert elapsed < 10


def test_uint8_and_0_255_float_arrays_upload_like_the_local_engine():
    import numpy as np
    for array in (np.full((8, 8, 3), 100, np.uint8), np.full((8, 8, 3), 100.0, np.float32)):
        uri = remote.encode_input_image(array)
        with Image.open(io.BytesIO(base64.b64decode(uri.partition(",")[2]))) as sent:
            assert sent.getpixel((0, 0)) == (100, 100, 100)
    with pytest.raises(params.ParameterError, match="NaN or infinite"):
        remote.encode_input_image(np.full((8, 8, 3), np.nan, np.float32))


def test_error_texts_stay_short(tmp_path, fal_fake):
    fal_fake.fault("submit", Response(400, {"detail": "y" * 100_000}))
    with pytest.raises(remote.ProviderError) as info:
        remote.run_remote_variation(solid((1, 2, 3)), remote.RemoteRequest(),
                                    settings=fal_settings(tmp_path, fal_fake))
    assert len(str(info.value)) < 700 and len(exception_texts(info.value)) < 5000
