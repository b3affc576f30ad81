"""HTTP plumbing shared by both protocols: capped JSON bodies, key checks, blocking calls off the event loop."""

from __future__ import annotations

import json
import math
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
    return parse_json(b"".join(chunks) or b"null")


MAX_JSON_DEPTH = 32  # the inputs are two levels deep; deeper bodies are refused before anything walks them


def _no_constants(name: str):
    raise BodyError(422, f"Invalid JSON body: {name} is not a JSON number (send a finite number)", "json_invalid")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses as inf
        raise BodyError(422, f"Invalid JSON body: {text[:40]} is too large for a number (send a finite number)",
                        "json_invalid")
    return value


def parse_json(data: bytes) -> Any:
    """A request body as JSON, or a 422 BodyError: NaN and Infinity (which Python's json reads but no JSON
    reply can carry) and nesting deeper than MAX_JSON_DEPTH (which would overflow the stack of whatever
    walks it later) are refused, as is anything that is not JSON."""
    try:
        value = json.loads(data, parse_constant=_no_constants, parse_float=_finite_float)
    except RecursionError:  # far deeper than the limit: the decoder ran out of stack first
        raise BodyError(422, f"Invalid JSON body: nested deeper than {MAX_JSON_DEPTH} levels",
                        "json_invalid") from None
    except (ValueError, UnicodeDecodeError):  # JSONDecodeError, int digit limit, bad encoding
        raise BodyError(422, "Invalid JSON body", "json_invalid") from None
    problem = _tree_problem(value)
    if problem:
        raise BodyError(422, f"Invalid JSON body: {problem}", "json_invalid")
    return value


def _tree_problem(value: Any) -> str | None:
    """Walks the parsed body without recursion: arrays/objects nested deeper than MAX_JSON_DEPTH, or a string
    with an unpaired surrogate escape ("\\ud800", which no UTF-8 reply can carry)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if not item.isascii() and not _encodable(item):
                return "a string holds an unpaired UTF-16 surrogate (\\ud800-\\udfff)"
            continue
        if isinstance(item, dict):
            children = [*item.keys(), *item.values()]
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > MAX_JSON_DEPTH:
            return f"nested deeper than {MAX_JSON_DEPTH} levels"
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list, str)))
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def owner_of(request: Request, ctx: Context) -> str | None:
    return ctx.keys.owner(request.headers.get("authorization"))


def base_url(request: Request) -> str:
    """The server's URL as this client reaches it (Host header), for the URLs put in replies."""
    return str(request.base_url).rstrip("/")


async def blocking(function, *args, **kwargs):
    return await run_in_threadpool(function, *args, **kwargs)


def json_reply(status: int, body: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)
