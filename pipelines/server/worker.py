"""A GPU worker: one process per device, models kept loaded, jobs taken from the huey queue one at a time.

    python -m pipelines.server.worker CONFIG_FD DEVICE PARENT_PID HEARTBEAT_FD   (started by `serve`, not by hand)

CONFIG_FD is an inherited descriptor of the settings (JSON; they may hold a Redis password, so never argv);
the worker writes a byte to HEARTBEAT_FD every second or so, and the supervisor kills a worker that stops.

Each task is a turn: the worker claims the oldest queued job in the store before running it (a spare task
does nothing), stops taking turns once told to stop (SIGTERM/SIGINT: it finishes the job it runs, then exits),
renews its lease while it runs, checks for cancellation between denoising steps, and records any
failure on the job instead of dying. If the process itself dies, `serve`'s supervisor fails the job it
held; a whole host that stops is noticed by its expired lease (supervisor.py).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import replace

from . import jobs as J
from .config import ServerConfig
from .engine import ReduxEngine, load_factory
from .inputs import InputError, load_image
from .outputs import store_images
from .queue import JobQueue
from .store import JobStore, open_store
from .validation import JobInputs

log = logging.getLogger("flux-redux.worker")
CANCEL_CHECK_S = 0.2  # how often a running job looks at the store for a cancel request


def worker_id(pid: int | None = None) -> str:
    return f"{socket.gethostname()}:{pid or os.getpid()}"


def make_engine(config: ServerConfig, device: str):
    if config.engine:
        return load_factory(config.engine)(config, device)
    if not config.models_dir:
        raise ValueError("serve needs --models-dir (ComfyUI's models folder) to run jobs")
    return ReduxEngine(config.models_dir, device=device, dtype=config.dtype, weight_storage=config.weight_storage,
                       offload=config.offload)


class JobRunner:
    """Runs one job per delivered task. A task is a turn, not a particular job: it runs the oldest queued job
    (submit order), so a job re-queued after a crash keeps its place ahead of later ones whatever order the
    tasks come in. There is one task per entry into the queue, so there are never fewer turns than queued jobs."""

    def __init__(self, config: ServerConfig, store: JobStore, engine, name: str,
                 stop: threading.Event | None = None, give_back=None):
        self.config, self.store, self.engine, self.name = config, store, engine, name
        self.stop, self.give_back = stop, give_back  # a stopping worker hands its turn back unused
        self.current: str | None = None

    def __call__(self, job_id: str) -> None:
        if self.stop is not None and self.stop.is_set():
            if self.give_back is not None:
                self.give_back(job_id)
            return
        job = self._claim_oldest()
        if job is None:
            return  # nothing queued: the turn of a job that was cancelled or already run
        self.current = job.id
        try:
            self._run(job)
        finally:
            self.current = None

    def _claim_oldest(self) -> J.Job | None:
        for job_id in self.store.queued_ids():  # in queue order; the claim is atomic, another worker may win it
            job = self.store.update(job_id, lambda job: J.claim(job, self.name, self.config.lease_s))
            if job is not None:
                return job
        return None

    def _run(self, job: J.Job) -> None:
        inputs = JobInputs.from_dict(self.store.inputs(job.id))  # kept apart from the record (store.py)
        field = "image" if job.api == "wavespeed" else "image_url"
        should_abort = self._cancel_check(job.id)
        try:
            picture = load_image(field, inputs.image, self.config.limits())
            output = self.engine.run(inputs, picture, should_abort, lambda line: self._log(job.id, line))
            expires = time.time() + self.config.result_ttl_s  # the files go with the record
            images = store_images(self.store, output.images, inputs.output_format, inputs.inline, expires,
                                  data_uri=job.api != "wavespeed")
        except Exception as exc:
            self._record_failure(job, exc, should_abort.fired)
            return
        body = {"images": images, "timings": {"inference": output.inference_s}, "seed": output.seed,
                "has_nsfw_concepts": [False] * len(images), "prompt": ""}
        self._finish(job.id, lambda j: J.finish(j, self.config.result_ttl_s, status=200, body=body,
                                                inference_s=output.inference_s))

    def _record_failure(self, job: J.Job, exc: Exception, cancelled: bool) -> None:
        """A cancel, a bad input (422), or an engine error (500): the job fails, the worker goes on."""
        ttl = self.config.result_ttl_s
        if cancelled:
            self._finish(job.id, lambda j: J.cancel(j, ttl))
        elif isinstance(exc, InputError):
            issue = {"loc": ["body", exc.name], "msg": str(exc), "type": "value_error", "input": exc.value}
            self._finish(job.id, lambda j: J.finish(j, ttl, status=422, body={"detail": [issue]}, error=str(exc),
                                                    error_type="validation_error"))
        else:
            log.exception("job %s failed", job.id)
            message = f"generation failed: {type(exc).__name__}: {exc}".splitlines()[0][:500]
            self._finish(job.id, lambda j: J.fail(j, ttl, message))

    def _finish(self, job_id: str, change) -> None:
        """Record the end state, unless the job was taken from this worker meanwhile (lease expired)."""
        done = self.store.update(job_id, lambda j: change(j) if J.owned_by(j, self.name) else None)
        if done is None:
            log.warning("job %s was no longer held by %s; its outcome was dropped", job_id, self.name)

    def _log(self, job_id: str, line: str) -> None:
        def add(job):
            J.log_line(job, line)
            return job
        self.store.update(job_id, lambda j: add(j) if J.owned_by(j, self.name) else None)

    def _cancel_check(self, job_id: str) -> "CancelCheck":
        return CancelCheck(self.store, job_id, self.name)

    def renew_lease(self) -> None:
        job_id = self.current
        if job_id is None:
            return
        until = time.time() + self.config.lease_s
        self.store.update(job_id, lambda j: replace(j, lease_until=until) if J.owned_by(j, self.name) else None)


class CancelCheck:
    """should_abort for the engine: true once the job was cancelled or taken away; remembers that it fired."""

    def __init__(self, store: JobStore, job_id: str, worker: str):
        self.store, self.job_id, self.worker = store, job_id, worker
        self.checked_at, self.fired = 0.0, False

    def __call__(self) -> bool:
        now = time.monotonic()
        if not self.fired and now - self.checked_at >= CANCEL_CHECK_S:
            self.checked_at = now
            job = self.store.get(self.job_id)
            self.fired = job is None or job.cancel_requested or not J.owned_by(job, self.worker)
        return self.fired


def run_worker(config: ServerConfig, device: str, stop: threading.Event, engine=None, name: str | None = None,
               on_ready=None) -> None:
    """Serve jobs until `stop` is set. Used in a worker process, and in a thread by tests."""
    store = open_store(config.queue_url, config.state_path, config.namespace)
    engine = engine or make_engine(config, device)
    runner = JobRunner(config, store, engine, name or worker_id(), stop)
    queue = JobQueue(config.queue_url, config.state_path, config.namespace, handler=runner)
    runner.give_back = queue.enqueue
    beat = threading.Thread(target=_heartbeat, args=(runner, stop, config.lease_s / 3), daemon=True)
    beat.start()
    log.info("worker %s ready on %s", runner.name, device)
    if on_ready is not None:
        on_ready()
    try:
        queue.consume(stop)
    finally:
        stop.set()
        queue.close()


def _heartbeat(runner: JobRunner, stop: threading.Event, every_s: float) -> None:
    while not stop.wait(every_s):
        try:
            runner.renew_lease()
        except Exception:
            log.exception("could not renew the lease of job %s", runner.current)


def _die_with_parent(parent: int) -> None:
    """A worker must not outlive `serve` (after kill -9 of serve it would run jobs nobody watches). On Linux
    the supervisor already set PR_SET_PDEATHSIG; this catches a parent that died before that took hold,
    and other systems, by watching the parent pid."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)
    if os.getppid() != parent:
        os._exit(1)
    threading.Thread(target=watch, daemon=True).start()


def read_settings(fd: int) -> ServerConfig:
    with os.fdopen(fd, "rb") as handle:
        handle.seek(0)
        return ServerConfig.from_json(handle.read().decode())


def _beat(fd: int, every_s: float) -> None:
    """The supervisor's sign of life: one byte per beat. A frozen process (SIGSTOP, every thread stuck) stops
    beating; a closed pipe means the supervisor is gone, and so must this worker be."""
    while True:
        try:
            os.write(fd, b".")
        except BlockingIOError:
            pass  # the supervisor is behind on reading; it will see the next beat
        except OSError:
            os._exit(1)
        time.sleep(every_s)


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.umask(0o077)
    config, device = read_settings(int(argv[0])), argv[1]
    _die_with_parent(int(argv[2]))
    beat_fd = int(argv[3])
    os.set_blocking(beat_fd, False)
    every = min(1.0, config.heartbeat_timeout_s / 5)
    threading.Thread(target=_beat, args=(beat_fd, every), name="heartbeat", daemon=True).start()
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    run_worker(config, device, stop)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
