"""Images in and out of the hosted APIs: inputs become data URIs (PNG, else JPEG, under a size cap), outputs
(URL downloads, data URIs, bare base64) are checked for type and decoded with PIL."""

from __future__ import annotations

import base64
import binascii
import io
from typing import Callable, Union
from urllib.parse import unquote_to_bytes

import numpy as np
from PIL import Image

from ..params import ParameterError
from ..references import to_uint8
from .errors import DownloadError
from .keys import redacting_logger

log = redacting_logger(__name__)

# Data URIs travel inside the JSON body. 10 MiB keeps requests well inside what the providers document for
# inline files (UNCONFIRMED exact limits); Redux looks at the image at 384x384 anyway.
DEFAULT_MAX_UPLOAD_BYTES = 10 * 2**20
DEFAULT_MAX_DOWNLOAD_BYTES = 64 * 2**20  # one output image; a 4096x4096 PNG is about 50 MB at worst
JPEG_QUALITY = 95
GENERIC_BINARY_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream"})
# Redux looks at the input at 384x384: a larger side only costs encoding time (a 8000x6000 PNG takes tens of
# seconds) and upload size, so inputs are shrunk to this longest side first.
MAX_INPUT_SIDE = 2048
# An output may differ a little from the requested size (a provider rounding), never by this factor in area:
# a tiny PNG that claims 12000x12000 pixels would otherwise become a 1.6 GiB tensor.
OUTPUT_AREA_SLACK = 4

ImageInput = Union[Image.Image, np.ndarray, str]


class ImageTooLargeError(ParameterError):
    """The input image does not fit the upload cap, even as JPEG."""


def encode_input_image(image: ImageInput, *, max_bytes: int = DEFAULT_MAX_UPLOAD_BYTES) -> str:
    """Return what goes into the request's image field: a data URI, or an http(s) URL passed through."""
    if isinstance(image, str):
        return _checked_reference(image, max_bytes)
    picture = shrink_for_upload(to_pil(image))
    png = _data_uri("image/png", _encode(picture, "PNG"))
    if len(png) <= max_bytes:
        return png
    jpeg = _data_uri("image/jpeg", _encode(picture.convert("RGB"), "JPEG", quality=JPEG_QUALITY))
    if len(jpeg) <= max_bytes:
        log.info("input image sent as JPEG: the PNG would be %.1f MB, over the %.1f MB upload limit",
                 len(png) / 2**20, max_bytes / 2**20)
        return jpeg
    raise ImageTooLargeError(
        "image", f"{picture.width}x{picture.height} image",
        f"upload would be {len(png) / 2**20:.1f} MB as PNG and {len(jpeg) / 2**20:.1f} MB as JPEG, over the "
        f"{max_bytes / 2**20:.1f} MB limit; downscale it (Redux sees it at 384x384 anyway) or pass a URL")


def shrink_for_upload(picture: Image.Image) -> Image.Image:
    """At most MAX_INPUT_SIDE pixels on the longest side, aspect kept."""
    if max(picture.size) <= MAX_INPUT_SIDE:
        return picture
    smaller = picture.copy()
    smaller.thumbnail((MAX_INPUT_SIDE, MAX_INPUT_SIDE), Image.LANCZOS)
    log.info("input image %dx%d shrunk to %dx%d before upload (Redux sees it at 384x384)",
             *picture.size, *smaller.size)
    return smaller


def to_pil(image: Image.Image | np.ndarray) -> Image.Image:
    """PIL image from a PIL image or an HxW / HxWxC array (uint8 or other integers as 0..255, float in 0..1,
    or float data in 0..255), with the local engine's conversion rules."""
    if isinstance(image, Image.Image):
        return image if image.mode in ("RGB", "RGBA", "L") else image.convert("RGB")
    if not isinstance(image, np.ndarray):
        raise ParameterError("image", type(image).__name__, "expected a PIL image, an array, or a URL string")
    array = image
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ParameterError("image", f"array of shape {tuple(image.shape)}", "expected HxW, HxWx3 or HxWx4")
    try:
        array = to_uint8(array)
    except ValueError as exc:
        raise ParameterError("image", f"array of shape {tuple(image.shape)}", str(exc)) from None
    return Image.fromarray(np.ascontiguousarray(array))


def decode_image(content: bytes, content_type: str | None, *, source: str,
                 redact: Callable[[str], str] = str, requested: tuple[int, int] | None = None) -> Image.Image:
    """Decode downloaded bytes into an RGB image, refusing non-image content types and undecodable data, and
    (from the header, before decoding) pixel sizes far beyond the `requested` (width, height).
    `redact` cleans the quoted start of a non-image body (an error page might echo credentials)."""
    kind = (content_type or "").split(";")[0].strip().lower()
    if not (kind.startswith("image/") or kind in GENERIC_BINARY_TYPES):
        preview = redact(content[:4096].decode("utf-8", errors="replace"))[:80]  # redact, then cut
        raise DownloadError(f"{source} is {kind}, not an image: {preview!r}")
    try:
        with Image.open(io.BytesIO(content)) as picture:
            if requested and picture.width * picture.height > OUTPUT_AREA_SLACK * requested[0] * requested[1]:
                raise DownloadError(f"{source} is {picture.width}x{picture.height} pixels for a requested "
                                    f"{requested[0]}x{requested[1]}; refused before decoding")
            picture.load()
            return picture.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DownloadError(f"{source} could not be decoded as an image ({type(exc).__name__}: {exc})") from None


def parse_data_uri(uri: str, *, max_bytes: int, source: str) -> tuple[bytes, str]:
    """(bytes, mime type) from a data: URI, refusing payloads over max_bytes before decoding them."""
    header, comma, payload = uri.partition(",")
    if not comma or not header.startswith("data:"):
        raise DownloadError(f"{source} is not a valid data URI")
    if len(payload) * 3 // 4 > max_bytes:
        raise DownloadError(f"{source} is larger than the {max_bytes / 2**20:.1f} MB limit; refused")
    mime = header[5:].split(";")[0]
    try:
        content = base64.b64decode(payload, validate=True) if header.endswith(";base64") else unquote_to_bytes(payload)
    except (binascii.Error, ValueError):
        raise DownloadError(f"{source} has invalid base64 data") from None
    return content, mime


def decode_base64(text: str, *, max_bytes: int, source: str) -> bytes:
    """Bytes of a bare base64 string (WaveSpeed's enable_base64_output), with the same size cap."""
    if len(text) * 3 // 4 > max_bytes:
        raise DownloadError(f"{source} is larger than the {max_bytes / 2**20:.1f} MB limit; refused")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise DownloadError(f"{source} is neither a URL, a data URI nor valid base64") from None


def _checked_reference(reference: str, max_bytes: int) -> str:
    if reference.startswith(("https://", "http://")):
        return reference
    if reference.startswith("data:image/"):
        if len(reference) > max_bytes:
            raise ImageTooLargeError("image", f"data URI of {len(reference) / 2**20:.1f} MB",
                                     f"over the {max_bytes / 2**20:.1f} MB upload limit")
        return reference
    raise ParameterError("image", reference[:40] + ("..." if len(reference) > 40 else ""),
                         "expected an image, an http(s) URL or a data:image/... URI")


def _encode(picture: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _data_uri(mime: str, content: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(content).decode('ascii')}"
