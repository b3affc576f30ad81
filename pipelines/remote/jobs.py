"""The data the remote client passes around: what to run, how, what came back, and one running job."""

from __future__ import annotations

import math
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from PIL import Image

from ..params import DEFAULT_IMAGE_SIZE, MAX_CONCURRENCY, ParameterError
from .errors import ProviderError
from .keys import redacting_logger
from .http import API_REPLY_LIMIT, Deadline, HttpClient, RetryPolicy, Timeouts
from .images import (DEFAULT_MAX_DOWNLOAD_BYTES, DEFAULT_MAX_UPLOAD_BYTES, decode_base64, decode_image,
                     parse_data_uri)

log = redacting_logger(__name__)


@dataclass(frozen=True)
class RemoteRequest:
    """One variation request, named like the hosted APIs' fields. None means "the provider's default";
    seed None asks the provider to pick one (fal: field omitted, WaveSpeed: -1) and the seed used is reported
    when the provider returns it."""

    provider: str = "fal"  # fal | wavespeed | custom
    model: str = "dev"  # dev | schnell
    image_size: str = DEFAULT_IMAGE_SIZE
    width: int | None = None
    height: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    seed: int | None = None
    num_images: int = 1
    enable_safety_checker: bool | None = None
    output_format: str | None = None
    acceleration: str | None = None  # fal only
    sync_mode: bool = False
    base_url: str | None = None  # custom only


@dataclass(frozen=True)
class ClientSettings:
    """How the client behaves (not what it asks for). Tests shrink the intervals to milliseconds."""

    poll_interval: float = 0.5
    deadline_s: float = 900.0
    timeouts: Timeouts = Timeouts()
    retry: RetryPolicy = RetryPolicy()
    max_concurrency: int = MAX_CONCURRENCY.default
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_download_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES
    cancel_budget_s: float = 15.0  # a cancel gets its own small deadline: it runs after the main one expired
    endpoints: Mapping[str, str] = field(default_factory=dict)  # fal_queue, fal_run, wavespeed: base URLs
    environ: Mapping[str, str] | None = None  # where to look for keys (default os.environ)
    key_file: Path | None = None  # default: redux_api_keys.json in the pack folder


@dataclass(frozen=True)
class ProgressEvent:
    """A job changed state: submitting -> queued -> running -> downloading -> done."""

    index: int
    total: int
    provider: str
    state: str
    request_id: str | None = None
    queue_position: int | None = None


PROGRESS_STATES = ("submitting", "queued", "running", "downloading", "done")


@dataclass(frozen=True)
class Plan:
    """What a provider will send for every input image: the validated fields (all but the image), the model
    path, whether it uses the provider's one-request mode, and what must come back (image count and pixel
    size), so a reply can be checked before it is decoded."""

    payload: dict[str, Any]
    model_id: str
    direct: bool = False
    size: tuple[int, int] = (1024, 1024)
    count: int = 1


@dataclass
class JobOutput:
    request_id: str | None
    images: list[Image.Image]
    seed: int | None
    has_nsfw: list[bool]
    inference_s: float | None = None


@dataclass
class RemoteResult:
    """The outcome of one input image: its output images and what the provider reported."""

    index: int
    provider: str
    model: str
    request_id: str | None
    images: list[Image.Image]
    seed: int | None
    has_nsfw: list[bool]
    timings: dict[str, float]

    def info(self) -> dict[str, Any]:
        """A JSON-ready summary (no images, no keys)."""
        return {"index": self.index, "provider": self.provider, "model": self.model,
                "request_id": self.request_id, "seed": self.seed, "has_nsfw": self.has_nsfw,
                "images": len(self.images), "timings_s": {k: round(v, 3) for k, v in self.timings.items()}}


