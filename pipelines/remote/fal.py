"""fal.ai FLUX.1 Redux: the queue protocol (submit -> poll status -> fetch result; cancel) and the direct
endpoint for sync_mode.

Status, result and cancel URLs are always rebuilt from the configured queue base + owner/app + request id,
never taken from the replies: the key then only ever goes to the host the user configured (this is what
lets `custom.py` reuse this class for aggregators whose replies still point at queue.fal.run).
"""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import quote

from ..params import (ACCELERATIONS, OUTPUT_FORMATS, SIZE_PRESETS, ParameterError, check_choice,
                      provider_steps, validate_generation)
from .errors import ProviderError
from .keys import redacting_logger
from .jobs import Job, JobOutput, Plan, RemoteRequest, is_finite_number, require_bool

log = redacting_logger(__name__)

FAL_QUEUE_URL = "https://queue.fal.run"
FAL_RUN_URL = "https://fal.run"
ANY_ERROR_STATUS = tuple(range(400, 600))
FAL_MODELS = {"dev": "fal-ai/flux-1/dev/redux", "schnell": "fal-ai/flux-1/schnell/redux"}


def fal_error_detail(status: int, data: Any, text: str) -> str:
    """Readable text from a fal error body: a pydantic `detail` list becomes "field: message; ..."."""
    if isinstance(data, dict):
        detail = data.get("detail")
        if isinstance(detail, list) and detail:
            return "; ".join(_describe_issue(issue) for issue in detail)
        if detail:
            kind = data.get("error_type")
            return f"{detail} ({kind})" if kind else str(detail)
        if data.get("error"):
            return str(data["error"])
    return text.strip() or "(empty reply)"


def _describe_issue(issue: Any) -> str:
    if not isinstance(issue, dict):
        return str(issue)
    loc = [str(part) for part in issue.get("loc") or [] if part != "body"]
    message = issue.get("msg") or issue.get("message") or issue.get("type") or "invalid"
    return f"{'.'.join(loc)}: {message}" if loc else str(message)


