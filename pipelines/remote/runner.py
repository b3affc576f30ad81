"""Run one variation request over several input images: validate everything, then one job per image with
bounded concurrency, results in input order, and cancel-before-raise on abort, deadline or failure."""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image

from ..params import MAX_CONCURRENCY, ParameterError
from .custom import CustomProvider
from .errors import RemoteCancelledError, RemoteError
from .fal import FAL_QUEUE_URL, FAL_RUN_URL, FalProvider
from .http import Deadline, HttpClient
from .images import ImageInput, encode_input_image
from .jobs import ClientSettings, Job, ProgressEvent, RemoteRequest, RemoteResult
from .keys import ApiKey, find_key, redacting_logger, secrets_redacted
from .wavespeed import WAVESPEED_URL, WaveSpeedProvider

log = redacting_logger(__name__)

CALLER_TICK_S = 0.05  # how often the calling thread relays progress and checks for an interrupt

PROVIDERS: dict[str, Callable[[RemoteRequest, ClientSettings], object]] = {
    "fal": lambda request, settings: FalProvider(settings.endpoints.get("fal_queue", FAL_QUEUE_URL),
                                                 settings.endpoints.get("fal_run", FAL_RUN_URL)),
    "wavespeed": lambda request, settings: WaveSpeedProvider(settings.endpoints.get("wavespeed", WAVESPEED_URL)),
    "custom": lambda request, settings: CustomProvider(request.base_url),
}
PROVIDER_NAMES = tuple(PROVIDERS)


def make_provider(request: RemoteRequest, settings: ClientSettings | None = None):
    if request.provider not in PROVIDERS:
        raise ParameterError("provider", request.provider, f"expected one of {', '.join(PROVIDER_NAMES)}")
    return PROVIDERS[request.provider](request, settings or ClientSettings())


def run_remote_variation(images: ImageInput | Sequence[ImageInput], request: RemoteRequest, *,
                         settings: ClientSettings | None = None,
                         on_progress: Callable[[ProgressEvent], None] | None = None,
                         should_abort: Callable[[], bool] | None = None) -> list[RemoteResult]:
    """Run `request` once per input image on the hosted API and return one RemoteResult per image, in order.

    Everything is validated (parameters, key, image sizes) before the first network call. `should_abort` is
    polled from the calling thread: returning True cancels queued/running jobs and raises
    RemoteCancelledError; raising (e.g. ComfyUI's interrupt exception) cancels them and re-raises.
    `on_progress` is also called from the calling thread.
    """
    settings = settings or ClientSettings()
    inputs = _as_list(images)
    if not inputs:
        raise ParameterError("image", [], "at least one input image is needed")
    MAX_CONCURRENCY.validate(settings.max_concurrency)
    provider = make_provider(request, settings)
    plan = provider.plan(request)
    key = find_key(provider.key_name, environ=settings.environ, key_file=settings.key_file)
    uploads = [encode_input_image(image, max_bytes=settings.max_upload_bytes) for image in inputs]
    with secrets_redacted(key.secrets()):
        return _execute(provider, plan, key, uploads, request, settings, on_progress, should_abort)


def _execute(provider, plan, key: ApiKey, uploads: list[str], request: RemoteRequest, settings: ClientSettings,
             on_progress, should_abort) -> list[RemoteResult]:
    abort, events, deadline = threading.Event(), queue.SimpleQueue(), Deadline(settings.deadline_s)
    jobs = [Job(index=index, total=len(uploads), provider=provider.name, image=upload, plan=plan,
                auth=provider.auth_headers(key.reveal()), settings=settings, events=events,
                http=HttpClient(provider.name, timeouts=settings.timeouts, retry=settings.retry, deadline=deadline,
                                abort=abort, secrets=key.secrets(), error_detail=provider.error_detail,
                                key_hint=f"The key came from {key.source}."))
            for index, upload in enumerate(uploads)]
    caller_aborted, futures = False, []
    pool = ThreadPoolExecutor(max_workers=min(len(jobs), settings.max_concurrency), thread_name_prefix="redux-remote")
    try:
        futures = [pool.submit(_run_job, provider, job, request.model) for job in jobs]
        pending: set[Future] = set(futures)
        stop_waiting_at = None
        while pending:
            done, pending = wait(pending, timeout=CALLER_TICK_S, return_when=FIRST_COMPLETED)
            _relay(events, on_progress)
            if any(future.exception() is not None for future in done):
                abort.set()  # one job failed: the run fails, so stop paying for the others
            if not abort.is_set() and should_abort is not None and should_abort():
                caller_aborted = True
                abort.set()
            if abort.is_set():
                stop_waiting_at = stop_waiting_at or time.monotonic() + settings.cancel_budget_s
                if time.monotonic() > stop_waiting_at:
                    break  # a sync-mode request cannot be interrupted; do not hold the caller for it
    except BaseException:
        abort.set()  # the caller raised (interrupt): let every job send its cancel, then re-raise
        wait(futures, timeout=settings.cancel_budget_s)
        raise
    finally:
        stragglers = sum(not future.done() for future in futures)
        if stragglers:
            log.warning("%s: %d request(s) still sending their cancel; they finish in the background",
                        provider.name, stragglers)
        pool.shutdown(wait=False, cancel_futures=True)
    _relay(events, on_progress)
    return _collect(futures, jobs, caller_aborted, provider.name)


def _run_job(provider, job: Job, model: str) -> RemoteResult:
    failure = None
    try:
        job.http.check()
        job.report("submitting")
        output = provider.run(job)
        job.report("done", output.request_id)
        timings = job.timings()
        if output.inference_s is not None:
            timings["inference_s"] = output.inference_s
        return RemoteResult(job.index, provider.name, model, output.request_id, output.images, output.seed,
                            output.has_nsfw, timings)
    except Exception as exc:
        failure = exc
    finally:
        job.http.close()
    raise _scrubbed(failure, job.http.redact)  # outside the except: no chained original holds the key


def _scrubbed(exc: Exception, redact: Callable[[str], str]) -> Exception:
    """The same error with every key redacted from its message (whatever a server echoed into it)."""
    text = str(exc)
    if redact(text) == text:
        return exc
    if isinstance(exc, RemoteError):
        return type(exc)(redact(text), provider=exc.provider, request_id=exc.request_id, status=exc.status)
    return RemoteError(f"{type(exc).__name__}: {redact(text)}")


def _collect(futures: list[Future], jobs: list[Job], caller_aborted: bool, provider: str) -> list[RemoteResult]:
    finished = [future for future in futures if future.done() and not future.cancelled()]
    failures = [future.exception() for future in finished if future.exception() is not None]
    if caller_aborted or (len(finished) < len(futures) and not failures):
        ids = ", ".join(job.request_id for job in jobs if job.request_id) or "none had been submitted"
        raise RemoteCancelledError(f"{provider}: interrupted; unfinished requests were cancelled (requests: {ids})",
                                   provider=provider)
    if failures:
        raise next((exc for exc in failures if not isinstance(exc, RemoteCancelledError)), failures[0])
    return [future.result() for future in futures]


def _relay(events: queue.SimpleQueue, on_progress) -> None:
    while True:
        try:
            event = events.get_nowait()
        except queue.Empty:
            return
        if on_progress is not None:
            on_progress(event)


def _as_list(images) -> list:
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return list(images)
    if isinstance(images, (str, Image.Image, np.ndarray)):
        return [images]
    if isinstance(images, Iterable):
        return list(images)
    raise ParameterError("image", type(images).__name__, "expected an image, a URL, or a list of them")
