"""Putting the server together: store + queue + supervisor + uvicorn.

`serve()` is the `python -m pipelines serve` command (API and worker processes). `LocalServer` runs the
same API with workers as threads inside the calling process, on a free loopback port (tests, notebooks).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading

import uvicorn

from ..remote.http import is_loopback_host
from .app import build_app
from .auth import ApiKeys
from .config import ServerConfig, is_redis
from .queue import JobQueue
from .service import JobService
from .store import open_store
from .supervisor import Supervisor, recover, sweep
from .worker import run_worker

log = logging.getLogger("flux-redux.server")
STATE_FILES = ("jobs.sqlite3", "queue.sqlite3")  # store.py and queue.py name them


def secure_state_dir(config: ServerConfig) -> None:
    """The state dir 0700 and its files 0600 (jobs, inputs, results): a dir left open by an older version is
    tightened. The SQLite files are made here at 0600 before SQLite opens them, because SQLite gives its -wal
    and -shm files the mode of the database file."""
    if is_redis(config.queue_url):
        return
    folder = config.state_path
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)
    for name in STATE_FILES:
        os.close(os.open(folder / name, os.O_CREAT | os.O_WRONLY, 0o600))
    for path in folder.iterdir():
        if path.is_file():
            path.chmod(0o600)


def open_backend(config: ServerConfig) -> JobService:
    secure_state_dir(config)
    store = open_store(config.queue_url, config.state_path, config.namespace)
    return JobService(config, store, JobQueue(config.queue_url, config.state_path, config.namespace))


class Shutdown:
    """SIGTERM and SIGINT both mean: drain, then exit 0. The first one sets `requested` (and calls on_first at
    once, so no worker is restarted meanwhile); a second one calls on_second (stop waiting for jobs)."""

    def __init__(self, on_first=None):
        self.requested = threading.Event()
        self.on_first, self.on_second = on_first, None
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._signal)

    def _signal(self, signum, _frame) -> None:
        if not self.requested.is_set():
            log.info("%s: stopping", signal.Signals(signum).name)
            self.requested.set()
            if self.on_first is not None:
                self.on_first()
        elif self.on_second is not None:
            log.info("%s again: not waiting for running jobs", signal.Signals(signum).name)
            self.on_second()


def serve(config: ServerConfig, keys: ApiKeys | None, api: bool = True) -> int:
    """Runs until SIGTERM or SIGINT, then drains: new jobs get 503 + Retry-After while status and results
    are still served, running jobs get --drain-timeout to finish (the rest go back to the queue in their place),
    the workers stop, and serve returns 0. api=False runs only this host's workers (a GPU host of a Redis setup).
    uvicorn runs on its own thread, so its signal handling (which re-raises SIGTERM at the end) stays out."""
    os.umask(0o077)  # whatever serve and its workers create is the owner's only
    service = open_backend(config)
    recover(service.store, service.queue, config)
    supervisor = Supervisor(config, service.store, service.queue, sweeper=api)

    def stop_taking_jobs() -> None:
        service.draining = supervisor.draining = True

    shutdown = Shutdown(stop_taking_jobs)
    supervisor.start()
    server, thread, status = None, None, 0
    try:
        if api:
            log.info("serving on %s://%s:%d with keys: %s", config.scheme, config.host, config.port,
                     ", ".join(keys.names))
            if not is_loopback_host(config.host) and not config.tls_cert:
                log.warning("listening on %s: API keys travel in clear text over plain http; use --tls-cert/"
                            "--tls-key or an https reverse proxy (the remote node needs https beyond localhost)",
                            config.host)
            server = uvicorn.Server(uvicorn.Config(build_app(config, service, keys), host=config.host,
                                                   port=config.port, log_level="info", timeout_graceful_shutdown=5,
                                                   **config.tls_options()))
            thread = threading.Thread(target=server.run, name="api", daemon=True)
            thread.start()
        while not shutdown.requested.wait(0.5):
            if thread is not None and not thread.is_alive():  # uvicorn could not start (it logged why)
                status = 1
                break
    finally:
        stop_taking_jobs()
        shutdown.on_second = supervisor.hurry
        log.info("draining: no new jobs; running jobs have up to %g s to finish (serve --drain-timeout)",
                 config.drain_timeout_s)
        supervisor.stop(config.drain_timeout_s)
        service.waits.close()  # sync requests still waiting get their answer (their job waits for the restart)
        if server is not None:
            server.should_exit = True
            thread.join(timeout=15)
        log.info("stopped")
    return status


class LocalServer:
    """API + thread workers in this process. `engines` gives one engine per worker thread."""

    def __init__(self, config: ServerConfig, keys: ApiKeys, engines: list, sweep_s: float = 0.5):
        self.config, self.keys, self.engines, self.sweep_s = config, keys, engines, sweep_s
        self.service = open_backend(config)
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []
        self.url = ""

    def start(self) -> "LocalServer":
        recover(self.service.store, self.service.queue, self.config)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP proto: asyncio sets NODELAY
        sock.bind((self.config.host, 0))
        self.url = f"{self.config.scheme}://{self.config.host}:{sock.getsockname()[1]}"
        self.uvicorn = uvicorn.Server(uvicorn.Config(build_app(self.config, self.service, self.keys),
                                                     log_level="warning", timeout_graceful_shutdown=1,
                                                     **self.config.tls_options()))
        self._thread(self.uvicorn.run, [sock])
        for number, engine in enumerate(self.engines):
            ready = threading.Event()
            self._thread(run_worker, self.config, "cpu", self.stop_event, engine, f"{socket.gethostname()}:local{number}",
                         ready.set)
            ready.wait(30)
        self._thread(self._sweep)
        for _ in range(3000):
            if self.uvicorn.started:
                return self
            self.stop_event.wait(0.01)
        raise RuntimeError("the API server did not start within 30 s")

    def _thread(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self.threads.append(thread)

    def _sweep(self) -> None:
        while not self.stop_event.wait(self.sweep_s):
            sweep(self.service.store, self.service.queue, self.config)

    def stop(self) -> None:
        self.service.waits.close()
        self.uvicorn.should_exit = True
        self.stop_event.set()
        for thread in self.threads:
            thread.join(timeout=10)

    def __enter__(self) -> "LocalServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
