"""WaveSpeed API v3 FLUX.1 Redux dev: submit -> poll result, or one request with enable_sync_mode.

Every reply is an envelope {"code", "message", "data"}; task failures arrive with HTTP 200 and
data.status "failed". A sync-mode request that runs out of server time comes back "processing" with
data.code 5004 and is then polled like an ordinary task. Cancel is `DELETE /api/v3/predictions/{id}`
(wavespeed.ai/docs/delete-task). The result URL is rebuilt from the configured base, not taken from
data.urls.get.
"""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import quote

from ..params import (VARIANTS, WAVESPEED_HEIGHT, WAVESPEED_OUTPUT_FORMATS, WAVESPEED_SEED, WAVESPEED_WIDTH,
                      ParameterError, check_choice, resolve_size, validate_generation)
from .errors import KeyRejectedError, ProviderError
from .keys import redacting_logger
from .jobs import Job, JobOutput, Plan, RemoteRequest, is_finite_number, require_bool

log = redacting_logger(__name__)

WAVESPEED_URL = "https://api.wavespeed.ai"
WAVESPEED_MODELS = {"dev": "wavespeed-ai/flux-redux-dev"}
ENDED_STATES = frozenset({"failed", "cancelled", "timeout", "deleted"})
SYNC_TIMEOUT_CODE = 5004
TASK_ERROR_CODES = {
    1200: "rejected by moderation", 1400: "missing parameter", 1401: "invalid parameter",
    1402: "could not fetch the input media", 1403: "task failed", 1405: "task failed",
    5000: "internal error", 5003: "service unavailable", 5004: "sync mode timed out",
}


def wavespeed_error_detail(status: int, data: Any, text: str) -> str:
    """Readable text from a WaveSpeed envelope: message, then data.error and data.code when present."""
    if not isinstance(data, dict):
        return text.strip() or "(empty reply)"
    parts = [str(data["message"])] if data.get("message") else []
    inner = data.get("data") if isinstance(data.get("data"), dict) else {}
    if inner.get("error"):
        parts.append(str(inner["error"]))
    code = inner.get("code", data.get("code"))
    if isinstance(code, int) and code in TASK_ERROR_CODES:
        parts.append(f"code {code}: {TASK_ERROR_CODES[code]}")
    return "; ".join(parts) or text.strip() or "(empty reply)"


