"""Where jobs and output files live between submit and expiry: SQLite (one box, nothing to install) or Redis
(several GPU hosts; store_redis.py). Both keep the record as JSON plus the few indexed fields the queries
need, and apply every state change atomically (`update`).

A job's inputs (a data URI can be 10 MB) are written once, apart from the record: the record that every status
read parses and every state change rewrites stays a few KB whatever the input size, and the inputs are dropped
as soon as the job is finished. Records come back with `inputs` None; a worker reads them with `inputs()`.
"""

from __future__ import annotations

import errno
import json
import sqlite3
import sys
import threading
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from .config import is_redis
from .jobs import DONE, QUEUED, RUNNING, Job

Change = Callable[[Job], "Job | None"]


class JobStore(ABC):
    """Jobs and files. `update` runs `change` on the current record and saves what it returns (None: no
    change), so concurrent API threads and workers never overwrite each other."""

    @abstractmethod
    def add(self, job: Job, active_limit: int | None = None) -> bool:
        """Save a new job (giving it its queue order); False if its owner already has active_limit active jobs."""

    @abstractmethod
    def get(self, job_id: str) -> Job | None:
        """The job (its `inputs` left out: see `inputs`), or None when unknown or expired."""

    @abstractmethod
    def inputs(self, job_id: str) -> dict | None:
        """The inputs the job was submitted with, until it is finished; None after that or when unknown."""

    @abstractmethod
    def update(self, job_id: str, change: Change) -> Job | None: ...

    @abstractmethod
    def position(self, job: Job) -> int:
        """How many unfinished (queued or running) jobs were submitted before this one. Workers take jobs in
        submit order and a re-queued job keeps its order, so this number never goes up."""

    def unfinished_among(self, job_ids: list[str]) -> set[str]:
        """Those of job_ids that exist and are not finished (one query for all the sync requests waiting)."""
        return {job_id for job_id in job_ids if (job := self.get(job_id)) is not None and not job.done}

    @abstractmethod
    def active_count(self, owner: str) -> int: ...

    @abstractmethod
    def queued_ids(self) -> list[str]: ...

    @abstractmethod
    def running(self) -> list[Job]: ...

    @abstractmethod
    def overdue_starts(self, now: float) -> list[str]:
        """Queued jobs whose start_by (fal's start_timeout) has passed."""

    @abstractmethod
    def due_webhooks(self, now: float, limit: int = 50) -> list[str]:
        """Finished jobs with a webhook to POST whose next try is due."""

    @abstractmethod
    def claim_webhook(self, job_id: str, now: float, lease_s: float) -> int | None:
        """Take the job's next webhook try: its number (from 1), no other sender taking it for lease_s; None
        when another sender took it or it is not due."""

    @abstractmethod
    def settle_webhook(self, job_id: str, retry_at: float | None = None) -> None:
        """After a try: the next one at retry_at, or (None) none: delivered or given up."""

    @abstractmethod
    def put_file(self, token: str, data: bytes, content_type: str, expires_at: float) -> None: ...

    @abstractmethod
    def get_file(self, token: str) -> tuple[bytes, str, float] | None:
        """(data, content type, expiry time) of a file not yet expired."""

    @abstractmethod
    def purge_expired(self) -> int:
        """Drop finished jobs and files past their expiry; returns how many jobs went."""

    def close(self) -> None:
        pass


SCHEMA = """
create table if not exists jobs (
    seq integer primary key autoincrement, id text unique not null, owner text not null, state text not null,
    worker text, lease_until real, expires_at real, doc text not null);
create index if not exists jobs_state_seq on jobs (state, seq);
create index if not exists jobs_owner_state on jobs (owner, state);
create table if not exists inputs (job_id text primary key, data text not null);
create table if not exists webhooks (job_id text primary key, attempts integer not null, next_try real not null);
create table if not exists files (
    token text primary key, job_id text, content_type text not null, data blob not null, expires_at real not null);
create index if not exists files_expiry on files (expires_at);
"""


