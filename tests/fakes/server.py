"""A threaded HTTP/1.1 server on 127.0.0.1:0 that hands every request to an `app(hit) -> Response` callable."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit


@dataclass
class Hit:
    """One request as the fake received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)


@dataclass
class Response:
    status: int = 200
    body: Any = b""  # bytes, str, or anything JSON-serialisable
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str | None = None
    action: str | None = None  # "drop": close without replying; "drop_after": handle, then close unanswered
    delay: float = 0.0  # seconds to wait before answering (a "hang" when longer than the client's timeout)
    chunked: bool = False  # send the body with Transfer-Encoding: chunked (no Content-Length up front)
    trickle: float = 0.0  # send the whole reply (status line, headers, body) one byte per this many seconds


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes; do not let Nagle hold the body

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        hit = Hit(self.command, parts.path, query, dict(self.headers.items()), body, time.monotonic())
        response = self.server.app(hit)
        if response.delay:
            time.sleep(response.delay)
        if response.action == "drop":
            self.close_connection = True
            return
        payload, content_type = _encode(response)
        if response.trickle:
            return self._trickle(response, payload, content_type)
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type or content_type)
        if response.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        elif "Content-Length" not in response.headers:
            self.send_header("Content-Length", str(len(payload)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if not response.chunked:
            self.wfile.write(payload)
            return
        for start in range(0, len(payload), 65536):
            piece = payload[start:start + 65536]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        self.wfile.write(b"0\r\n\r\n")

    def _trickle(self, response: Response, payload: bytes, content_type: str) -> None:
        """A server that is alive but never done: every byte arrives well within any gap timeout."""
        head = [f"HTTP/1.1 {response.status} OK", f"Content-Type: {response.content_type or content_type}",
                f"Content-Length: {len(payload)}", *(f"{k}: {v}" for k, v in response.headers.items())]
        raw = ("\r\n".join(head) + "\r\n\r\n").encode() + payload
        self.close_connection = True
        try:
            for index in range(len(raw)):
                self.wfile.write(raw[index:index + 1])
                self.wfile.flush()
                time.sleep(response.trickle)
        except OSError:  # the client gave up and closed the connection
            pass

    do_GET = do_POST = do_PUT = do_DELETE = _serve

    def log_message(self, *args) -> None:  # keep test output quiet
        pass


def _encode(response: Response) -> tuple[bytes, str]:
    if isinstance(response.body, bytes):
        return response.body, "application/octet-stream"
    if isinstance(response.body, str):
        return response.body.encode(), "text/plain; charset=utf-8"
    return json.dumps(response.body).encode(), "application/json"


class FakeServer:
    def __init__(self, app: Callable[[Hit], Response]):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.app = app
        self.httpd.handle_error = lambda request, address: None  # clients that timed out close early
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.01},
                                        daemon=True)

    scheme = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.httpd.server_address[1]}"

    def use_tls(self, cert: str, key: str) -> "FakeServer":
        """Serve https with this certificate (call before start)."""
        import ssl

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.scheme = "https"
        return self

    def start(self) -> "FakeServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
