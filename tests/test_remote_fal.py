"""fal provider against the fake queue: success paths, errors, retries, cancel, concurrency."""

from __future__ import annotations

import logging
import socket
import time

import pytest

from fakes.helpers import FAL_KEY, close, exception_texts, fal_settings, params, pixel, remote, settings, solid
from fakes.server import Response

pytest_plugins = ["fakes.fixtures"]  # fal_fake, wavespeed_fake, custom_fake

RED = (200, 20, 20)


def run(fake, tmp_path, images=None, settings=None, **request):
    request.setdefault("image_size", "square")
    request.setdefault("output_format", "png")
    return remote.run_remote_variation(images if images is not None else [solid(RED)],
                                       remote.RemoteRequest(provider="fal", **request),
                                       settings=settings or fal_settings(tmp_path, fake))


def test_dev_queue_success_sends_spec_fields_and_polls_to_completion(fal_fake, tmp_path):
    events = []
    results = remote.run_remote_variation(
        [solid(RED)], remote.RemoteRequest(provider="fal", model="dev", image_size="square", output_format="png",
                                           num_inference_steps=20, guidance_scale=4.5, acceleration="regular",
                                           enable_safety_checker=True),
        settings=fal_settings(tmp_path, fal_fake), on_progress=events.append)
    (result,) = results
    submit = fal_fake.hits_on("submit")[0]
    body = submit.json()
    assert submit.path == "/fal-ai/flux-1/dev/redux"
    assert submit.header("Authorization") == f"Key {FAL_KEY}"
    assert body["image_url"].startswith("data:image/png;base64,")
    assert {k: v for k, v in body.items() if k != "image_url"} == {
        "image_size": "square", "num_inference_steps": 20, "guidance_scale": 4.5, "num_images": 1,
        "sync_mode": False, "enable_safety_checker": True, "output_format": "png", "acceleration": "regular"}
    assert len(fal_fake.hits_on("status")) == 3  # IN_QUEUE, IN_PROGRESS, COMPLETED
    assert all(hit.path == f"/fal-ai/flux-1/requests/{result.request_id}/status" for hit in fal_fake.hits_on("status"))
    assert result.images[0].size == (512, 512) and close(pixel(result.images[0]), RED)
    states = [event.state for event in events]
    assert states == ["submitting", "queued", "queued", "running", "downloading", "done"]
    assert [event.queue_position for event in events if event.state == "queued"] == [1, 0]
    assert {"queue_s", "run_s", "download_s", "total_s", "inference_s"} <= set(result.timings)


def test_schnell_sends_no_guidance_and_its_own_default_steps(fal_fake, tmp_path):
    (result,) = run(fal_fake, tmp_path, model="schnell")
    body = fal_fake.hits_on("submit")[0].json()
    assert fal_fake.hits_on("submit")[0].path == "/fal-ai/flux-1/schnell/redux"
    assert "guidance_scale" not in body and body["num_inference_steps"] == params.VARIANTS["schnell"].steps.default
    assert fal_fake.hits_on("status")[0].path.startswith("/fal-ai/flux-1/requests/")
    assert len(result.images) == 1


def test_four_images_and_custom_size(fal_fake, tmp_path):
    (result,) = run(fal_fake, tmp_path, num_images=4, image_size="custom", width=320, height=256)
    assert fal_fake.hits_on("submit")[0].json()["image_size"] == {"width": 320, "height": 256}
    assert [image.size for image in result.images] == [(320, 256)] * 4
    assert [pixel(image)[0] for image in result.images] == [200, 208, 216, 224]  # the fake's per-image shift
    assert result.has_nsfw == [False] * 4


def test_seed_round_trip_including_seeds_above_2_63(fal_fake, tmp_path):
    big = 2**63 + 12345
    (fixed,) = run(fal_fake, tmp_path, seed=big)
    assert fal_fake.hits_on("submit")[0].json()["seed"] == big and fixed.seed == big
    (picked,) = run(fal_fake, tmp_path, seed=None)
    assert "seed" not in fal_fake.hits_on("submit")[1].json()  # None: omitted, the provider picks
    assert isinstance(picked.seed, int) and picked.seed == fal_fake.jobs[picked.request_id].output["seed"]


