"""Images for the fakes: solid colours, so a test can tell which input produced which output."""

from __future__ import annotations

import base64
import functools
import io

from PIL import Image

CONTENT_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}


@functools.lru_cache(maxsize=256)
def render(color: tuple[int, int, int], width: int, height: int, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format=fmt.upper())
    return buffer.getvalue()


def color_of_data_uri(uri: str) -> tuple[int, int, int]:
    """The top-left pixel of an image sent as a data URI (gray for anything else)."""
    if not isinstance(uri, str) or not uri.startswith("data:image/"):
        return (128, 128, 128)
    raw = base64.b64decode(uri.partition(",")[2])
    with Image.open(io.BytesIO(raw)) as picture:
        return picture.convert("RGB").getpixel((0, 0))


def shifted(color: tuple[int, int, int], index: int) -> tuple[int, int, int]:
    """The colour of output image `index`: the input colour, red channel nudged so images differ."""
    return ((color[0] + 8 * index) % 256, color[1], color[2])
