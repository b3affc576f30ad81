"""Keeping jobs alive across crashes: worker processes watched and restarted, stale leases re-queued,
expired results purged, and queue messages lost in a crash put back at start-up.

A worker process that dies while holding a job fails that job (it may be what killed it); a job whose
worker vanished with its whole host or with `serve` itself (kill -9) is re-queued, at most
max_attempts runs in all.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from . import jobs as J
from .config import ServerConfig
from .queue import JobQueue
from .store import JobStore
from .worker import worker_id

log = logging.getLogger("flux-redux.server")
PACK_ROOT = Path(__file__).resolve().parents[2]
TICK_S = 0.5
RESTART_BACKOFF_S = (1, 2, 5, 10, 30)


def requeue_if_abandoned(store: JobStore, queue: JobQueue, job_id: str, config: ServerConfig, why: str) -> None:
    requeued = []

    def change(job: J.Job):
        if job.state != J.RUNNING:
            return None
        if job.attempts >= config.max_attempts:
            return J.fail(job, config.result_ttl_s, f"{why}; gave up after {job.attempts} attempts",
                          "worker_lost")
        job.state, job.worker, job.lease_until, job.cancel_requested = J.QUEUED, None, None, False
        J.log_line(job, f"re-queued: {why}", "WARNING")
        requeued.append(job.id)
        return job
    store.update(job_id, change)
    if requeued:
        queue.enqueue(job_id)


def fail_jobs_of(store: JobStore, worker: str, config: ServerConfig, message: str) -> int:
    failed = 0
    for job in store.running():
        if job.worker == worker:
            done = store.update(job.id, lambda j: J.fail(j, config.result_ttl_s, message, "worker_crashed")
                                if J.owned_by(j, worker) else None)
            failed += done is not None
    return failed


def recover(store: JobStore, queue: JobQueue, config: ServerConfig) -> None:
    """At start-up: re-queue jobs held by dead workers of this host, re-send queue messages lost in a crash."""
    host = socket.gethostname()
    for job in store.running():
        name, _, pid = (job.worker or "").rpartition(":")
        if name == host and pid.isdigit() and not process_alive(int(pid)):
            requeue_if_abandoned(store, queue, job.id, config, f"its worker {job.worker} stopped (server restart)")
    resend_lost(store, queue)


def resend_lost(store: JobStore, queue: JobQueue) -> None:
    """Queued jobs whose task is gone (taken by a worker that died before claiming it) get a new one; a
    duplicate does no harm, the claim decides."""
    pending = queue.pending_job_ids()
    lost = [job_id for job_id in store.queued_ids() if job_id not in pending]
    for job_id in lost:
        queue.enqueue(job_id)
    if lost:
        log.info("re-sent %d queued job(s) whose queue message was lost", len(lost))


def process_alive(pid: int) -> bool:
    """True for a running process; a zombie (dead, not yet reaped) counts as dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True  # no /proc: trust kill(0)


def sweep(store: JobStore, queue: JobQueue, config: ServerConfig) -> None:
    """Periodic: purge expired results, re-queue jobs whose worker stopped renewing its lease."""
    store.purge_expired()
    now = time.time()
    for job in store.running():
        if job.lease_until is not None and job.lease_until < now:
            requeue_if_abandoned(store, queue, job.id, config, f"worker {job.worker} stopped responding")


def device_visibility(device: str) -> tuple[str | None, str]:
    """("N", "cuda") for cuda:N: each worker process sees only its own GPU, so nothing it does (a CUDA context,
    a stray allocation on the default device) lands on another worker's GPU. (None, device) otherwise."""
    kind, _, index = device.partition(":")
    if kind == "cuda" and index.isdigit():
        return index, "cuda"
    return None, device


def _death_signal():
    """preexec_fn giving the child SIGKILL when this thread's process dies (Linux PR_SET_PDEATHSIG; it
    survives exec, so it holds from the worker's first instruction). None elsewhere."""
    try:
        import ctypes
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGKILL)  # resolved before fork: the child only makes the call


@dataclass
class WorkerProcess:
    device: str
    process: subprocess.Popen | None = None
    restarts: int = 0
    next_start: float = 0.0


class Supervisor:
    """One worker process per device; the thread that starts them also watches them (a Linux child gets
    SIGKILL when the thread that started it ends, which ties the workers' lives to `serve`)."""

    def __init__(self, config: ServerConfig, store: JobStore, queue: JobQueue, sweeper: bool = True):
        self.config, self.store, self.queue, self.sweeper = config, store, queue, sweeper
        self.workers = [WorkerProcess(device) for device in config.devices]
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="supervisor", daemon=True)

    def start(self) -> "Supervisor":
        self.thread.start()
        return self

    def _spawn(self, worker: WorkerProcess) -> None:
        visible, device = device_visibility(worker.device)
        command = [sys.executable, "-m", "pipelines.server.worker", self.config.to_json(), device, str(os.getpid())]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(PACK_ROOT), os.environ.get("PYTHONPATH")])))
        if visible is not None:
            env["CUDA_VISIBLE_DEVICES"] = visible
        worker.process = subprocess.Popen(command, cwd=PACK_ROOT, env=env, preexec_fn=_death_signal())
        log.info("worker process %d started on %s", worker.process.pid, worker.device)

    def _watch(self) -> None:
        while not self.stop_event.is_set():
            for worker in self.workers:
                self._check(worker)
            if self.sweeper:
                try:
                    sweep(self.store, self.queue, self.config)
                except Exception:
                    log.exception("sweep failed")
            self.stop_event.wait(TICK_S)
        self._stop_workers()

    def _check(self, worker: WorkerProcess) -> None:
        if worker.process is None:
            if time.monotonic() >= worker.next_start:
                self._spawn(worker)
            return
        code = worker.process.poll()
        if code is None:
            self._stop_hung(worker)
            return
        name = worker_id(worker.process.pid)
        failed = fail_jobs_of(self.store, name, self.config,
                              f"the worker process on {worker.device} died (exit code {code}) while running this "
                              "request; it has been restarted")
        delay = RESTART_BACKOFF_S[min(worker.restarts, len(RESTART_BACKOFF_S) - 1)]
        log.error("worker %s on %s exited with code %s (%d job(s) failed); restarting in %d s", name, worker.device,
                  code, failed, delay)
        resend_lost(self.store, self.queue)
        worker.process, worker.restarts, worker.next_start = None, worker.restarts + 1, time.monotonic() + delay

    def _stop_hung(self, worker: WorkerProcess) -> None:
        """A job past --job-timeout fails, and its worker is killed (a hung GPU call ignores cancel)."""
        name, limit = worker_id(worker.process.pid), self.config.job_timeout_s
        message = (f"took longer than {limit:g} s (serve --job-timeout); the worker on {worker.device} was "
                   "restarted")
        for job in self.store.running():
            if job.worker == name and job.started_at and time.time() - job.started_at > limit:
                self.store.update(job.id, lambda j: J.fail(j, self.config.result_ttl_s, message, "timeout")
                                  if J.owned_by(j, name) else None)
                log.error("job %s on worker %s %s", job.id, name, message)
                worker.process.kill()

    def _stop_workers(self) -> None:
        running = [w.process for w in self.workers if w.process is not None]
        for process in running:
            process.terminate()
        for process in running:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=40)
