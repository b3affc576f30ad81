"""WaveSpeed API v3 for wavespeed-ai/flux-redux-dev: every reply is {"code", "message", "data"}.

    POST   /api/v3/wavespeed-ai/flux-redux-dev     submit (enable_sync_mode waits for the outputs)
    GET    /api/v3/predictions/{id}/result          the task: created, processing, completed, failed, cancelled
    DELETE /api/v3/predictions/{id}                 cancel
"""

from __future__ import annotations

import time
from contextlib import nullcontext

from starlette.requests import Request
from starlette.routing import Route

from . import jobs as J
from .outputs import absolute
from .service import ShuttingDown, TooManyJobs
from .validation import WAVESPEED_MODEL, validate_wavespeed, wavespeed_options
from .web import BodyError, Context, base_url, blocking, json_reply, owner_of, read_json

SYNC_TIMEOUT_CODE = 5004


def envelope(status: int, message: str, data=None, headers=None):
    return json_reply(status, {"code": status, "message": message, "data": data}, headers)


def task_status(job: J.Job) -> str:
    if job.state == J.QUEUED:
        return "created"
    if job.state == J.RUNNING:
        return "processing"
    if job.error_type == "request_cancelled":
        return "cancelled"
    return "failed" if job.error else "completed"


def task_data(base: str, job: J.Job) -> dict:
    """The task object of the result URL (and of the webhook), with URLs on `base`."""
    body = (job.outcome or {}).get("body") or {}
    images = body.get("images") or []
    status = task_status(job)
    data = {"id": job.id, "model": job.model, "status": status,
            "outputs": [absolute(image["url"], base) for image in images],
            "urls": {"get": f"{base}/api/v3/predictions/{job.id}/result"},
            "has_nsfw_contents": [False] * len(images),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(job.created_at)),
            "error": job.error or "", "timings": {"inference": round((job.inference_s or 0) * 1000)}}
    if "seed" in body:
        data["seed"] = body["seed"]
    if status == "failed":
        data["code"] = 1403 if job.error_type == "runner_error" else 1401
    return data


def routes(ctx: Context) -> list[Route]:
    def unauthorized():
        return envelope(401, "Unauthorized: send Authorization: Bearer <key>")

    async def submit(request: Request):
        if request.path_params["model"] != WAVESPEED_MODEL:
            return envelope(404, f"model {request.path_params['model']} not found (this server has "
                                 f"{WAVESPEED_MODEL})")
        owner = owner_of(request, ctx)
        if owner is None:
            return unauthorized()
        retry = {"Retry-After": str(ctx.config.retry_after_s)}
        try:
            body = await read_json(request, ctx.config.max_body_bytes)
        except BodyError as exc:
            return envelope(400 if exc.status == 422 else exc.status, str(exc))
        inputs, problem = validate_wavespeed(body, ctx.config)
        options, webhook_problem = await blocking(wavespeed_options, request.query_params, ctx.config,
                                                  base_url(request))
        if inputs is None or webhook_problem:
            return envelope(400, f"invalid parameter: {problem or webhook_problem}")
        sync = bool(body.get("enable_sync_mode"))
        with ctx.service.waits.slot(owner) if sync else nullcontext(True) as free:  # waits hold no thread
            if not free:
                return envelope(429, ctx.service.too_many_waits(), headers=retry)
            try:
                job = await blocking(ctx.service.submit, owner, "wavespeed", WAVESPEED_MODEL, inputs, **options)
            except TooManyJobs as exc:
                return envelope(429, str(exc), headers=retry)
            except ShuttingDown as exc:
                return envelope(503, str(exc), headers=retry)
            if not sync:
                return envelope(200, "success", task_data(base_url(request), job))
            job = await ctx.service.wait(owner, job.id, ctx.config.sync_timeout_s)
        data = task_data(base_url(request), job)
        if not job.done:  # timed out, or the server is stopping: the task stays queued, the client polls
            data.update(code=SYNC_TIMEOUT_CODE, error="Sync mode timed out, please query the result later")
        return envelope(200, "success", data)

    async def find(request: Request):
        owner = owner_of(request, ctx)
        if owner is None:
            return None, unauthorized()
        job = await blocking(ctx.service.find, owner, request.path_params["request_id"])
        if job is None or job.api != "wavespeed":
            return None, envelope(404, "task not found")
        return job, None

    async def result(request: Request):
        job, error = await find(request)
        return error or envelope(200, "success", task_data(base_url(request), job))

    async def delete(request: Request):
        job, error = await find(request)
        if error:
            return error
        await blocking(ctx.service.cancel, job.owner, job.id)
        job = await blocking(ctx.service.find, job.owner, job.id)
        return envelope(200, "success", {"id": job.id, "status": task_status(job)})

    return [
        Route("/api/v3/predictions/{request_id}/result", result, methods=["GET"]),
        Route("/api/v3/predictions/{request_id}", delete, methods=["DELETE"]),
        Route("/api/v3/{model:path}", submit, methods=["POST"]),
    ]
