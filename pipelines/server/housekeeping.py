"""What the API process does between requests, on its own thread: fails queued requests whose start_timeout
passed, and POSTs the webhooks of finished ones (a few at a time, so one slow receiver holds up nothing else).
Several API processes on one Redis store may run it side by side: each change is atomic in the store.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from . import jobs as J
from .config import ServerConfig
from .store import JobStore
from .webhooks import deliver, payload_for

log = logging.getLogger("flux-redux.server")
TICK_S = 0.1
SENDERS = 4
ERROR_LOG_EVERY_S = 60.0


def expire_unstarted(job: J.Job, ttl_s: float) -> J.Job | None:
    """IN_QUEUE past its start_by -> COMPLETED with fal's request_timeout (504 at the result URL)."""
    if job.state != J.QUEUED or job.start_by is None or time.time() <= job.start_by:
        return None
    message = f"Request was not started within its start_timeout of {round(job.start_by - job.created_at, 1):g} s"
    return J.finish(job, ttl_s, status=504, body={"detail": message, "error_type": "request_timeout"},
                    error=message, error_type="request_timeout")


class Housekeeper:
    def __init__(self, config: ServerConfig, store: JobStore):
        self.config, self.store = config, store
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="housekeeping", daemon=True)
        self.senders = ThreadPoolExecutor(SENDERS, thread_name_prefix="webhook")

    def start(self) -> "Housekeeper":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=10)
        self.senders.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        quiet_until = 0.0
        while not self.stop_event.wait(TICK_S):
            try:
                self.tick()
            except Exception as exc:  # a store hiccup (locked, full) must not end the thread
                if time.monotonic() >= quiet_until:  # a full disk fails every tick: say so once a minute
                    log.error("housekeeping (start timeouts, webhooks) failed, retrying: %s: %s",
                              type(exc).__name__, exc)
                    quiet_until = time.monotonic() + ERROR_LOG_EVERY_S

    def tick(self) -> None:
        now = time.time()
        for job_id in self.store.overdue_starts(now):
            self.store.update(job_id, lambda job: expire_unstarted(job, self.config.result_ttl_s))
        lease = self.config.webhook_timeout_s + 5.0  # a try in flight is never taken by a second sender
        for job_id in self.store.due_webhooks(now):
            attempt = self.store.claim_webhook(job_id, now, lease)
            if attempt is not None:
                self.senders.submit(self._send, job_id, attempt)

    def _send(self, job_id: str, attempt: int) -> None:
        try:
            self._try(job_id, attempt)
        except Exception as exc:  # the store failed around the try; its lease ends and it is tried again
            log.error("webhook of request %s: try %d could not be recorded: %s: %s", job_id, attempt,
                      type(exc).__name__, exc)

    def _try(self, job_id: str, attempt: int) -> None:
        job = self.store.get(job_id)
        if job is None or not job.webhook:  # expired meanwhile
            self.store.settle_webhook(job_id)
            return
        problem = deliver(job.webhook["url"], payload_for(job, job.webhook["base_url"]), self.config)
        waits = self.config.webhook_retry_s
        if problem is None:
            log.info("webhook of request %s delivered (try %d)", job_id, attempt)
            self.store.settle_webhook(job_id)
        elif attempt > len(waits):
            log.warning("webhook of request %s given up after %d tries: %s", job_id, attempt, problem)
            self.store.settle_webhook(job_id)
        else:
            wait = waits[attempt - 1]
            log.info("webhook of request %s: try %d of %d failed (%s); next in %g s", job_id, attempt,
                     len(waits) + 1, problem, wait)
            self.store.settle_webhook(job_id, time.time() + wait)
