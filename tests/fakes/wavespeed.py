"""A fake of WaveSpeed API v3 for wavespeed-ai/flux-redux-dev.

Every reply is an envelope {"code", "message", "data"}; task failures come with HTTP 200 and
data.status "failed". Tasks go created -> processing -> completed over result polls. enable_sync_mode
answers completed at once, or (sync="timeout") "processing" with data.code 5004 and a urls.get to poll.
DELETE /api/v3/predictions/{id} cancels. Faults are scripted per route: submit, result, cancel, file.
"""

from __future__ import annotations

import base64
import random
import re
import threading
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Any, Callable

from .pictures import CONTENT_TYPES, color_of_data_uri, render, shifted
from .server import FakeServer, Hit, Response

MODEL = "wavespeed-ai/flux-redux-dev"
SIZE = re.compile(r"^(\d+)\*(\d+)$")


@dataclass
class FakeTask:
    id: str
    payload: dict
    color: tuple[int, int, int]
    status: str = "created"
    polls: int = 0
    code: int | None = None
    error: str = ""
    outputs: list | None = None


def invalid_parameter(payload: Any) -> str | None:
    """The first problem with the input, worded like an API message, or None."""
    if not isinstance(payload, dict):
        return "request body must be a JSON object"
    if not isinstance(payload.get("image"), str) or not payload["image"]:
        return "image is required"
    match = SIZE.match(str(payload.get("size", "1024*1024")))
    if not match or not all(256 <= int(side) <= 1536 for side in match.groups()):
        return f"size must be W*H with each side in 256~1536, got {payload.get('size')!r}"
    ranges = {"num_inference_steps": (1, 50), "guidance_scale": (1, 20), "num_images": (1, 4),
              "seed": (-1, 2**31 - 1)}
    for name, (low, high) in ranges.items():
        value = payload.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not low <= value <= high):
            return f"{name} must be in {low}~{high}, got {value!r}"
    if payload.get("output_format", "jpeg") not in ("jpeg", "png", "webp"):
        return f"output_format must be jpeg, png or webp, got {payload['output_format']!r}"
    return None


