"""GET /openapi.json: a valid OpenAPI 3.1 document (openapi-spec-validator, from the registry) that documents
every route, parameter and reply; real replies of every kind match it (jsonschema), and a bounded schemathesis
run against the live server finds no 5xx and no reply that breaks it."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

from packloader import submodule
from server_support import ALICE, BOB, DEV, KEYS, SCHNELL, StandIn, data_uri, local_server, wait_done

openapi = submodule("pipelines.server.openapi")
server_config = submodule("pipelines.server.config")
REQUEST = "/{owner}/{app}/requests/{request_id}"
WAVESPEED = "/api/v3/wavespeed-ai/flux-redux-dev"
SCHEMATHESIS_CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
                       "response_headers_conformance", "response_schema_conformance")


@pytest.mark.parametrize("settings", [{}, {"url_inputs": True, "webhooks": True, "max_output_pixels": 512 * 512}],
                         ids=["default", "urls and webhooks on"])
def test_document_is_valid_openapi_3_1(settings):
    document = openapi.document(server_config.ServerConfig(**settings))
    assert document["openapi"].startswith("3.1")
    errors = [str(error).splitlines()[0] for error in OpenAPIV31SpecValidator(document).iter_errors()]
    assert errors == []
    validate(json.loads(json.dumps(document)))  # as served: plain JSON


def test_path_parameters_and_error_replies_are_declared():
    document = openapi.document()
    for path, item in document["paths"].items():
        declared = {p["name"] for p in item.get("parameters", []) if p["in"] == "path"}
        assert declared == {part[1:-1] for part in path.split("/") if part.startswith("{")}, path
    for path, method in ((f"/{DEV}", "post"), (REQUEST + "/status", "get"), (REQUEST, "get"),
                         (REQUEST + "/cancel", "put")):
        codes = set(document["paths"][path][method]["responses"])
        assert {"401"} <= codes and ({"404"} <= codes or path == f"/{DEV}"), (path, codes)
    assert {"400", "401", "404", "422"} <= set(document["paths"][REQUEST]["get"]["responses"])
    assert {"401", "413", "422", "429", "507"} <= set(document["paths"][f"/sync/{DEV}"]["post"]["responses"])


def test_every_route_is_documented(tmp_path):
    with local_server(tmp_path, []) as server:
        app = server.uvicorn.config.app
        served = {route.path for route in app.routes if ":path}" not in route.path}
    documented = set(openapi.document()["paths"])
    assert served <= documented, served - documented


class Conformance:
    """Checks each reply against the document: its status documented for the operation, its content type
    listed, its body valid against the schema, its documented headers present."""

    def __init__(self, document: dict):
        self.document = document
        self.seen: set[tuple[str, str, int]] = set()

    def __call__(self, template: str, method: str, reply: httpx.Response) -> httpx.Response:
        responses = self.document["paths"][template][method]["responses"]
        spec = responses.get(str(reply.status_code))
        assert spec is not None, f"{method.upper()} {template} answered {reply.status_code}, not documented"
        kind = reply.headers["content-type"].split(";")[0]
        assert kind in spec["content"], (template, reply.status_code, kind)
        for header in spec.get("headers", {}):
            assert header in reply.headers, (template, reply.status_code, header)
        schema = spec["content"][kind]["schema"]
        if kind == "application/json":
            self.validate(schema, reply.json())
        elif kind == "text/event-stream":
            for line in reply.text.splitlines():
                if line.startswith("data: "):
                    self.validate(schema["properties"]["data"]["contentSchema"], json.loads(line[6:]))
        self.seen.add((template, method, reply.status_code))
        return reply

    def validate(self, schema: dict, value) -> None:
        Draft202012Validator({**schema, "components": self.document["components"]}).validate(value)


def test_real_replies_of_every_kind_match_the_document(tmp_path):
    settings = dict(max_active_per_key=3, max_body_bytes=300_000)
    with local_server(tmp_path, [StandIn(seconds=0.3)], **settings) as server, httpx.Client(timeout=30) as http:
        check = Conformance(http.get(f"{server.url}/openapi.json").json())
        url, body = server.url, {"image_url": data_uri(), "image_size": "square", "output_format": "png"}
        submit, sync = f"/{DEV}", f"/sync/{DEV}"
        job = check(submit, "post", http.post(url + submit, json=body, headers=ALICE)).json()
        check(REQUEST + "/status", "get", http.get(job["status_url"], headers=ALICE))
        check(REQUEST, "get", http.get(job["response_url"], headers=ALICE))  # 400: still in progress
        check(REQUEST + "/status/stream", "get", http.get(job["status_url"] + "/stream", params={"logs": "1"},
                                                          headers=ALICE))
        check(REQUEST + "/status", "get", http.get(job["status_url"], params={"logs": "1"}, headers=ALICE))
        result = check(REQUEST, "get", http.get(job["response_url"], headers=ALICE)).json()
        check("/files/{token}", "get", http.get(result["images"][0]["url"]))
        check("/files/{token}", "get", http.get(f"{url}/files/unknown.png"))
        check(REQUEST + "/cancel", "put", http.put(job["cancel_url"], headers=ALICE))  # 400
        for other in (BOB, {}):
            check(REQUEST + "/status", "get", http.get(job["status_url"], headers=other))  # 404, 401
            check(REQUEST, "get", http.get(job["response_url"], headers=other))
            check(REQUEST + "/cancel", "put", http.put(job["cancel_url"], headers=other))
        invalid = check(submit, "post", http.post(url + submit, json={"num_images": 9}, headers=ALICE)).json()
        check(REQUEST, "get", http.get(invalid["response_url"], headers=ALICE))  # 422
        check(submit, "post", http.post(url + submit, content=b"{nan", headers=ALICE))  # 422
        check(submit, "post", http.post(url + submit, json=body, headers={**ALICE, "X-Fal-Queue-Priority": "low"}))
        check(submit, "post", http.post(url + submit, json={"image_url": "data:image/png;base64," + "A" * 400_000},
                                        headers=ALICE))  # 413
        check(submit, "post", http.post(url + submit, json=body, headers={}))  # 401
        queued = [check(submit, "post", http.post(url + submit, json=body, headers=BOB)) for _ in range(4)]
        assert queued[-1].status_code == 429
        cancelled = queued[-2].json()
        check(REQUEST + "/cancel", "put", http.put(cancelled["cancel_url"], headers=BOB))  # 202
        check(REQUEST, "get", http.get(cancelled["response_url"], headers=BOB))  # 400 cancelled
        for reply in queued[:2]:
            wait_done(http, reply.json()["status_url"], BOB)
        check(sync, "post", http.post(url + sync, json=body, headers=ALICE))
        check(sync, "post", http.post(url + sync, json={"image_url": 5}, headers=ALICE))
        check(f"/sync/{SCHNELL}", "post", http.post(f"{url}/sync/{SCHNELL}", json={"image_url": data_uri()},
                                                    headers={**ALICE, "X-Fal-Request-Timeout": "0"}))
        wave = {"image": data_uri(), "size": "256*256"}
        task = check(WAVESPEED, "post", http.post(url + WAVESPEED, json=wave, headers=BOB)).json()["data"]
        check(WAVESPEED, "post", http.post(url + WAVESPEED, json=dict(wave, size="9*9"), headers=BOB))
        check(WAVESPEED, "post", http.post(url + WAVESPEED, json=wave, headers={}))
        result_path, task_path = "/api/v3/predictions/{request_id}/result", "/api/v3/predictions/{request_id}"
        check(result_path, "get", http.get(task["urls"]["get"], headers=BOB))
        check(result_path, "get", http.get(task["urls"]["get"], headers=ALICE))  # 404
        check(task_path, "delete", http.delete(f"{url}/api/v3/predictions/{task['id']}", headers=BOB))
        done = check(WAVESPEED, "post", http.post(url + WAVESPEED, json=dict(wave, enable_sync_mode=True),
                                                  headers=ALICE))
        assert done.json()["data"]["status"] == "completed"
        check(result_path, "get", http.get(done.json()["data"]["urls"]["get"], headers=ALICE))
        check("/health", "get", http.get(f"{url}/health"))
        check("/openapi.json", "get", http.get(f"{url}/openapi.json"))
    codes = {(path, code) for path, _, code in check.seen}
    assert {(submit, 200), (submit, 401), (submit, 413), (submit, 422), (submit, 429), (REQUEST, 200),
            (REQUEST, 400), (REQUEST, 401), (REQUEST, 404), (REQUEST, 422), (REQUEST + "/status", 202),
            (REQUEST + "/status", 200), (REQUEST + "/cancel", 202), (REQUEST + "/cancel", 400),
            (sync, 200), (sync, 422), (WAVESPEED, 200), (WAVESPEED, 400), (WAVESPEED, 401),
            (result_path, 404)} <= codes


def test_unknown_paths_and_methods_answer_json(server_for_schemathesis):
    url = server_for_schemathesis.url
    for method, path in (("GET", "/nothing/here"), ("GET", f"/{DEV}"), ("DELETE", "/fal-ai/flux-1/requests/x"),
                         ("GET", "/api/v3/wavespeed-ai/flux-redux-dev"), ("PUT", "/health")):
        reply = httpx.request(method, url + path, headers=ALICE)
        assert reply.status_code in (404, 405) and reply.headers["content-type"] == "application/json", (path, reply)


@pytest.fixture(scope="module")
def server_for_schemathesis(tmp_path_factory):
    """A fast stand-in engine, a small pixel limit (generated sizes stay cheap) and room for many requests."""
    settings = dict(max_active_per_key=1_000_000, max_output_pixels=256 * 256, sync_timeout_s=10)
    with local_server(tmp_path_factory.mktemp("schemathesis"), [StandIn(seconds=0.01)], **settings) as server:
        yield server


def test_schemathesis_finds_no_server_error_and_no_nonconforming_reply(server_for_schemathesis, tmp_path):
    """Bounded: 10 examples per operation in every phase (examples, coverage, fuzzing, stateful through the
    document's links), positive and negative data, a fixed seed; about 15 s here."""
    command = [sys.executable, "-m", "schemathesis.cli", "run", f"{server_for_schemathesis.url}/openapi.json",
               "--checks", ",".join(SCHEMATHESIS_CHECKS), "--max-examples", "10", "--mode", "all", "--seed", "20250",
               "--header", f"Authorization: Key {KEYS['alice']}", "--request-timeout", "20", "--workers", "1",
               "--generation-database", "none", "--suppress-health-check", "all", "--no-color"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    report = done.stdout[-6000:] + done.stderr[-2000:]
    assert done.returncode == 0, report
    assert " passed" in done.stdout and "failure" not in done.stdout.split("SUMMARY")[-1], report
    print(done.stdout.strip().splitlines()[-1])
