"""Shared HTTP layer for the hosted APIs: timeouts, retries, an overall deadline, size-capped downloads,
readable error messages and key redaction, in one place for every provider.

The retry loop is written here rather than handed to urllib3's `Retry` because it needs what urllib3 does
not know: the overall deadline (a `Retry-After` beyond it ends the run instead of sleeping), the caller's
abort flag (a backoff wakes up on a ComfyUI interrupt), and the submit rule. A submit POST is repeated only
when it provably never reached the server (connection refused, DNS failure, connect timeout) or when the
server answered 429 or 503, which say "not accepted, come back later". A read timeout, a connection dropped
after sending, or a 500/502/504 may hide a job that was accepted and will be billed, so the submit is not
repeated and the error says so. Every other call (status, result, cancel, downloads) is idempotent and is
retried on 408/409/429/5xx, connection errors and timeouts.

requests' read timeout bounds only the gap between two bytes, so a server that trickles its reply could hold
a job forever. Each call therefore runs under a watch (`CallWatch`) that shuts the call's socket when the
call's whole time (connect + read timeout, capped by the run's deadline) is spent or the caller aborts: every
read, headers and body, of every call ends in time and the worker thread is freed. Replies are read with a
size cap, and loopback URLs never go through a proxy (the key would travel in clear to it).
"""

from __future__ import annotations

import ipaddress
import json
import math
import random
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from .errors import (KeyRejectedError, ProviderError, RemoteCancelledError, RemoteError, RemoteTimeoutError,
                     ServiceUnavailableError, DownloadError)
from .keys import redacting_logger

