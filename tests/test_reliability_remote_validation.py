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


# -- hostile provider replies (issue 18, class 4) ---------------------------------------------------------------
# Python's json reads NaN and recurses once per nesting level: a reply nested 200,000 arrays deep ended in a bare
# RecursionError naming neither the provider nor the request.

from fakes.helpers import fal_settings, wavespeed_settings  # noqa: E402
from fakes.server import Response  # noqa: E402

pytest_plugins = ["fakes.fixtures"]  # fal_fake, wavespeed_fake
http = submodule("pipelines.remote.http")
DEEP = "[" * 200_000 + "]" * 200_000
HOSTILE_REPLIES = {
    "200,000 arrays deep": (DEEP, "nested deeper than 64 levels"),
    "objects 100 deep": ('{"a":' * 100 + "1" + "}" * 100, "nested deeper than 64 levels"),
    "NaN": ('{"status": "COMPLETED", "queue_position": NaN}', "it holds NaN, which is not a JSON number"),
    "Infinity": ('{"status": "COMPLETED", "queue_position": -Infinity}', "it holds -Infinity"),
    "1e999": ('{"status": "COMPLETED", "queue_position": 1e999}', "the number 1e999, too large for a float"),
}


def fal_run(fake, tmp_path):
    return remote.run_remote_variation([solid((200, 20, 20))], remote.RemoteRequest(
        provider="fal", image_size="square", output_format="png"), settings=fal_settings(tmp_path, fake))


@pytest.mark.parametrize("case", list(HOSTILE_REPLIES))
def test_hostile_status_replies_are_one_line_naming_the_provider(fal_fake, tmp_path, case):
    body, words = HOSTILE_REPLIES[case]
    fal_fake.fault("status", *[Response(200, body, content_type="application/json")] * 6)
    with pytest.raises(remote.ProviderError) as info:
        fal_run(fal_fake, tmp_path)
    message = str(info.value)
    assert message.startswith("fal (request ") and "the status reply is unusable JSON" in message
    assert words in message and "\n" not in message and len(message) < 400
    assert fal_fake.cancels == list(fal_fake.jobs)  # the job was still cancelled at the provider


def test_a_hostile_submit_reply_is_not_resent(fal_fake, tmp_path):
    fal_fake.fault("submit", Response(200, DEEP, content_type="application/json"))
    with pytest.raises(remote.ProviderError) as info:
        fal_run(fal_fake, tmp_path)
    assert "nested deeper than 64 levels" in str(info.value) and "may have been created" in str(info.value)
    assert len(fal_fake.hits_on("submit")) == 1


def test_a_deep_error_body_is_still_an_error_reply(fal_fake, tmp_path):
    fal_fake.fault("submit", Response(422, DEEP[:3000] + DEEP[-3000:], content_type="application/json"))
    with pytest.raises(remote.ProviderError) as info:
        fal_run(fal_fake, tmp_path)
    assert str(info.value).startswith("fal reported an error (submit, HTTP 422)")


def test_wavespeed_deep_reply_names_wavespeed(wavespeed_fake, tmp_path):
    wavespeed_fake.fault("submit", Response(200, DEEP, content_type="application/json"))
    with pytest.raises(remote.ProviderError) as info:
        remote.run_remote_variation([solid((1, 2, 3))], remote.RemoteRequest(provider="wavespeed", output_format="png"),
                                    settings=wavespeed_settings(tmp_path, wavespeed_fake))
    assert str(info.value).startswith("wavespeed") and "nested deeper than 64 levels" in str(info.value)


def test_reply_depth_limit_is_exact():
    assert http.parse_json("[" * 64 + "]" * 64) is not None
    with pytest.raises(ValueError, match="nested deeper than 64 levels"):
        http.parse_json("[" * 65 + "]" * 65)
