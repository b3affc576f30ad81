"""custom provider: fal's queue paths under a user base URL, Bearer auth, URLs rebuilt from that base."""

from __future__ import annotations

import pytest

from fakes.helpers import CUSTOM_KEY, custom_settings, params, remote, solid
from fakes.server import Response

pytest_plugins = ["fakes.fixtures"]  # fal_fake, wavespeed_fake, custom_fake


def run(fake, tmp_path, base_url=None, settings=None, **request):
    request.setdefault("image_size", "square")
    return remote.run_remote_variation(
        [solid((10, 200, 10))],
        remote.RemoteRequest(provider="custom", base_url=base_url or fake.queue_url, **request),
        settings=settings or custom_settings(tmp_path))


@pytest.mark.parametrize("model", ["dev", "schnell"])
def test_bearer_auth_and_urls_rebuilt_from_the_base(custom_fake, tmp_path, model):
    (result,) = run(custom_fake, tmp_path, model=model)
    submit = custom_fake.hits_on("submit")[0]
    assert submit.path == f"/v1/fal/fal-ai/flux-1/{model}/redux"
    assert submit.header("Authorization") == f"Bearer {CUSTOM_KEY}"
    assert all(hit.path.startswith(f"/v1/fal/fal-ai/flux-1/requests/{result.request_id}")
               for hit in custom_fake.hits_on("status") + custom_fake.hits_on("result"))
    assert not custom_fake.hits_on("decoy")  # the reply's status_url/response_url were ignored
    assert result.images


def test_trailing_slash_in_base_url(custom_fake, tmp_path):
    (result,) = run(custom_fake, tmp_path, base_url=custom_fake.queue_url + "/")
    assert result.images


def test_sync_mode_goes_through_the_queue_with_inline_outputs(custom_fake, tmp_path):
    (result,) = run(custom_fake, tmp_path, sync_mode=True)
    assert custom_fake.hits_on("submit")[0].json()["sync_mode"] is True
    assert not custom_fake.hits_on("file") and result.images


def test_aggregator_answering_the_submit_directly(custom_fake, tmp_path):
    inline = Response(200, {"images": [{"url": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1Pe"
                                               "AAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"}], "seed": 7},
                      headers={"x-fal-request-id": "direct-1"})
    custom_fake.fault("submit", inline)
    (result,) = run(custom_fake, tmp_path)
    assert result.request_id == "direct-1" and result.seed == 7 and result.images[0].size == (1, 1)


def test_interrupt_cancels_under_the_base(custom_fake, tmp_path):
    custom_fake.default_plan = (1000, 0)
    seen = []
    with pytest.raises(remote.RemoteCancelledError):
        remote.run_remote_variation([solid((1, 2, 3))], remote.RemoteRequest(
            provider="custom", base_url=custom_fake.queue_url, image_size="square"),
            settings=custom_settings(tmp_path), on_progress=seen.append,
            should_abort=lambda: any(event.state == "queued" for event in seen))
    (cancel,) = custom_fake.hits_on("cancel")
    assert cancel.path.startswith("/v1/fal/") and cancel.header("Authorization") == f"Bearer {CUSTOM_KEY}"
    assert custom_fake.cancels == list(custom_fake.jobs)


def test_missing_key_names_the_custom_variable(custom_fake, tmp_path):
    with pytest.raises(remote.MissingKeyError, match="REDUX_CUSTOM_API_KEY"):
        run(custom_fake, tmp_path, settings=custom_settings(tmp_path, environ={"FAL_KEY": "not-used-here"}))


@pytest.mark.parametrize("base_url", ["", "   ", "ftp://example.com/fal", "http://example.com/fal",
                                      "https://user:pw@example.com/fal", "https://example.com/fal?key=abc"])
def test_bad_base_urls_are_refused_before_any_call(custom_fake, tmp_path, base_url):
    with pytest.raises(params.ParameterError) as caught:
        remote.run_remote_variation([solid((0, 0, 0))], remote.RemoteRequest(provider="custom", base_url=base_url),
                                    settings=custom_settings(tmp_path))
    assert caught.value.name == "base_url"
    assert "pw" not in str(caught.value) and "key=abc" not in str(caught.value)
    assert custom_fake.hits == []