class FalProvider:
    name = "fal"
    key_name = "fal"
    auth_scheme = "Key"
    models = FAL_MODELS
    error_detail = staticmethod(fal_error_detail)

    def __init__(self, queue_url: str = FAL_QUEUE_URL, run_url: str | None = FAL_RUN_URL):
        self.queue_url = queue_url.rstrip("/")
        self.run_url = run_url.rstrip("/") if run_url else None  # None: sync_mode goes through the queue too

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"Authorization": f"{self.auth_scheme} {key}"}

    def build_payload(self, request: RemoteRequest) -> dict[str, Any]:
        """Validate against the shared specs and map to fal's fields (everything but the image)."""
        check_choice("model", request.model, tuple(self.models))
        spec = validate_generation(request.model, request.image_size, request.width, request.height,
                                   request.num_inference_steps, request.guidance_scale, request.seed,
                                   request.num_images)
        provider_steps(self.name, request.model).validate(spec.num_inference_steps,
                                                          f"{self.name}'s FLUX.1 {request.model} endpoint")
        payload: dict[str, Any] = {
            "image_size": request.image_size if request.image_size in SIZE_PRESETS
            else {"width": spec.width, "height": spec.height},
            "num_inference_steps": spec.num_inference_steps,
            "num_images": spec.num_images,
            "sync_mode": require_bool("sync_mode", request.sync_mode),
        }
        if spec.guidance_scale is not None:
            payload["guidance_scale"] = spec.guidance_scale
        if spec.seed is not None:
            payload["seed"] = spec.seed
        if request.enable_safety_checker is not None:
            payload["enable_safety_checker"] = require_bool("enable_safety_checker", request.enable_safety_checker)
        if request.output_format is not None:
            if request.output_format not in OUTPUT_FORMATS:
                raise ParameterError("output_format", request.output_format,
                                     f"{self.name} accepts {' or '.join(OUTPUT_FORMATS)} (webp is WaveSpeed only)")
            payload["output_format"] = request.output_format
        if request.acceleration is not None:
            payload["acceleration"] = check_choice("acceleration", request.acceleration, ACCELERATIONS)
        return payload

    def plan(self, request: RemoteRequest) -> Plan:
        direct = bool(request.sync_mode and self.run_url)
        payload = self.build_payload(request)
        size = payload["image_size"]
        size = SIZE_PRESETS[size] if isinstance(size, str) else (size["width"], size["height"])
        return Plan(payload, self.models[request.model], direct, size, payload["num_images"])

    def run(self, job: Job) -> JobOutput:
        payload = {"image_url": job.image, **job.plan.payload}
        if job.plan.direct:
            return self._run_direct(job, job.plan.model_id, payload)
        return self._run_queued(job, job.plan.model_id, payload)

    # -- protocol -------------------------------------------------------------------------------------------
    def _run_queued(self, job: Job, model_id: str, payload: dict) -> JobOutput:
        reply = job.http.call("POST", f"{self.queue_url}/{model_id}", what="submit", json=payload,
                              headers=job.auth, submit=True, max_bytes=job.reply_limit())
        body = reply.data if isinstance(reply.data, dict) else {}
        if "request_id" not in body:
            if "images" in body:  # an aggregator that answered synchronously
                return self._output(job, body, job.clean_id(reply.headers.get("x-fal-request-id")))
            raise ProviderError(f"{self.name}: the submit reply has no request_id (fields: {sorted(body)})",
                                provider=self.name)
        raw_id = str(body["request_id"])  # in URLs only; messages, logs and info get the cleaned one
        request_id = job.clean_id(raw_id)
        requests_url = f"{self.queue_url}/{_app_path(model_id)}/requests/{quote(raw_id, safe='')}"
        job.report("queued", request_id, _position(body))
        finished = False
        try:
            status = self._wait_until_completed(job, requests_url, request_id)
            finished = True
        finally:
            if not finished:  # interrupted, deadline, or polling failed: do not leave a paid job behind
                self._cancel(job, requests_url, request_id)
        job.report("downloading", request_id)
        if status.get("error"):
            raise self._job_failure(job, requests_url, request_id, str(status["error"]))
        result = job.http.call("GET", requests_url, what="result", headers=job.auth, request_id=request_id,
                               max_bytes=job.reply_limit())
        inference = (status.get("metrics") or {}).get("inference_time")
        return self._output(job, result.data, request_id, inference)

    def _wait_until_completed(self, job: Job, requests_url: str, request_id: str) -> dict:
        while True:
            reply = job.http.call("GET", f"{requests_url}/status", what="status", params={"logs": "1"},
                                  headers=job.auth, request_id=request_id)
            status = reply.data if isinstance(reply.data, dict) else {}
            state = status.get("status")
            if state == "COMPLETED":
                return status
            if state == "IN_QUEUE":
                job.report("queued", request_id, _position(status))
            elif state == "IN_PROGRESS":
                job.report("running", request_id)
            else:
                log.warning("%s: request %s has unknown status %r; still waiting", self.name, request_id,
                            job.http.clean(state))
            job.wait_before_next_poll(request_id)

    def _job_failure(self, job: Job, requests_url: str, request_id: str, error: str) -> ProviderError:
        """A failed job is COMPLETED with an error; its result URL holds the details (any HTTP status)."""
        reply = job.http.call("GET", requests_url, what="result", headers=job.auth, request_id=request_id,
                              accept=ANY_ERROR_STATUS, retry_statuses=frozenset({429}))
        detail = fal_error_detail(reply.status, reply.data, "") if reply.status >= 400 else ""
        return ProviderError(f"{self.name}: request {request_id} failed: {job.http.redact(detail or error)}",
                             provider=self.name, request_id=request_id, status=reply.status)

    def _run_direct(self, job: Job, model_id: str, payload: dict) -> JobOutput:
        """fal.run: one POST that returns the output (data URIs with sync_mode). It cannot be cancelled
        mid-flight, so its read timeout is the rest of the deadline."""
        job.report("running")
        reply = job.http.call("POST", f"{self.run_url}/{model_id}", what="run", json=payload, headers=job.auth,
                              submit=True, read_timeout=math.inf, max_bytes=job.reply_limit())
        request_id = job.clean_id(reply.headers.get("x-fal-request-id"))
        job.report("downloading", request_id)
        return self._output(job, reply.data, request_id)

    def _cancel(self, job: Job, requests_url: str, request_id: str) -> None:
        try:
            reply = job.http.call("PUT", f"{requests_url}/cancel", what="cancel", headers=job.auth, accept=(400,),
                                  deadline=job.cancel_deadline(), abortable=False, request_id=request_id)
            outcome = reply.data.get("status") if isinstance(reply.data, dict) else reply.status
            log.info("%s: cancel of request %s sent (%s)", self.name, request_id, outcome)
        except Exception as exc:  # we are already failing; report why the cancel did not go through
            log.warning("%s: could not cancel request %s (%s); it may still run and be billed",
                        self.name, request_id, exc)

    def _output(self, job: Job, body: Any, request_id: str | None, inference: Any = None) -> JobOutput:
        if not isinstance(body, dict) or not isinstance(body.get("images"), list):
            raise ProviderError(f"{self.name}: request {request_id} returned no image list", provider=self.name,
                                request_id=request_id)
        refs = [item.get("url") if isinstance(item, dict) else item for item in body["images"]]
        images = job.fetch_images(refs, request_id)
        seed = body.get("seed")
        timings = body.get("timings") if isinstance(body.get("timings"), dict) else {}
        inference = timings.get("inference", inference)
        return JobOutput(request_id, images, seed if isinstance(seed, int) else None,
                         [bool(flag) for flag in body.get("has_nsfw_concepts") or []],
                         float(inference) if is_finite_number(inference) else None)


def _app_path(model_id: str) -> str:
    """Status, result and cancel live under owner/app only ("fal-ai/flux-1"), not the full model id."""
    return "/".join(model_id.split("/")[:2])


def _position(body: dict) -> int | None:
    position = body.get("queue_position")
    return position if isinstance(position, int) and not isinstance(position, bool) else None
