"""The OpenAPI 3.1 document (GET /openapi.json), built from the same params.py specs the validation uses.

Every path parameter is declared (with the pattern its route accepts), and every status a route answers is
documented with its JSON shape: 400/401/404/413/422/429 and the storage replies 503/507, besides the successes.
The fal submit reply is fal's QueueStatus schema (every field, with its type); the status reply is what fal
really sends (logs a list or null). Webhook bodies are under `webhooks`. tests/test_server_openapi.py checks
it with openapi-spec-validator and runs schemathesis against a live server.
"""

from __future__ import annotations

from typing import Any

from .. import params
from ..params import NumberSpec
from .config import ServerConfig
from .validation import (DEFAULT_WAVESPEED_SIZE, FAL_MODELS, PRIORITY_HEADER, START_TIMEOUT_HEADER,
                         WAVESPEED_MODEL)

REF = "#/components/schemas/"
SEGMENT = r"^[A-Za-z0-9_-]+$"  # owner, app and request ids: one path segment each
STRING, INTEGER = {"type": "string"}, {"type": "integer"}


def number(spec: NumberSpec, nullable: bool = False) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer" if spec.integer else "number",
                              "minimum": spec.minimum, "maximum": spec.maximum}
    if spec.default is not None:
        schema["default"] = spec.default
    if spec.help:
        schema["description"] = spec.help
    if nullable:
        schema = {"anyOf": [schema, {"type": "null"}], "default": None, "description": spec.help}
    return schema


def image_ref(urls: bool) -> dict[str, Any]:
    if urls:
        return {"type": "string", "pattern": r"^(data:image/|https?://)", "description": "data:image/... URI or "
                "http(s) URL (this server fetches URLs: 10 MB, 40 MP, public addresses only)"}
    return {"type": "string", "pattern": r"^data:image/", "description": "data:image/... URI (this server takes "
            "no URLs: serve --allow-url-inputs switches them on)"}


def choices(values: tuple[str, ...], default: str) -> dict[str, Any]:
    return {"type": "string", "enum": [*values, params.DEFAULT_CHOICE], "default": default,
            "description": f"{params.DEFAULT_CHOICE} means {default}"}


def fal_input(variant: str, config: ServerConfig) -> dict[str, Any]:
    spec = params.VARIANTS[variant]
    sides = {side: number(s) for side, s in (("width", params.FAL_WIDTH), ("height", params.FAL_HEIGHT))}
    properties = {
        "image_url": image_ref(config.url_inputs),
        "image_size": {"anyOf": [{"type": "string", "enum": list(params.SIZE_PRESETS)},
                                 {"type": "object", "properties": sides, "required": ["width", "height"]}],
                       "default": params.FAL_DEFAULT_IMAGE_SIZE,
                       "description": f"a preset, or any whole width and height up to {params.FAL_MAX_SIDE}, "
                                      f"rounded to the nearest multiple of {params.SIZE_MULTIPLE} (the result "
                                      f"reports the real size); at most {config.max_output_pixels} pixels"},
        "num_inference_steps": number(params.provider_steps("fal", variant)),
        "seed": number(params.SEED, nullable=True),
        "num_images": number(params.NUM_IMAGES),
        "output_format": choices(params.OUTPUT_FORMATS, params.FAL_DEFAULT_OUTPUT_FORMAT),
        "acceleration": dict(choices(params.ACCELERATIONS, params.FAL_DEFAULT_ACCELERATION),
                             description="accepted for compatibility; no effect here"),
        "sync_mode": {"type": "boolean", "default": False, "description": "outputs as data URIs"},
        "enable_safety_checker": {"type": "boolean", "default": True,
                                  "description": "accepted; there is no safety checker on this server"},
    }
    if spec.guidance is not None:
        properties["guidance_scale"] = number(spec.guidance)
    return {"type": "object", "properties": properties, "required": ["image_url"]}