class WaveSpeedProvider:
    name = "wavespeed"
    key_name = "wavespeed"
    models = WAVESPEED_MODELS
    error_detail = staticmethod(wavespeed_error_detail)

    def __init__(self, base_url: str = WAVESPEED_URL):
        self.base_url = base_url.rstrip("/")

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    def build_payload(self, request: RemoteRequest) -> dict[str, Any]:
        """Validate against the shared specs plus WaveSpeed's own limits (side 256-1536, seed < 2**31)."""
        if request.model in VARIANTS and request.model not in self.models:
            raise ParameterError("model", request.model, "WaveSpeed offers FLUX.1 Redux dev only (no schnell)")
        check_choice("model", request.model, tuple(self.models))
        if request.acceleration is not None:
            raise ParameterError("acceleration", request.acceleration, "WaveSpeed has no acceleration setting; "
                                                                       "leave it empty")
        spec = validate_generation(request.model, request.image_size, request.width, request.height,
                                   request.num_inference_steps, request.guidance_scale, None, request.num_images)
        width, height = resolve_size(request.image_size, request.width, request.height,
                                     WAVESPEED_WIDTH, WAVESPEED_HEIGHT)
        seed = -1 if request.seed is None else WAVESPEED_SEED.validate(request.seed, "WaveSpeed")
        sync = require_bool("sync_mode", request.sync_mode)
        payload: dict[str, Any] = {
            "size": f"{width}*{height}",
            "num_inference_steps": spec.num_inference_steps,
            "guidance_scale": spec.guidance_scale,
            "num_images": spec.num_images,
            "seed": seed,
            "enable_sync_mode": sync,
            "enable_base64_output": sync,  # one request in, images inline out: no CDN round trip
        }
        if request.output_format is not None:
            payload["output_format"] = check_choice("output_format", request.output_format, WAVESPEED_OUTPUT_FORMATS)
        if request.enable_safety_checker is not None:
            payload["enable_safety_checker"] = require_bool("enable_safety_checker", request.enable_safety_checker)
        return payload

    def plan(self, request: RemoteRequest) -> Plan:
        payload = self.build_payload(request)
        size = tuple(int(side) for side in payload["size"].split("*"))
        return Plan(payload, self.models[request.model], bool(request.sync_mode), size, payload["num_images"])

    def run(self, job: Job) -> JobOutput:
        payload = {"image": job.image, **job.plan.payload}
        if job.plan.direct:
            job.report("running")
        reply = job.http.call("POST", f"{self.base_url}/api/v3/{job.plan.model_id}", what="submit", json=payload,
                              headers=job.auth, submit=True, read_timeout=math.inf if job.plan.direct else None,
                              max_bytes=job.reply_limit())
        task = self._task(job, reply.data, "submit", None)
        raw_id = str(task["id"]) if task.get("id") else None  # in URLs only; messages and info get the clean one
        if raw_id is None and task.get("status") != "completed":
            raise ProviderError(f"{self.name}: the submit reply has no task id", provider=self.name)
        request_id = job.clean_id(raw_id)
        finished = False
        try:
            task = self._wait_until_done(job, task, raw_id, request_id)
            finished = True
        finally:
            if not finished and raw_id:
                self._cancel(job, raw_id, request_id)
        if task.get("status") != "completed":
            detail = wavespeed_error_detail(200, {"data": task}, "no reason given")
            raise ProviderError(f"{self.name}: task {request_id} {job.http.clean(task.get('status'))}: "
                                f"{job.http.redact(detail)}", provider=self.name, request_id=request_id)
        job.report("downloading", request_id)
        return self._output(job, task, request_id, payload["seed"])

    def _wait_until_done(self, job: Job, task: dict, raw_id: str | None, request_id: str | None) -> dict:
        """Poll until the task completed or ended otherwise; returns its last state."""
        while True:
            state = task.get("status")
            if state == "completed" or state in ENDED_STATES:
                return task
            if task.get("code") == SYNC_TIMEOUT_CODE:
                log.info("%s: sync mode timed out on the server for task %s; polling instead", self.name, request_id)
            job.report("queued" if state == "created" else "running", request_id)
            job.wait_before_next_poll(request_id)
            reply = job.http.call("GET", f"{self.base_url}/api/v3/predictions/{quote(raw_id, safe='')}/result",
                                  what="result", headers=job.auth, request_id=request_id,
                                  max_bytes=job.reply_limit())
            task = self._task(job, reply.data, "result", request_id)

    def _task(self, job: Job, body: Any, what: str, request_id: str | None) -> dict:
        """The envelope's data, or an error built from its code and message (a server may echo the key)."""
        if not isinstance(body, dict):
            raise ProviderError(f"{self.name}: the {what} reply is not an envelope", provider=self.name,
                                request_id=request_id)
        code = body.get("code")
        if code in (401, 403):
            raise KeyRejectedError(f"{self.name} rejected the API key (code {code}: "
                                   f"{job.http.clean(body.get('message'), 300)})",
                                   provider=self.name, request_id=request_id, status=code)
        if (code not in (None, 200)) or not isinstance(body.get("data"), dict):
            detail = job.http.clean(wavespeed_error_detail(200, body, ''), 500)
            raise ProviderError(f"{self.name} reported an error ({what}): {detail}", provider=self.name,
                                request_id=request_id)
        return body["data"]

    def _cancel(self, job: Job, raw_id: str, request_id: str | None) -> None:
        try:
            job.http.call("DELETE", f"{self.base_url}/api/v3/predictions/{quote(raw_id, safe='')}",
                          what="cancel", headers=job.auth, accept=(400, 404), deadline=job.cancel_deadline(),
                          abortable=False, request_id=request_id)
            log.info("%s: cancel of task %s sent", self.name, request_id)
        except Exception as exc:  # we are already failing; report why the cancel did not go through
            log.warning("%s: could not cancel task %s (%s); it may still run and be billed",
                        self.name, request_id, exc)

    def _output(self, job: Job, task: dict, request_id: str | None, sent_seed: int) -> JobOutput:
        images = job.fetch_images(list(task.get("outputs") or []), request_id)
        seed = task.get("seed")
        if not isinstance(seed, int) or seed < 0:
            seed = sent_seed if sent_seed >= 0 else None  # WaveSpeed does not report a seed it picked
        timings = task.get("timings") if isinstance(task.get("timings"), dict) else {}
        inference_ms = timings.get("inference")
        return JobOutput(request_id, images, seed, [bool(flag) for flag in task.get("has_nsfw_contents") or []],
                         inference_ms / 1000.0 if is_finite_number(inference_ms) else None)
