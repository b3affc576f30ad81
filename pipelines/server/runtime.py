"""Putting the server together: store + queue + supervisor + uvicorn.

`serve()` is the `python -m pipelines serve` command (API and worker processes). `LocalServer` runs the
same API with workers as threads inside the calling process, on a free loopback port (tests, notebooks).
"""

from __future__ import annotations

import logging
import signal
import socket
import threading

import uvicorn

from ..remote.http import is_loopback_host
from .app import build_app
from .auth import ApiKeys
from .config import ServerConfig
from .queue import JobQueue
from .service import JobService
from .store import open_store
from .supervisor import Supervisor, recover, sweep
from .worker import run_worker

log = logging.getLogger("flux-redux.server")


def open_backend(config: ServerConfig) -> JobService:
    store = open_store(config.queue_url, config.state_path, config.namespace)
    return JobService(config, store, JobQueue(config.queue_url, config.state_path, config.namespace))


def serve(config: ServerConfig, keys: ApiKeys | None, api: bool = True) -> None:
    """Blocks until Ctrl+C / SIGTERM. api=False runs only this host's workers (a GPU host of a Redis setup)."""
    service = open_backend(config)
    recover(service.store, service.queue, config)
    supervisor = Supervisor(config, service.store, service.queue, sweeper=api).start()
    try:
        if api:
            log.info("serving on %s://%s:%d with keys: %s", config.scheme, config.host, config.port,
                     ", ".join(keys.names))
            if not is_loopback_host(config.host) and not config.tls_cert:
                log.warning("listening on %s: API keys travel in clear text over plain http; use --tls-cert/"
                            "--tls-key or an https reverse proxy (the remote node needs https beyond localhost)",
                            config.host)
            uvicorn.run(build_app(config, service, keys), host=config.host, port=config.port, log_level="info",
                        timeout_graceful_shutdown=5, **config.tls_options())
        else:
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        supervisor.stop()


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
        self.uvicorn.should_exit = True
        self.stop_event.set()
        for thread in self.threads:
            thread.join(timeout=10)

    def __enter__(self) -> "LocalServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
