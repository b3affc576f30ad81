"""Request bodies of the served APIs checked against pipelines/params.py, the one source of ranges.

fal bodies give a pydantic-style issue list ({"loc": ["body", field], "msg", "type", "input"}) with one
entry per bad field; WaveSpeed bodies give the first problem as one line. Both produce `JobInputs`, the
engine-ready settings a worker runs.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

from .. import params
from ..params import ParameterError
from .webhooks import check_webhook_url

if TYPE_CHECKING:
    from .config import ServerConfig

FAL_APPS = ("fal-ai/flux-1", "fal-ai/flux")  # owner/app; the older fal-ai/flux/... ids are accepted too
FAL_MODELS = {f"{app}/{variant}/redux": variant for app in FAL_APPS for variant in params.VARIANTS}
WAVESPEED_MODEL = "wavespeed-ai/flux-redux-dev"
WAVESPEED_SIZE = re.compile(r"^(\d+)\*(\d+)$")
DEFAULT_WAVESPEED_SIZE = f"{params.WAVESPEED_SIDE.default}*{params.WAVESPEED_SIDE.default}"
IMAGE_PREFIXES = ("data:image/",)
URL_PREFIXES = ("https://", "http://")


@dataclass(frozen=True)
class JobInputs:
    """What a worker runs: the image reference, the validated generation settings, how outputs are sent."""

    generation: params.GenerationParams
    image: str
    output_format: str
    inline: bool  # outputs as data URIs / base64 instead of server URLs

    def as_dict(self) -> dict[str, Any]:
        return {"generation": self.generation.as_dict(), "image": self.image, "output_format": self.output_format,
                "inline": self.inline}

    @staticmethod
    def from_dict(data: dict) -> "JobInputs":
        return JobInputs(params.GenerationParams(**data["generation"]), data["image"], data["output_format"],
                         data["inline"])


def _inputs(variant: str, image: str, size: tuple[int, int], steps: int, guidance: float | None, seed: int | None,
            count: int, fmt: str, inline: bool) -> JobInputs:
    generation = params.validate_generation(variant, num_inference_steps=steps, guidance_scale=guidance, seed=seed,
                                            num_images=count, size=size)
    return JobInputs(generation, image, fmt, inline)


class Issues:
    """Collects one issue per bad field, in fal's (pydantic's) shape."""

    def __init__(self) -> None:
        self.items: list[dict] = []

    def add(self, loc: list, msg: str, kind: str, value: Any = None, where: str = "body") -> None:
        self.items.append({"loc": [where, *loc], "msg": msg, "type": kind, "input": _short(value)})

    def check(self, field: str, value: Any, validate: Callable[[Any], Any], loc: list | None = None,
              where: str = "body") -> Any:
        try:
            return validate(value)
        except ParameterError as exc:
            self.add(loc or [field], str(exc), "value_error", value, where)
            return None

    def summary(self) -> str:
        return summarize(self.items)


def summarize(issues: list[dict]) -> str:
    """One line from an issue list: "field: message; ..."."""
    return "; ".join(f"{'.'.join(map(str, i['loc'][1:])) or 'body'}: {i['msg']}" for i in issues)


def _short(value: Any) -> Any:
    """Echo bad inputs without megabytes of base64."""
    if isinstance(value, str) and len(value) > 80:
        return value[:60] + f"... ({len(value)} characters)"
    return value


def check_image_ref(name: str, value: Any, urls_allowed: bool) -> str:
    if not isinstance(value, str) or not value:
        raise ParameterError(name, _short(value), "expected a data:image/... URI or an http(s) URL")
    if value.startswith(IMAGE_PREFIXES):
        return value
    if value.startswith(URL_PREFIXES):
        if not urls_allowed:
            raise ParameterError(name, _short(value), "image URLs are switched off on this server "
                                                      "(serve --allow-url-inputs); send a data:image/... URI")
        return value
    raise ParameterError(name, _short(value), "expected a data:image/... URI or an http(s) URL")


def _bool(name: str) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        if not isinstance(value, bool):
            raise ParameterError(name, value, "expected true or false")
        return value
    return check


def _choice(name: str, choices: tuple[str, ...], default: str) -> Callable[[Any], str]:
    return lambda value: params.check_choice_or_default(name, value, choices, default)


def _fal_size(issues: Issues, value: Any, max_pixels: int) -> tuple[int, int] | None:
    """A preset, or {"width", "height"} of any whole numbers up to 14142 rounded to multiples of 16; either
    within the server's pixel limit."""
    if isinstance(value, str):
        presets = tuple(params.SIZE_PRESETS)
        return issues.check("image_size", value, lambda v: params.check_pixels(
            *params.resolve_size(params.check_choice("image_size", v, presets)), max_pixels))
    if isinstance(value, dict):
        before = len(issues.items)
        sides = [issues.check(side, value.get(side), spec.validate, ["image_size", side])
                 for side, spec in (("width", params.FAL_WIDTH), ("height", params.FAL_HEIGHT))]
        if len(issues.items) > before:
            return None
        return issues.check("image_size", value, lambda v: params.check_pixels(
            *map(params.round_side, sides), max_pixels), ["image_size"])
    issues.add(["image_size"], f"image_size={_short(value)!r} is not allowed: expected one of "
               f"{', '.join(params.SIZE_PRESETS)} or {{\"width\": W, \"height\": H}}", "value_error", value)
    return None