def wavespeed_input(config: ServerConfig) -> dict[str, Any]:
    spec = params.VARIANTS["dev"]
    side = params.WAVESPEED_SIDE
    return {"type": "object", "required": ["image"], "properties": {
        "image": image_ref(config.url_inputs),
        "size": {"type": "string", "pattern": r"^\d+\*\d+$", "default": DEFAULT_WAVESPEED_SIZE,
                 "description": f"W*H, each side {side.minimum}-{side.maximum}, rounded to the nearest multiple of "
                                f"{params.SIZE_MULTIPLE}; at most {config.max_output_pixels} pixels"},
        "num_inference_steps": number(spec.steps), "guidance_scale": number(spec.guidance),
        "num_images": number(params.NUM_IMAGES), "seed": number(params.WAVESPEED_SEED),
        "output_format": choices(params.WAVESPEED_OUTPUT_FORMATS, params.FAL_DEFAULT_OUTPUT_FORMAT),
        "enable_base64_output": {"type": "boolean", "default": False},
        "enable_sync_mode": {"type": "boolean", "default": False},
        "enable_safety_checker": {"type": "boolean", "default": False}}}


IMAGE = {"type": "object", "required": ["url", "width", "height", "content_type"], "properties": {
    "url": STRING, "width": INTEGER, "height": INTEGER, "content_type": STRING}}
FAL_OUTPUT = {"type": "object", "required": ["images", "timings", "seed", "has_nsfw_concepts", "prompt"],
              "properties": {
                  "images": {"type": "array", "items": {"$ref": REF + "Image"}},
                  "timings": {"type": "object", "properties": {"inference": {"type": "number"}}},
                  "seed": INTEGER, "has_nsfw_concepts": {"type": "array", "items": {"type": "boolean"}},
                  "prompt": STRING}}
URLS = {"response_url": STRING, "status_url": STRING, "cancel_url": STRING}
SUBMIT_REPLY = {  # fal's QueueStatus schema: every field always sent, with the type it declares
    "type": "object", "required": ["status", "request_id", *URLS, "logs", "metrics", "queue_position"],
    "properties": {"status": {"type": "string", "enum": ["IN_QUEUE", "COMPLETED"],
                              "description": "COMPLETED at once for an invalid body: its 422 is at response_url"},
                   "request_id": STRING, **URLS,
                   "logs": {"type": "object", "description": "empty; the status URL (logs=1) has the log lines"},
                   "metrics": {"type": "object"},
                   "queue_position": {"type": "integer", "minimum": 0}}}
LOG_LINE = {"type": "object", "required": ["message", "level", "source", "timestamp"], "properties": {
    "message": STRING, "level": STRING, "source": STRING, "timestamp": STRING}}
