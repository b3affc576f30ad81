"""`auto` placement: how to fit FLUX on the card, decided from file headers and free VRAM before loading.

A pure function (no torch, no files), so every card size is unit-tested. The order follows what costs least:
everything on the GPU, then fp8 weight storage (half the transformer's bytes, small drift), then group
offload with CUDA streams (blocks copied in ahead of use: all weights stay in RAM, about two blocks on the
GPU), then sequential offload (layer by layer: least VRAM, slowest).
"""

from __future__ import annotations

from dataclasses import dataclass

GB = 10**9
ACTIVATION_BYTES = 3 * 2**30  # denoising activations + VAE decode at 1024x1024 in bf16, rounded up
PREFETCHED_BLOCKS = 2  # group offload with streams: the block computing and the one being copied in


@dataclass(frozen=True)
class Footprint:
    """A transformer's weights as its file header describes them.

    params: parameter count; file_bytes: bytes of the tensors on disk; quantized: the weights stay in their
    file format in memory (GGUF), so file_bytes is also their size in memory; blocks: transformer blocks
    (FLUX.1: 19 double + 38 single), the unit group offload moves.
    """

    params: int
    file_bytes: int
    quantized: bool = False
    blocks: int = 57

    def memory_bytes(self, bytes_per_param: int) -> int:
        return self.file_bytes if self.quantized else self.params * bytes_per_param


@dataclass(frozen=True)
class Placement:
    offload: str  # none | model | group | sequential (params.OFFLOAD_CHOICES without auto)
    weight_storage: str  # default | fp8
    reason: str

    def describe(self) -> str:
        storage = ", fp8 weights" if self.weight_storage == "fp8" else ""
        return f"{self.offload}{storage}: {self.reason}"


def _gb(n: int) -> str:
    return f"{n / GB:.1f} GB"


def decide(transformer: Footprint, other_bytes: int, free_vram: int | None, bytes_per_param: int = 2,
           weight_storage: str = "default") -> Placement:
    """Pick a placement for a transformer of `transformer` size plus `other_bytes` (VAE) given `free_vram`
    bytes (None: no CUDA device). weight_storage=fp8 means the user already asked for fp8 storage."""
    if free_vram is None:
        return Placement("none", weight_storage, "no CUDA device, the model runs where it is loaded")
    free = _gb(free_vram)
    full = transformer.memory_bytes(bytes_per_param)
    fp8_ok = not transformer.quantized  # GGUF weights keep their own format: fp8 storage does not apply
    if (weight_storage == "default" or not fp8_ok) and full + other_bytes + ACTIVATION_BYTES <= free_vram:
        return Placement("none", "default", f"transformer {_gb(full)} + VAE + activations fit in {free} free")
    fp8 = transformer.params if fp8_ok else full
    if fp8_ok and fp8 + other_bytes + ACTIVATION_BYTES <= free_vram:
        why = "asked for" if weight_storage == "fp8" else f"{_gb(full)} does not fit, fp8 weights"
        return Placement("none", "fp8", f"{why} ({_gb(fp8)}) + VAE + activations fit in {free} free")
    stored = fp8 if weight_storage == "fp8" else full
    group = stored * PREFETCHED_BLOCKS // max(transformer.blocks, 1) + other_bytes + ACTIVATION_BYTES
    if group <= free_vram:
        return Placement("group", weight_storage, f"{_gb(stored)} of weights do not fit in {free} free; "
                                                  f"streaming blocks needs about {_gb(group)}")
    return Placement("sequential", weight_storage, f"even streamed blocks ({_gb(group)}) exceed {free} free; "
                                                   "layer by layer is slowest but needs least")
