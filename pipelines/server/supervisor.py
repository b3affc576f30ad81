"""Keeping jobs alive across crashes: worker processes watched and restarted, stale leases re-queued,
expired results purged, and queue messages lost in a crash put back at start-up.

The supervisor owns its workers' liveness: each worker process writes a heartbeat on a pipe, and one that
stays silent for --heartbeat-timeout (frozen: SIGSTOP, a wedged driver) is killed with SIGKILL and restarted,
its job re-queued (at most max_attempts runs) or failed with the reason; leases matter only for workers of
other hosts. A worker process that dies while holding a job fails that job (it may be what killed it); a job
whose worker vanished with its whole host or with `serve` itself (kill -9) is re-queued, at most max_attempts
runs in all. On SIGTERM/SIGINT the workers finish their jobs within --drain-timeout; the rest are handed back
to the queue in their place, that run not counted.

Workers get their settings through an inherited file descriptor (an unlinked 0600 file), never on the command
line, and an environment without the API keys or the queue URL.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from . import jobs as J
from .auth import KEYS_VARIABLE
from .cli import QUEUE_VARIABLE
from .config import ServerConfig
from .queue import JobQueue
from .store import JobStore
from .worker import worker_id

log = logging.getLogger("flux-redux.server")
PACK_ROOT = Path(__file__).resolve().parents[2]
TICK_S = 0.5
DRAIN_TICK_S = 0.1
RESTART_BACKOFF_S = (1, 2, 5, 10, 30)
STARTUP_GRACE_S = 180.0  # before its first heartbeat a worker imports torch (slow on a busy machine)
SECRET_VARIABLES = (KEYS_VARIABLE, QUEUE_VARIABLE)  # never in a worker's environment


def requeue_if_abandoned(store: JobStore, queue: JobQueue, job_id: str, config: ServerConfig, why: str,
                         worker: str | None = None) -> None:
    """Back to the queue in its place (its queue order is kept), or failed once it has had max_attempts runs.
    `why` is shown to the client: no host names or pids in it. With `worker`: only while that worker holds it."""
    requeued = []

    def change(job: J.Job):
        if job.state != J.RUNNING or (worker is not None and job.worker != worker):
            return None
        if job.attempts >= config.max_attempts:
            return J.fail(job, config.result_ttl_s, f"{why}; gave up after {job.attempts} attempts",
                          "worker_lost")
        job.state, job.worker, job.lease_until, job.cancel_requested = J.QUEUED, None, None, False
        J.log_line(job, f"re-queued in its place: {why}", "WARNING")
        requeued.append(job.id)
        return job
    store.update(job_id, change)
    if requeued:
        queue.enqueue(job_id)


def hand_back(store: JobStore, queue: JobQueue, worker: str) -> int:
    """The jobs `worker` holds go back to the queue in their place, the interrupted run not counted as an
    attempt (the server was stopping: not the job's fault)."""
    handed = 0

    def change(job: J.Job):
        if not J.owned_by(job, worker):
            return None
        job.state, job.worker, job.lease_until, job.cancel_requested = J.QUEUED, None, None, False
        job.attempts = max(0, job.attempts - 1)
        J.log_line(job, "handed back to the queue in its place: the server was stopping", "WARNING")
        return job
    for job in store.running():
        if job.worker == worker and store.update(job.id, change) is not None:
            queue.enqueue(job.id)
            handed += 1
    return handed


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
            log.warning("job %s: its worker %s stopped (server restart); re-queuing it", job.id, job.worker)
            requeue_if_abandoned(store, queue, job.id, config, "its worker stopped (server restart)", job.worker)
    resend_lost(store, queue)


def resend_lost(store: JobStore, queue: JobQueue) -> None:
    """Fewer tasks than queued jobs (a task taken by a worker that died before claiming): send the missing
    turns. A task is a turn for the oldest queued job (worker.py), so only the count matters; a spare one
    does nothing."""
    queued = store.queued_ids()
    lost = queued[:max(0, len(queued) - queue.pending_count())]
    for job_id in lost:
        queue.enqueue(job_id)
    if lost:
        log.info("re-sent %d queue message(s) lost in a crash", len(lost))


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


def sweep(store: JobStore, queue: JobQueue, config: ServerConfig, watched: set[str] = frozenset()) -> None:
    """Periodic: purge expired results, re-queue jobs whose worker stopped renewing its lease. Jobs of the
    `watched` workers (this supervisor's own, whose heartbeats it reads) are left to the supervisor, which kills
    a frozen worker before moving its job, so the job never runs twice at once."""
    store.purge_expired()
    now = time.time()
    for job in store.running():
        if job.worker not in watched and job.lease_until is not None and job.lease_until < now:
            log.warning("job %s: worker %s stopped renewing its lease; re-queuing the job", job.id, job.worker)
            requeue_if_abandoned(store, queue, job.id, config, "its worker stopped responding", job.worker)


def device_visibility(device: str) -> tuple[str | None, str]:
    """("N", "cuda") for cuda:N: each worker process sees only its own GPU, so nothing it does (a CUDA context,
    a stray allocation on the default device) lands on another worker's GPU. (None, device) otherwise."""
    kind, _, index = device.partition(":")
    if kind == "cuda" and index.isdigit():
        return index, "cuda"
    return None, device


def worker_environment(visible: str | None) -> dict[str, str]:
    """serve's environment without the secrets: workers never check a key, and get the queue URL with the rest
    of their settings through a file descriptor."""
    env = {name: value for name, value in os.environ.items() if name not in SECRET_VARIABLES}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACK_ROOT), os.environ.get("PYTHONPATH")]))
    if visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible
    return env