def test_sync_mode_uses_the_direct_endpoint_and_data_uris(fal_fake, tmp_path):
    (result,) = run(fal_fake, tmp_path, sync_mode=True, num_images=2)
    run_hit = fal_fake.hits_on("run")[0]
    assert run_hit.path == "/fal-ai/flux-1/dev/redux" and run_hit.json()["sync_mode"] is True
    assert not fal_fake.hits_on("submit") and not fal_fake.hits_on("file")  # nothing queued, nothing downloaded
    assert result.request_id.startswith("run-") and len(result.images) == 2


def test_downloads_never_carry_the_key(fal_fake, tmp_path):
    run(fal_fake, tmp_path, num_images=2)
    files = fal_fake.hits_on("file")
    assert len(files) == 2 and all(hit.header("Authorization") is None for hit in files)


@pytest.mark.parametrize("status", [401, 403])
def test_rejected_key(fal_fake, tmp_path, status):
    fal_fake.fault("submit", Response(status, {"detail": "Invalid key"}))
    with pytest.raises(remote.KeyRejectedError) as caught:
        run(fal_fake, tmp_path)
    assert "rejected the API key" in str(caught.value) and f"HTTP {status}" in str(caught.value)
    assert "FAL_KEY in the environment" in str(caught.value)  # says where the key came from, not what it is
    assert len(fal_fake.hits_on("submit")) == 1


def test_wrong_key_gets_401_from_the_fake(fal_fake, tmp_path):
    settings = fal_settings(tmp_path, fal_fake, environ={"FAL_KEY": "some-other-key-value"})
    with pytest.raises(remote.KeyRejectedError):
        run(fal_fake, tmp_path, settings=settings)


def test_422_detail_list_becomes_field_messages(fal_fake, tmp_path):
    fal_fake.fault("result", Response(422, {"detail": [
        {"loc": ["body", "num_inference_steps"], "msg": "Input should be less than or equal to 12",
         "type": "less_than_equal", "input": 28}]}))
    with pytest.raises(remote.ProviderError) as caught:
        run(fal_fake, tmp_path)
    assert "num_inference_steps: Input should be less than or equal to 12" in str(caught.value)
    assert caught.value.status == 422 and caught.value.request_id


def test_422_detail_string(fal_fake, tmp_path):
    fal_fake.fault("submit", Response(422, {"detail": "Could not download the image"}))
    with pytest.raises(remote.ProviderError, match="Could not download the image"):
        run(fal_fake, tmp_path)


def test_the_fakes_own_validation_reads_like_the_issue_asks(fal_fake, tmp_path):
    """Bypassing the client's checks, the fake's 422 at the result URL still turns into a field message."""
    auth = {"Authorization": f"Key {FAL_KEY}"}
    http = remote.HttpClient("fal", error_detail=remote.FalProvider.error_detail)
    reply = http.call("POST", f"{fal_fake.queue_url}/fal-ai/flux-1/schnell/redux", what="submit", submit=True,
                      json={"image_url": "https://example.com/a.png", "num_inference_steps": 28}, headers=auth)
    base = f"{fal_fake.queue_url}/fal-ai/flux-1/requests/{reply.data['request_id']}"
    while http.call("GET", base + "/status", what="status", headers=auth).data["status"] != "COMPLETED":
        pass
    with pytest.raises(remote.ProviderError, match="num_inference_steps: Input should be less than or equal to 12"):
        http.call("GET", base, what="result", headers=auth)


def test_429_on_submit_is_retried_after_retry_after(fal_fake, tmp_path):
    fal_fake.fault("submit", Response(429, {"detail": "Too many requests"}, headers={"Retry-After": "0.3"}))
    started = time.monotonic()
    (result,) = run(fal_fake, tmp_path)
    assert time.monotonic() - started >= 0.3
    assert len(fal_fake.hits_on("submit")) == 2 and len(fal_fake.jobs) == 1 and result.images


def test_retry_after_beyond_the_limit_fails_fast(fal_fake, tmp_path):
    fal_fake.fault("submit", Response(429, {"detail": "slow down"}, headers={"Retry-After": "3600"}))
    started = time.monotonic()
    with pytest.raises(remote.ServiceUnavailableError, match="retry after 3600 s"):
        run(fal_fake, tmp_path)
    assert time.monotonic() - started < 1


def test_500_then_success_on_status_polls(fal_fake, tmp_path):
    fal_fake.fault("status", Response(500, {"detail": "boom"}), Response(502, "bad gateway"))
    (result,) = run(fal_fake, tmp_path)
    assert result.images and len(fal_fake.hits_on("status")) == 5