class Job:
    """One input image on its way through a provider, run in a worker thread. It owns an HttpClient and
    reports progress through a queue read by the calling thread (ComfyUI's progress hooks are not
    thread-safe)."""

    def __init__(self, *, index: int, total: int, provider: str, image: str, plan: Plan, auth: dict,
                 http: HttpClient, settings: ClientSettings, events: queue.SimpleQueue):
        self.index, self.total, self.provider = index, total, provider
        self.image, self.plan, self.auth, self.http, self.settings = image, plan, auth, http, settings
        self._events = events
        self._last: tuple | None = None
        self.request_id: str | None = None
        self.started = time.monotonic()
        self.marks: dict[str, float] = {}

    @property
    def abort(self) -> threading.Event:
        return self.http.abort

    @property
    def deadline(self) -> Deadline:
        return self.http.deadline

    def report(self, state: str, request_id: str | None = None, queue_position: int | None = None) -> None:
        self.marks.setdefault(state, time.monotonic())
        self.request_id = request_id or self.request_id
        if (state, request_id, queue_position) == self._last:
            return
        self._last = (state, request_id, queue_position)
        where = f", position {queue_position}" if queue_position is not None else ""
        log.info("%s job %d/%d%s: %s%s", self.provider, self.index + 1, self.total,
                 f" (request {request_id})" if request_id else "", state, where)
        self._events.put(ProgressEvent(self.index, self.total, self.provider, state, request_id, queue_position))

    def wait_before_next_poll(self, request_id: str | None = None) -> None:
        self.http.pause(self.settings.poll_interval, request_id=request_id)

    def cancel_deadline(self) -> Deadline:
        return Deadline(self.settings.cancel_budget_s)

    def reply_limit(self) -> int:
        """Byte cap of a reply that may carry the images inline (data URIs or base64 are 4/3 of the bytes)."""
        return self.plan.count * self.settings.max_download_bytes * 4 // 3 + API_REPLY_LIMIT

    def clean_id(self, value: Any) -> str | None:
        """A request id from a server, fit for logs and info (a server could reflect the key into it)."""
        return None if value is None or value == "" else self.http.clean(value)

    def fetch_images(self, refs: list, request_id: str | None) -> list[Image.Image]:
        """Turn the provider's output references (URL, data URI or bare base64) into checked RGB images."""
        if not refs:
            raise ProviderError(f"{self.provider}: request {request_id} finished without images",
                                provider=self.provider, request_id=request_id)
        if len(refs) > self.plan.count:
            raise ProviderError(f"{self.provider}: request {request_id} returned {len(refs)} images for "
                                f"num_images={self.plan.count}; refused", provider=self.provider,
                                request_id=request_id)
        limit, images = self.settings.max_download_bytes, []
        for number, ref in enumerate(refs, 1):
            self.http.check(request_id=request_id)
            source = f"{self.provider} output image {number}/{len(refs)} of request {request_id}"
            if not isinstance(ref, str) or not ref:
                raise ProviderError(f"{source} has no URL or data", provider=self.provider, request_id=request_id)
            if ref.startswith("data:"):
                content, kind = parse_data_uri(ref, max_bytes=limit, source=source)
            elif ref.startswith(("https://", "http://")):
                if self.http.carries_secret(ref):  # downloads go without the key, to any host: never leak it
                    raise ProviderError(f"{source}: its URL contains the API key; not fetched",
                                        provider=self.provider, request_id=request_id)
                content, kind = self.http.download(ref, max_bytes=limit, what=source, request_id=request_id)
            else:
                content, kind = decode_base64(ref, max_bytes=limit, source=source), None
            images.append(decode_image(content, kind, source=source, redact=self.http.redact,
                                       requested=self.plan.size))
        return images

    def timings(self) -> dict[str, float]:
        """Seconds spent queued, running, downloading, and in total, as seen from this client."""
        marks, spans = self.marks, {}
        for name, start, end in (("queue_s", "queued", "running"), ("run_s", "running", "downloading"),
                                 ("download_s", "downloading", "done")):
            if start in marks and end in marks:
                spans[name] = marks[end] - marks[start]
        spans["total_s"] = marks.get("done", time.monotonic()) - self.started
        return spans


def is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def require_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ParameterError(name, value, "expected true or false")
    return value
