"""Output images: encoded once by the worker, then kept as files behind unguessable, expiring URLs or put
inline (data URIs for fal's sync_mode, bare base64 for WaveSpeed's enable_base64_output).

Stored results name files by a relative path ("/files/<token>.<ext>"); `absolute` turns them into URLs on
whatever host name the client used to reach the server.
"""

from __future__ import annotations

import base64
import io
import secrets

from PIL import Image

CONTENT_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
EXTENSIONS = {"jpeg": "jpg", "png": "png", "webp": "webp"}
FILES_PATH = "/files/"
JPEG_QUALITY = 95


def encode(picture: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    options = {"quality": JPEG_QUALITY} if fmt in ("jpeg", "webp") else {}
    picture.save(buffer, format=fmt.upper(), **options)
    return buffer.getvalue()


def store_images(store, pictures: list[Image.Image], fmt: str, inline: bool, expires_at: float,
                 data_uri: bool = True) -> list[dict]:
    """[{"url", "width", "height", "content_type"}]: inline data (data URI or bare base64) or a file path."""
    kind, items = CONTENT_TYPES[fmt], []
    for picture in pictures:
        data = encode(picture, fmt)
        if inline:
            text = base64.b64encode(data).decode("ascii")
            url = f"data:{kind};base64,{text}" if data_uri else text
        else:
            token = f"{secrets.token_urlsafe(24)}.{EXTENSIONS[fmt]}"
            store.put_file(token, data, kind, expires_at)
            url = FILES_PATH + token
        items.append({"url": url, "width": picture.width, "height": picture.height, "content_type": kind})
    return items


def absolute(url: str, base_url: str) -> str:
    return base_url.rstrip("/") + url if url.startswith(FILES_PATH) else url
