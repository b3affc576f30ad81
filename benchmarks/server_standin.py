"""A fast stand-in for the engine, to measure the server itself (queue, store, HTTP) without a model.

`serve --engine benchmarks.server_standin:StandIn` (or LocalServer(engines=[StandIn(...)])). Each run
sleeps `seconds` in small slices, checking for cancellation between them as the real engine does between
steps, and returns one flat image per requested output. With `record` set, every run's start and end is
appended to that file ("start <id-seed>" / "end <id-seed>"), so a test can count how often each job ran.
"""

from __future__ import annotations

import os
import time

from PIL import Image

SLICE_S = 0.005


class StandInAborted(RuntimeError):
    pass


class StandInOutput:
    def __init__(self, images, seed, inference_s):
        self.images, self.seed, self.inference_s = images, seed, inference_s


class StandIn:
    def __init__(self, config=None, device: str = "cpu", *, seconds: float | None = None, record: str | None = None):
        extra = getattr(config, "extra", None) or {}
        self.seconds = seconds if seconds is not None else float(extra.get("seconds", 0.01))
        self.record = record or extra.get("record")
        self.device = device

    def _note(self, line: str) -> None:
        if self.record:
            fd = os.open(self.record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, (line + "\n").encode())  # one write per line: whole lines even under kill -9
            finally:
                os.close(fd)

    def run(self, inputs, picture, should_abort, log):
        tag = f"{inputs.seed}"
        self._note(f"start {tag}")
        started = time.perf_counter()
        while time.perf_counter() - started < self.seconds:
            if should_abort():
                raise StandInAborted("cancelled")
            time.sleep(SLICE_S)
        log("stand-in done")
        color = picture.resize((1, 1)).getpixel((0, 0))
        images = [Image.new("RGB", (inputs.width, inputs.height), color) for _ in range(inputs.num_images)]
        self._note(f"end {tag}")
        return StandInOutput(images, inputs.seed if inputs.seed is not None else 0, time.perf_counter() - started)
