"""What the HTTP routes of both protocols share: submit, look up (per key), cancel, wait (sync requests)."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool

from . import jobs as J
from .config import ServerConfig
from .queue import JobQueue
from .store import JobStore
from .validation import JobInputs, summarize
from .waits import SyncWaits


class TooManyJobs(Exception):
    """The key already has its maximum of unfinished jobs."""


class ShuttingDown(Exception):
    """The server is draining (SIGTERM/SIGINT): it takes no new jobs; the client retries after the restart."""


class JobService:
    def __init__(self, config: ServerConfig, store: JobStore, queue: JobQueue):
        self.config, self.store, self.queue = config, store, queue
        self.waits = SyncWaits(store, config.max_sync_waits_per_key)
        self.draining = False

    def too_many_waits(self) -> str:
        return (f"this API key already has {self.config.max_sync_waits_per_key} sync requests waiting; retry after "
                "one returns, or use the queue endpoints")

    def submit(self, owner: str, api: str, model: str, inputs: JobInputs | None,
               issues: list[dict] | None = None, **options) -> J.Job:
        """Queue a valid request; an invalid one becomes a job that is already COMPLETED with its 422.
        `options` are more Job fields (start_by, webhook)."""
        if self.draining:
            raise ShuttingDown("the server is restarting and takes no new requests; retry in a few seconds")
        job = J.Job(id=J.new_request_id(), owner=owner, api=api, model=model,
                    inputs=inputs.as_dict() if inputs else None, **options)
        if inputs is None:
            J.finish(job, self.config.result_ttl_s, status=422, body={"detail": issues},
                     error=summarize(issues or []), error_type="validation_error")
            self.store.add(job)
            return job
        J.log_line(job, "queued")
        if not self.store.add(job, self.config.max_active_per_key):
            raise TooManyJobs(f"this API key already has {self.config.max_active_per_key} unfinished requests; "
                              f"retry after one finishes")
        self.queue.enqueue(job.id)
        return job

    def find(self, owner: str, job_id: str) -> J.Job | None:
        """The job if it exists and belongs to this key; another key's job looks exactly like a missing one."""
        job = self.store.get(job_id)
        return job if job is not None and job.owner == owner else None

    def position(self, job: J.Job) -> int | None:
        return self.store.position(job) if job.state == J.QUEUED else None

    def cancel(self, owner: str, job_id: str) -> str | None:
        """"requested", "already_completed", or None when there is no such job for this key."""
        if self.find(owner, job_id) is None:
            return None
        outcome = ["already_completed"]

        def change(job: J.Job):
            if job.state == J.QUEUED:  # leaves the queue now; its task is skipped when delivered
                outcome[0] = "requested"
                return J.cancel(job, self.config.result_ttl_s)
            if job.state == J.RUNNING:
                outcome[0] = "requested"
                if not job.cancel_requested:
                    job.cancel_requested = True
                    J.log_line(job, "cancellation requested")
                    return job
            return None
        self.store.update(job_id, change)
        return outcome[0]

    async def wait(self, owner: str, job_id: str, timeout_s: float) -> J.Job | None:
        """Until the job completes, timeout_s passes or the server stops (holding no thread); its latest state."""
        await self.waits.wait(job_id, timeout_s)
        return await run_in_threadpool(self.find, owner, job_id)