class FakeWaveSpeed:
    def __init__(self, *, key: str = "ws-test-key", created_polls: int = 1, processing_polls: int = 1,
                 sync: str = "complete", base64_style: str = "raw"):
        self.key = key
        self.plan = (created_polls, processing_polls)
        self.sync = sync  # "complete" or "timeout" (5004)
        self.base64_style = base64_style  # "raw" or "data_uri" for enable_base64_output
        self.fail_with: tuple[str, int] | None = None  # (error, data.code) for every task
        self.lock = threading.Lock()
        self.hits: list[tuple[str, Hit]] = []
        self.tasks: dict[str, FakeTask] = {}
        self.cancels: list[str] = []
        self.files: dict[str, tuple[bytes, str]] = {}
        self.faults: dict[str, deque[Response]] = defaultdict(deque)
        self.server = FakeServer(self._app)

    def start(self) -> "FakeWaveSpeed":
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    @property
    def url(self) -> str:
        return self.server.url

    def fault(self, route: str, *responses: Response) -> None:
        self.faults[route].extend(responses)

    def hits_on(self, route: str) -> list[Hit]:
        with self.lock:
            return [hit for name, hit in self.hits if name == route]

    # -- routing --------------------------------------------------------------------------------------------
    def _app(self, hit: Hit) -> Response:
        parts = [p for p in hit.path.split("/") if p]
        if hit.method == "POST" and hit.path == f"/api/v3/{MODEL}":
            return self._route("submit", hit, lambda: self._submit(hit))
        if parts[:3] == ["api", "v3", "predictions"] and len(parts) >= 4:
            if hit.method == "GET" and parts[4:] == ["result"]:
                return self._route("result", hit, lambda: self._result(parts[3]))
            if hit.method == "DELETE" and len(parts) == 4:
                return self._route("cancel", hit, lambda: self._cancel(parts[3]))
        if hit.method == "GET" and parts[:1] == ["media"]:
            return self._route("file", hit, lambda: self._file(parts[-1]), auth=False)
        if parts[:1] == ["decoy"]:
            return self._route("decoy", hit, lambda: Response(410, {"code": 410, "message": "decoy"}), auth=False)
        return self._route("other", hit, lambda: Response(404, {"code": 404, "message": "not found", "data": None}))

    def _route(self, route: str, hit: Hit, handle: Callable[[], Response], auth: bool = True) -> Response:
        with self.lock:
            self.hits.append((route, hit))
            fault = self.faults[route].popleft() if self.faults[route] else None
        if fault is not None:
            return fault
        if auth and hit.header("Authorization") != f"Bearer {self.key}":
            return Response(401, {"code": 401, "message": "Unauthorized: invalid api key", "data": None})
        return handle()

    # -- protocol -------------------------------------------------------------------------------------------
    def _envelope(self, task: FakeTask) -> Response:
        data = {"id": task.id, "model": MODEL, "outputs": task.outputs or [],
                "urls": {"get": f"{self.url}/decoy/predictions/{task.id}/result"},  # clients must not trust it
                "has_nsfw_contents": [False] * len(task.outputs or []), "status": task.status,
                "created_at": "2025-01-01T00:00:00.000Z", "error": task.error,
                "timings": {"inference": 1234 if task.status == "completed" else 0}}
        if task.code is not None:
            data["code"] = task.code
        return Response(200, {"code": 200, "message": "success", "data": data})

    def _submit(self, hit: Hit) -> Response:
        try:
            payload = hit.json()
        except ValueError:
            return Response(400, {"code": 400, "message": "invalid JSON body", "data": None})
        problem = invalid_parameter(payload)
        if problem:
            return Response(400, {"code": 400, "message": f"invalid parameter: {problem}", "data": None})
        task = FakeTask(id=f"{random.getrandbits(64):016x}", payload=payload, color=color_of_data_uri(payload["image"]))
        with self.lock:
            self.tasks[task.id] = task
        if payload.get("enable_sync_mode"):
            if self.sync == "timeout":
                task.status, task.code = "processing", 5004
                task.error = "Sync mode timed out, please query the result later"
                task.polls = self.plan[0]  # already past "created"
            else:
                self._finish(task)
        return self._envelope(task)

    def _result(self, task_id: str) -> Response:
        task = self.tasks.get(task_id)
        if task is None:
            return Response(404, {"code": 404, "message": "task not found", "data": None})
        if task.status in ("created", "processing"):
            task.polls += 1
            task.code = None if task.code == 5004 else task.code
            created, processing = self.plan
            if task.polls <= created:
                task.status = "created"
            elif task.polls <= created + processing:
                task.status = "processing"
            else:
                self._finish(task)
        return self._envelope(task)

    def _finish(self, task: FakeTask) -> None:
        if self.fail_with:
            task.status, (task.error, task.code) = "failed", self.fail_with
            return
        task.status, task.error = "completed", ""
        count, fmt = task.payload.get("num_images", 1), task.payload.get("output_format", "jpeg")
        width, height = (int(side) for side in SIZE.match(task.payload.get("size", "1024*1024")).groups())
        task.outputs = []
        for index in range(count):
            data = render(shifted(task.color, index), width, height, fmt)
            if task.payload.get("enable_base64_output"):
                encoded = base64.b64encode(data).decode()
                task.outputs.append(encoded if self.base64_style == "raw"
                                    else f"data:{CONTENT_TYPES[fmt]};base64,{encoded}")
            else:
                name = f"{task.id}-{index}.{fmt}"
                with self.lock:
                    self.files[name] = (data, CONTENT_TYPES[fmt])
                task.outputs.append(f"{self.url}/media/images/{name}")

    def _cancel(self, task_id: str) -> Response:
        task = self.tasks.get(task_id)
        if task is None:
            return Response(404, {"code": 404, "message": "task not found", "data": None})
        with self.lock:
            self.cancels.append(task_id)
        task.status = "deleted"
        return Response(200, {"code": 200, "message": "success", "data": {"id": task_id, "status": "deleted"}})

    def _file(self, name: str) -> Response:
        with self.lock:
            found = self.files.get(name)
        if found is None:
            return Response(404, b"not found", content_type="text/plain")
        return Response(200, found[0], content_type=found[1])