def test_500_on_submit_is_not_retried(fal_fake, tmp_path):
    fal_fake.fault("submit", Response(500, {"detail": "internal"}))
    with pytest.raises(remote.ServiceUnavailableError, match="may have been created"):
        run(fal_fake, tmp_path)
    assert len(fal_fake.hits_on("submit")) == 1


def test_submit_accepted_but_reply_lost_is_not_resent(fal_fake, tmp_path):
    fal_fake.fault("submit", Response(action="drop_after"))
    with pytest.raises(remote.ServiceUnavailableError, match="may have been created"):
        run(fal_fake, tmp_path)
    assert len(fal_fake.hits_on("submit")) == 1 and len(fal_fake.jobs) == 1


def test_connection_refused_is_retried_then_reported(tmp_path, caplog):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"  # closed again at once: nothing listens there
    caplog.set_level(logging.WARNING)
    with pytest.raises(remote.ServiceUnavailableError, match="could not connect") as caught:
        run(None, tmp_path, settings=settings(tmp_path, environ={"FAL_KEY": FAL_KEY},
                                              endpoints={"fal_queue": dead, "fal_run": dead}))
    assert "4 attempt(s)" in str(caught.value)
    assert sum("retry" in record.getMessage() for record in caplog.records) == 3  # refused: safe to resend


def test_read_timeout_on_a_poll_is_retried(fal_fake, tmp_path):
    fal_fake.fault("status", Response(202, {"status": "IN_QUEUE"}, delay=0.5))
    settings = fal_settings(tmp_path, fal_fake, timeouts=remote.Timeouts(connect=1.0, read=0.1))
    (result,) = run(fal_fake, tmp_path, settings=settings)
    assert result.images


def test_read_timeout_on_submit_is_not_retried(fal_fake, tmp_path):
    fal_fake.fault("submit", Response(action="drop_after", delay=0.5))
    settings = fal_settings(tmp_path, fal_fake, timeouts=remote.Timeouts(connect=1.0, read=0.1))
    with pytest.raises(remote.ServiceUnavailableError, match="no reply before the read timeout"):
        run(fal_fake, tmp_path, settings=settings)
    assert len(fal_fake.hits_on("submit")) == 1


def test_deadline_cancels_the_job(fal_fake, tmp_path):
    fal_fake.default_plan = (1000, 0)  # stays IN_QUEUE
    settings = fal_settings(tmp_path, fal_fake, deadline_s=0.3)
    started = time.monotonic()
    with pytest.raises(remote.RemoteTimeoutError, match="0.3 s deadline"):
        run(fal_fake, tmp_path, settings=settings)
    assert time.monotonic() - started < 1.5
    assert fal_fake.cancels == list(fal_fake.jobs)


def test_malformed_json_once_is_retried(fal_fake, tmp_path):
    fal_fake.fault("status", Response(200, "<html>proxy hiccup</html>", content_type="text/html"))
    (result,) = run(fal_fake, tmp_path)
    assert result.images


def test_malformed_json_always_fails_and_cancels(fal_fake, tmp_path):
    fal_fake.fault("status", *[Response(200, "{not json", content_type="application/json")] * 4)
    with pytest.raises(remote.ProviderError, match="status reply is not JSON"):
        run(fal_fake, tmp_path)
    assert fal_fake.cancels == list(fal_fake.jobs)


def test_malformed_submit_reply_is_not_resent(fal_fake, tmp_path):
    fal_fake.fault("submit", Response(200, "oops", content_type="text/plain"))
    with pytest.raises(remote.ProviderError, match="may have been created"):
        run(fal_fake, tmp_path)
    assert len(fal_fake.hits_on("submit")) == 1


def test_failed_job_reports_the_provider_error_without_retrying_the_result(fal_fake, tmp_path):
    fal_fake.fail_with = "CUDA out of memory"
    with pytest.raises(remote.ProviderError, match="failed: CUDA out of memory"):
        run(fal_fake, tmp_path)
    assert len(fal_fake.hits_on("result")) == 1 and not fal_fake.cancels


def test_oversized_download_is_refused(fal_fake, tmp_path):
    settings = fal_settings(tmp_path, fal_fake, max_download_bytes=500)
    with pytest.raises(remote.DownloadError, match="larger than the"):
        run(fal_fake, tmp_path, settings=settings, image_size="square_hd")


