"""Validation: a base URL that cannot be right (control characters, spaces, bad ports, plain http to another
machine, credentials) is refused with a message naming base_url, before any request is sent."""

from __future__ import annotations

import pytest

from fakes.helpers import custom_settings, params, remote, solid
from packloader import submodule

custom = submodule("pipelines.remote.custom")

BAD_URLS = {
    "newline": ("http://127.0.0.1:8080/v1\nX-Injected: 1", "control or space character '\\n'"),
    "nul": ("https://api.example.com/\x00fal", "control or space character '\\x00'"),
    "tab": ("https://api.example.com/\tfal", "control or space character '\\t'"),
    "inner space": ("https://api.example .com/fal", "control or space character ' '"),
    "delete char": ("https://api.example.com/fal\x7f", "control or space character '\\x7f'"),
    "port 65536": ("https://api.example.com:65536/fal", "the port must be a number from 1 to 65535"),
    "port 0": ("https://api.example.com:0/fal", "the port must be a number from 1 to 65535"),
    "port not a number": ("https://api.example.com:abc/fal", "the port must be a number from 1 to 65535"),
    "plain http elsewhere": ("http://api.example.com/fal", "use https://"),
    "credentials": ("https://user:pw@api.example.com/fal", "must not contain credentials"),
    "no host": ("https:///fal", "expected an http(s) URL"),
    "other scheme": ("ftp://api.example.com/fal", "expected an http(s) URL"),
}


@pytest.mark.parametrize("case", list(BAD_URLS))
def test_bad_base_urls_are_refused_before_any_request(tmp_path, case):
    url, words = BAD_URLS[case]
    with pytest.raises(params.ParameterError) as info:
        remote.run_remote_variation(solid((1, 2, 3)), remote.RemoteRequest(provider="custom", base_url=url),
                                    settings=custom_settings(tmp_path))
    message = str(info.value)
    assert message.startswith("base_url=") and words in message
    assert "may have been created" not in message


@pytest.mark.parametrize("url", ["https://api.example.com/fal/", "http://localhost:8188/v1", "http://[::1]:9000",
                                 "https://api.example.com:443/fal"])
def test_good_base_urls_pass(url):
    assert custom.normalize_base_url(f"  {url}  ") == url.rstrip("/")
