"""A job's record and its state changes, shared by both stores (SQLite, Redis).

States are fal's: IN_QUEUE -> IN_PROGRESS -> COMPLETED. There is no failed state: a failed or cancelled
job is COMPLETED with `error`, and `outcome` holds the HTTP status and body its result URL answers.
Every change is a pure function of the record, applied by a store atomically (`JobStore.update`).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

QUEUED, RUNNING, DONE = "IN_QUEUE", "IN_PROGRESS", "COMPLETED"
CANCELLED_ERROR = "Request was cancelled"
MAX_LOGS = 200  # a job's log list stays small; older step lines are dropped first


def new_request_id() -> str:
    """122 random bits (uuid4): unguessable, and the shape fal's request ids have."""
    return str(uuid.uuid4())


@dataclass
class Job:
    id: str
    owner: str  # the API key's name (never the key)
    api: str  # "fal" or "wavespeed": which protocol renders it
    model: str  # the endpoint id it was submitted to
    inputs: dict | None  # JobInputs.as_dict(); None when the body was invalid
    state: str = QUEUED
    seq: int = 0  # queue order, given by the store
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = None
    worker: str | None = None
    lease_until: float | None = None
    attempts: int = 0
    cancel_requested: bool = False
    logs: list = field(default_factory=list)
    error: str | None = None
    error_type: str | None = None
    outcome: dict | None = None  # {"status": HTTP status, "body": JSON} of the result URL
    inference_s: float | None = None
    start_by: float | None = None  # fal's start_timeout: not started by then, it fails (housekeeping.py)
    webhook: dict | None = None  # {"url", "base_url"}: POSTed when the job ends (webhooks.py)

    def to_doc(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_doc(doc: dict) -> "Job":
        return Job(**doc)

    @property
    def done(self) -> bool:
        return self.state == DONE


def log_line(job: Job, message: str, level: str = "INFO") -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z"
    job.logs.append({"message": message, "level": level, "source": "user", "timestamp": stamp})
    del job.logs[:-MAX_LOGS]


def finish(job: Job, ttl_s: float, *, status: int, body: dict, error: str | None = None,
           error_type: str | None = None, inference_s: float | None = None) -> Job:
    now = time.time()
    job.state, job.finished_at, job.expires_at = DONE, now, now + ttl_s
    job.outcome, job.error, job.error_type = {"status": status, "body": body}, error, error_type
    job.inference_s, job.lease_until = inference_s, None
    log_line(job, f"finished: {error}" if error else "finished", "ERROR" if error else "INFO")
    return job


def fail(job: Job, ttl_s: float, message: str, error_type: str = "runner_error", status: int = 500) -> Job:
    return finish(job, ttl_s, status=status, body={"detail": message, "error_type": error_type}, error=message,
                  error_type=error_type)


def cancel(job: Job, ttl_s: float) -> Job:
    return finish(job, ttl_s, status=400, body={"detail": CANCELLED_ERROR, "error_type": "request_cancelled"},
                  error=CANCELLED_ERROR, error_type="request_cancelled")


def claim(job: Job, worker: str, lease_s: float) -> Job | None:
    """IN_QUEUE -> IN_PROGRESS for this worker; None (no change) when it is no longer queued."""
    if job.state != QUEUED:
        return None
    now = time.time()
    if job.start_by is not None and now > job.start_by:
        return None  # past its start_timeout: it must not start; housekeeping fails it
    job.start_by = None  # it started in time; a re-queue after a crash does not make it late
    job.state, job.worker, job.started_at, job.lease_until = RUNNING, worker, now, now + lease_s
    job.attempts += 1
    log_line(job, f"started (attempt {job.attempts})")  # clients see logs: no host names or pids in them
    return job


def owned_by(job: Job, worker: str) -> bool:
    return job.state == RUNNING and job.worker == worker