QUEUE_STATUS = {
    "type": "object", "required": ["status", "request_id", *URLS, "queue_position", "logs"],
    "properties": {
        "status": {"type": "string", "enum": ["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]},
        "request_id": STRING, **URLS,
        "queue_position": {"type": ["integer", "null"], "minimum": 0, "description": "while IN_QUEUE"},
        "logs": {"anyOf": [{"type": "array", "items": {"$ref": REF + "LogLine"}}, {"type": "null"}],
                 "description": "with ?logs=1"},
        "metrics": {"type": "object", "properties": {"inference_time": {"type": ["number", "null"]}}},
        "error": STRING, "error_type": STRING}}
ISSUE = {"type": "object", "required": ["loc", "msg", "type"], "properties": {
    "loc": {"type": "array", "items": {"type": ["string", "integer"]}}, "msg": STRING, "type": STRING, "input": {}}}
VALIDATION_ERROR = {"type": "object", "required": ["detail"], "properties": {
    "detail": {"type": "array", "items": {"$ref": REF + "Issue"}}}}
ERROR = {"type": "object", "required": ["detail"], "properties": {"detail": STRING, "error_type": STRING}}
CANCEL_REPLY = {"type": "object", "required": ["status"], "properties": {
    "status": {"type": "string", "enum": ["CANCELLATION_REQUESTED", "ALREADY_COMPLETED"]}}}
WAVESPEED_TASK = {"type": "object", "required": ["id", "model", "status", "outputs", "urls", "has_nsfw_contents",
                                                 "created_at", "error", "timings"], "properties": {
    "id": STRING, "model": STRING,
    "status": {"type": "string", "enum": ["created", "processing", "completed", "failed", "cancelled"]},
    "outputs": {"type": "array", "items": STRING, "description": "URLs, or base64 with enable_base64_output"},
    "urls": {"type": "object", "required": ["get"], "properties": {"get": STRING}},
    "has_nsfw_contents": {"type": "array", "items": {"type": "boolean"}}, "created_at": STRING, "error": STRING,
    "timings": {"type": "object", "properties": {"inference": INTEGER}}, "seed": INTEGER,
    "code": {"type": "integer", "description": "5004: sync mode timed out (keep polling urls.get); 14xx: failed"}}}
WAVESPEED_CANCELLED = {"type": "object", "required": ["id", "status"], "properties": {"id": STRING, "status": STRING}}
WAVESPEED_ENVELOPE = {"type": "object", "required": ["code", "message", "data"], "properties": {
    "code": INTEGER, "message": STRING,
    "data": {"anyOf": [{"$ref": REF + "WaveSpeedTask"}, {"$ref": REF + "WaveSpeedCancelled"}, {"type": "null"}]}}}
FAL_WEBHOOK = {"type": "object", "required": ["request_id", "gateway_request_id", "status", "payload", "error"],
               "properties": {"request_id": STRING, "gateway_request_id": STRING,
                              "status": {"type": "string", "enum": ["OK", "ERROR"]},
                              "payload": {"description": "the body of the result URL (any status)"},
                              "error": {"type": ["string", "null"], "description": "Invalid status code: N"}}}


STATUS_EVENT = {"type": "object", "required": ["data"], "properties": {  # OpenAPI 3.1: the schema of each event
    "event": STRING, "data": {"type": "string", "contentMediaType": "application/json",
                              "contentSchema": {"$ref": REF + "QueueStatus"}}}}
WAVESPEED_LINKS = {name: {"operationId": operation, "parameters": {"request_id": "$response.body#/data/id"}}
                   for name, operation in (("result", "wavespeed_result"), ("cancel", "wavespeed_cancel"))}


def fal_links(model_id: str) -> dict:
    """Where a submit reply leads (status, stream, result, cancel of the new request): for clients and
    schemathesis' stateful phase."""
    owner, app = model_id.split("/")[:2]
    return {name: {"operationId": operation, "parameters": {
        "owner": owner, "app": app, "request_id": "$response.body#/request_id"}}
        for name, operation in (("status", "status"), ("stream", "status_stream"), ("result", "result"),
                                ("cancel", "cancel"))}


def _json(schema: str, description: str, headers: tuple[str, ...] = ()) -> dict:
    reply: dict[str, Any] = {"description": description,
                             "content": {"application/json": {"schema": {"$ref": REF + schema}}}}
    if headers:
        reply["headers"] = {name: {"schema": STRING, "required": True} for name in headers}
    return reply


def _storage(schema: str = "Error") -> dict:
    return {"503": _json(schema, "the job storage cannot be used now (locked, unreachable)", ("Retry-After",)),
            "507": _json(schema, "the job storage is full: nothing was accepted", ("Retry-After",))}


def _path(name: str, description: str, pattern: str = SEGMENT) -> dict:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string", "pattern": pattern}}


REQUEST_PARAMETERS = [_path("owner", "fal-ai"), _path("app", "flux-1 (or flux)"),
                      _path("request_id", "the request_id the submit returned")]
UNAUTHORIZED = {"401": _json("Error", "no or unknown API key")}
NOT_FOUND = {"404": _json("Error", "no such request for this key (another key's requests look the same)")}


def fal_submit_parameters(queued: bool) -> list[dict]:
    timeout = params.START_TIMEOUT
    found = [{"name": START_TIMEOUT_HEADER, "in": "header", "required": False,
              "description": f"start_timeout: seconds the request may wait before it starts ({timeout.minimum:g}-"
                             f"{timeout.maximum:g}); not started by then, it fails with request_timeout (504)",
              "schema": {"type": "string", "pattern": r"^[0-9]{1,5}(\.[0-9]{1,3})?$"}},
             {"name": PRIORITY_HEADER, "in": "header", "required": False,
              "description": "normal only: one queue in arrival order (low is refused with 422)",
              "schema": {"type": "string", "enum": list(params.SERVED_PRIORITIES)}}]
    if queued:
        found.append({"name": "fal_webhook", "in": "query", "required": False,
                      "description": "URL POSTed fal's webhook body when the request ends (serve --allow-webhooks; "
                                     "public addresses only, unless --url-allow-host)",
                      "schema": {"type": "string", "format": "uri"}})
    return found


def fal_paths() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    bad_body = {"413": _json("Error", "body larger than the server's limit"),
                "422": _json("ValidationError", "invalid JSON, header or query parameter (bad body fields on the "
                                                "queue come back as a COMPLETED request whose result is the 422)")}
    too_many = {"429": _json("Error", "the key has its maximum of unfinished requests", ("Retry-After",))}
    for model_id, variant in FAL_MODELS.items():
        body = {"required": True, "content": {"application/json": {
            "schema": {"$ref": f"{REF}{variant.capitalize()}ReduxInput"}}}}
        name = model_id.replace("/", "_").replace("-", "_").replace(".", "_")
        paths[f"/{model_id}"] = {"post": {
            "operationId": "submit_" + name, "summary": f"queue a FLUX.1 {variant} Redux request",
            "parameters": fal_submit_parameters(True), "requestBody": body, "responses": {
                "200": dict(_json("SubmitReply", "queued (or COMPLETED at once with its 422 at response_url)"),
                            links=fal_links(model_id)),
                **UNAUTHORIZED, **bad_body, **too_many, **_storage()}}}
        paths[f"/sync/{model_id}"] = {"post": {
            "operationId": "run_" + name, "summary": f"run FLUX.1 {variant} Redux and wait (fal.run)",
            "parameters": fal_submit_parameters(False), "requestBody": body, "responses": {
                "200": _json("ReduxOutput", "the output"), "400": _json("Error", "cancelled"),
                **UNAUTHORIZED, **bad_body, **too_many,
                "500": _json("Error", "generation failed (X-Fal-Error-Type says why)"),
                "504": _json("Error", "not finished within serve --sync-timeout (cancelled), or not started "
                                      "within start_timeout"), **_storage()}}}
    request = "/{owner}/{app}/requests/{request_id}"
    paths[request + "/status"] = {"parameters": REQUEST_PARAMETERS, "get": {
        "operationId": "status", "summary": "status: 202 while IN_QUEUE / IN_PROGRESS, 200 when COMPLETED",
        "parameters": [{"name": "logs", "in": "query", "required": False, "schema": STRING,
                        "description": "1 to include the log lines"}],
        "responses": {"200": _json("QueueStatus", "completed (also failed and cancelled ones: see error)"),
                      "202": _json("QueueStatus", "pending"), **UNAUTHORIZED, **NOT_FOUND}}}
    paths[request + "/status/stream"] = {"parameters": REQUEST_PARAMETERS, "get": {
        "operationId": "status_stream", "summary": "the status as server-sent events until COMPLETED",
        "responses": {"200": {"description": "one event per change, `data: <QueueStatus JSON>`",
                              "content": {"text/event-stream": {"schema": STATUS_EVENT}}},
                      **UNAUTHORIZED, **NOT_FOUND}}}
    paths[request] = {"parameters": REQUEST_PARAMETERS, "get": {
        "operationId": "result", "summary": "the result, with the model's own HTTP status",
        "responses": {"200": _json("ReduxOutput", "the output"),
                      "400": _json("Error", "still in progress, or cancelled"), **UNAUTHORIZED, **NOT_FOUND,
                      "422": _json("ValidationError", "invalid input, each bad field named"),
                      "500": _json("Error", "generation failed"),
                      "504": _json("Error", "not started within its start_timeout")}}}
    paths[request + "/cancel"] = {"parameters": REQUEST_PARAMETERS, "put": {
        "operationId": "cancel", "summary": "cancel: a queued request leaves at once, a running one stops between "
                                            "steps",
        "responses": {"202": _json("CancelReply", "CANCELLATION_REQUESTED"),
                      "400": _json("CancelReply", "ALREADY_COMPLETED"), **UNAUTHORIZED, **NOT_FOUND}}}
    return paths


def wavespeed_paths() -> dict[str, Any]:
    envelope = {"200": _json("WaveSpeedEnvelope", "{code, message, data}; a failed task is a 200 with data.status "
                                                  "failed"),
                "401": _json("WaveSpeedEnvelope", "no or unknown API key")}
    missing = {"404": _json("WaveSpeedEnvelope", "no such task for this key")}
    task_id = [_path("request_id", "the task id")]
    return {
        f"/api/v3/{WAVESPEED_MODEL}": {"post": {
            "operationId": "wavespeed_submit", "summary": "WaveSpeed v3 submit (enable_sync_mode waits)",
            "parameters": [{"name": "webhook", "in": "query", "required": False,
                            "schema": {"type": "string", "format": "uri"},
                            "description": "URL POSTed the task when it ends (serve --allow-webhooks)"}],
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": REF + "WaveSpeedReduxDevInput"}}}},
            "responses": {**envelope, "200": dict(envelope["200"], links=WAVESPEED_LINKS),
                          "400": _json("WaveSpeedEnvelope", "invalid parameter (named in message)"),
                          "413": _json("WaveSpeedEnvelope", "body larger than the server's limit"),
                          "429": _json("WaveSpeedEnvelope", "the key has its maximum of unfinished tasks",
                                       ("Retry-After",)), **_storage("WaveSpeedEnvelope")}}},
        "/api/v3/predictions/{request_id}/result": {"parameters": task_id, "get": {
            "operationId": "wavespeed_result", "summary": "WaveSpeed v3 result", "responses": {**envelope, **missing}}},
        "/api/v3/predictions/{request_id}": {"parameters": task_id, "delete": {
            "operationId": "wavespeed_cancel", "summary": "WaveSpeed v3 cancel", "responses": {**envelope, **missing}}},
    }


def public_paths() -> dict[str, Any]:
    images = {kind: {"schema": {"type": "string", "contentMediaType": kind}}
              for kind in ("image/jpeg", "image/png", "image/webp")}
    health = {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}}
    return {
        "/files/{token}": {"parameters": [_path("token", "from an output URL", r"^[A-Za-z0-9_-]+\.[a-z]+$")],
                           "get": {"operationId": "file", "security": [],
                                   "summary": "an output image (unguessable URL, expires with its result)",
                                   "responses": {"200": {"description": "the image", "content": images},
                                                 "404": _json("Error", "unknown or expired")}}},
        "/openapi.json": {"get": {"operationId": "openapi", "summary": "this document", "security": [],
                                  "responses": {"200": {"description": "OpenAPI 3.1", "content": {
                                      "application/json": {"schema": {"type": "object"}}}}}}},
        "/health": {"get": {"operationId": "health", "summary": "liveness", "security": [], "responses": {
            "200": {"description": "ok", "content": {"application/json": {"schema": health}}}}}},
    }


def document(config: ServerConfig | None = None) -> dict[str, Any]:
    """The document for a server with these settings (URL inputs, pixel limit)."""
    config = config or ServerConfig()
    schemas = {"SubmitReply": SUBMIT_REPLY, "QueueStatus": QUEUE_STATUS, "LogLine": LOG_LINE,
               "ReduxOutput": FAL_OUTPUT, "Image": IMAGE, "Issue": ISSUE, "ValidationError": VALIDATION_ERROR,
               "Error": ERROR, "CancelReply": CANCEL_REPLY, "WaveSpeedReduxDevInput": wavespeed_input(config),
               "WaveSpeedTask": WAVESPEED_TASK, "WaveSpeedCancelled": WAVESPEED_CANCELLED,
               "WaveSpeedEnvelope": WAVESPEED_ENVELOPE, "FalWebhook": FAL_WEBHOOK}
    for variant in params.VARIANTS:
        schemas[f"{variant.capitalize()}ReduxInput"] = fal_input(variant, config)
    delivered = {"200": {"description": "any 2xx ends the delivery; anything else is retried a few times"}}
    return {"openapi": "3.1.0",
            "info": {"title": "FLUX.1 Redux server", "version": "1",
                     "description": "fal queue protocol, fal sync endpoint and WaveSpeed v3, served from local GPUs."},
            "components": {"schemas": schemas, "securitySchemes": {
                "key": {"type": "apiKey", "in": "header", "name": "Authorization",
                        "description": "Key <key> (fal clients)"},
                "bearer": {"type": "http", "scheme": "bearer"}}},
            "security": [{"key": []}, {"bearer": []}],
            "paths": {**fal_paths(), **wavespeed_paths(), **public_paths()},
            "webhooks": {
                "falWebhook": {"post": {"summary": "fal_webhook: sent when the request ends", "requestBody": {
                    "content": {"application/json": {"schema": {"$ref": REF + "FalWebhook"}}}},
                    "responses": delivered}},
                "wavespeedWebhook": {"post": {"summary": "webhook: sent when the task ends", "requestBody": {
                    "content": {"application/json": {"schema": {"$ref": REF + "WaveSpeedTask"}}}},
                    "responses": delivered}}}}
