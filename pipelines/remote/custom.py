"""Aggregators that re-expose fal's Redux endpoints under their own base URL with `Authorization: Bearer`.

The protocol is fal's queue (fal.py); only the base URL, the auth scheme and the key variable differ. fal.py
already rebuilds status/result/cancel URLs from the configured base and ignores the URLs in the replies,
which for aggregators may still point at queue.fal.run. With sync_mode there is no separate direct host:
`sync_mode: true` goes in the queued request and the result carries data URIs.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from ..params import ParameterError
from .fal import FalProvider
from .http import is_loopback_host


class CustomProvider(FalProvider):
    name = "custom"
    key_name = "custom"
    auth_scheme = "Bearer"

    def __init__(self, base_url: str | None):
        super().__init__(queue_url=normalize_base_url(base_url), run_url=None)


def normalize_base_url(base_url: str | None) -> str:
    """Check a user-supplied base URL: https (plain http only for this machine), no credentials or query."""
    text = (base_url or "").strip()
    if not text:
        raise ParameterError("base_url", base_url,
                             "the custom provider needs a base URL, e.g. https://api.example.com/fal")
    bad = next((ch for ch in text if not ch.isprintable() or ch.isspace()), None)
    if bad is not None:
        raise ParameterError("base_url", text, f"contains the control or space character {bad!r}; expected a "
                                               "plain URL such as https://api.example.com/fal")
    parts = urlsplit(text)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ParameterError("base_url", text, "expected an http(s) URL such as https://api.example.com/fal")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port is not None and not 1 <= port <= 65535:
        raise ParameterError("base_url", text, "the port must be a number from 1 to 65535")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise ParameterError("base_url", text, "use https:// (plain http would send the key unencrypted; "
                                               "it is allowed only for localhost)")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ParameterError("base_url", f"{parts.scheme}://{parts.hostname}/...",
                             "must not contain credentials, a query or a fragment; put the key in "
                             "REDUX_CUSTOM_API_KEY instead")
    return text.rstrip("/")
