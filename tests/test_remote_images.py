"""Input encoding (PNG, JPEG fallback, size cap, URL pass-through) and output decoding checks."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from fakes.helpers import params, remote
from fakes.pictures import render
from packloader import submodule

images = submodule("pipelines.remote.images")


def decode_uri(uri: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(uri.partition(",")[2])))


def noise(size=256, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def test_small_image_goes_as_lossless_png():
    picture = Image.new("RGB", (40, 30), (12, 34, 56))
    uri = remote.encode_input_image(picture)
    assert uri.startswith("data:image/png;base64,")
    decoded = decode_uri(uri)
    assert decoded.size == (40, 30) and decoded.getpixel((5, 5)) == (12, 34, 56)


def test_float_array_in_0_1_is_accepted():
    array = np.full((8, 8, 3), 0.5, dtype=np.float32)
    assert decode_uri(remote.encode_input_image(array)).getpixel((0, 0)) == (128, 128, 128)


def test_png_over_the_cap_falls_back_to_jpeg():
    picture = noise()  # noise: PNG ~197 kB, JPEG q95 much smaller
    png_size = len(remote.encode_input_image(picture, max_bytes=10**7))
    uri = remote.encode_input_image(picture, max_bytes=png_size - 1)
    assert uri.startswith("data:image/jpeg;base64,") and len(uri) < png_size


def test_too_large_even_as_jpeg_is_a_parameter_error_naming_sizes():
    with pytest.raises(remote.ImageTooLargeError) as caught:
        remote.encode_input_image(noise(), max_bytes=20_000)
    assert isinstance(caught.value, params.ParameterError) and caught.value.name == "image"
    message = str(caught.value)
    assert "MB as PNG" in message and "MB as JPEG" in message and "MB limit" in message and "downscale" in message


def test_cap_is_checked_before_any_request(tmp_path):
    settings = remote.ClientSettings(environ={"FAL_KEY": "k" * 12}, key_file=tmp_path / "none.json",
                                     max_upload_bytes=20_000, endpoints={"fal_queue": "http://127.0.0.1:9"})
    with pytest.raises(remote.ImageTooLargeError):
        remote.run_remote_variation([noise()], remote.RemoteRequest(), settings=settings)


def test_url_and_data_uri_strings():
    assert remote.encode_input_image("https://example.com/a.png") == "https://example.com/a.png"
    small = "data:image/png;base64,AAAA"
    assert remote.encode_input_image(small) == small
    with pytest.raises(remote.ImageTooLargeError):
        remote.encode_input_image("data:image/png;base64," + "A" * 100, max_bytes=50)
    with pytest.raises(params.ParameterError, match="expected an image"):
        remote.encode_input_image("/home/me/picture.png")


def test_bad_arrays_are_refused():
    with pytest.raises(params.ParameterError, match="HxW"):
        remote.encode_input_image(np.zeros((2, 8, 8, 3)))


def test_decode_accepts_images_and_octet_stream():
    png = render((1, 2, 3), 4, 4, "png")
    assert images.decode_image(png, "image/png", source="t").getpixel((0, 0)) == (1, 2, 3)
    assert images.decode_image(png, "application/octet-stream", source="t").size == (4, 4)
    assert images.decode_image(png, None, source="t").size == (4, 4)


def test_decode_refuses_other_types_and_garbage():
    with pytest.raises(remote.DownloadError, match="application/json, not an image"):
        images.decode_image(b'{"error": "expired"}', "application/json", source="t")
    with pytest.raises(remote.DownloadError, match="could not be decoded"):
        images.decode_image(b"GIF89a-not-really", "image/gif", source="t")


def test_data_uri_and_base64_outputs_are_capped():
    payload = base64.b64encode(b"x" * 3000).decode()
    with pytest.raises(remote.DownloadError, match="larger than"):
        images.parse_data_uri("data:image/png;base64," + payload, max_bytes=1000, source="t")
    with pytest.raises(remote.DownloadError, match="larger than"):
        images.decode_base64(payload, max_bytes=1000, source="t")
    with pytest.raises(remote.DownloadError, match="neither a URL"):
        images.decode_base64("not base64 at all!", max_bytes=1000, source="t")
