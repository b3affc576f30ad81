"""Input images: data URIs always; http(s) URLs only when the operator switched them on.

URL fetching guards against a request steering the server at the operator's own network: every hop
(redirects are followed by hand, at most MAX_REDIRECTS) must resolve to public addresses only, unless its
host is on the operator's allow list; bytes, pixels and time are capped.
"""

from __future__ import annotations

import io
import ipaddress
import socket
import time
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urljoin, urlsplit

import requests
from PIL import Image

from ..params import ParameterError
from ..remote.http import CallWatch, WatchedAdapter
from ..remote.images import parse_data_uri
from ..remote.errors import DownloadError

MAX_REDIRECTS = 3


@dataclass(frozen=True)
class InputLimits:
    max_bytes: int = 10 * 2**20
    max_pixels: int = 40_000_000
    url_timeout_s: float = 20.0
    urls_allowed: bool = False
    allow_hosts: tuple[str, ...] = ()  # host or host:port reachable even on private addresses
    resolve: Callable = field(default=socket.getaddrinfo, compare=False, repr=False)


class InputError(ParameterError):
    """The input image cannot be used; names the field and says why."""


def load_image(field_name: str, ref: str, limits: InputLimits) -> Image.Image:
    """Decode the request's image reference into an RGB picture."""
    if ref.startswith("data:"):
        try:
            content, _ = parse_data_uri(ref, max_bytes=limits.max_bytes, source=field_name)
        except DownloadError as exc:
            raise InputError(field_name, ref[:40] + "...", str(exc)) from None
    else:
        content = fetch_url(field_name, ref, limits)
    return decode(field_name, content, limits)


def decode(field_name: str, content: bytes, limits: InputLimits) -> Image.Image:
    try:
        with Image.open(io.BytesIO(content)) as picture:
            if picture.width * picture.height > limits.max_pixels:
                raise InputError(field_name, f"{picture.width}x{picture.height} image",
                                 f"larger than this server's limit of {limits.max_pixels} pixels")
            picture.load()
            return picture.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(field_name, f"{len(content)} bytes", f"not a readable image ({type(exc).__name__})") from None


def fetch_url(field_name: str, url: str, limits: InputLimits) -> bytes:
    """The image at `url`, within the byte and time caps: a watch shuts the socket when the time is up, so a
    server that trickles its reply cannot hold the worker (requests' read timeout is per byte gap)."""
    if not limits.urls_allowed:
        raise InputError(field_name, url[:60], "image URLs are switched off on this server; send a data URI")
    deadline = time.monotonic() + limits.url_timeout_s
    with CallWatch(limits.url_timeout_s, None) as watch, requests.Session() as session:
        session.trust_env = False  # no proxy or netrc from the server's environment
        for scheme in ("http://", "https://"):
            session.mount(scheme, WatchedAdapter())
        try:
            content = _follow(field_name, url, limits, deadline, session)
        except requests.RequestException as exc:
            content, error = None, f"could not fetch the image ({type(exc).__name__})"
        if watch.fired:  # a reply cut by the watch may even parse as a short, complete one
            raise InputError(field_name, url[:80], f"download took longer than {limits.url_timeout_s} s")
        if content is None:
            raise InputError(field_name, url[:80], error)
        return content


def _follow(field_name: str, url: str, limits: InputLimits, deadline: float, session: requests.Session) -> bytes:
    for _ in range(MAX_REDIRECTS + 1):
        check_destination(field_name, url, limits)
        remaining = max(deadline - time.monotonic(), 0.1)
        with session.get(url, stream=True, allow_redirects=False, timeout=(min(5.0, remaining), remaining),
                         headers={"User-Agent": "flux-redux-server"}) as reply:
            if reply.is_redirect:
                url = urljoin(url, reply.headers.get("Location", ""))
                continue
            if reply.status_code != 200:
                raise InputError(field_name, url[:80], f"the image URL answered HTTP {reply.status_code}")
            return _read_capped(field_name, reply, limits, deadline)
    raise InputError(field_name, url[:80], f"more than {MAX_REDIRECTS} redirects")


def _read_capped(field_name: str, reply: requests.Response, limits: InputLimits, deadline: float) -> bytes:
    chunks, size = [], 0
    for chunk in reply.iter_content(65536):
        size += len(chunk)
        if size > limits.max_bytes:
            raise InputError(field_name, reply.url[:80], f"the image is larger than {limits.max_bytes} bytes")
        if time.monotonic() > deadline:
            raise InputError(field_name, reply.url[:80], f"download took longer than {limits.url_timeout_s} s")
        chunks.append(chunk)
    return b"".join(chunks)


def check_destination(field_name: str, url: str, limits: InputLimits) -> None:
    """Refuse a hop to a non-public address (loopback, private, link-local...) unless its host is allowed."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(field_name, url[:80], "expected an http(s) URL")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:  # urllib's "Port out of range"
        raise InputError(field_name, url[:80], "invalid port (expected 1-65535)") from None
    if parts.hostname in limits.allow_hosts or f"{parts.hostname}:{port}" in limits.allow_hosts:
        return
    try:
        addresses = {info[4][0] for info in limits.resolve(parts.hostname, port, proto=socket.IPPROTO_TCP)}
    except OSError:
        raise InputError(field_name, url[:80], f"cannot resolve {parts.hostname}") from None
    for address in addresses:
        if not ipaddress.ip_address(address.split("%")[0]).is_global:
            raise InputError(field_name, url[:80], f"{parts.hostname} resolves to a non-public address; "
                                                   "add it to --url-allow-host if it is meant to be reachable")