class SqliteJobStore(JobStore):
    """One SQLite file in WAL mode shared by the API process and the local workers; a committed submit
    survives kill -9 of either."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._write_lock = threading.Lock()  # this process's writers queue here, not in SQLite's busy-wait sleeps
        db = self._connection()
        db.executescript(SCHEMA)
        if "start_by" not in {row[1] for row in db.execute("pragma table_info(jobs)")}:
            db.execute("alter table jobs add column start_by real")  # a state dir from before start_timeout

    def _connection(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            db.execute("pragma journal_mode=wal")
            db.execute("pragma synchronous=normal")  # WAL + normal: durable across process crashes
            self._local.db = db
        return db

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._connection()
        with self._write_lock:
            db.execute("begin immediate")
            try:
                yield db
                db.execute("commit")
            except BaseException:
                if db.in_transaction:  # SQLite itself rolls back on some errors (SQLITE_FULL): keep the first error
                    db.execute("rollback")
                raise

    def add(self, job: Job, active_limit: int | None = None) -> bool:
        with self._transaction() as db:
            if active_limit is not None and job.state != DONE:
                (count,) = db.execute("select count(*) from jobs where owner = ? and state != ?",
                                      (job.owner, DONE)).fetchone()
                if count >= active_limit:
                    return False
            cursor = db.execute("insert into jobs (id, owner, state, doc) values (?, ?, ?, '{}')",
                                (job.id, job.owner, job.state))
            job.seq = cursor.lastrowid
            if job.inputs is not None and job.state != DONE:
                db.execute("insert into inputs (job_id, data) values (?, ?)", (job.id, json.dumps(job.inputs)))
            self._save(db, job)
        return True

    def _save(self, db: sqlite3.Connection, job: Job) -> None:
        start_by = job.start_by if job.state == QUEUED else None
        db.execute("update jobs set state = ?, worker = ?, lease_until = ?, expires_at = ?, start_by = ?, doc = ? "
                   "where id = ?", (job.state, job.worker, job.lease_until, job.expires_at, start_by,
                                    record_json(job), job.id))
        if job.state == DONE:
            db.execute("delete from inputs where job_id = ?", (job.id,))
            if job.webhook:
                db.execute("insert or ignore into webhooks (job_id, attempts, next_try) values (?, 0, 0)", (job.id,))

    def get(self, job_id: str) -> Job | None:
        row = self._connection().execute("select doc from jobs where id = ?", (job_id,)).fetchone()
        job = Job.from_doc(json.loads(row[0])) if row else None
        return None if job is None or _expired(job) else job

    def inputs(self, job_id: str) -> dict | None:
        row = self._connection().execute("select data from inputs where job_id = ?", (job_id,)).fetchone()
        if row is not None:
            return json.loads(row[0])
        job = self.get(job_id)  # a record written before inputs were kept apart carries them itself
        return job.inputs if job is not None and not job.done else None

    def update(self, job_id: str, change: Change) -> Job | None:
        with self._transaction() as db:
            row = db.execute("select doc from jobs where id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            job = change(Job.from_doc(json.loads(row[0])))
            if job is not None:
                self._save(db, job)
            return job

    def position(self, job: Job) -> int:
        (ahead,) = self._connection().execute("select count(*) from jobs where state in (?, ?) and seq < ?",
                                              (QUEUED, RUNNING, job.seq)).fetchone()
        return ahead

    def unfinished_among(self, job_ids: list[str]) -> set[str]:
        found, db = set(), self._connection()
        for start in range(0, len(job_ids), 500):  # SQLite caps the number of ? in one statement
            chunk = job_ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            rows = db.execute(f"select id from jobs where id in ({marks}) and state != ?", (*chunk, DONE))
            found.update(job_id for (job_id,) in rows)
        return found

    def active_count(self, owner: str) -> int:
        (count,) = self._connection().execute("select count(*) from jobs where owner = ? and state != ?",
                                              (owner, DONE)).fetchone()
        return count

    def queued_ids(self) -> list[str]:
        rows = self._connection().execute("select id from jobs where state = ? order by seq", (QUEUED,))
        return [job_id for (job_id,) in rows]

    def running(self) -> list[Job]:
        rows = self._connection().execute("select doc from jobs where state = ?", (RUNNING,))
        return [Job.from_doc(json.loads(doc)) for (doc,) in rows]

    def overdue_starts(self, now: float) -> list[str]:
        rows = self._connection().execute("select id from jobs where state = ? and start_by < ?", (QUEUED, now))
        return [job_id for (job_id,) in rows]

    def due_webhooks(self, now: float, limit: int = 50) -> list[str]:
        rows = self._connection().execute("select job_id from webhooks where next_try <= ? order by next_try "
                                          "limit ?", (now, limit))
        return [job_id for (job_id,) in rows]

    def claim_webhook(self, job_id: str, now: float, lease_s: float) -> int | None:
        with self._transaction() as db:
            taken = db.execute("update webhooks set attempts = attempts + 1, next_try = ? where job_id = ? and "
                               "next_try <= ?", (now + lease_s, job_id, now)).rowcount
            if not taken:
                return None
            return db.execute("select attempts from webhooks where job_id = ?", (job_id,)).fetchone()[0]

    def settle_webhook(self, job_id: str, retry_at: float | None = None) -> None:
        with self._transaction() as db:
            if retry_at is None:
                db.execute("delete from webhooks where job_id = ?", (job_id,))
            else:
                db.execute("update webhooks set next_try = ? where job_id = ?", (retry_at, job_id))

    def put_file(self, token: str, data: bytes, content_type: str, expires_at: float) -> None:
        with self._transaction() as db:
            db.execute("insert into files (token, content_type, data, expires_at) values (?, ?, ?, ?)",
                       (token, content_type, data, expires_at))

    def get_file(self, token: str) -> tuple[bytes, str, float] | None:
        row = self._connection().execute("select data, content_type, expires_at from files where token = ? and "
                                         "expires_at > ?", (token, time.time())).fetchone()
        return (bytes(row[0]), row[1], row[2]) if row else None

    def purge_expired(self) -> int:
        now = time.time()
        with self._transaction() as db:
            gone = db.execute("delete from jobs where state = ? and expires_at < ?", (DONE, now)).rowcount
            if gone:  # inputs go when their job finishes; these are of jobs deleted some other way
                db.execute("delete from inputs where job_id not in (select id from jobs)")
                db.execute("delete from webhooks where job_id not in (select id from jobs)")
            db.execute("delete from files where expires_at < ?", (now,))
        return gone

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


def record_json(job: Job) -> str:
    """The record as stored: everything but the inputs, which are kept once, apart."""
    doc = job.to_doc()
    doc["inputs"] = None
    return json.dumps(doc)


def _expired(job: Job) -> bool:
    return job.expires_at is not None and job.expires_at < time.time()


FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
STORAGE_FULL = (507, "storage_full", "the server's job storage is full, so the request was not accepted; retry "
                                     "later (the operator must free disk space in serve's --state-dir)")


def storage_failure(exc: BaseException) -> tuple[int, str, str] | None:
    """(HTTP status, error type, one-line message) when `exc` says the job store cannot take a write: 507 when
    it is out of space (SQLite's SQLITE_FULL, ENOSPC, Redis over maxmemory), 503 when it is unusable for now
    (locked, I/O error, Redis unreachable). None for anything else."""
    if isinstance(exc, sqlite3.Error):
        if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(exc):
            return STORAGE_FULL
        return 503, "storage_unavailable", f"the server's job storage cannot be used right now ({_first_line(exc)}); " \
                                           "retry later"
    if isinstance(exc, OSError) and exc.errno in FULL_ERRNOS:
        return STORAGE_FULL
    redis = sys.modules.get("redis")  # imported only by the Redis store
    if redis is not None and isinstance(exc, redis.RedisError):
        if "OOM" in str(exc):
            return STORAGE_FULL[0], STORAGE_FULL[1], "the server's job storage (Redis) is full, so the request " \
                                                     "was not accepted; retry later"
        return 503, "storage_unavailable", "the server's job storage (Redis) cannot be reached right now; retry later"
    return None


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]


def open_store(queue_url: str | None, state_dir: Path, namespace: str) -> JobStore:
    """SQLite under state_dir unless queue_url is a redis:// URL."""
    if is_redis(queue_url):
        from .store_redis import RedisJobStore
        return RedisJobStore(queue_url, namespace)
    return SqliteJobStore(Path(state_dir) / "jobs.sqlite3")
