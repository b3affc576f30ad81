"""Task delivery on huey: SqliteHuey on one box (a file next to the job store), RedisHuey for several hosts.

A task carries only a job id (for the logs) and gives a worker one turn: the worker claims the oldest queued
job in the store (claim is atomic), so queue order is the store's, a job re-queued after a crash keeps its
place, and a task left over after a cancel or a crash does nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from huey import RedisHuey, SqliteHuey
from huey.consumer import Worker
from huey.storage import SqliteStorage

from .config import is_redis

TASK_NAME = "run_redux_job"
TASK_MODULE = "flux_redux_server"  # huey names tasks module.function: keep it stable across import paths
log = logging.getLogger(__name__)


class DurableSqliteStorage(SqliteStorage):
    """huey's SQLite storage with WAL + synchronous=NORMAL: a committed task survives a crash of any process
    (only an OS crash or power cut may lose the last commits), without an fsync on every enqueue and dequeue
    (huey's choices are FULL, 20-60 ms per commit on a VM disk, or OFF)."""

    def _create_connection(self):
        connection = super()._create_connection()
        connection.execute("pragma synchronous=1")
        return connection


class JobQueue:
    """Enqueue job ids; in a worker, run `handler(job_id)` for each one delivered."""

    def __init__(self, queue_url: str | None, state_dir: Path, namespace: str,
                 handler: Callable[[str], None] | None = None):
        if is_redis(queue_url):
            self.huey = RedisHuey(namespace, url=queue_url, results=False)
        else:
            Path(state_dir).mkdir(parents=True, exist_ok=True)
            self.huey = SqliteHuey(namespace, filename=str(Path(state_dir) / "queue.sqlite3"), results=False,
                                   storage_class=DurableSqliteStorage)
        self._handler = handler

        def run_redux_job(job_id: str) -> None:
            if self._handler is None:
                raise RuntimeError("this process only submits jobs; no worker handler is set")
            self._handler(job_id)

        run_redux_job.__module__ = TASK_MODULE
        self._task = self.huey.task(name=TASK_NAME)(run_redux_job)

    def enqueue(self, job_id: str) -> None:
        self._task(job_id)

    def pending_count(self) -> int:
        return self.huey.pending_count()

    def consume(self, stop, *, poll_s: float = 0.01, max_poll_s: float = 0.2) -> None:
        """Run tasks until `stop` (a threading.Event) is set, with huey's own worker loop."""
        worker = Worker(self.huey, stop, default_delay=poll_s, max_delay=max_poll_s, backoff=1.5)
        worker.initialize()
        try:
            while not stop.is_set():
                worker.loop()
        finally:
            worker.shutdown()

    def close(self) -> None:
        self.huey.storage.close()
