"""Latency from "the job is COMPLETED on the server" to "run_remote_variation returned the images".

Runs the fake fal queue from tests/fakes on 127.0.0.1 with time-based completion (each job completes
COMPLETE_AFTER_S after its submit) and measures, per run, return time minus the fake's completion instant
(same process, same monotonic clock). The figure is the client's own cost: the wait for the next status
poll, the result GET, the image download and the PNG decode; network distance to a real provider adds to it.

    .venv/bin/python benchmarks/remote_latency.py [runs_per_interval]
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fakes.fal import FakeFal  # noqa: E402
from packloader import submodule  # noqa: E402
from PIL import Image  # noqa: E402

remote = submodule("pipelines.remote")

COMPLETE_AFTER_S = 0.3  # plus a random 0..poll_interval, so completion falls at a random poll phase
POLL_INTERVALS_S = (0.05, 0.1, 0.25, 0.5)  # 0.5 s is ClientSettings' default
KEY = "bench-key-0123456789"


def measure(fake: FakeFal, poll_interval: float, runs: int, image_size: str) -> tuple[list[float], list[float]]:
    """(completion -> return, COMPLETED seen -> return) in seconds, one pair per run."""
    settings = remote.ClientSettings(poll_interval=poll_interval, environ={"FAL_KEY": KEY},
                                     key_file=Path(tempfile.gettempdir()) / "no-such-redux-keys.json",
                                     endpoints={"fal_queue": fake.queue_url, "fal_run": fake.run.url})
    request = remote.RemoteRequest(image_size=image_size, output_format="png", seed=1)
    picture = Image.new("RGB", (64, 64), (90, 120, 200))
    latencies, fetches = [], []
    for _ in range(runs):
        fake.complete_after = COMPLETE_AFTER_S + random.uniform(0, poll_interval)
        (result,) = remote.run_remote_variation([picture], request, settings=settings)
        returned = time.monotonic()
        latencies.append(returned - fake.jobs[result.request_id].completed_at)
        fetches.append(result.timings["download_s"])  # result GET + image download + decode
    return latencies, fetches


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    fake = FakeFal(key=KEY, complete_after=COMPLETE_AFTER_S).start()
    try:
        measure(fake, 0.05, 2, "square_hd")  # warm-up: imports, connection pools, the fake's image cache
        print(f"fal queue fake on 127.0.0.1, job completes {COMPLETE_AFTER_S} s + U(0, poll interval) after "
              f"submit, 1 output image 1024x1024 PNG, {runs} runs per poll interval")
        print(f"{'poll interval':>14} {'median ms':>10} {'p90 ms':>8} {'min ms':>8} {'max ms':>8} "
              f"{'fetch median ms':>16}")
        for interval in POLL_INTERVALS_S:
            latencies, fetches = measure(fake, interval, runs, "square_hd")
            values = sorted(1000 * v for v in latencies)
            p90 = values[min(len(values) - 1, round(0.9 * (len(values) - 1)))]
            print(f"{interval:>13.2f}s {statistics.median(values):>10.1f} {p90:>8.1f} {values[0]:>8.1f} "
                  f"{values[-1]:>8.1f} {1000 * statistics.median(fetches):>16.1f}")
    finally:
        fake.stop()


if __name__ == "__main__":
    main()
