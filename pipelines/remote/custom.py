"""Aggregators that re-expose fal's Redux endpoints under their own base URL with `Authorization: Bearer`.

The protocol is fal's queue (fal.py); only the base URL, the auth scheme and the key variable differ. fal.py
already rebuilds status/result/cancel URLs from the configured base and ignores the URLs in the replies,
which for aggregators may still point at queue.fal.run. With sync_mode there is no separate direct host:
`sync_mode: true` goes in the queued request and the result carries data URIs.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from ..params import ParameterError
from .fal import FalProvider

LOCAL_HOSTS = frozenset({"localhost"})


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
    parts = urlsplit(text)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ParameterError("base_url", text, "expected an http(s) URL such as https://api.example.com/fal")
    if parts.scheme == "http" and not _is_local(parts.hostname):
        raise ParameterError("base_url", text, "use https:// (plain http would send the key unencrypted; "
                                               "it is allowed only for localhost)")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ParameterError("base_url", f"{parts.scheme}://{parts.hostname}/...",
                             "must not contain credentials, a query or a fragment; put the key in "
                             "REDUX_CUSTOM_API_KEY instead")
    return text.rstrip("/")


def _is_local(host: str) -> bool:
    if host in LOCAL_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
