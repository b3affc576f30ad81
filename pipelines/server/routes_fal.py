"""fal's queue protocol and its direct (sync) endpoint, for fal-ai/flux-1/{dev,schnell}/redux.

    POST /{model_id}                              submit -> {request_id, *_url, status, queue_position}
    GET  /{owner}/{app}/requests/{id}/status      202 while IN_QUEUE/IN_PROGRESS, 200 when COMPLETED
    GET  /{owner}/{app}/requests/{id}/status/stream   the same as server-sent events until COMPLETED
    GET  /{owner}/{app}/requests/{id}             the result with the model's own HTTP status (422, 500...)
    PUT  /{owner}/{app}/requests/{id}/cancel      202 CANCELLATION_REQUESTED / 400 ALREADY_COMPLETED
    POST /sync/{model_id}                         the output directly (fal.run)

The same paths answer `Authorization: Key` (fal clients) and `Bearer` (aggregator clients, e.g. the pack's
remote node with provider custom).
"""

from __future__ import annotations

import asyncio
import json

from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from . import jobs as J
from .outputs import absolute
from .service import ShuttingDown, TooManyJobs
from .validation import FAL_APPS, FAL_MODELS, fal_options, validate_fal
from .web import BodyError, Context, base_url, blocking, json_reply, owner_of, read_json

NOT_FOUND = {"detail": "Request not found"}
UNAUTHORIZED = {"detail": "Unauthorized: send Authorization: Key <key> (or Bearer <key>)"}
LOG_FLAGS = ("1", "true", "True")
STREAM_POLL_S = 0.1


def app_path(model_id: str) -> str:
    return "/".join(model_id.split("/")[:2])


def request_urls(request: Request, job: J.Job) -> dict[str, str]:
    response_url = f"{base_url(request)}/{app_path(job.model)}/requests/{job.id}"
    return {"response_url": response_url, "status_url": response_url + "/status",
            "cancel_url": response_url + "/cancel"}


def submit_body(request: Request, job: J.Job, position: int | None) -> dict:
    """Every field of fal's QueueStatus schema with its declared type, for a queued job and for one that is
    already COMPLETED (an invalid body): queue_position an integer, logs and metrics objects (the status
    URL carries the log lines and the inference time)."""
    return {"request_id": job.id, **request_urls(request, job), "status": job.state,
            "queue_position": position or 0, "logs": {}, "metrics": {}}


def result_reply(request: Request, job: J.Job):
    body, status = job.outcome["body"], job.outcome["status"]
    headers = {"x-fal-request-id": job.id}
    if status == 200:
        body = dict(body, images=[dict(image, url=absolute(image["url"], base_url(request)))
                                  for image in body["images"]])
    elif job.error_type:
        headers["X-Fal-Error-Type"] = job.error_type
    return json_reply(status, body, headers)


