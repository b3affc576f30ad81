"""Unloading a model gives its RAM back to the OS, not only to the C library's heap.

glibc raises its mmap threshold with every large free, so the weights of a model loaded after another one was
freed sit in the heap, and freeing them leaves the process's private memory where it was (measured in ComfyUI
0.33: 2.44 GiB kept after unloading a FLUX model, 0.61 GiB after malloc_trim). Run in a subprocess: the figure is
the process's RssAnon."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from packloader import ROOT

SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    import torch
    import packloader

    cache = packloader.submodule("pipelines.cache")

    def private_mib():
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024

    kept = []  # what the rest of the process allocates meanwhile and keeps (ComfyUI's own objects)

    class Weights:  # what the cache holds: a model's tensors
        def __init__(self):
            self.tensors = []
            for i in range(96):  # 96 x 8 MiB, each followed by a small block that stays
                self.tensors.append(torch.full((2 * 2**20,), float(i)))
                kept.append(torch.zeros(4096))

        def memory_bytes(self):
            return sum(t.numel() * t.element_size() for t in self.tensors)

    class CyclicWeights(Weights):  # in reference cycles, as diffusers' and ComfyUI's objects are, with a release
        def __init__(self):
            super().__init__()
            self.me = self

        def release(self):
            pass

    if {cyclic}:
        import gc
        gc.disable()  # only unload's own collection may free it, as when the next full collection is far off
    store = cache.ModelCache(max_bytes=2**40)
    torch.empty(6 * 2**20)  # a 24 MiB block freed at once raises glibc's mmap threshold to its size
    baseline = private_mib()
    store.get("model", CyclicWeights if {cyclic} else Weights)
    loaded = private_mib()
    store.unload("model")
    print(baseline, loaded, private_mib())
""")


@pytest.mark.parametrize("cyclic", [False, True], ids=["plain", "in-cycles-with-release"])
def test_unload_returns_the_models_ram_to_the_os(cyclic):
    """In cycles: unload() itself held the item (its bound `release`) while it collected, so the model stayed as
    garbage (1 GiB kept past POST /free in ComfyUI 0.33)."""
    done = subprocess.run([sys.executable, "-c", SCRIPT.format(tests=str(ROOT / "tests"), cyclic=cyclic)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    baseline, loaded, after = map(float, done.stdout.split()[-3:])
    assert loaded - baseline > 600  # the 768 MiB of weights were resident
    assert after - baseline < 100, f"private memory {baseline:.0f} -> {loaded:.0f} -> {after:.0f} MiB"


def test_unload_collects_even_while_another_thread_is_collecting():
    """gc.collect() returns at once, doing nothing, while another thread collects (ComfyUI's worker, where the
    pack's models are released): the cache's collection must still run, or a freed model stays as garbage."""
    import gc
    import threading
    import weakref

    from packloader import submodule

    cache = submodule("pipelines.cache")

    class Model:
        def __init__(self):
            self.me = self  # a reference cycle: only a collection frees it

        def memory_bytes(self):
            return 1

    other, proceed, started = None, threading.Event(), threading.Event()

    def hold(phase, _info):  # the other thread's collection stays in progress until `proceed`
        if phase == "start" and threading.get_ident() == other:
            started.set()
            proceed.wait(10)

    def other_collects():
        nonlocal other
        other = threading.get_ident()
        gc.collect()

    store = cache.ModelCache(max_bytes=2**40)
    model = weakref.ref(store.get("model", Model))
    was_enabled = gc.isenabled()
    gc.disable()
    gc.callbacks.append(hold)
    worker = threading.Thread(target=other_collects)
    try:
        worker.start()
        assert started.wait(10)
        threading.Timer(0.2, proceed.set).start()
        store.unload("model")
        assert model() is None, "the unloaded model was left as garbage"
    finally:
        proceed.set()
        worker.join(10)
        gc.callbacks.remove(hold)
        if was_enabled:
            gc.enable()
