"""A fake of fal's queue API, its direct (fal.run) endpoint and its CDN, for the Redux models.

Behaviour follows the protocol notes (shared/reference/remote-apis.md) and what fal-client parses:
submit 200 {request_id, response_url, status_url, cancel_url, status, queue_position}; status 202 while
IN_QUEUE/IN_PROGRESS and 200 when COMPLETED, with `logs` and `queue_position` keys always present;
result 400 while unfinished, 422 {"detail": [...]} for invalid input, 200 with image URLs on the CDN;
cancel 202 CANCELLATION_REQUESTED or 400 ALREADY_COMPLETED; fal.run answers directly (data URIs with
sync_mode). Faults are scripted per route: submit, status, result, cancel, run, file.
"""

from __future__ import annotations

import base64
import itertools
import random
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any, Callable

from .pictures import CONTENT_TYPES, color_of_data_uri, render, shifted
from .server import FakeServer, Hit, Response

PRESETS = {"square_hd": (1024, 1024), "square": (512, 512), "portrait_4_3": (768, 1024),
           "portrait_16_9": (576, 1024), "landscape_4_3": (1024, 768), "landscape_16_9": (1024, 576)}
MODELS = {"fal-ai/flux-1/dev/redux": {"steps": (1, 50, 28), "guidance": True},
          "fal-ai/flux-1/schnell/redux": {"steps": (1, 12, 4), "guidance": False}}
MAX_SIDE = 14142


@dataclass
class FakeJob:
    id: str
    model_id: str
    payload: dict
    color: tuple[int, int, int]
    plan: tuple[int, int]  # status polls spent IN_QUEUE, then IN_PROGRESS
    created: float
    state: str = "IN_QUEUE"
    polls: int = 0
    cancelled: bool = False
    completed_at: float | None = None
    failure: str | None = None
    issues: list = field(default_factory=list)
    output: dict | None = None


def validation_issues(model_id: str, payload: Any) -> list[dict]:
    """Pydantic-style issues for the Redux input schema (loc, msg, type, input)."""
    issues: list[dict] = []

    def add(name: str, msg: str, kind: str, value: Any = None) -> None:
        issues.append({"loc": ["body", name], "msg": msg, "type": kind, "input": value})

    def number(name: str, low: float, high: float, integer: bool = True) -> None:
        if name not in payload:
            return
        value = payload[name]
        if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
            add(name, "Input should be a valid integer" if integer else "Input should be a valid number",
                "int_type" if integer else "float_type", value)
        elif value < low:
            add(name, f"Input should be greater than or equal to {low}", "greater_than_equal", value)
        elif value > high:
            add(name, f"Input should be less than or equal to {high}", "less_than_equal", value)

    if not isinstance(payload, dict):
        return [{"loc": ["body"], "msg": "Input should be a valid dictionary", "type": "dict_type"}]
    if not isinstance(payload.get("image_url"), str):
        add("image_url", "Field required", "missing")
    size = payload.get("image_size", "landscape_4_3")
    if isinstance(size, str):
        if size not in PRESETS:
            add("image_size", "Input should be " + ", ".join(repr(p) for p in PRESETS), "enum", size)
    elif isinstance(size, dict):
        for side in ("width", "height"):
            value = size.get(side)
            if not isinstance(value, int) or not 1 <= value <= MAX_SIDE:
                add("image_size", f"{side} should be an integer from 1 to {MAX_SIDE}", "value_error", value)
    else:
        add("image_size", "Input should be a preset name or {width, height}", "union_tag_invalid", size)
    low, high, _ = MODELS[model_id]["steps"]
    number("num_inference_steps", low, high)
    if MODELS[model_id]["guidance"]:
        number("guidance_scale", 1, 20, integer=False)
    number("num_images", 1, 4)
    if payload.get("seed") is not None:
        number("seed", 0, 2**64 - 1)
    if payload.get("output_format", "jpeg") not in ("jpeg", "png"):
        add("output_format", "Input should be 'jpeg' or 'png'", "literal_error", payload["output_format"])
    if payload.get("acceleration", "none") not in ("none", "regular", "high"):
        add("acceleration", "Input should be 'none', 'regular' or 'high'", "literal_error", payload["acceleration"])
    for flag in ("sync_mode", "enable_safety_checker"):
        if flag in payload and not isinstance(payload[flag], bool):
            add(flag, "Input should be a valid boolean", "bool_type", payload[flag])
    return issues