def validate_fal(variant: str, body: Any, config: "ServerConfig") -> tuple[JobInputs | None, list[dict]]:
    """fal's Redux input for `variant` -> (JobInputs, []) or (None, issues naming every bad field)."""
    issues = Issues()
    if not isinstance(body, dict):
        issues.add([], "Input should be a valid dictionary (a JSON object)", "dict_type", None)
        return None, issues.items
    spec = params.variant_spec(variant)
    urls_allowed = config.url_inputs
    if "image_url" not in body:
        issues.add(["image_url"], "Field required", "missing")
    image = issues.check("image_url", body.get("image_url"), lambda v: check_image_ref("image_url", v, urls_allowed)) \
        if "image_url" in body else None
    size = _fal_size(issues, body.get("image_size", params.FAL_DEFAULT_IMAGE_SIZE), config.max_output_pixels)
    steps_spec = params.provider_steps("fal", variant)  # fal's own range (schnell 1-12), not the local one
    steps = _optional(issues, body, "num_inference_steps", lambda v: steps_spec.validate(v, f"FLUX.1 {variant}"),
                      steps_spec.default)
    guidance = None
    if spec.guidance is not None:
        guidance = _optional(issues, body, "guidance_scale", lambda v: spec.guidance.validate(v, f"FLUX.1 {variant}"),
                             spec.guidance.default)
    elif body.get("guidance_scale") is not None:
        issues.add(["guidance_scale"], f"guidance_scale={body['guidance_scale']!r} is not allowed: FLUX.1 {variant} "
                   "takes no guidance; leave it out", "value_error", body["guidance_scale"])
    seed = _optional(issues, body, "seed", params.SEED.validate, None)
    count = _optional(issues, body, "num_images", params.NUM_IMAGES.validate, params.NUM_IMAGES.default)
    fmt = _optional(issues, body, "output_format",
                    _choice("output_format", params.OUTPUT_FORMATS, params.FAL_DEFAULT_OUTPUT_FORMAT),
                    params.FAL_DEFAULT_OUTPUT_FORMAT)
    _optional(issues, body, "acceleration",
              _choice("acceleration", params.ACCELERATIONS, params.FAL_DEFAULT_ACCELERATION),
              params.FAL_DEFAULT_ACCELERATION)
    sync = _optional(issues, body, "sync_mode", _bool("sync_mode"), False)
    _optional(issues, body, "enable_safety_checker", _bool("enable_safety_checker"), True)
    if issues.items:
        return None, issues.items
    return _inputs(variant, image, size, steps, guidance, seed, count, fmt, sync), []


def _optional(issues: Issues, body: dict, field: str, validate: Callable[[Any], Any], default: Any) -> Any:
    value = body.get(field)
    return default if value is None else issues.check(field, value, validate)


START_TIMEOUT_HEADER, PRIORITY_HEADER = "X-Fal-Request-Timeout", "X-Fal-Queue-Priority"  # as fal-client sends them


def fal_options(headers: Mapping[str, str], query: Mapping[str, str], config: "ServerConfig", base_url: str,
                queued: bool) -> tuple[dict, list[dict]]:
    """The submit's headers and query: start_timeout (honoured: not started in time, the request fails with
    request_timeout), priority (normal only: one queue in arrival order), fal_webhook (queue endpoint only,
    where the operator allows webhooks) -> (Job fields, []) or ({}, issues naming each). Resolves the webhook's
    host: call it off the event loop."""
    issues, record = Issues(), {}
    timeout = headers.get(START_TIMEOUT_HEADER)
    if timeout is not None:
        seconds = issues.check(START_TIMEOUT_HEADER, timeout, _seconds, where="header")
        if seconds is not None:
            record["start_by"] = time.time() + seconds
    priority = headers.get(PRIORITY_HEADER)
    if priority is not None:
        issues.check(PRIORITY_HEADER, priority, _priority, where="header")
    webhook = query.get("fal_webhook")
    if webhook is not None and not queued:
        issues.add(["fal_webhook"], "fal_webhook=... is not allowed: webhooks work with the queue endpoint "
                   "(POST /{model_id} without /sync), as on fal", "value_error", webhook, "query")
    elif webhook is not None:
        url = issues.check("fal_webhook", webhook, lambda v: check_webhook_url("fal_webhook", v, config),
                           where="query")
        if url is not None:
            record["webhook"] = {"url": url, "base_url": base_url}
    return ({}, issues.items) if issues.items else (record, [])