log = redacting_logger(__name__)
for _library_logger in ("urllib3.connectionpool", "urllib3.connection"):  # their debug lines quote URLs, and a
    redacting_logger(_library_logger)  # server may reflect the key into the request ids in those URLs

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
SUBMIT_RETRY_STATUSES = frozenset({429, 503})  # the server says it did not take the job
KEY_REJECTED_STATUSES = frozenset({401, 403})
ERROR_TEXT_LIMIT = 500
ERROR_BODY_LIMIT = 64 * 1024
DOWNLOAD_CHUNK = 64 * 1024
API_REPLY_LIMIT = 4 * 2**20  # a status/submit/cancel reply; calls that may carry inline images pass more
WATCH_TICK_S = 0.05  # how often a call's watch looks at the clock and the abort flag
NO_PROXY = {"http": None, "https": None, "all": None}  # requests drops None entries: no proxy at all


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry one call. Tests shrink the delays to milliseconds."""

    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 20.0
    max_retry_after: float = 120.0  # a longer Retry-After ends the run with a clear message

    def backoff(self, attempt: int, rand: float) -> float:
        """Exponential backoff from base_delay, capped at max_delay, scaled by a jitter factor in [0.5, 1.5)."""
        return min(self.max_delay, self.base_delay * 2 ** (attempt - 1)) * (0.5 + rand)


@dataclass(frozen=True)
class Timeouts:
    """connect: to open a connection. read: for the whole reply of one call (not only between two bytes)."""

    connect: float = 10.0
    read: float = 60.0


# -- the watch: a whole-call time limit and abort for blocking reads ------------------------------------------

_CURRENT = threading.local()  # the watch of the call running in this thread


class CallWatch:
    """Shuts the sockets of one call when its time is up or `abort` is set, which ends any blocked read at
    once. The connections register their sockets with the watch of the thread they run in."""

    def __init__(self, budget: float, abort: threading.Event | None):
        self.budget, self.abort = budget, abort
        self.fired: str | None = None  # "abort" or "time"
        self._end = time.monotonic() + budget
        self._sockets: list[socket.socket] = []
        self._done = threading.Event()
        self._lock = threading.Lock()

    def __enter__(self) -> "CallWatch":
        _CURRENT.watch = self
        threading.Thread(target=self._run, name="redux-remote-watch", daemon=True).start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._done.set()
        _CURRENT.watch = None

    def add(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self._lock:
            self._sockets.append(sock)
            if self.fired:
                _shut(sock)

    def _run(self) -> None:
        while not self._done.wait(min(WATCH_TICK_S, max(self._end - time.monotonic(), 0))):
            if self.abort is not None and self.abort.is_set():
                return self._fire("abort")
            if time.monotonic() >= self._end:
                return self._fire("time")

    def _fire(self, reason: str) -> None:
        with self._lock:
            if self._done.is_set():
                return
            self.fired = reason
            for sock in self._sockets:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    try:  # the plain socket's shutdown, also for TLS sockets: it wakes a blocked recv in another thread
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


def _register(sock) -> None:
    watch = getattr(_CURRENT, "watch", None)
    if watch is not None:
        watch.add(sock)


class _Watched:
    """Mixin for urllib3's connection classes: report the socket to the running call's watch."""

    def connect(self):
        super().connect()
        _register(self.sock)

    def request(self, *args, **kwargs):
        _register(self.sock)  # a kept-alive connection is not connected again
        return super().request(*args, **kwargs)


class _WatchedHTTPConnection(_Watched, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_Watched, HTTPSConnection):
    pass


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


WATCHED_POOLS = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


class WatchedAdapter(HTTPAdapter):
    """requests' adapter with connections that report their sockets to the running call's watch."""

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = WATCHED_POOLS

    def proxy_manager_for(self, proxy, **proxy_kwargs):
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = WATCHED_POOLS
        return manager


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_loopback_url(url: str) -> bool:
    return is_loopback_host(urlsplit(url).hostname or "")


class Deadline:
    """A point in time after which the whole run gives up."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    def remaining(self) -> float:
        return self._end - time.monotonic()

    def expired(self) -> bool:
        return self.remaining() <= 0


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    data: Any


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds (fractions accepted) or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def never_sent(exc: BaseException) -> bool:
    """True when the request cannot have reached the server: the connection was never established."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    if isinstance(exc, requests.exceptions.ConnectionError) and not isinstance(exc, requests.exceptions.SSLError):
        reason = getattr(exc.args[0], "reason", None) if exc.args else None
        return isinstance(reason, urllib3.exceptions.NewConnectionError)  # refused, DNS failure
    return False


def default_error_detail(status: int, data: Any, text: str) -> str:
    if isinstance(data, dict):
        for field in ("detail", "message", "error"):
            if data.get(field):
                return str(data[field])
    return text.strip() or "(empty reply)"


ErrorDetail = Callable[[int, Any, str], str]


def _error_body(resp: requests.Response) -> str:
    """At most ERROR_BODY_LIMIT bytes of an error reply (a download error page may be streamed)."""
    head = next(resp.iter_content(ERROR_BODY_LIMIT), b"")
    return head.decode(resp.encoding or "utf-8", errors="replace")


class _TooLarge(Exception):
    def __init__(self, size: int):
        self.size = size


def read_capped(resp: requests.Response, max_bytes: int) -> bytes:
    """The whole body, refusing more than max_bytes (by Content-Length up front, else while reading)."""
    declared = resp.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise _TooLarge(int(declared))
    chunks, total = [], 0
    for chunk in resp.iter_content(DOWNLOAD_CHUNK):
        total += len(chunk)
        if total > max_bytes:
            raise _TooLarge(total)
        chunks.append(chunk)
    return b"".join(chunks)


MAX_REPLY_DEPTH = 64  # provider replies are a few levels deep; deeper ones are refused before anything walks them


class UnusableJson(ValueError):
    """A reply that parses as Python's json reads it but that no caller can use: NaN/Infinity, a number too
    large for a float, nesting deeper than MAX_REPLY_DEPTH. The message says which."""


def _no_constant(name: str):
    raise UnusableJson(f"it holds {name}, which is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 reads as inf
        raise UnusableJson(f"it holds the number {text[:40]}, too large for a float")
    return value


def parse_json(body: bytes | str) -> Any:
    """A provider's reply as JSON with bounded depth and finite numbers only (json.JSONDecodeError or
    UnusableJson, both ValueErrors, otherwise). Python's json reads NaN and recurses once per nesting level, so a
    hostile reply nested 200,000 arrays deep would end in a bare RecursionError naming nothing."""
    try:
        value = json.loads(body, parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError:
        raise UnusableJson(f"it is nested deeper than {MAX_REPLY_DEPTH} levels") from None
    stack = [(value, 1)]
    while stack:  # without recursion, so depth never costs stack
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        if isinstance(item, (dict, list)) and depth > MAX_REPLY_DEPTH:
            raise UnusableJson(f"it is nested deeper than {MAX_REPLY_DEPTH} levels")
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return value


class _RetryBody(Exception):
    """A 2xx reply whose body could not be used; retried like a transient error for idempotent calls."""


@dataclass(frozen=True)
class _Retry:
    """One attempt ended in something worth another try."""

    reason: str
    retry_after: float | None = None


class HttpClient:
    """One requests.Session plus the rules above, for one job of one provider (sessions are not shared
    between threads). API keys are passed per call in `headers`, never set on the session, so output
    downloads from CDN hosts never carry them."""

    def __init__(self, provider: str, *, timeouts: Timeouts = Timeouts(), retry: RetryPolicy = RetryPolicy(),
                 deadline: Deadline | None = None, abort: threading.Event | None = None, secrets: tuple = (),
                 error_detail: ErrorDetail = default_error_detail, key_hint: str = "",
                 rand: Callable[[], float] = random.random):
        self.provider = provider
        self.timeouts, self.retry = timeouts, retry
        self.deadline = deadline or Deadline(math.inf)
        self.abort = abort or threading.Event()
        self._secrets = tuple(s for s in secrets if s and len(s) >= 6)
        self.error_detail, self.key_hint, self._rand = error_detail, key_hint, rand
        self.session = requests.Session()
        for prefix in ("http://", "https://"):
            self.session.mount(prefix, WatchedAdapter())

    def close(self) -> None:
        self.session.close()

    def _label(self, request_id: str | None) -> str:
        """How messages name the call: the provider, and the request id once there is one (for its dashboard)."""
        return f"{self.provider} (request {request_id})" if request_id else self.provider

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def clean(self, value: object, limit: int = 120) -> str:
        """A server-supplied word (request id, status) fit for logs, messages and info: keys redacted,
        control characters dropped, length capped."""
        text = self.redact(str(value))
        text = "".join(ch for ch in text if ch.isprintable())
        return text if len(text) <= limit else text[:limit] + "..."

    def carries_secret(self, text: str) -> bool:
        return any(secret in text for secret in self._secrets)

    # -- waiting --------------------------------------------------------------------------------------------
    def check(self, *, deadline: Deadline | None = None, abortable: bool = True,
              request_id: str | None = None) -> None:
        """Raise if the caller aborted or the deadline passed."""
        deadline = deadline or self.deadline
        if abortable and self.abort.is_set():
            raise RemoteCancelledError(f"{self._label(request_id)}: interrupted", provider=self.provider,
                                       request_id=request_id)
        if deadline.expired():
            raise self._timeout_error(deadline, None, request_id)

    def pause(self, seconds: float, *, deadline: Deadline | None = None, abortable: bool = True,
              request_id: str | None = None) -> None:
        """Sleep, waking at once on abort; a sleep that would outlast the deadline raises right away."""
        deadline = deadline or self.deadline
        if seconds > deadline.remaining():
            raise self._timeout_error(deadline, None, request_id)
        if abortable:
            self.abort.wait(seconds)
        else:
            time.sleep(seconds)
        self.check(deadline=deadline, abortable=abortable, request_id=request_id)

    # -- requests -------------------------------------------------------------------------------------------
    def call(self, method: str, url: str, *, what: str, json: Any = None, params: Mapping | None = None,
             headers: Mapping | None = None, submit: bool = False, read_timeout: float | None = None,
             accept: tuple[int, ...] = (), retry_statuses: frozenset | None = None,
             deadline: Deadline | None = None, abortable: bool = True, request_id: str | None = None,
             max_bytes: int = API_REPLY_LIMIT) -> Reply:
        """Send one API call and return its JSON. `submit=True` marks a call that creates a paid job."""

        def handle(resp: requests.Response) -> Reply:
            if not (200 <= resp.status_code < 300 or resp.status_code in accept):
                raise self._status_error(resp, what, submit, request_id)
            try:
                body = read_capped(resp, max_bytes)
            except _TooLarge as exc:
                raise self._too_large(f"the {what} reply", exc.size, max_bytes, request_id) from None
            try:
                return Reply(resp.status_code, resp.headers, parse_json(body) if body else None)
            except UnusableJson as exc:  # quoting a 200,000-bracket reply helps nobody
                message = (f"{self._label(request_id)}: the {what} reply is unusable JSON (HTTP "
                           f"{resp.status_code}): {exc}")
                if submit:
                    message += ". The job may have been created; it was not submitted again"
                raise _RetryBody(message) from None
            except ValueError:
                kind = resp.headers.get("Content-Type", "no content type")
                quoted = self.redact(body[:4096].decode("utf-8", errors="replace"))[:200]  # redact, then cut
                message = (f"{self._label(request_id)}: the {what} reply is not JSON "
                           f"(HTTP {resp.status_code}, {kind}): {quoted!r}")
                if submit:
                    message += ". The job may have been created; it was not submitted again"
                raise _RetryBody(message) from None

        return self._send(method, url, handle, what=what, submit=submit, json=json, params=params,
                          headers=headers, read_timeout=read_timeout, retry_statuses=retry_statuses,
                          deadline=deadline, abortable=abortable, request_id=request_id)

    def download(self, url: str, *, max_bytes: int, what: str = "download",
                 request_id: str | None = None) -> tuple[bytes, str | None]:
        """GET an output file without any API key, refusing more than max_bytes. Returns (bytes, content type)."""

        def handle(resp: requests.Response) -> tuple[bytes, str | None]:
            if not 200 <= resp.status_code < 300:
                raise self._status_error(resp, what, False, request_id, keyed=False)
            try:
                return read_capped(resp, max_bytes), resp.headers.get("Content-Type")
            except _TooLarge as exc:
                raise self._too_large(what, exc.size, max_bytes, request_id) from None

        return self._send("GET", url, handle, what=what, request_id=request_id)

    def _send(self, method: str, url: str, handle: Callable[[requests.Response], Any], *, what: str,
              submit: bool = False, read_timeout: float | None = None, retry_statuses: frozenset | None = None,
              deadline: Deadline | None = None, abortable: bool = True, request_id: str | None = None,
              **kwargs: Any) -> Any:
        deadline = deadline or self.deadline
        if retry_statuses is None:
            retry_statuses = SUBMIT_RETRY_STATUSES if submit else RETRY_STATUSES
        attempts = max(1, self.retry.attempts)
        for attempt in range(1, attempts + 1):
            self.check(deadline=deadline, abortable=abortable, request_id=request_id)
            last = attempt == attempts
            budget = self._call_budget(deadline, read_timeout)
            with CallWatch(budget, self.abort if abortable else None) as watch:
                try:
                    outcome = self._attempt(method, url, handle, what=what, submit=submit, attempt=attempt,
                                            last=last, read_timeout=read_timeout, retry_statuses=retry_statuses,
                                            deadline=deadline, request_id=request_id, **kwargs)
                except Exception:
                    if not watch.fired:
                        raise
                if watch.fired:  # even a reply that "completed" may be cut short: http.client takes a cut
                    outcome = self._stopped(watch, url, what, submit, last, attempt, deadline, request_id)
            if not isinstance(outcome, _Retry):
                return outcome
            self._backoff(attempt, outcome.retry_after, what, outcome.reason, deadline, abortable, request_id)
        raise AssertionError("unreachable: the last attempt always returns or raises")

    def _attempt(self, method: str, url: str, handle, *, what: str, submit: bool, attempt: int, last: bool,
                 read_timeout: float | None, retry_statuses: frozenset, deadline: Deadline,
                 request_id: str | None, **kwargs: Any) -> Any:
        """One request: its handled result, a _Retry, or an error."""
        try:
            resp = self.session.request(method, url, timeout=self._timeout(deadline, read_timeout), stream=True,
                                        allow_redirects=method == "GET",
                                        proxies=NO_PROXY if is_loopback_url(url) else None, **kwargs)
        except requests.exceptions.RequestException as exc:
            if deadline.expired():
                raise self._timeout_error(deadline, what, request_id) from exc
            if not last and self._may_retry(exc, submit):
                return _Retry(type(exc).__name__)
            raise self._transport_error(exc, url, what, submit, attempt, request_id) from exc
        try:
            if resp.status_code in retry_statuses and not last:
                return _Retry(f"HTTP {resp.status_code}", parse_retry_after(resp.headers.get("Retry-After")))
            return handle(resp)
        except _RetryBody as exc:
            if submit or last:
                raise ProviderError(str(exc), provider=self.provider, request_id=request_id,
                                    status=resp.status_code) from None
            return _Retry("unreadable reply")
        except requests.exceptions.RequestException as exc:  # the body broke off mid-download
            if deadline.expired():
                raise self._timeout_error(deadline, what, request_id) from exc
            if last or submit:
                raise self._transport_error(exc, url, what, submit, attempt, request_id) from exc
            return _Retry(type(exc).__name__)
        finally:
            resp.close()

    def _stopped(self, watch: CallWatch, url: str, what: str, submit: bool, last: bool,
                 attempt: int, deadline: Deadline, request_id: str | None) -> _Retry:
        """The watch cut the call short: cancelled, out of run time, or over the call's own time."""
        if watch.fired == "abort":
            raise RemoteCancelledError(f"{self._label(request_id)}: interrupted during {what}",
                                       provider=self.provider, request_id=request_id) from None
        if deadline.expired():
            raise self._timeout_error(deadline, what, request_id) from None
        if not last and not submit:
            return _Retry(f"no complete reply within {watch.budget:.3g} s")
        message = (f"{self._label(request_id)}: {what} to {urlsplit(url).netloc} failed: no complete reply within "
                   f"{watch.budget:.3g} s ({attempt} attempt(s))")
        if submit:
            message += (". The job may have been created, so it was not submitted again; "
                        "check your provider dashboard before retrying")
        raise ServiceUnavailableError(self.redact(message), provider=self.provider, request_id=request_id) from None

    def _call_budget(self, deadline: Deadline, read_timeout: float | None) -> float:
        read = self.timeouts.read if read_timeout is None else read_timeout
        return max(min(self.timeouts.connect + read, deadline.remaining()), 0.001)

    def _timeout(self, deadline: Deadline, read_timeout: float | None) -> tuple[float, float | None]:
        remaining = max(deadline.remaining(), 0.001)
        read = min(self.timeouts.read if read_timeout is None else read_timeout, remaining)
        return min(self.timeouts.connect, remaining), read if math.isfinite(read) else None

    @staticmethod
    def _may_retry(exc: requests.exceptions.RequestException, submit: bool) -> bool:
        if isinstance(exc, requests.exceptions.SSLError):
            return False
        if submit:
            return never_sent(exc)
        return isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                                requests.exceptions.ChunkedEncodingError))

    def _backoff(self, attempt: int, retry_after: float | None, what: str, reason: str, deadline: Deadline,
                 abortable: bool, request_id: str | None) -> None:
        if retry_after is not None:
            if retry_after > min(self.retry.max_retry_after, deadline.remaining()):
                raise ServiceUnavailableError(
                    f"{self._label(request_id)}: {what} was refused ({reason}) and the provider asks to retry after "
                    f"{retry_after:.0f} s, beyond this run's limit; try again later",
                    provider=self.provider, request_id=request_id)
            delay = retry_after
        else:
            delay = self.retry.backoff(attempt, self._rand())
        log.warning("%s: %s failed (%s); retry %d/%d in %.2f s", self.provider, what, reason, attempt,
                    self.retry.attempts - 1, delay)
        self.pause(min(delay, max(deadline.remaining(), 0)), deadline=deadline, abortable=abortable,
                   request_id=request_id)

    # -- errors ---------------------------------------------------------------------------------------------
    def _status_error(self, resp: requests.Response, what: str, submit: bool, request_id: str | None,
                      keyed: bool = True) -> RemoteError:
        status = resp.status_code
        text = _error_body(resp)
        try:
            data = parse_json(text)
        except ValueError:  # not JSON, or unusable (too deep, NaN): the text alone is the detail
            data = None
        detail = self.error_detail(status, data, text)
        detail = self.redact(detail)[:ERROR_TEXT_LIMIT]
        fields = dict(provider=self.provider, request_id=request_id, status=status)
        if not keyed and status < 500 and status not in RETRY_STATUSES:  # no key was sent: an expired/bad URL
            return DownloadError(f"{self._label(request_id)}: {what} was refused (HTTP {status}): {detail}", **fields)
        if status in KEY_REJECTED_STATUSES:
            return KeyRejectedError(f"{self.provider} rejected the API key (HTTP {status}: {detail}). "
                                    f"{self.key_hint}".strip(), **fields)
        if status in RETRY_STATUSES or status >= 500:
            message = f"{self._label(request_id)}: {what} failed with HTTP {status}: {detail}"
            if submit and status not in SUBMIT_RETRY_STATUSES:
                message += (". Not submitted again because the job may have been created; "
                            "check your provider dashboard before retrying")
            return ServiceUnavailableError(message, **fields)
        return ProviderError(f"{self._label(request_id)} reported an error ({what}, HTTP {status}): {detail}",
                             **fields)

    def _transport_error(self, exc: Exception, url: str, what: str, submit: bool, attempts: int,
                         request_id: str | None) -> RemoteError:
        host = urlsplit(url).netloc
        if never_sent(exc):
            reason = "could not connect"
        elif isinstance(exc, requests.exceptions.Timeout):
            reason = "no reply before the read timeout"
        elif isinstance(exc, requests.exceptions.SSLError):
            reason = "TLS error"
        else:
            reason = "the connection broke off"
        message = (f"{self._label(request_id)}: {what} to {host} failed: {reason} "
                   f"({type(exc).__name__}, {attempts} attempt(s))")
        if submit and not never_sent(exc):
            message += (". The job may have been created, so it was not submitted again; "
                        "check your provider dashboard before retrying")
        return ServiceUnavailableError(self.redact(message), provider=self.provider, request_id=request_id)

    def _timeout_error(self, deadline: Deadline, what: str | None, request_id: str | None) -> RemoteTimeoutError:
        during = f" (during {what})" if what else ""
        return RemoteTimeoutError(f"{self._label(request_id)}: no result within the {deadline.seconds:g} s "
                                  f"deadline{during}", provider=self.provider, request_id=request_id)

    def _too_large(self, what: str, size: int, limit: int, request_id: str | None) -> DownloadError:
        return DownloadError(f"{self._label(request_id)}: {what} is larger than the {limit / 2**20:.1f} MB limit "
                             f"({size / 2**20:.1f} MB or more); refused", provider=self.provider,
                             request_id=request_id)
