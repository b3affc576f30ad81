"""Process-wide model cache: a second run with the same files and options does not reload anything.

Heavy objects live only here; callers (nodes, CLI) hold light specs and ask the cache, so `unload()` really
frees memory as soon as no generation is running.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Hashable

import torch

log = logging.getLogger(__name__)


def file_identity(path: str | Path) -> tuple:
    """Resolved path + size + mtime: a replaced file gets a new cache key."""
    p = Path(path).resolve()
    if p.is_dir():
        stamps = tuple((c.name, c.stat().st_mtime_ns) for c in sorted(p.rglob("*.json")))
        return (str(p), stamps)
    st = p.stat()
    return (str(p), st.st_size, st.st_mtime_ns)


def default_budget() -> int:
    """Bytes of weights the cache may hold: FLUX_REDUX_CACHE_GB if set, else half the machine's RAM."""
    if os.environ.get("FLUX_REDUX_CACHE_GB"):
        return int(float(os.environ["FLUX_REDUX_CACHE_GB"]) * 2**30)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):  # not POSIX
        return 32 * 2**30


def item_bytes(item: Any) -> int:
    memory_bytes = getattr(item, "memory_bytes", None)
    return memory_bytes() if memory_bytes is not None else 0


class ModelCache:
    """Least recently used models first out once their weights together exceed `max_bytes`.

    The entry just loaded always stays, even alone over the budget (it is about to be used).
    """

    def __init__(self, max_bytes: int | None = None) -> None:
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.RLock()
        self.max_bytes = default_budget() if max_bytes is None else max_bytes
        self.loads = 0  # how many times a factory ran (tests and benchmarks read it)

    def get(self, key: Hashable, factory: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            value = factory()
            self.loads += 1
            self._items[key] = value
            self._evict_over_budget()
            return value

    @property
    def bytes(self) -> int:
        return sum(item_bytes(item) for item in self._items.values())

    def _evict_over_budget(self) -> None:
        while len(self._items) > 1 and self.bytes > self.max_bytes:
            oldest = next(iter(self._items))
            log.info("model cache over %.1f GB: unloading the least recently used model", self.max_bytes / 1e9)
            self.unload(oldest)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def unload(self, key: Hashable | None = None) -> int:
        """Drop one entry (or all) and return device memory to the driver. Returns entries dropped."""
        with self._lock:
            keys = list(self._items) if key is None else [key] if key in self._items else []
            for k in keys:
                _release_item(self._items.pop(k))
        if keys:
            collect_garbage()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return_freed_ram()
            log.info("unloaded %d cached model(s)", len(keys))
        return len(keys)


def _release_item(item) -> None:
    """Call the item's own release, if it has one. A function of its own so that no local of unload() (a bound
    `release` method holds its item) keeps the item alive during the collection that follows."""
    release = getattr(item, "release", None)
    if release is not None:
        release()


def collect_garbage(attempts: int = 20) -> None:
    """A full gc.collect() that really ran in this thread, retried until one did. Models sit in reference cycles,
    so only a full collection frees them, and gc.collect() returns at once, doing nothing, while another thread
    collects (ComfyUI's worker, whose collection is where ComfyUI drops the loader outputs, or an automatic one):
    ComfyUI 0.33 then kept 1-3 GiB of freed models past POST /free until some later full collection."""
    me, ran = threading.get_ident(), threading.Event()

    def seen(phase: str, info: dict) -> None:
        if phase == "stop" and info["generation"] == 2 and threading.get_ident() == me:
            ran.set()

    gc.callbacks.append(seen)
    try:
        for attempt in range(attempts):
            gc.collect()
            if ran.is_set():
                return
            time.sleep(0.01 * (attempt + 1))
    finally:
        gc.callbacks.remove(seen)


def return_freed_ram() -> None:
    """Give freed heap memory back to the OS. glibc keeps freed blocks of weights in its heap (its mmap threshold
    grows with every large free), so without this a process that unloaded a FLUX model kept ~2 GiB of it
    resident (measured in ComfyUI 0.33 on the CPU: 2.44 GiB private after the unload, 0.61 GiB after the trim).
    No-op where the C library has no malloc_trim (macOS, Windows, musl)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the process's own C library
    except (OSError, AttributeError, TypeError):
        return
    trim(0)


CACHE = ModelCache()
