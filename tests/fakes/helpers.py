"""Helpers for the remote tests: the pack's remote module, test keys, fast client settings, small images."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from packloader import submodule  # noqa: E402

remote = submodule("pipelines.remote")
params = submodule("pipelines.params")

FAL_KEY = "fal-key-0123456789abcdef"
WAVESPEED_KEY = "ws-key-0123456789abcdef"
CUSTOM_KEY = "custom-key-0123456789abcdef"


def solid(color, size=(32, 32)) -> Image.Image:
    return Image.new("RGB", size, color)


def settings(tmp_path, *, environ=None, endpoints=None, **overrides):
    """Client settings with millisecond polls and backoffs, keys from `environ` only (no key file)."""
    values = dict(
        poll_interval=0.01, deadline_s=10.0,
        timeouts=remote.Timeouts(connect=1.0, read=2.0),
        retry=remote.RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05, max_retry_after=2.0),
        environ=environ if environ is not None else {}, key_file=tmp_path / "absent_keys.json",
        endpoints=endpoints or {},
    )
    values.update(overrides)
    return remote.ClientSettings(**values)


def fal_settings(tmp_path, fake, **overrides):
    overrides.setdefault("environ", {"FAL_KEY": FAL_KEY})
    return settings(tmp_path, endpoints={"fal_queue": fake.queue_url, "fal_run": fake.run.url}, **overrides)


def wavespeed_settings(tmp_path, fake, **overrides):
    overrides.setdefault("environ", {"WAVESPEED_API_KEY": WAVESPEED_KEY})
    return settings(tmp_path, endpoints={"wavespeed": fake.url}, **overrides)


def custom_settings(tmp_path, **overrides):
    overrides.setdefault("environ", {"REDUX_CUSTOM_API_KEY": CUSTOM_KEY})
    return settings(tmp_path, **overrides)


def pixel(image: Image.Image) -> tuple[int, int, int]:
    return image.getpixel((0, 0))


def close(a, b, tolerance=4) -> bool:
    return bool(np.all(np.abs(np.array(a, dtype=int) - np.array(b, dtype=int)) <= tolerance))


def exception_texts(exc: BaseException) -> str:
    """str() of an exception and of everything chained to it."""
    texts, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        texts.append(f"{type(exc).__name__}: {exc} {exc.args!r}")
        exc = exc.__cause__ or exc.__context__
    return "\n".join(texts)


def abort_later(abort: threading.Event, seconds: float) -> list[float]:
    """Set `abort` from another thread after `seconds`; the list gets the moment it was set. Tests time the
    call from that moment: on a busy machine the timer thread itself may wake late."""
    aborted_at: list[float] = []

    def fire() -> None:
        aborted_at.append(time.monotonic())
        abort.set()

    threading.Timer(seconds, fire).start()
    return aborted_at