def routes(ctx: Context) -> list[Route]:
    async def authorized_job(request: Request):
        owner = owner_of(request, ctx)
        if owner is None:
            return None, json_reply(401, UNAUTHORIZED)
        app = f"{request.path_params['owner']}/{request.path_params['app']}"
        job = await blocking(ctx.service.find, owner, request.path_params["request_id"])
        if job is None or app not in FAL_APPS or app_path(job.model) != app or job.api != "fal":
            return None, json_reply(404, NOT_FOUND)
        return job, None

    async def parse(request: Request, queued: bool = True):
        """(owner, model_id, inputs, issues, job options) or an error reply. A bad header or query (start
        timeout, priority, webhook) is a 422 at once; a bad body on the queue is a job COMPLETED with its 422."""
        model_id = request.path_params["model_id"].strip("/")
        if model_id not in FAL_MODELS:
            return json_reply(404, {"detail": f"Application '{model_id}' not found"})
        owner = owner_of(request, ctx)
        if owner is None:
            return json_reply(401, UNAUTHORIZED)
        options, problems = await blocking(fal_options, request.headers, request.query_params, ctx.config,
                                           base_url(request), queued)
        if problems:
            return json_reply(422, {"detail": problems})
        try:
            body = await read_json(request, ctx.config.max_body_bytes)
        except BodyError as exc:
            detail = [{"loc": ["body"], "msg": str(exc), "type": exc.kind}] if exc.status == 422 else str(exc)
            return json_reply(exc.status, {"detail": detail})
        inputs, issues = validate_fal(FAL_MODELS[model_id], body, ctx.config)
        return owner, model_id, inputs, issues, options

    async def enqueue(owner: str, model_id: str, inputs, issues=None, options=None):
        """The new job, or the 429 reply when the key has too many unfinished ones."""
        try:
            return await blocking(ctx.service.submit, owner, "fal", model_id, inputs, issues, **(options or {}))
        except TooManyJobs as exc:
            return json_reply(429, {"detail": str(exc), "error_type": "rate_limited"},
                              {"Retry-After": str(ctx.config.retry_after_s)})
        except ShuttingDown as exc:
            return unavailable(str(exc))

    def unavailable(message: str):
        return json_reply(503, {"detail": message, "error_type": "service_unavailable"},
                          {"Retry-After": str(ctx.config.retry_after_s), "X-Fal-Error-Type": "service_unavailable"})

    async def submit(request: Request):
        if request.method != "POST":  # the catch-all path answers other methods too: JSON, never a bare 405
            model_id = request.path_params["model_id"].strip("/")
            if model_id in FAL_MODELS:
                return json_reply(405, {"detail": "Method Not Allowed: POST a request body"}, {"Allow": "POST"})
            return json_reply(404, {"detail": "Not Found"})
        parsed = await parse(request)
        if not isinstance(parsed, tuple):
            return parsed
        job = await enqueue(*parsed)
        if not isinstance(job, J.Job):
            return job
        position = await blocking(ctx.service.position, job)
        return json_reply(200, submit_body(request, job, position))

    async def status_body(request: Request, job: J.Job) -> dict:
        body = {"status": job.state, "request_id": job.id, **request_urls(request, job),
                "queue_position": await blocking(ctx.service.position, job),
                "logs": job.logs if request.query_params.get("logs") in LOG_FLAGS else None}
        if job.done:
            body["metrics"] = {"inference_time": job.inference_s}
            if job.error:
                body["error"], body["error_type"] = job.error, job.error_type
        return body

    async def status(request: Request):
        job, error = await authorized_job(request)
        if error:
            return error
        return json_reply(200 if job.done else 202, await status_body(request, job), {"x-fal-request-id": job.id})

    async def status_stream(request: Request):
        """Server-sent events: one `data: <status json>` line per change, until COMPLETED."""
        job, error = await authorized_job(request)
        if error:
            return error

        async def events():
            last, current = None, job
            while current is not None:
                text = json.dumps(await status_body(request, current))
                if text != last:
                    yield f"data: {text}\n\n"
                    last = text
                if current.done:
                    return
                await asyncio.sleep(STREAM_POLL_S)
                current = await blocking(ctx.service.find, job.owner, job.id)
        return StreamingResponse(events(), media_type="text/event-stream", headers={"x-fal-request-id": job.id})

    async def result(request: Request):
        job, error = await authorized_job(request)
        if error:
            return error
        if not job.done:
            return json_reply(400, {"detail": "Request is still in progress"})
        return result_reply(request, job)

    async def cancel(request: Request):
        job, error = await authorized_job(request)
        if error:
            return error
        outcome = await blocking(ctx.service.cancel, job.owner, job.id)
        if outcome == "requested":
            return json_reply(202, {"status": "CANCELLATION_REQUESTED"})
        return json_reply(400, {"status": "ALREADY_COMPLETED"})

    async def run_sync(request: Request):
        parsed = await parse(request, queued=False)
        if not isinstance(parsed, tuple):
            return parsed
        owner, model_id, inputs, issues, options = parsed
        if inputs is None:
            return json_reply(422, {"detail": issues})
        with ctx.service.waits.slot(owner) as free:  # waits hold no thread, but each key has a bounded number
            if not free:
                return json_reply(429, {"detail": ctx.service.too_many_waits(), "error_type": "rate_limited"},
                                  {"Retry-After": str(ctx.config.retry_after_s)})
            job = await enqueue(owner, model_id, inputs, None, options)
            if not isinstance(job, J.Job):
                return job
            job = await ctx.service.wait(owner, job.id, ctx.config.sync_timeout_s)
        if job is not None and not job.done:
            await blocking(ctx.service.cancel, owner, job.id)
            if ctx.service.draining:
                return unavailable("the server restarted before this request finished; it was cancelled, send it "
                                   "again")
            return json_reply(504, {"detail": f"not finished within {ctx.config.sync_timeout_s:g} s; cancelled "
                                              "(use the queue endpoints for long jobs)",
                                    "error_type": "request_timeout"}, {"X-Fal-Error-Type": "request_timeout"})
        return result_reply(request, job) if job else json_reply(404, NOT_FOUND)

    requests_path = "/{owner}/{app}/requests/{request_id}"
    return [
        Route("/sync/{model_id:path}", run_sync, methods=["POST"]),
        Route(requests_path + "/status", status, methods=["GET"]),
        Route(requests_path + "/status/stream", status_stream, methods=["GET"]),
        Route(requests_path + "/cancel", cancel, methods=["PUT"]),
        Route(requests_path, result, methods=["GET"]),
        Route("/{model_id:path}", submit, methods=["POST", "GET", "PUT", "DELETE", "PATCH"]),
    ]
