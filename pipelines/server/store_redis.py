"""The job store on Redis, for several GPU hosts sharing one queue (huey's Redis backend carries the tasks).

Keys under `<namespace>:`: job:<id> (JSON record; expires with the result), input:<id> (the inputs, written
once, deleted when the job finishes), seq (counter), queued (sorted by queue order), running (sorted by lease
end), unfinished (queued + running, sorted by queue order), active:<owner> (set of unfinished ids), starts (queued ids sorted by start_by), webhooks (finished ids
sorted by next webhook try) with webhook-attempts (hash) and webhook-lock:<id>, file:<token> (hash with data and
type; expires). Changes use WATCH/MULTI, so two hosts never apply conflicting updates.
"""

from __future__ import annotations

import json
import math
import time

import redis

from .jobs import DONE, QUEUED, RUNNING, Job
from .store import Change, JobStore, _expired, record_json


class RedisJobStore(JobStore):
    def __init__(self, url: str, namespace: str):
        self.db = redis.Redis.from_url(url)
        self.ns = namespace

    def _key(self, *parts: str) -> str:
        return ":".join((self.ns, *parts))

    def _write(self, pipe, job: Job) -> None:
        """Queue the record and its index entries on a MULTI pipeline."""
        key = self._key("job", job.id)
        pipe.set(key, record_json(job))
        active = self._key("active", job.owner)
        if job.state == DONE:
            pipe.zrem(self._key("unfinished"), job.id)
        else:
            pipe.zadd(self._key("unfinished"), {job.id: job.seq})
        if job.state == QUEUED and job.start_by is not None:
            pipe.zadd(self._key("starts"), {job.id: job.start_by})
        else:
            pipe.zrem(self._key("starts"), job.id)
        if job.state == QUEUED:
            pipe.zadd(self._key("queued"), {job.id: job.seq})
            pipe.zrem(self._key("running"), job.id)
            pipe.sadd(active, job.id)
        elif job.state == RUNNING:
            pipe.zrem(self._key("queued"), job.id)
            pipe.zadd(self._key("running"), {job.id: job.lease_until or 0})
            pipe.sadd(active, job.id)
        else:
            pipe.zrem(self._key("queued"), job.id)
            pipe.zrem(self._key("running"), job.id)
            pipe.srem(active, job.id)
            pipe.delete(self._key("input", job.id))
            pipe.expireat(key, math.ceil(job.expires_at or time.time()))
            if job.webhook:
                pipe.zadd(self._key("webhooks"), {job.id: 0}, nx=True)

    def add(self, job: Job, active_limit: int | None = None) -> bool:
        active = self._key("active", job.owner)
        if active_limit is not None and job.state != DONE:
            self.db.sadd(active, job.id)  # reserve a slot first, so two hosts cannot both take the last one
            if self.db.scard(active) > active_limit:
                self.db.srem(active, job.id)
                return False
        if job.inputs is not None and job.state != DONE:
            self.db.set(self._key("input", job.id), json.dumps(job.inputs))
        seq = self._key("seq")
        with self.db.pipeline(transaction=True) as pipe:
            while True:  # the number and the record in one transaction: once job N is seen, all before it are
                try:     # (queue_position never counts a job that appears later with a smaller number)
                    pipe.watch(seq)
                    job.seq = int(pipe.get(seq) or 0) + 1
                    pipe.multi()
                    pipe.set(seq, job.seq)
                    self._write(pipe, job)
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue  # another submit took that number: take the next

    def get(self, job_id: str) -> Job | None:
        raw = self.db.get(self._key("job", job_id))
        job = Job.from_doc(json.loads(raw)) if raw else None
        return None if job is None or _expired(job) else job

    def inputs(self, job_id: str) -> dict | None:
        raw = self.db.get(self._key("input", job_id))
        if raw is not None:
            return json.loads(raw)
        job = self.get(job_id)  # a record written before inputs were kept apart carries them itself
        return job.inputs if job is not None and not job.done else None

    def update(self, job_id: str, change: Change) -> Job | None:
        key = self._key("job", job_id)
        with self.db.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    if raw is None:
                        return None
                    job = change(Job.from_doc(json.loads(raw)))
                    if job is None:
                        pipe.unwatch()
                        return None
                    pipe.multi()
                    self._write(pipe, job)
                    pipe.execute()
                    return job
                except redis.WatchError:
                    continue  # someone changed it meanwhile: read again and re-apply

    def position(self, job: Job) -> int:
        return int(self.db.zcount(self._key("unfinished"), "-inf", f"({job.seq}"))

    def active_count(self, owner: str) -> int:
        return int(self.db.scard(self._key("active", owner)))

    def queued_ids(self) -> list[str]:
        return [item.decode() for item in self.db.zrange(self._key("queued"), 0, -1)]

    def running(self) -> list[Job]:
        ids = [item.decode() for item in self.db.zrange(self._key("running"), 0, -1)]
        return [job for job in map(self.get, ids) if job is not None]

    def overdue_starts(self, now: float) -> list[str]:
        return [item.decode() for item in self.db.zrangebyscore(self._key("starts"), "-inf", now)]

    def due_webhooks(self, now: float, limit: int = 50) -> list[str]:
        return [item.decode() for item in self.db.zrangebyscore(self._key("webhooks"), "-inf", now, start=0,
                                                                num=limit)]

    def claim_webhook(self, job_id: str, now: float, lease_s: float) -> int | None:
        lock = self._key("webhook-lock", job_id)  # one sender per try across API hosts
        if not self.db.set(lock, 1, nx=True, px=max(1, int(lease_s * 1000))):
            return None
        score = self.db.zscore(self._key("webhooks"), job_id)
        if score is None or score > now:
            self.db.delete(lock)
            return None
        self.db.zadd(self._key("webhooks"), {job_id: now + lease_s}, xx=True)
        return int(self.db.hincrby(self._key("webhook-attempts"), job_id, 1))

    def settle_webhook(self, job_id: str, retry_at: float | None = None) -> None:
        with self.db.pipeline(transaction=True) as pipe:
            if retry_at is None:
                pipe.zrem(self._key("webhooks"), job_id)
                pipe.hdel(self._key("webhook-attempts"), job_id)
            else:
                pipe.zadd(self._key("webhooks"), {job_id: retry_at}, xx=True)
            pipe.delete(self._key("webhook-lock", job_id))
            pipe.execute()

    def put_file(self, token: str, data: bytes, content_type: str, expires_at: float) -> None:
        key = self._key("file", token)
        with self.db.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"data": data, "type": content_type})
            pipe.expireat(key, math.ceil(expires_at))
            pipe.execute()

    def get_file(self, token: str) -> tuple[bytes, str] | None:
        key = self._key("file", token)
        with self.db.pipeline(transaction=False) as pipe:
            pipe.hmget(key, ["data", "type"])
            pipe.pttl(key)
            (data, kind), left_ms = pipe.execute()
        return (data, kind.decode(), time.time() + max(0, left_ms) / 1000) if data is not None else None

    def purge_expired(self) -> int:
        return 0  # Redis drops expired jobs and files by itself (EXPIREAT)

    def close(self) -> None:
        self.db.close()
