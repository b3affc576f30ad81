"""HTTP plumbing shared by both protocols: capped JSON bodies, key checks, blocking calls off the event loop."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from .auth import ApiKeys
from .config import ServerConfig
from .service import JobService


@dataclass
class Context:
    config: ServerConfig
    service: JobService
    keys: ApiKeys


class BodyError(Exception):
    def __init__(self, status: int, message: str, kind: str):
        super().__init__(message)
        self.status, self.kind = status, kind


async def read_json(request: Request, limit: int) -> Any:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BodyError(413, f"request body larger than this server's limit of {limit} bytes", "payload_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyError(413, f"request body larger than this server's limit of {limit} bytes", "payload_too_large")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks) or b"null")
    except (ValueError, UnicodeDecodeError):
        raise BodyError(422, "Invalid JSON body", "json_invalid") from None


def owner_of(request: Request, ctx: Context) -> str | None:
    return ctx.keys.owner(request.headers.get("authorization"))


def base_url(request: Request) -> str:
    """The server's URL as this client reaches it (Host header), for the URLs put in replies."""
    return str(request.base_url).rstrip("/")


async def blocking(function, *args, **kwargs):
    return await run_in_threadpool(function, *args, **kwargs)


def json_reply(status: int, body: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)
