"""The OpenAPI 3.1 document (GET /openapi.json), built from the same params.py specs the validation uses."""

from __future__ import annotations

from typing import Any

from .. import params
from ..params import NumberSpec
from .validation import DEFAULT_WAVESPEED_SIZE, FAL_MODELS, WAVESPEED_MODEL


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


def fal_input(variant: str) -> dict[str, Any]:
    spec = params.VARIANTS[variant]
    sides = {side: dict(number(s), multipleOf=params.SIZE_MULTIPLE)
             for side, s in (("width", params.WIDTH), ("height", params.HEIGHT))}
    properties = {
        "image_url": {"type": "string", "description": "data:image/... URI (http(s) URLs if the server allows them)"},
        "image_size": {"anyOf": [{"type": "string", "enum": list(params.SIZE_PRESETS)},
                                 {"type": "object", "properties": sides, "required": ["width", "height"]}],
                       "default": params.FAL_DEFAULT_IMAGE_SIZE},
        "num_inference_steps": number(params.provider_steps("fal", variant)),
        "seed": number(params.SEED, nullable=True),
        "num_images": number(params.NUM_IMAGES),
        "output_format": {"type": "string", "enum": list(params.OUTPUT_FORMATS), "default": "jpeg"},
        "acceleration": {"type": "string", "enum": list(params.ACCELERATIONS), "default": "none",
                         "description": "accepted for compatibility; no effect here"},
        "sync_mode": {"type": "boolean", "default": False, "description": "outputs as data URIs"},
        "enable_safety_checker": {"type": "boolean", "default": True,
                                  "description": "accepted; there is no safety checker on this server"},
    }
    if spec.guidance is not None:
        properties["guidance_scale"] = number(spec.guidance)
    return {"type": "object", "properties": properties, "required": ["image_url"]}


def wavespeed_input() -> dict[str, Any]:
    spec = params.VARIANTS["dev"]
    side = params.WAVESPEED_SIDE
    return {"type": "object", "required": ["image"], "properties": {
        "image": {"type": "string"},
        "size": {"type": "string", "pattern": r"^\d+\*\d+$", "default": DEFAULT_WAVESPEED_SIZE,
                 "description": f"W*H, each side {side.minimum}-{side.maximum}, a multiple of {params.SIZE_MULTIPLE}"},
        "num_inference_steps": number(spec.steps), "guidance_scale": number(spec.guidance),
        "num_images": number(params.NUM_IMAGES), "seed": number(params.WAVESPEED_SEED),
        "output_format": {"type": "string", "enum": list(params.WAVESPEED_OUTPUT_FORMATS), "default": "jpeg"},
        "enable_base64_output": {"type": "boolean", "default": False},
        "enable_sync_mode": {"type": "boolean", "default": False},
        "enable_safety_checker": {"type": "boolean", "default": False}}}


FAL_OUTPUT = {"type": "object", "properties": {
    "images": {"type": "array", "items": {"type": "object", "properties": {
        "url": {"type": "string"}, "width": {"type": "integer"}, "height": {"type": "integer"},
        "content_type": {"type": "string"}}}},
    "timings": {"type": "object", "properties": {"inference": {"type": "number"}}},
    "seed": {"type": "integer"}, "has_nsfw_concepts": {"type": "array", "items": {"type": "boolean"}},
    "prompt": {"type": "string"}}}
QUEUE_STATUS = {"type": "object", "properties": {
    "status": {"type": "string", "enum": ["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]},
    "request_id": {"type": "string"}, "queue_position": {"type": ["integer", "null"]},
    "logs": {"type": ["array", "null"]}, "error": {"type": "string"}, "error_type": {"type": "string"},
    "response_url": {"type": "string"}, "status_url": {"type": "string"}, "cancel_url": {"type": "string"}}}
VALIDATION_ERROR = {"type": "object", "properties": {"detail": {"type": "array", "items": {"type": "object", "properties": {
    "loc": {"type": "array"}, "msg": {"type": "string"}, "type": {"type": "string"}}}}}}


def _json(schema_ref: str, description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_ref}"}}}}


def document() -> dict[str, Any]:
    schemas = {"QueueStatus": QUEUE_STATUS, "ReduxOutput": FAL_OUTPUT, "ValidationError": VALIDATION_ERROR,
               "WaveSpeedReduxDevInput": wavespeed_input()}
    paths: dict[str, Any] = {}
    for model_id, variant in FAL_MODELS.items():
        name = f"{variant.capitalize()}ReduxInput"
        schemas[name] = fal_input(variant)
        body = {"required": True, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}}
        paths[f"/{model_id}"] = {"post": {"summary": f"queue a FLUX.1 {variant} Redux request", "requestBody": body,
                                          "responses": {"200": _json("QueueStatus", "queued"),
                                                        "429": {"description": "too many unfinished requests"}}}}
        paths[f"/sync/{model_id}"] = {"post": {"summary": f"run FLUX.1 {variant} Redux and wait", "requestBody": body,
                                               "responses": {"200": _json("ReduxOutput", "the output"),
                                                             "422": _json("ValidationError", "invalid input")}}}
    request = "/{owner}/{app}/requests/{request_id}"
    paths[request + "/status"] = {"get": {"summary": "status (202 while pending, 200 when COMPLETED)", "responses": {
        "200": _json("QueueStatus", "completed"), "202": _json("QueueStatus", "pending")}}}
    paths[request] = {"get": {"summary": "result, with the model's HTTP status", "responses": {
        "200": _json("ReduxOutput", "the output"), "422": _json("ValidationError", "invalid input")}}}
    paths[request + "/cancel"] = {"put": {"summary": "cancel", "responses": {
        "202": {"description": "CANCELLATION_REQUESTED"}, "400": {"description": "ALREADY_COMPLETED"}}}}
    paths[f"/api/v3/{WAVESPEED_MODEL}"] = {"post": {"summary": "WaveSpeed v3 submit", "requestBody": {
        "required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/WaveSpeedReduxDevInput"}}}},
        "responses": {"200": {"description": "envelope {code, message, data}"}}}}
    paths["/api/v3/predictions/{request_id}/result"] = {"get": {"summary": "WaveSpeed v3 result",
                                                                "responses": {"200": {"description": "envelope"}}}}
    paths["/api/v3/predictions/{request_id}"] = {"delete": {"summary": "WaveSpeed v3 cancel",
                                                            "responses": {"200": {"description": "envelope"}}}}
    return {"openapi": "3.1.0",
            "info": {"title": "FLUX.1 Redux server", "version": "1",
                     "description": "fal queue protocol, fal sync endpoint and WaveSpeed v3, served from local GPUs."},
            "components": {"schemas": schemas, "securitySchemes": {
                "key": {"type": "apiKey", "in": "header", "name": "Authorization",
                        "description": "Key <key> (fal clients)"},
                "bearer": {"type": "http", "scheme": "bearer"}}},
            "security": [{"key": []}, {"bearer": []}], "paths": paths}
