"""The ASGI application: both protocols, output files, the OpenAPI document."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import openapi, routes_fal, routes_wavespeed
from .auth import ApiKeys
from .config import ServerConfig
from .housekeeping import Housekeeper
from .outputs import FILES_PATH
from .service import JobService
from .store import storage_failure
from .web import Context, blocking

log = logging.getLogger("flux-redux.server")
WAVESPEED_PREFIX = "/api/v3/"


async def storage_failed(request: Request, exc: Exception) -> Response:
    """A store or queue write that failed (disk full, database locked, Redis gone): a JSON reply in the
    caller's protocol instead of a bare 500; anything else goes on to the generic 500."""
    found = storage_failure(exc)
    if found is None:
        raise exc
    status, kind, message = found
    log.error("%s %s refused with %d: job storage failed: %s: %s", request.method, request.url.path, status,
              type(exc).__name__, str(exc).splitlines()[0][:300] if str(exc) else "")
    headers = {"Retry-After": "30"}
    if request.url.path.startswith(WAVESPEED_PREFIX):
        return JSONResponse({"code": status, "message": message, "data": None}, status_code=status, headers=headers)
    return JSONResponse({"detail": message, "error_type": kind}, status_code=status,
                        headers=dict(headers, **{"X-Fal-Error-Type": kind}))


async def http_error(request: Request, exc: HTTPException) -> Response:
    """Starlette's own 404 / 405 as JSON in the caller's protocol, like every other reply."""
    message = {404: "Not Found", 405: "Method Not Allowed"}.get(exc.status_code, str(exc.detail))
    if request.url.path.startswith(WAVESPEED_PREFIX):
        return JSONResponse({"code": exc.status_code, "message": message, "data": None},
                            status_code=exc.status_code, headers=exc.headers)
    return JSONResponse({"detail": message}, status_code=exc.status_code, headers=exc.headers)


def storage_exceptions() -> list[type[Exception]]:
    classes: list[type[Exception]] = [sqlite3.Error, OSError]
    try:
        import redis
    except ImportError:
        return classes
    return [*classes, redis.RedisError]


def build_app(config: ServerConfig, service: JobService, keys: ApiKeys) -> Starlette:
    ctx = Context(config, service, keys)
    spec = openapi.document(config)

    async def file(request: Request):
        found = await blocking(service.store.get_file, request.path_params["token"])
        if found is None:
            return JSONResponse({"detail": "File not found or expired"}, status_code=404)
        data, content_type, expires_at = found
        left = max(0, int(expires_at - time.time()))  # a cache must not keep it past the result's expiry
        return Response(data, media_type=content_type, headers={"Cache-Control": f"private, max-age={left}"})

    async def openapi_json(_request: Request):
        return JSONResponse(spec)

    async def health(_request: Request):
        return JSONResponse({"status": "ok"})

    routes = [
        Route(FILES_PATH + "{token}", file, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        *routes_wavespeed.routes(ctx),
        *routes_fal.routes(ctx),  # last: its submit route takes any POST path
    ]
    @contextlib.asynccontextmanager
    async def lifespan(_app):
        """While the API serves: start timeouts and webhooks (housekeeping.py) on their own thread."""
        keeper = Housekeeper(config, service.store).start()
        try:
            yield
        finally:
            keeper.stop()

    handlers = {404: http_error, 405: http_error, **{cls: storage_failed for cls in storage_exceptions()}}
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers)