class FakeFal:
    def __init__(self, *, key: str = "fal-test-key", scheme: str = "Key", prefix: str = "",
                 queue_polls: int = 1, progress_polls: int = 1, reply_urls: str = "self",
                 complete_after: float | None = None, echo_key_on_401: bool = False, id_prefix: str = "req-"):
        self.key, self.scheme, self.prefix = key, scheme, prefix.rstrip("/")
        self.default_plan = (queue_polls, progress_polls)
        self.plan_for: Callable[[int, FakeJob], tuple[int, int]] | None = None  # job number -> plan
        self.reply_urls = reply_urls  # "self", or "decoy" (an aggregator pointing at some other host)
        self.complete_after = complete_after  # time-based completion (benchmarks) instead of poll counts
        self.echo_key_on_401 = echo_key_on_401  # a careless server that repeats the credentials it got
        self.id_prefix = id_prefix  # a hostile server may reflect anything (the key too) into request ids
        self.fail_with: str | None = None  # every job fails with this error
        self.nsfw = False
        self.lock = threading.Lock()
        self.hits: list[tuple[str, Hit]] = []
        self.jobs: dict[str, FakeJob] = {}
        self.cancels: list[str] = []
        self.files: dict[str, tuple[bytes, str]] = {}
        self.faults: dict[str, deque[Response]] = defaultdict(deque)
        self.active = self.max_active = 0
        self._numbers = itertools.count()
        self.queue = FakeServer(self._queue_app)
        self.run = FakeServer(self._run_app)
        self.cdn = FakeServer(self._cdn_app)

    # -- lifecycle and test helpers -------------------------------------------------------------------------
    def start(self) -> "FakeFal":
        for server in (self.queue, self.run, self.cdn):
            server.start()
        return self

    def stop(self) -> None:
        for server in (self.queue, self.run, self.cdn):
            server.stop()

    @property
    def queue_url(self) -> str:
        return self.queue.url + self.prefix

    def fault(self, route: str, *responses: Response) -> None:
        """Answer the next requests on `route` with these responses instead of the normal ones."""
        self.faults[route].extend(responses)

    def hits_on(self, route: str) -> list[Hit]:
        with self.lock:
            return [hit for name, hit in self.hits if name == route]

    # -- servers --------------------------------------------------------------------------------------------
    def _queue_app(self, hit: Hit) -> Response:
        path = hit.path[len(self.prefix):] if hit.path.startswith(self.prefix + "/") else None
        parts = [p for p in (path or "").split("/") if p]
        if hit.method == "POST" and len(parts) >= 3 and "requests" not in parts:
            return self._route("submit", hit, lambda: self._submit(hit, "/".join(parts)))
        if len(parts) >= 4 and parts[2] == "requests":
            rest = parts[4:]
            if hit.method == "GET" and rest == ["status"]:
                return self._route("status", hit, lambda: self._status(hit, parts[3]))
            if hit.method == "GET" and not rest:
                return self._route("result", hit, lambda: self._result(parts[3]))
            if hit.method == "PUT" and rest == ["cancel"]:
                return self._route("cancel", hit, lambda: self._cancel(parts[3]))
        return self._route("other", hit, lambda: Response(404, {"detail": "Not Found"}))

    def _run_app(self, hit: Hit) -> Response:
        model_id = hit.path.strip("/")
        if hit.method != "POST" or model_id not in MODELS:
            return self._route("other", hit, lambda: Response(404, {"detail": "Not Found"}))
        return self._route("run", hit, lambda: self._run_direct(hit, model_id))

    def _cdn_app(self, hit: Hit) -> Response:
        if hit.path.startswith("/decoy"):
            return self._route("decoy", hit, lambda: Response(410, {"detail": "decoy: never call this"}),
                               auth=False)
        name = hit.path.rsplit("/", 1)[-1]
        return self._route("file", hit, lambda: self._file(name), auth=False)

    def _route(self, route: str, hit: Hit, handle: Callable[[], Response], auth: bool = True) -> Response:
        with self.lock:
            self.hits.append((route, hit))
            fault = self.faults[route].popleft() if self.faults[route] else None
        if fault is not None and fault.action != "drop_after":
            return fault
        if auth and hit.header("Authorization") != f"{self.scheme} {self.key}":
            detail = f"Invalid credentials: {hit.header('Authorization')}" if self.echo_key_on_401 else "Unauthorized"
            return Response(401, {"detail": detail})
        response = handle()
        if fault is not None:  # drop_after: the work is done, but the reply never arrives
            response.action, response.delay = "drop", fault.delay
        return response

    # -- queue protocol -------------------------------------------------------------------------------------
    def _urls(self, app: str, request_id: str) -> dict[str, str]:
        base = (self.cdn.url + "/decoy" if self.reply_urls == "decoy" else self.queue_url)
        response_url = f"{base}/{app}/requests/{request_id}"
        return {"response_url": response_url, "status_url": response_url + "/status",
                "cancel_url": response_url + "/cancel"}

    def _submit(self, hit: Hit, model_id: str) -> Response:
        if model_id not in MODELS:
            return Response(404, {"detail": f"Application '{model_id}' not found"})
        try:
            payload = hit.json()
        except ValueError:
            return Response(400, {"detail": "Invalid JSON body"})
        job = FakeJob(id=f"{self.id_prefix}{random.getrandbits(48):012x}", model_id=model_id, payload=payload,
                      color=color_of_data_uri((payload or {}).get("image_url")), plan=self.default_plan,
                      created=time.monotonic(), issues=validation_issues(model_id, payload),
                      failure=self.fail_with)
        number = next(self._numbers)
        if self.plan_for is not None:
            job.plan = self.plan_for(number, job)
        with self.lock:
            self.jobs[job.id] = job
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        app = "/".join(model_id.split("/")[:2])
        return Response(200, {"request_id": job.id, **self._urls(app, job.id), "status": "IN_QUEUE",
                              "queue_position": job.plan[0]})

    def _advance(self, job: FakeJob) -> None:
        if job.state == "COMPLETED":
            return
        now = time.monotonic()
        if self.complete_after is not None:
            elapsed = now - job.created
            if elapsed >= self.complete_after:
                self._complete(job, job.created + self.complete_after)
            elif elapsed >= self.complete_after / 2:
                job.state = "IN_PROGRESS"
            return
        job.polls += 1
        queued, running = job.plan
        if job.polls <= queued:
            job.state = "IN_QUEUE"
        elif job.polls <= queued + running:
            job.state = "IN_PROGRESS"
        else:
            self._complete(job, now)

    def _complete(self, job: FakeJob, at: float) -> None:
        job.state, job.completed_at = "COMPLETED", at
        with self.lock:
            self.active -= 1

    def _status(self, hit: Hit, request_id: str) -> Response:
        job = self.jobs.get(request_id)
        if job is None:
            return Response(404, {"detail": "Request not found"})
        self._advance(job)
        app = "/".join(job.model_id.split("/")[:2])
        body = {"status": job.state, "request_id": job.id, **self._urls(app, job.id),
                "queue_position": max(job.plan[0] - job.polls, 0) if job.state == "IN_QUEUE" else None,
                "logs": None}
        if hit.query.get("logs") in ("1", "true", "True"):
            body["logs"] = [] if job.state == "IN_QUEUE" else [
                {"message": "generating", "level": "INFO", "source": "user", "timestamp": "2025-01-01T00:00:00"}]
        if job.state == "COMPLETED":
            body["metrics"] = {"inference_time": 0.01}
            if job.failure or job.cancelled:
                body["error"] = job.failure or "Request was cancelled"
                body["error_type"] = "runner_error" if job.failure else "request_cancelled"
        return Response(200 if job.state == "COMPLETED" else 202, body,
                        headers={"x-fal-request-id": job.id})

    def _result(self, request_id: str) -> Response:
        job = self.jobs.get(request_id)
        if job is None:
            return Response(404, {"detail": "Request not found"})
        if job.state != "COMPLETED":
            return Response(400, {"detail": "Request is still in progress"})
        if job.cancelled:
            return Response(400, {"detail": "Request was cancelled"})
        if job.issues:
            return Response(422, {"detail": job.issues})
        if job.failure:
            return Response(500, {"detail": job.failure}, headers={"X-Fal-Error-Type": "runner_error"})
        if job.output is None:
            job.output = self._render(job, inline=bool(job.payload.get("sync_mode")))
        return Response(200, job.output, headers={"x-fal-request-id": job.id})

    def _cancel(self, request_id: str) -> Response:
        job = self.jobs.get(request_id)
        if job is None:
            return Response(404, {"detail": "Request not found"})
        with self.lock:
            self.cancels.append(request_id)
        if job.state == "COMPLETED":
            return Response(400, {"status": "ALREADY_COMPLETED"})
        job.cancelled = True
        self._complete(job, time.monotonic())
        return Response(202, {"status": "CANCELLATION_REQUESTED"})

    def _run_direct(self, hit: Hit, model_id: str) -> Response:
        payload = hit.json()
        issues = validation_issues(model_id, payload)
        if issues:
            return Response(422, {"detail": issues})
        job = FakeJob(id=f"run-{random.getrandbits(48):012x}", model_id=model_id, payload=payload,
                      color=color_of_data_uri(payload.get("image_url")), plan=(0, 0), created=time.monotonic())
        return Response(200, self._render(job, inline=bool(payload.get("sync_mode"))),
                        headers={"x-fal-request-id": job.id})

    # -- outputs --------------------------------------------------------------------------------------------
    def _render(self, job: FakeJob, inline: bool) -> dict:
        size = job.payload.get("image_size", "landscape_4_3")
        width, height = PRESETS[size] if isinstance(size, str) else (size["width"], size["height"])
        fmt = job.payload.get("output_format", "jpeg")
        count = job.payload.get("num_images", 1)
        seed = job.payload.get("seed")
        images = []
        for index in range(count):
            data, kind = render(shifted(job.color, index), width, height, fmt), CONTENT_TYPES[fmt]
            if inline:
                url = f"data:{kind};base64,{base64.b64encode(data).decode()}"
            else:
                name = f"{job.id}-{index}.{'jpg' if fmt == 'jpeg' else fmt}"
                with self.lock:
                    self.files[name] = (data, kind)
                url = f"{self.cdn.url}/files/{name}"
            images.append({"url": url, "width": width, "height": height, "content_type": kind})
        return {"images": images, "timings": {"inference": 0.01},
                "seed": seed if seed is not None else random.getrandbits(64),
                "has_nsfw_concepts": [self.nsfw] * count, "prompt": ""}

    def _file(self, name: str) -> Response:
        with self.lock:
            found = self.files.get(name)
        if found is None:
            return Response(404, {"detail": "Not Found"})
        data, kind = found
        return Response(200, data, content_type=kind)
