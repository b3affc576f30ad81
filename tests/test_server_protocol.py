"""The server's fal queue protocol, sync endpoint, keys and limits, with a fast engine stand-in."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import re
import time

import httpx
import pytest
from PIL import Image

from fakes.server import FakeServer, Response
from packloader import submodule
from server_support import ALICE, BOB, DEV, KEYS, SCHNELL, Receiver, StandIn, data_uri, local_server, wait_done

params = submodule("pipelines.params")


@pytest.fixture
def server(tmp_path):
    with local_server(tmp_path, [StandIn(seconds=0.05)]) as running:
        yield running


@pytest.fixture
def client():
    with httpx.Client(timeout=10) as http:
        yield http


def submit(client, server, body=None, model=DEV, headers=ALICE):
    body = {"image_url": data_uri(), "image_size": "square", **(body or {})}
    return client.post(f"{server.url}/{model}", json=body, headers=headers)


def test_queue_round_trip(server, client):
    reply = submit(client, server, {"seed": 2**63 + 5, "num_images": 2, "output_format": "png"})
    assert reply.status_code == 200
    body = reply.json()
    assert re.fullmatch(r"[0-9a-f-]{36}", body["request_id"])  # uuid4: 122 random bits
    assert body["status"] == "IN_QUEUE" and body["queue_position"] == 0
    assert body["status_url"] == f"{server.url}/fal-ai/flux-1/requests/{body['request_id']}/status"
    pending = client.get(body["status_url"], headers=ALICE)
    assert pending.status_code in (200, 202) and "logs" in pending.json()
    status = wait_done(client, body["status_url"], ALICE)
    assert status["status"] == "COMPLETED" and "error" not in status
    assert status["metrics"]["inference_time"] > 0 and [line["message"] for line in status["logs"]][0] == "queued"
    result = client.get(body["response_url"], headers=ALICE)
    assert result.status_code == 200 and result.headers["x-fal-request-id"] == body["request_id"]
    output = result.json()
    assert output["seed"] == 2**63 + 5 and output["has_nsfw_concepts"] == [False, False]
    assert output["timings"]["inference"] > 0
    image = output["images"][0]
    assert (image["width"], image["height"], image["content_type"]) == (512, 512, "image/png")
    picture = Image.open(io.BytesIO(client.get(image["url"]).content))
    assert picture.size == (512, 512) and picture.convert("RGB").getpixel((0, 0)) == (200, 30, 30)


def test_status_is_202_until_completed_and_positions_count_down(tmp_path, client):
    with local_server(tmp_path, [StandIn(seconds=1.0)]) as server:
        running = submit(client, server).json()
        while client.get(running["status_url"], headers=ALICE).json()["status"] == "IN_QUEUE":
            time.sleep(0.01)
        ids = [submit(client, server, {"seed": n}).json() for n in range(2)]
        assert [job["queue_position"] for job in ids] == [1, 2]  # unfinished jobs submitted before it (one runs)
        last = ids[-1]
        positions = []
        while True:
            reply = client.get(last["status_url"], headers=ALICE)
            if reply.json()["status"] != "IN_QUEUE":
                break
            assert reply.status_code == 202
            positions.append(reply.json()["queue_position"])
            time.sleep(0.02)
        assert positions[0] >= 1 and positions == sorted(positions, reverse=True) and 1 in positions
        assert wait_done(client, last["status_url"], ALICE)["status"] == "COMPLETED"


def test_status_stream_sends_events_until_completed(server, client):
    job = submit(client, server).json()
    with client.stream("GET", job["status_url"] + "/stream", params={"logs": "1"}, headers=ALICE) as reply:
        assert reply.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[len("data: "):]) for line in reply.iter_lines() if line.startswith("data: ")]
    assert events[-1]["status"] == "COMPLETED" and events[-1]["logs"][-1]["message"] == "finished"
    assert len(events) >= 2 and events[0]["status"] in ("IN_QUEUE", "IN_PROGRESS")
    assert client.get(job["status_url"] + "/stream", headers=BOB).status_code == 404


def test_result_before_completion_is_400(tmp_path, client):
    with local_server(tmp_path, [StandIn(seconds=1.0)]) as server:
        job = submit(client, server).json()
        assert client.get(job["response_url"], headers=ALICE).status_code == 400


def test_validation_errors_complete_with_422_naming_each_field(server, client):
    reply = submit(client, server, {"num_inference_steps": 28, "image_size": {"width": 1000, "height": 20000},
                                    "output_format": "webp"}, model=SCHNELL)
    assert reply.status_code == 200
    job = reply.json()
    status = wait_done(client, job["status_url"], ALICE)
    assert status["status"] == "COMPLETED" and "num_inference_steps" in status["error"]
    result = client.get(job["response_url"], headers=ALICE)
    assert result.status_code == 422
    by_field = {tuple(issue["loc"]): issue for issue in result.json()["detail"]}
    assert set(by_field) == {("body", "num_inference_steps"), ("body", "image_size", "height"),
                             ("body", "output_format")}
    assert "1–12" in by_field[("body", "num_inference_steps")]["msg"]
    assert "1–14142" in by_field[("body", "image_size", "height")]["msg"]


@pytest.mark.parametrize("body, field", [
    ({"image_url": None}, "image_url"), ({"image_url": "ftp://x/y.png"}, "image_url"),
    ({"image_url": "https://example.com/a.png"}, "image_url"),  # URL inputs are off by default
    ({"guidance_scale": 25}, "guidance_scale"), ({"seed": -1}, "seed"), ({"num_images": 5}, "num_images"),
    ({"image_size": {"width": 0, "height": 1024}}, "image_size"), ({"image_size": "huge"}, "image_size"),
    ({"image_size": {"width": 14143, "height": 16}}, "image_size"), ({"image_size": {"width": 512}}, "image_size"),
    ({"image_size": {"width": 512.5, "height": 512}}, "image_size"), ({"output_format": "Default"}, "output_format"),
    ({"sync_mode": "yes"}, "sync_mode"), ({"acceleration": "max"}, "acceleration"),
])
def test_sync_endpoint_answers_422_naming_the_field(server, client, body, field):
    payload = {"image_url": data_uri(), **body}
    reply = client.post(f"{server.url}/sync/{DEV}", json={k: v for k, v in payload.items() if v is not None},
                        headers=ALICE)
    assert reply.status_code == 422
    assert reply.json()["detail"][0]["loc"][:2] == ["body", field]


def test_schnell_refuses_guidance_and_missing_image(server, client):
    reply = client.post(f"{server.url}/sync/{SCHNELL}", json={"guidance_scale": 3.5}, headers=ALICE)
    fields = [issue["loc"][1] for issue in reply.json()["detail"]]
    assert reply.status_code == 422 and fields == ["image_url", "guidance_scale"]


def test_sync_endpoint_returns_data_uris(server, client):
    reply = client.post(f"{server.url}/sync/{DEV}", headers=BOB,
                        json={"image_url": data_uri((5, 250, 5)), "image_size": "square", "sync_mode": True})
    assert reply.status_code == 200 and reply.headers["x-fal-request-id"]
    url = reply.json()["images"][0]["url"]
    assert url.startswith("data:image/jpeg;base64,")


def test_cancel_a_queued_job_at_once(tmp_path, client):
    with local_server(tmp_path, [StandIn(seconds=2.0)]) as server:
        first, second, third = (submit(client, server, {"seed": n}).json() for n in range(3))
        while client.get(first["status_url"], headers=ALICE).json()["status"] == "IN_QUEUE":
            time.sleep(0.02)
        assert client.get(third["status_url"], headers=ALICE).json()["queue_position"] == 2
        reply = client.put(second["cancel_url"], headers=ALICE)
        assert reply.status_code == 202 and reply.json() == {"status": "CANCELLATION_REQUESTED"}
        status = client.get(second["status_url"], headers=ALICE)
        assert status.status_code == 200 and status.json()["error_type"] == "request_cancelled"
        assert client.get(third["status_url"], headers=ALICE).json()["queue_position"] == 1
        assert client.get(second["response_url"], headers=ALICE).status_code == 400
        assert client.put(second["cancel_url"], headers=ALICE).json() == {"status": "ALREADY_COMPLETED"}


def test_cancel_stops_a_running_job_between_steps(tmp_path, client):
    engine = StandIn(seconds=30.0)
    with local_server(tmp_path, [engine]) as server:
        job = submit(client, server).json()
        while client.get(job["status_url"], headers=ALICE).json()["status"] != "IN_PROGRESS":
            time.sleep(0.02)
        started = time.monotonic()
        assert client.put(job["cancel_url"], headers=ALICE).status_code == 202
        status = wait_done(client, job["status_url"], ALICE, timeout=5)
        assert time.monotonic() - started < 3
        assert status["error"] == "Request was cancelled"
        assert any("cancellation requested" in line["message"] for line in status["logs"])


def test_keys_isolation_and_auth(server, client):
    job = submit(client, server).json()
    assert submit(client, server, headers={}).status_code == 401
    assert submit(client, server, headers={"Authorization": "Key wrong-key-0123456789"}).status_code == 401
    assert submit(client, server, headers={"Authorization": KEYS["alice"]}).status_code == 401  # no scheme
    for url, method in ((job["status_url"], "GET"), (job["response_url"], "GET"), (job["cancel_url"], "PUT")):
        reply = client.request(method, url, headers=BOB)
        assert reply.status_code == 404 and reply.json() == {"detail": "Request not found"}
    bearer = {"Authorization": f"Bearer {KEYS['alice']}"}
    assert wait_done(client, job["status_url"], bearer)["status"] == "COMPLETED"
    wrong_app = job["status_url"].replace("fal-ai/flux-1", "fal-ai/other")
    assert client.get(wrong_app, headers=ALICE).status_code == 404
    assert client.post(f"{server.url}/fal-ai/flux-1/pro/redux", json={}, headers=ALICE).status_code == 404


def test_per_key_limit_answers_429_with_retry_after(tmp_path, client):
    with local_server(tmp_path, [StandIn(seconds=1.0)], max_active_per_key=2) as server:
        assert [submit(client, server).status_code for _ in range(2)] == [200, 200]
        refused = submit(client, server)
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
        assert submit(client, server, headers=BOB).status_code == 200  # another key has its own limit


def test_results_and_files_expire(tmp_path, client):
    with local_server(tmp_path, [StandIn(seconds=0.01)], result_ttl_s=1.0) as server:
        job = submit(client, server).json()
        wait_done(client, job["status_url"], ALICE)
        image_url = client.get(job["response_url"], headers=ALICE).json()["images"][0]["url"]
        assert client.get(image_url).status_code == 200
        time.sleep(2.0)
        assert client.get(job["status_url"], headers=ALICE).status_code == 404
        assert client.get(job["response_url"], headers=ALICE).status_code == 404
        assert client.get(image_url).status_code == 404
        time.sleep(0.6)  # the sweeper runs every 0.5 s: the rows are gone, not just hidden
        store = server.service.store
        assert store._connection().execute("select count(*) from jobs").fetchone() == (0,)


def test_a_failing_engine_fails_the_job_not_the_server(tmp_path, client):
    class Broken(StandIn):
        def run(self, *args):
            raise RuntimeError("CUDA out of memory (simulated)")

    with local_server(tmp_path, [Broken()]) as server:
        job = submit(client, server).json()
        status = wait_done(client, job["status_url"], ALICE)
        assert status["error_type"] == "runner_error" and "out of memory" in status["error"]
        result = client.get(job["response_url"], headers=ALICE)
        assert result.status_code == 500 and result.headers["X-Fal-Error-Type"] == "runner_error"
        assert client.get(f"{server.url}/health").status_code == 200


def test_unreadable_image_is_a_422_on_image_url(server, client):
    job = submit(client, server, {"image_url": "data:image/png;base64,aGVsbG8="}).json()
    wait_done(client, job["status_url"], ALICE)
    result = client.get(job["response_url"], headers=ALICE)
    assert result.status_code == 422 and result.json()["detail"][0]["loc"] == ["body", "image_url"]


def test_keys_never_appear_in_logs_or_replies(server, client, caplog):
    caplog.set_level(logging.DEBUG)
    job = submit(client, server).json()
    texts = [str(job), client.get(job["status_url"], params={"logs": "1"}, headers=ALICE).text,
             submit(client, server, headers={"Authorization": "Key not-a-key-0123456789"}).text]
    wait_done(client, job["status_url"], ALICE)
    texts += [client.get(job["response_url"], headers=ALICE).text, caplog.text]
    assert not any(key in text for key in KEYS.values() for text in texts)
    assert "not-a-key" not in caplog.text


def test_openapi_document_comes_from_the_specs(server, client):
    document = client.get(f"{server.url}/openapi.json").json()
    schemas = document["components"]["schemas"]
    dev, schnell = schemas["DevReduxInput"]["properties"], schemas["SchnellReduxInput"]["properties"]
    assert schnell["num_inference_steps"]["maximum"] == params.provider_steps("fal", "schnell").maximum == 12
    assert dev["num_inference_steps"]["default"] == params.VARIANTS["dev"].steps.default
    assert dev["guidance_scale"]["maximum"] == params.GUIDANCE.maximum and "guidance_scale" not in schnell
    assert dev["image_size"]["anyOf"][0]["enum"] == list(params.SIZE_PRESETS)
    assert schemas["WaveSpeedReduxDevInput"]["properties"]["seed"]["minimum"] == params.WAVESPEED_SEED.minimum
    assert f"/{DEV}" in document["paths"] and f"/sync/{SCHNELL}" in document["paths"]


def wavespeed(client, server, body, headers=BOB):
    payload = {"image": data_uri((1, 2, 250)), "size": "512*256", **body}
    return client.post(f"{server.url}/api/v3/wavespeed-ai/flux-redux-dev", json=payload, headers=headers)


def test_wavespeed_envelope_submit_result_and_errors(server, client):
    reply = wavespeed(client, server, {"seed": 77, "num_images": 2})
    assert reply.status_code == 200 and reply.json()["code"] == 200
    task = reply.json()["data"]
    assert task["status"] == "created" and task["urls"]["get"].endswith(f"/predictions/{task['id']}/result")
    while task["status"] in ("created", "processing"):
        task = client.get(task["urls"]["get"], headers=BOB).json()["data"]
        time.sleep(0.02)
    assert task["status"] == "completed" and task["seed"] == 77 and len(task["outputs"]) == 2
    assert task["has_nsfw_contents"] == [False, False] and task["timings"]["inference"] >= 1  # milliseconds
    assert Image.open(io.BytesIO(client.get(task["outputs"][0]).content)).size == (512, 256)
    bad = wavespeed(client, server, {"size": "1024x1024"})
    assert bad.status_code == 400 and "size" in bad.json()["message"] and bad.json()["data"] is None
    assert "seed" in wavespeed(client, server, {"seed": 2**31}).json()["message"]
    assert wavespeed(client, server, {}, headers={}).json()["code"] == 401
    assert client.get(task["urls"]["get"], headers=ALICE).json()["code"] == 404  # another key's task


def test_wavespeed_sync_mode_base64_and_cancel(tmp_path, client):
    with local_server(tmp_path, [StandIn(seconds=1.0)], sync_timeout_s=0.2) as server:
        timed_out = wavespeed(client, server, {"enable_sync_mode": True}).json()["data"]
        assert timed_out["status"] in ("created", "processing") and timed_out["code"] == 5004
        deleted = client.delete(f"{server.url}/api/v3/predictions/{timed_out['id']}", headers=BOB).json()
        assert deleted["code"] == 200 and deleted["data"]["id"] == timed_out["id"]
        while (task := client.get(timed_out["urls"]["get"], headers=BOB).json()["data"])["status"] == "processing":
            time.sleep(0.02)
        assert task["status"] == "cancelled"
    with local_server(tmp_path / "again", [StandIn(seconds=0.01)]) as server:
        task = wavespeed(client, server, {"enable_sync_mode": True, "enable_base64_output": True,
                                          "output_format": "webp"}).json()["data"]
        assert task["status"] == "completed"
        assert Image.open(io.BytesIO(base64.b64decode(task["outputs"][0]))).format == "WEBP"


def test_url_inputs_when_switched_on_with_caps_and_no_private_redirects(tmp_path, client):
    png = io.BytesIO()
    Image.new("RGB", (8, 8), (0, 90, 180)).save(png, "PNG")
    other = FakeServer(lambda hit: Response(200, png.getvalue(), content_type="image/png")).start()
    routes = {"/ok.png": Response(200, png.getvalue(), content_type="image/png"),
              "/hop": Response(302, b"", headers={"Location": "/ok.png"}),
              "/private": Response(302, b"", headers={"Location": other.url.replace("127.0.0.1", "localhost")
                                                      + "/x.png"}),
              "/big.png": Response(200, b"\0" * 4096, content_type="image/png")}
    images = FakeServer(lambda hit: routes.get(hit.path, Response(404, b""))).start()
    host = images.url.split("//")[1]
    try:
        with local_server(tmp_path, [StandIn(seconds=0.01)], url_inputs=True, url_allow_hosts=(host,),
                          max_input_bytes=2048) as server:
            def run(path):
                job = submit(client, server, {"image_url": images.url + path, "output_format": "png"}).json()
                wait_done(client, job["status_url"], ALICE)
                return client.get(job["response_url"], headers=ALICE)
            for path in ("/ok.png", "/hop"):
                image_url = run(path).json()["images"][0]["url"]
                picture = Image.open(io.BytesIO(client.get(image_url).content)).convert("RGB")
                assert picture.getpixel((0, 0)) == (0, 90, 180)
            for path, words in (("/private", "non-public address"), ("/big.png", "larger than 2048 bytes"),
                                ("/missing.png", "HTTP 404")):
                refused = run(path)
                assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "image_url"]
                assert words in refused.json()["detail"][0]["msg"]
    finally:
        images.stop()
        other.stop()


SUBMIT_FIELDS = {"request_id": str, "response_url": str, "status_url": str, "cancel_url": str, "status": str,
                 "queue_position": int, "logs": dict, "metrics": dict}  # fal's QueueStatus schema and its types


@pytest.mark.parametrize("body", [{}, {"num_images": 99, "image_size": "huge"}, {"image_url": None}],
                         ids=["valid", "invalid fields", "missing image"])
def test_submit_reply_has_every_field_of_the_seed_schema_with_its_type(server, client, body):
    payload = {"image_url": data_uri(), "image_size": "square", **body}
    reply = client.post(f"{server.url}/{DEV}", json={k: v for k, v in payload.items() if v is not None},
                        headers=ALICE)
    assert reply.status_code == 200
    job = reply.json()
    assert set(job) == set(SUBMIT_FIELDS)
    for name, kind in SUBMIT_FIELDS.items():
        assert isinstance(job[name], kind) and not isinstance(job[name], bool), (name, job[name])
    assert job["queue_position"] >= 0
    assert job["status"] == ("IN_QUEUE" if not body else "COMPLETED")


def test_values_the_seeds_list_are_accepted(server, client):
    reply = client.post(f"{server.url}/sync/{DEV}", headers=ALICE, json={
        "image_url": data_uri(), "image_size": "square", "output_format": "default", "acceleration": "default"})
    assert reply.status_code == 200, reply.text
    assert reply.json()["images"][0]["content_type"] == "image/jpeg"  # fal's default format
    for acceleration in params.ACCELERATIONS:
        ok = client.post(f"{server.url}/sync/{SCHNELL}", headers=ALICE, json={
            "image_url": data_uri(), "image_size": "square", "acceleration": acceleration, "output_format": "png"})
        assert ok.status_code == 200 and ok.json()["images"][0]["content_type"] == "image/png"
    task = wavespeed(client, server, {"output_format": "default", "enable_sync_mode": True}).json()["data"]
    assert task["status"] == "completed"
    assert Image.open(io.BytesIO(client.get(task["outputs"][0]).content)).format == "JPEG"


@pytest.mark.parametrize("asked, served", [((1000, 333), (1008, 336)), ((1, 7), (16, 16)), ((24, 8), (32, 16)),
                                           ((257, 1023), (256, 1024)), ((4100, 16), (4096, 16))])
def test_custom_sizes_fal_accepts_are_rounded_to_16_and_reported(server, client, asked, served):
    reply = client.post(f"{server.url}/sync/{DEV}", headers=ALICE, json={
        "image_url": data_uri(), "image_size": {"width": asked[0], "height": asked[1]}, "output_format": "png"})
    assert reply.status_code == 200, reply.text
    image = reply.json()["images"][0]
    assert (image["width"], image["height"]) == served
    assert Image.open(io.BytesIO(client.get(image["url"]).content)).size == served


def test_sizes_past_the_servers_pixel_limit_are_refused_naming_it(tmp_path, client):
    with local_server(tmp_path, [StandIn(seconds=0.01)], max_output_pixels=512 * 512) as server:
        for size in ({"width": 14142, "height": 14142}, {"width": 600, "height": 600}, "square_hd"):
            reply = client.post(f"{server.url}/sync/{DEV}", headers=ALICE,
                                json={"image_url": data_uri(), "image_size": size})
            assert reply.status_code == 422
            (issue,) = reply.json()["detail"]
            assert issue["loc"] == ["body", "image_size"]
            assert "limit of 262144 pixels" in issue["msg"] and "--max-output-pixels" in issue["msg"]
        ok = client.post(f"{server.url}/sync/{DEV}", headers=ALICE,
                         json={"image_url": data_uri(), "image_size": {"width": 500, "height": 520}})
        image = ok.json()["images"][0]
        assert ok.status_code == 200 and (image["width"], image["height"]) == (496, 528)  # 261,888 pixels
        refused = wavespeed(client, server, {"size": "1024*1024"})
        assert refused.status_code == 400 and "262144 pixels" in refused.json()["message"]


def test_wavespeed_sizes_are_rounded_too(server, client):
    task = wavespeed(client, server, {"size": "1000*333", "enable_sync_mode": True}).json()["data"]
    assert task["status"] == "completed"
    assert Image.open(io.BytesIO(client.get(task["outputs"][0]).content)).size == (1008, 336)
    assert "256–1536" in wavespeed(client, server, {"size": "2000*512"}).json()["message"]


def noise_png_uri(side: int) -> str:
    """An incompressible PNG as a data URI: side 1600 gives about 10 MB of base64."""
    picture = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    buffer = io.BytesIO()
    picture.save(buffer, "PNG", compress_level=0)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def status_latency(client, url: str) -> float:
    started = time.perf_counter()
    assert client.get(url, headers=ALICE).status_code in (200, 202)
    return time.perf_counter() - started


def test_inputs_are_stored_once_apart_from_the_record_status_updates_rewrite(tmp_path, client):
    big = noise_png_uri(1600)
    assert len(big) > 10_000_000
    with local_server(tmp_path, []) as server:  # no worker: both jobs stay queued while we measure
        heavy = submit(client, server, {"image_url": big}).json()
        light = submit(client, server).json()
        db = server.service.store._connection()
        records = dict(db.execute("select id, length(doc) from jobs"))
        assert records[heavy["request_id"]] < 20_000 and records[light["request_id"]] < 20_000
        (stored,) = db.execute("select length(data) from inputs where job_id = ?", (heavy["request_id"],)).fetchone()
        assert len(big) < stored < len(big) + 1000  # once, whole
        heavy_s, light_s = [], []
        for _ in range(30):  # interleaved, so a busy machine slows both alike
            heavy_s.append(status_latency(client, heavy["status_url"]))
            light_s.append(status_latency(client, light["status_url"]))
        heavy_p50, light_p50 = sorted(heavy_s)[15], sorted(light_s)[15]
        print(f"\nstatus p50 with a {len(big) / 1e6:.1f} MB input: {heavy_p50 * 1000:.1f} ms; "
              f"with {len(data_uri())} bytes: {light_p50 * 1000:.1f} ms")
        assert heavy_p50 < 2 * light_p50 + 0.010  # independent of the input size


def test_a_finished_job_keeps_no_inputs_and_its_worker_read_them_once(tmp_path, client):
    class Logging(StandIn):
        def run(self, inputs, picture, should_abort, log):
            for step in range(20):
                log(f"step {step + 1}/20")  # each line is a state change that rewrites the record
            return super().run(inputs, picture, should_abort, log)

    big = noise_png_uri(1600)
    with local_server(tmp_path, [Logging(seconds=0.01)]) as server:
        job = submit(client, server, {"image_url": big, "output_format": "png"}).json()
        status = wait_done(client, job["status_url"], ALICE, timeout=60)
        assert "error" not in status and len([line for line in status["logs"] if "step" in line["message"]]) == 20
        output = client.get(job["response_url"], headers=ALICE).json()["images"][0]
        assert (output["width"], output["height"]) == (512, 512)
        store = server.service.store
        (size,) = store._connection().execute("select length(doc) from jobs where id = ?",
                                              (job["request_id"],)).fetchone()
        assert size < 20_000
        assert store.inputs(job["request_id"]) is None
        assert store._connection().execute("select count(*) from inputs").fetchone() == (0,)


@pytest.fixture
def receiver():
    found = Receiver()
    yield found
    found.stop()


def webhook_server(tmp_path, receiver, engine=None, **config):
    config = {"webhooks": True, "url_allow_hosts": (receiver.host,), "webhook_retry_s": (0.05, 0.05), **config}
    return local_server(tmp_path, [engine or StandIn(seconds=0.01)], **config)


def submit_with_webhook(client, server, url, body=None, model=DEV):
    payload = {"image_url": data_uri(), "image_size": "square", **(body or {})}
    return client.post(f"{server.url}/{model}", params={"fal_webhook": url}, json=payload, headers=ALICE)


def webhooks_pending(server) -> int:
    return server.service.store._connection().execute("select count(*) from webhooks").fetchone()[0]


def test_webhooks_are_refused_with_422_naming_the_flag_when_off(server, client):
    before = server.service.store._connection().execute("select count(*) from jobs").fetchone()
    reply = submit_with_webhook(client, server, "https://example.com/hook")
    assert reply.status_code == 422
    (issue,) = reply.json()["detail"]
    assert issue["loc"] == ["query", "fal_webhook"] and "--allow-webhooks" in issue["msg"]
    assert server.service.store._connection().execute("select count(*) from jobs").fetchone() == before
    refused = client.post(f"{server.url}/api/v3/wavespeed-ai/flux-redux-dev", params={"webhook": "https://x.io/h"},
                          json={"image": data_uri()}, headers=BOB)
    assert refused.status_code == 400 and "--allow-webhooks" in refused.json()["message"]


def test_fal_webhook_is_posted_fals_payload_when_the_job_ends(tmp_path, client, receiver):
    with webhook_server(tmp_path, receiver) as server:
        job = submit_with_webhook(client, server, receiver.url, {"seed": 41, "output_format": "png"}).json()
        (hit,) = receiver.wait_for(1)
        assert hit.method == "POST" and hit.path == "/hook" and hit.query == {"token": "abc"}
        body = hit.json()
        assert body == {"request_id": job["request_id"], "gateway_request_id": job["request_id"], "status": "OK",
                        "payload": body["payload"], "error": None}
        assert body["payload"] == client.get(job["response_url"], headers=ALICE).json()
        assert body["payload"]["seed"] == 41
        picture = Image.open(io.BytesIO(client.get(body["payload"]["images"][0]["url"]).content))
        assert picture.size == (512, 512)
        invalid = submit_with_webhook(client, server, receiver.url, {"num_images": 9}).json()
        failed = receiver.wait_for(2)[1].json()
        assert failed["request_id"] == invalid["request_id"] and failed["status"] == "ERROR"
        assert failed["error"] == "Invalid status code: 422"
        assert failed["payload"]["detail"][0]["loc"] == ["body", "num_images"]
        assert KEYS["alice"] not in str([hit.headers for hit in receiver.hits])  # the key never goes out


def test_webhook_of_a_cancelled_job_and_of_wavespeed(tmp_path, client, receiver):
    with webhook_server(tmp_path, receiver, StandIn(seconds=30)) as server:
        job = submit_with_webhook(client, server, receiver.url).json()
        assert client.put(job["cancel_url"], headers=ALICE).status_code == 202
        cancelled = receiver.wait_for(1)[0].json()
        assert cancelled["status"] == "ERROR" and cancelled["payload"]["error_type"] == "request_cancelled"
        task = client.post(f"{server.url}/api/v3/wavespeed-ai/flux-redux-dev", params={"webhook": receiver.url},
                           json={"image": data_uri(), "size": "256*256"}, headers=BOB).json()["data"]
        client.delete(f"{server.url}/api/v3/predictions/{task['id']}", headers=BOB)
        data = receiver.wait_for(2)[1].json()
        assert data["id"] == task["id"] and data["status"] == "cancelled"


@pytest.mark.parametrize("statuses, tries, delivered", [((500,), 3, False), ((503, 302, 200), 3, True),
                                                        ((200,), 1, True)])
def test_webhook_retries_are_bounded(tmp_path, client, statuses, tries, delivered, caplog):
    caplog.set_level(logging.INFO, logger="flux-redux.server")
    receiver = Receiver(*statuses)
    try:
        with webhook_server(tmp_path, receiver) as server:
            submit_with_webhook(client, server, receiver.url)
            receiver.wait_for(tries)
            deadline = time.monotonic() + 30
            while webhooks_pending(server):  # delivered or given up: nothing left to send
                assert time.monotonic() < deadline
                time.sleep(0.02)
            assert len(receiver.hits) == tries
            assert ("delivered" in caplog.text) == delivered and ("given up" in caplog.text) != delivered
    finally:
        receiver.stop()


@pytest.mark.parametrize("url, words", [
    ("ftp://127.0.0.1/hook", "expected an http(s) URL"), ("not a url", "expected an http(s) URL"),
    ("http://127.0.0.2:9/hook", "non-public address"), ("http://[::1]:9/hook", "non-public address"),
    ("http://localhost:9/hook", "non-public address"), ("https://x.io/" + "a" * 3000, "at most 2048"),
])
def test_webhook_urls_pass_the_address_guard_of_url_inputs(tmp_path, client, receiver, url, words):
    with webhook_server(tmp_path, receiver) as server:
        reply = submit_with_webhook(client, server, url)
        assert reply.status_code == 422 and words in reply.json()["detail"][0]["msg"]
        sync = client.post(f"{server.url}/sync/{DEV}", params={"fal_webhook": receiver.url},
                           json={"image_url": data_uri()}, headers=ALICE)
        assert sync.status_code == 422 and "queue endpoint" in sync.json()["detail"][0]["msg"]


def test_start_timeout_is_honoured(tmp_path, client):
    with local_server(tmp_path, [StandIn(seconds=3.0)]) as server:
        submit(client, server)  # keeps the one worker busy for 3 s
        late = client.post(f"{server.url}/{DEV}", json={"image_url": data_uri(), "image_size": "square"},
                           headers={**ALICE, "X-Fal-Request-Timeout": "1"}).json()
        patient = client.post(f"{server.url}/{DEV}", json={"image_url": data_uri(), "image_size": "square"},
                              headers={**ALICE, "X-Fal-Request-Timeout": "120"}).json()
        sync = client.post(f"{server.url}/sync/{DEV}", json={"image_url": data_uri(), "image_size": "square"},
                           headers={**ALICE, "X-Fal-Request-Timeout": "1"})  # fal.run(start_timeout=1)
        assert sync.status_code == 504 and sync.json()["error_type"] == "request_timeout"
        status = wait_done(client, late["status_url"], ALICE, timeout=20)
        assert status["error_type"] == "request_timeout" and "start_timeout of 1 s" in status["error"]
        assert not any("started on worker" in line["message"] for line in status["logs"])  # it never ran
        result = client.get(late["response_url"], headers=ALICE)
        assert result.status_code == 504 and result.headers["X-Fal-Error-Type"] == "request_timeout"
        assert "error" not in wait_done(client, patient["status_url"], ALICE, timeout=30)


@pytest.mark.parametrize("headers, field, words", [
    ({"X-Fal-Request-Timeout": "soon"}, "X-Fal-Request-Timeout", "expected seconds"),
    ({"X-Fal-Request-Timeout": "0.5"}, "X-Fal-Request-Timeout", "1–86400"),
    ({"X-Fal-Request-Timeout": "nan"}, "X-Fal-Request-Timeout", "1–86400"),
    ({"X-Fal-Request-Timeout": "1e9"}, "X-Fal-Request-Timeout", "1–86400"),
    ({"X-Fal-Queue-Priority": "low"}, "X-Fal-Queue-Priority", "arrival order"),
    ({"X-Fal-Queue-Priority": "urgent"}, "X-Fal-Queue-Priority", "expected one of normal"),
])
def test_start_timeout_and_priority_are_refused_with_a_clear_422(server, client, headers, field, words):
    for path in (f"/{DEV}", f"/sync/{DEV}"):
        reply = client.post(server.url + path, json={"image_url": data_uri()}, headers={**ALICE, **headers})
        assert reply.status_code == 422
        (issue,) = reply.json()["detail"]
        assert issue["loc"] == ["header", field] and words in issue["msg"]


def test_normal_priority_is_served(server, client):
    reply = client.post(f"{server.url}/sync/{DEV}", json={"image_url": data_uri(), "image_size": "square"},
                        headers={**ALICE, "X-Fal-Queue-Priority": "normal", "X-Fal-Request-Timeout": "30"})
    assert reply.status_code == 200 and reply.json()["images"]