def test_non_image_download_is_refused(fal_fake, tmp_path):
    fal_fake.fault("file", Response(200, "<html>login page</html>", content_type="text/html"))
    with pytest.raises(remote.DownloadError, match="text/html, not an image"):
        run(fal_fake, tmp_path)


def test_corrupt_image_download_is_refused(fal_fake, tmp_path):
    fal_fake.fault("file", Response(200, b"\x89PNG\r\n\x1a\nbroken", content_type="image/png"))
    with pytest.raises(remote.DownloadError, match="could not be decoded"):
        run(fal_fake, tmp_path)


def test_interrupt_while_queued_sends_cancel_before_raising(fal_fake, tmp_path):
    fal_fake.default_plan = (1000, 0)
    seen = []
    with pytest.raises(remote.RemoteCancelledError) as caught:
        remote.run_remote_variation([solid(RED)], remote.RemoteRequest(image_size="square"),
                                    settings=fal_settings(tmp_path, fal_fake), on_progress=seen.append,
                                    should_abort=lambda: any(event.state == "queued" for event in seen))
    (request_id,) = fal_fake.jobs
    assert fal_fake.cancels == [request_id] and request_id in str(caught.value)


def test_interrupt_raised_by_the_caller_cancels_and_propagates(fal_fake, tmp_path):
    class Interrupted(Exception):
        pass

    fal_fake.default_plan = (1, 1000)  # IN_PROGRESS for good
    running = set()

    def check():
        if running == {0, 1}:
            raise Interrupted()
        return False

    with pytest.raises(Interrupted):
        remote.run_remote_variation([solid(RED)] * 2, remote.RemoteRequest(image_size="square"),
                                    settings=fal_settings(tmp_path, fal_fake), should_abort=check,
                                    on_progress=lambda e: e.state == "running" and running.add(e.index))
    assert len(fal_fake.jobs) == 2 and sorted(fal_fake.cancels) == sorted(fal_fake.jobs)


def test_concurrency_is_bounded_and_results_keep_input_order(fal_fake, tmp_path):
    colors = [(250, 0, 0), (0, 250, 0), (0, 0, 250), (250, 250, 0), (0, 250, 250)]
    fal_fake.plan_for = lambda number, job: (0, 12 - 2 * number)  # earlier jobs finish later
    settings = fal_settings(tmp_path, fal_fake, max_concurrency=2)
    results = remote.run_remote_variation([solid(color) for color in colors], remote.RemoteRequest(
        image_size="square", output_format="png"), settings=settings)
    assert [result.index for result in results] == list(range(5))
    assert all(close(pixel(result.images[0]), color) for result, color in zip(results, colors, strict=True))
    assert fal_fake.max_active == 2


def test_one_failed_job_cancels_the_others(fal_fake, tmp_path):
    fal_fake.plan_for = lambda number, job: (0, 1000) if number else (0, 3)
    fal_fake.fault("result", Response(422, {"detail": [{"loc": ["body", "image_url"], "msg": "Unsupported image"}]}))
    with pytest.raises(remote.ProviderError, match="image_url: Unsupported image"):
        remote.run_remote_variation([solid(RED)] * 2, remote.RemoteRequest(image_size="square"),
                                    settings=fal_settings(tmp_path, fal_fake))
    assert len(fal_fake.jobs) == 2 and len(fal_fake.cancels) == 1  # the slow sibling, not the failed one
    assert fal_fake.jobs[fal_fake.cancels[0]].plan == (0, 1000)


def test_url_input_is_passed_through(fal_fake, tmp_path):
    run(fal_fake, tmp_path, images=["https://example.com/cat.png"])
    assert fal_fake.hits_on("submit")[0].json()["image_url"] == "https://example.com/cat.png"


@pytest.mark.parametrize("case, name", [
    (dict(model="schnell", num_inference_steps=28), "num_inference_steps"),
    (dict(guidance_scale=25.0), "guidance_scale"), (dict(model="schnell", guidance_scale=3.5), "guidance_scale"),
    (dict(num_images=5), "num_images"), (dict(output_format="webp"), "output_format"),
    (dict(acceleration="max"), "acceleration"), (dict(image_size="custom", width=1000, height=1024), "width"),
    (dict(seed=-1), "seed"), (dict(model="pro"), "model"), (dict(sync_mode="yes"), "sync_mode"),
])
def test_validation_happens_before_any_network_call(fal_fake, tmp_path, case, name):
    with pytest.raises(params.ParameterError) as caught:
        run(fal_fake, tmp_path, **case)
    assert caught.value.name == name and str(caught.value).startswith(f"{name}=")
    assert fal_fake.hits == []


