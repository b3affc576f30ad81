"""Sync requests (fal's /sync, WaveSpeed's enable_sync_mode) waiting for their jobs without holding a thread.

A waiting request is a future on the event loop. One poll loop asks the store about every waited job at once
(one query per tick in a pool thread), so a hundred waiting requests cost one short store call per tick,
and status calls of other clients never queue behind them for a thread. Each key may have `per_key` of them
waiting; more are refused (429) before a job is made.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from contextlib import contextmanager
from typing import Iterator

from starlette.concurrency import run_in_threadpool

log = logging.getLogger("flux-redux.server")
POLL_S = 0.05


class SyncWaits:
    def __init__(self, store, per_key: int, poll_s: float = POLL_S):
        self.store, self.per_key, self.poll_s = store, per_key, poll_s
        self.counts: collections.Counter = collections.Counter()
        self.futures: dict[str, list[asyncio.Future]] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.poller: asyncio.Task | None = None
        self.closed = False

    @contextmanager
    def slot(self, owner: str) -> Iterator[bool]:
        """True while this key has a free sync slot (held until the block ends), else False. Called on the
        event loop only, so the count needs no lock."""
        if self.counts[owner] >= self.per_key:
            yield False
            return
        self.counts[owner] += 1
        try:
            yield True
        finally:
            self.counts[owner] -= 1
            if self.counts[owner] <= 0:
                del self.counts[owner]

    def waiting(self) -> int:
        return sum(len(futures) for futures in self.futures.values())

    async def wait(self, job_id: str, timeout_s: float) -> None:
        """Return once the job is finished or gone, timeout_s passed, or close() was called."""
        if self.closed:
            return
        self.loop = asyncio.get_running_loop()
        future = self.loop.create_future()
        self.futures.setdefault(job_id, []).append(future)
        if self.poller is None or self.poller.done():
            self.poller = self.loop.create_task(self._poll())
        try:
            await asyncio.wait_for(future, timeout_s)
        except asyncio.TimeoutError:
            pass
        finally:
            waiting = self.futures.get(job_id, [])
            if future in waiting:
                waiting.remove(future)
            if not waiting:
                self.futures.pop(job_id, None)

    async def _poll(self) -> None:
        while self.futures:
            await asyncio.sleep(self.poll_s)
            ids = list(self.futures)
            try:
                unfinished = await run_in_threadpool(self.store.unfinished_among, ids)
            except Exception:  # the store is down for a moment: keep the requests waiting, try next tick
                log.exception("could not look up %d job(s) with sync requests waiting", len(ids))
                continue
            for job_id in ids:
                if job_id not in unfinished:
                    self._wake(job_id)

    def _wake(self, job_id: str) -> None:
        for future in self.futures.get(job_id, []):
            if not future.done():
                future.set_result(None)

    def _wake_all(self) -> None:
        for job_id in list(self.futures):
            self._wake(job_id)

    def close(self) -> None:
        """The server is stopping: every waiting request returns now (from any thread); new ones do not wait."""
        self.closed = True
        if self.loop is not None:
            try:
                self.loop.call_soon_threadsafe(self._wake_all)
            except RuntimeError:
                pass  # the loop has already ended: nobody is waiting