def _seconds(text: str) -> float:
    spec = params.START_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        raise ParameterError(START_TIMEOUT_HEADER, _short(text), f"expected seconds, a number in "
                                                                 f"{spec.minimum}–{spec.maximum}") from None
    if not spec.minimum <= value <= spec.maximum:  # also NaN
        raise ParameterError(START_TIMEOUT_HEADER, _short(text), f"allowed range is {spec.minimum}–{spec.maximum} "
                                                                 "seconds")
    return value


def _priority(text: str) -> str:
    if text == "low":
        raise ParameterError(PRIORITY_HEADER, text, "this server runs every request in arrival order (one queue, "
                                                    "so queue positions only go down); send normal or leave it out")
    return params.check_choice(PRIORITY_HEADER, text, params.SERVED_PRIORITIES)


def wavespeed_options(query: Mapping[str, str], config: "ServerConfig", base_url: str) -> tuple[dict, str | None]:
    """WaveSpeed's ?webhook=<url> -> (Job fields, None) or ({}, "webhook: problem")."""
    webhook = query.get("webhook")
    if webhook is None:
        return {}, None
    try:
        return {"webhook": {"url": check_webhook_url("webhook", webhook, config), "base_url": base_url}}, None
    except ParameterError as exc:
        return {}, f"webhook: {exc}"


def validate_wavespeed(body: Any, config: "ServerConfig") -> tuple[JobInputs | None, str | None]:
    """WaveSpeed's flux-redux-dev input -> (JobInputs, None) or (None, "field: problem")."""
    if not isinstance(body, dict):
        return None, "request body must be a JSON object"
    spec = params.variant_spec("dev")
    issues = Issues()
    if "image" not in body:
        issues.add(["image"], "image is required", "missing")
    image = issues.check("image", body.get("image"), lambda v: check_image_ref("image", v, config.url_inputs)) \
        if "image" in body else None
    size = issues.check("size", body.get("size", DEFAULT_WAVESPEED_SIZE),
                        lambda v: _wavespeed_size(v, config.max_output_pixels))
    steps = _optional(issues, body, "num_inference_steps", spec.steps.validate, spec.steps.default)
    guidance = _optional(issues, body, "guidance_scale", spec.guidance.validate, spec.guidance.default)
    seed = _optional(issues, body, "seed", params.WAVESPEED_SEED.validate, params.WAVESPEED_SEED.default)
    count = _optional(issues, body, "num_images", params.NUM_IMAGES.validate, params.NUM_IMAGES.default)
    fmt = _optional(issues, body, "output_format",
                    _choice("output_format", params.WAVESPEED_OUTPUT_FORMATS, params.FAL_DEFAULT_OUTPUT_FORMAT),
                    params.FAL_DEFAULT_OUTPUT_FORMAT)
    inline = _optional(issues, body, "enable_base64_output", _bool("enable_base64_output"), False)
    for flag in ("enable_sync_mode", "enable_safety_checker"):
        _optional(issues, body, flag, _bool(flag), False)
    if issues.items:
        return None, issues.summary()
    return _inputs("dev", image, size, steps, guidance, None if seed == -1 else seed, count, fmt, inline), None


def _wavespeed_size(value: Any, max_pixels: int) -> tuple[int, int]:
    """"W*H", each side in WaveSpeed's range, rounded to the nearest multiple of 16 like fal's custom sizes."""
    match = WAVESPEED_SIZE.match(value) if isinstance(value, str) else None
    if not match:
        raise ParameterError("size", _short(value), 'expected "W*H", e.g. "1024*1024"')
    sides = [spec.validate(int(text), "size") for spec, text in
             ((params.WAVESPEED_WIDTH, match[1]), (params.WAVESPEED_HEIGHT, match[2]))]
    return params.check_pixels(*map(params.round_side, sides), max_pixels, "size")