def test_missing_key_names_the_variables_and_file_and_sends_nothing(fal_fake, tmp_path):
    settings = fal_settings(tmp_path, fal_fake, environ={})
    with pytest.raises(remote.MissingKeyError) as caught:
        run(fal_fake, tmp_path, settings=settings)
    message = str(caught.value)
    assert "FAL_KEY" in message and "FAL_KEY_ID" in message and "FAL_KEY_SECRET" in message
    assert str(tmp_path / "absent_keys.json") in message
    assert fal_fake.hits == []


def test_key_id_and_secret_pair(fal_fake, tmp_path):
    fal_fake.key = "key-id-123:key-secret-456"
    settings = fal_settings(tmp_path, fal_fake,
                            environ={"FAL_KEY_ID": "key-id-123", "FAL_KEY_SECRET": "key-secret-456"})
    (result,) = run(fal_fake, tmp_path, settings=settings)
    assert fal_fake.hits_on("submit")[0].header("Authorization") == "Key key-id-123:key-secret-456"


def test_key_never_appears_in_logs_or_errors(fal_fake, tmp_path, caplog):
    """Drive every error path with debug logging on (urllib3 included) and a server that echoes the key."""
    caplog.set_level(logging.DEBUG)
    fal_fake.echo_key_on_401 = True
    settings = fal_settings(tmp_path, fal_fake, environ={"FAL_KEY": "sk-live-echoed-secret-42"})
    texts = []
    scenarios = [
        [],  # wrong key -> 401 echoing it
        [("submit", Response(429, {"detail": f"rate limited for Key {FAL_KEY}"}, headers={"Retry-After": "0"}))] * 4,
        [("status", Response(500, {"detail": f"trace: Authorization: Key {FAL_KEY}"})),
         ("result", Response(422, {"detail": [{"loc": ["body", "x"], "msg": f"bad key {FAL_KEY}"}]}))],
        [("file", Response(200, f"<html>{FAL_KEY}</html>", content_type="text/html"))],
    ]
    for number, faults in enumerate(scenarios):
        for route, response in faults:
            fal_fake.fault(route, response)
        with pytest.raises(remote.RemoteError) as caught:
            run(fal_fake, tmp_path, settings=settings if number == 0 else fal_settings(tmp_path, fal_fake))
        texts.append(exception_texts(caught.value))
    fal_fake.echo_key_on_401 = False
    fal_fake.default_plan = (1000, 0)
    with pytest.raises(remote.RemoteCancelledError) as caught:
        remote.run_remote_variation([solid(RED)], remote.RemoteRequest(image_size="square"),
                                    settings=fal_settings(tmp_path, fal_fake), should_abort=lambda: True)
    texts.append(exception_texts(caught.value))
    assert "Invalid credentials: Key ***" in texts[0]  # the echoed key was redacted, the rest kept
    everything = "\n".join(texts) + caplog.text
    for secret in (FAL_KEY, "sk-live-echoed-secret-42"):
        assert secret not in everything
    assert len(caplog.records) > 5  # logging really was captured


def test_interrupt_does_not_wait_for_an_uninterruptible_sync_request(fal_fake, tmp_path):
    fal_fake.fault("run", Response(200, {"images": []}, delay=2.0))
    settings = fal_settings(tmp_path, fal_fake, cancel_budget_s=0.2, timeouts=remote.Timeouts(connect=1, read=5))
    started = time.monotonic()
    with pytest.raises(remote.RemoteCancelledError):
        remote.run_remote_variation([solid(RED)], remote.RemoteRequest(image_size="square", sync_mode=True),
                                    settings=settings, should_abort=lambda: time.monotonic() - started > 0.1)
    assert time.monotonic() - started < 1.0


def test_expired_output_url_is_a_download_error_not_a_key_error(fal_fake, tmp_path):
    fal_fake.fault("file", Response(403, "<Error>AccessDenied: Request has expired</Error>",
                                    content_type="application/xml"))
    with pytest.raises(remote.DownloadError, match="HTTP 403.*expired"):
        run(fal_fake, tmp_path)