def settings_file(config: ServerConfig):
    """The settings as an unlinked 0600 file (no name on disk, nothing on a command line); the worker inherits
    its descriptor and reads it from the start."""
    handle = tempfile.TemporaryFile()
    handle.write(config.to_json().encode())
    handle.flush()
    return handle


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
    beats: int | None = None  # read end of its heartbeat pipe
    spawned_at: float = 0.0
    last_beat: float | None = None

    @property
    def name(self) -> str:
        return worker_id(self.process.pid)

    def listen(self) -> None:
        """Take the heartbeats that arrived (non-blocking)."""
        try:
            while os.read(self.beats, 4096):
                self.last_beat = time.monotonic()
        except BlockingIOError:
            pass

    def silent_for(self) -> float:
        """Seconds past the last heartbeat (the first may come STARTUP_GRACE_S after the start)."""
        since = self.last_beat if self.last_beat is not None else self.spawned_at + STARTUP_GRACE_S
        return time.monotonic() - since

    def forget(self) -> None:
        if self.beats is not None:
            os.close(self.beats)
        self.process, self.beats, self.last_beat = None, None, None


class Supervisor:
    """One worker process per device; the thread that starts them also watches them (a Linux child gets
    SIGKILL when the thread that started it ends, which ties the workers' lives to `serve`)."""

    def __init__(self, config: ServerConfig, store: JobStore, queue: JobQueue, sweeper: bool = True):
        self.config, self.store, self.queue, self.sweeper = config, store, queue, sweeper
        self.workers = [WorkerProcess(device) for device in config.devices]
        self.stop_event = threading.Event()
        self.draining = False
        self.drain_deadline = float("inf")
        self.thread = threading.Thread(target=self._watch, name="supervisor", daemon=True)

    def start(self) -> "Supervisor":
        self.thread.start()
        return self

    def _spawn(self, worker: WorkerProcess) -> None:
        visible, device = device_visibility(worker.device)
        beats, beat_end = os.pipe()
        os.set_blocking(beats, False)
        with settings_file(self.config) as settings:
            fds = (settings.fileno(), beat_end)
            command = [sys.executable, "-m", "pipelines.server.worker", str(fds[0]), device, str(os.getpid()),
                       str(beat_end)]
            try:
                worker.process = subprocess.Popen(command, cwd=PACK_ROOT, env=worker_environment(visible),
                                                  preexec_fn=_death_signal(), pass_fds=fds)
            except BaseException:
                os.close(beats)
                raise
            finally:
                os.close(beat_end)
        worker.beats, worker.spawned_at, worker.last_beat = beats, time.monotonic(), None
        log.info("worker process %d started on %s", worker.process.pid, worker.device)

    def watched(self) -> set[str]:
        return {worker.name for worker in self.workers if worker.process is not None}

    def _watch(self) -> None:
        while not self.stop_event.is_set():
            for worker in self.workers:
                self._check(worker)
            if self.sweeper:
                try:
                    sweep(self.store, self.queue, self.config, self.watched())
                except Exception:
                    log.exception("sweep failed")
            self.stop_event.wait(TICK_S)
        self._drain()

    def _check(self, worker: WorkerProcess) -> None:
        if worker.process is None:
            if not self.draining and time.monotonic() >= worker.next_start:
                self._spawn(worker)
            return
        code = worker.process.poll()
        if code is not None:
            self._ended(worker, code)
            return
        worker.listen()
        if worker.silent_for() > self.config.heartbeat_timeout_s:
            self._kill_frozen(worker)
        else:
            self._stop_hung(worker)

    def _ended(self, worker: WorkerProcess, code: int) -> None:
        name = worker.name
        if self.draining and code == 0:
            handed = hand_back(self.store, self.queue, name)  # normally none: it finished its job first
            log.info("worker %s on %s stopped (%d job(s) handed back)", name, worker.device, handed)
            worker.forget()
            return
        failed = fail_jobs_of(self.store, name, self.config,
                              f"the worker process on {worker.device} died (exit code {code}) while running this "
                              "request; it has been restarted")
        log.error("worker %s on %s exited with code %s (%d job(s) failed)", name, worker.device, code, failed)
        self._restart_later(worker)

    def _restart_later(self, worker: WorkerProcess) -> None:
        delay = RESTART_BACKOFF_S[min(worker.restarts, len(RESTART_BACKOFF_S) - 1)]
        if not self.draining:
            log.info("restarting the worker on %s in %d s", worker.device, delay)
        resend_lost(self.store, self.queue)
        worker.forget()
        worker.restarts, worker.next_start = worker.restarts + 1, time.monotonic() + delay

    def _kill_frozen(self, worker: WorkerProcess) -> None:
        """No heartbeat for --heartbeat-timeout: SIGKILL (a stopped or wedged process ignores SIGTERM), then
        its job goes back to the queue or, after max_attempts runs, fails; it can never finish it later."""
        name, silent = worker.name, worker.silent_for()
        worker.process.kill()
        worker.process.wait()
        log.error("worker %s on %s sent no heartbeat for %.1f s (frozen); killed it", name, worker.device, silent)
        why = f"the worker on {worker.device} stopped responding and was restarted"
        for job in self.store.running():
            if job.worker == name:
                requeue_if_abandoned(self.store, self.queue, job.id, self.config, why, name)
        self._restart_later(worker)

    def _stop_hung(self, worker: WorkerProcess) -> None:
        """A job past --job-timeout fails, and its worker is killed (a hung GPU call ignores cancel)."""
        name, limit = worker.name, self.config.job_timeout_s
        message = (f"took longer than {limit:g} s (serve --job-timeout); the worker on {worker.device} was "
                   "restarted")
        for job in self.store.running():
            if job.worker == name and job.started_at and time.time() - job.started_at > limit:
                self.store.update(job.id, lambda j: J.fail(j, self.config.result_ttl_s, message, "timeout")
                                  if J.owned_by(j, name) else None)
                log.error("job %s on worker %s %s", job.id, name, message)
                worker.process.kill()

    def _drain(self) -> None:
        """SIGTERM to every worker (each finishes its job, then exits); past the deadline the rest are killed
        and their jobs handed back. Runs on the supervisor thread, which the workers' lives are tied to."""
        self.draining = True
        for worker in self.workers:
            if worker.process is not None:
                worker.process.terminate()
        while any(w.process is not None for w in self.workers) and time.monotonic() < self.drain_deadline:
            for worker in self.workers:
                self._check(worker)  # exits, frozen workers and --job-timeout still count
            time.sleep(DRAIN_TICK_S)
        for worker in self.workers:
            if worker.process is not None:
                name = worker.name
                worker.process.kill()
                worker.process.wait()
                handed = hand_back(self.store, self.queue, name)
                log.warning("worker %s on %s did not finish within the drain timeout: killed, %d job(s) handed "
                            "back to the queue", name, worker.device, handed)
                worker.forget()

    def stop(self, drain_timeout_s: float = 0.0) -> None:
        """Stop the workers: up to drain_timeout_s for their running jobs, then hand those back."""
        self.drain_deadline = time.monotonic() + drain_timeout_s
        self.stop_event.set()
        self.thread.join(timeout=drain_timeout_s + 60)

    def hurry(self) -> None:
        """A second SIGTERM/SIGINT: stop waiting for running jobs (they are handed back)."""
        self.drain_deadline = time.monotonic()
