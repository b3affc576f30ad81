"""Server settings: one frozen record, passed to worker processes as JSON through an inherited descriptor."""

from __future__ import annotations

import errno
import json
import socket
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from .. import params

from .inputs import InputLimits

DEFAULT_PORT = params.SERVER_PORT.default


def is_redis(queue_url: str | None) -> bool:
    """A Redis queue URL (several GPU hosts); anything else means the embedded SQLite store."""
    return bool(queue_url) and queue_url.startswith(("redis://", "rediss://", "unix://"))
DEFAULT_STATE_DIR = "server-state"  # git-ignored; the job store and queue files of the SQLite backend


@dataclass(frozen=True)
class ServerConfig:
    state_dir: str = DEFAULT_STATE_DIR
    queue_url: str | None = None  # None: SQLite files in state_dir; redis://host:port/db for several hosts
    namespace: str = "flux-redux"
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    tls_cert: str | None = None  # PEM certificate chain: serve https directly (no reverse proxy needed)
    tls_key: str | None = None
    models_dir: str | None = None
    devices: tuple[str, ...] = ()  # one worker process per entry: "cuda:0", "cpu", ...
    engine: str | None = None  # module:callable building a stand-in engine (benchmarks)
    dtype: str = "auto"
    weight_storage: str = "default"
    offload: str = params.OFFLOAD_CHOICES[0]
    result_ttl_s: float = 3600.0
    max_active_per_key: int = params.MAX_JOBS_PER_KEY.default
    retry_after_s: int = 2
    lease_s: float = 30.0  # a running job whose worker stops renewing this long is re-queued
    max_attempts: int = 2  # runs a job may start (crash recovery) before it fails
    job_timeout_s: float = 1800.0  # a job running longer is failed and its worker process killed (a hang)
    heartbeat_timeout_s: float = 20.0  # a local worker silent this long (frozen) is killed and restarted
    drain_timeout_s: float = 25.0  # on SIGTERM/SIGINT: how long running jobs may take to finish
    max_sync_waits_per_key: int = params.MAX_SYNC_WAITS_PER_KEY.default  # more get 429 + Retry-After
    sync_timeout_s: float = 300.0
    max_body_bytes: int = 16 * 2**20
    max_input_bytes: int = 10 * 2**20
    max_input_pixels: int = 40_000_000
    url_inputs: bool = False
    url_allow_hosts: tuple[str, ...] = ()
    url_timeout_s: float = 20.0
    max_output_pixels: int = params.SERVER_MAX_PIXELS.default  # custom sizes are rounded to 16s, then capped here
    webhooks: bool = False  # POST fal_webhook / webhook URLs when jobs end (serve --allow-webhooks)
    webhook_retry_s: tuple[float, ...] = (2.0, 10.0, 60.0, 300.0)  # waits between tries; then it is given up
    webhook_timeout_s: float = 15.0  # one try, connect to last byte

    def limits(self) -> InputLimits:
        return InputLimits(max_bytes=self.max_input_bytes, max_pixels=self.max_input_pixels,
                           url_timeout_s=self.url_timeout_s, urls_allowed=self.url_inputs,
                           allow_hosts=self.url_allow_hosts)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def from_json(text: str) -> "ServerConfig":
        data = json.loads(text)
        for name in ("devices", "url_allow_hosts", "webhook_retry_s"):
            data[name] = tuple(data[name])
        return ServerConfig(**data)

    def with_(self, **changes) -> "ServerConfig":
        return replace(self, **changes)

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert else "http"

    def tls_options(self) -> dict:
        """uvicorn's keyword arguments for https (empty for plain http)."""
        return {"ssl_certfile": self.tls_cert, "ssl_keyfile": self.tls_key} if self.tls_cert else {}

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)


def check_listen_address(host: str, port: int) -> None:
    """Fail before any worker starts, in one line, when the API cannot listen on host:port (busy port, an
    address of another machine, a privileged port). Binds the way uvicorn does (SO_REUSEADDR), then lets go."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            rule = f"it is already in use on {host} (another serve or program listens there); stop that one or " \
                   "pick a free port with --port"
        elif exc.errno == errno.EACCES:
            rule = f"this user may not listen on it on {host} (ports below 1024 need privileges); pick one above 1023"
        else:
            raise params.ParameterError("host", host, f"cannot listen there ({exc.strerror or exc}); expected an "
                                                      "address of this machine, e.g. 127.0.0.1 or 0.0.0.0") from None
        raise params.ParameterError("port", port, rule) from None
