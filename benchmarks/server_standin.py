"""A fast stand-in for the engine, to measure the server itself (queue, store, HTTP) without a model.

`serve --engine benchmarks.server_standin:StandIn` (or LocalServer(engines=[StandIn(...)])). Each run
sleeps `seconds` in small slices, checking for cancellation between them as the real engine does between
steps, and returns one flat image per requested output in the colour of the input. With `record` set,
every run's start and end is appended to that file ("start SEED PID" / "end SEED PID"), so a test can count how
often each job ran. A job with seed `crash_seed` kills its worker process (os._exit), as a driver crash
would; one with `hang_seed` never returns and ignores cancellation, as a hung GPU call would. With `gate` (a
file path) every run waits until that file exists before its `seconds` start, so a test holds jobs running
for as long as it needs, with no fixed sleeps. In a worker process the settings come from
REDUX_STANDIN_SECONDS / _RECORD / _CRASH_SEED / _HANG_SEED / _GATE.
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
    def __init__(self, config=None, device: str = "cpu", *, seconds: float | None = None, record: str | None = None,
                 crash_seed: int | None = None, gate: str | None = None):
        env = os.environ
        self.seconds = seconds if seconds is not None else float(env.get("REDUX_STANDIN_SECONDS", "0.01"))
        self.record = record or env.get("REDUX_STANDIN_RECORD")
        crash, hang = env.get("REDUX_STANDIN_CRASH_SEED"), env.get("REDUX_STANDIN_HANG_SEED")
        self.crash_seed = crash_seed if crash_seed is not None else (int(crash) if crash else None)
        self.hang_seed = int(hang) if hang else None
        self.gate = gate or env.get("REDUX_STANDIN_GATE")
        self.device = device

    def _note(self, line: str) -> None:
        if self.record:
            fd = os.open(self.record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, (line + "\n").encode())  # one write per line: whole lines even under kill -9
            finally:
                os.close(fd)

    def run(self, inputs, picture, should_abort, log):
        gen = inputs.generation
        tag = f"{gen.seed} {os.getpid()}"
        self._note(f"start {tag}")
        if self.crash_seed is not None and gen.seed == self.crash_seed:
            os._exit(3)
        while self.hang_seed is not None and gen.seed == self.hang_seed:
            time.sleep(1)
        while self.gate and not os.path.exists(self.gate):
            if should_abort():
                raise StandInAborted("cancelled")
            time.sleep(SLICE_S * 4)
        started = time.perf_counter()
        while time.perf_counter() - started < self.seconds:
            if should_abort():
                raise StandInAborted("cancelled")
            time.sleep(SLICE_S)
        log("stand-in done")
        color = picture.resize((1, 1)).getpixel((0, 0))
        images = [Image.new("RGB", (gen.width, gen.height), color) for _ in range(gen.num_images)]
        self._note(f"end {tag}")
        return StandInOutput(images, gen.seed if gen.seed is not None else 0, time.perf_counter() - started)
