"""The ASGI application: both protocols, output files, the OpenAPI document."""

from __future__ import annotations

import time

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import openapi, routes_fal, routes_wavespeed
from .auth import ApiKeys
from .config import ServerConfig
from .outputs import FILES_PATH
from .service import JobService
from .web import Context, blocking


def build_app(config: ServerConfig, service: JobService, keys: ApiKeys) -> Starlette:
    ctx = Context(config, service, keys)
    spec = openapi.document()

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
    return Starlette(routes=routes)
