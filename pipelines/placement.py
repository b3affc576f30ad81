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
    (FLUX.1: 19 double + 38 single), the unit group offload moves. matrix_params: parameters of the 2-D weights
    (the Linear layers fp8 storage applies to; None: count every parameter); fp8_params: those the file already
    stores in fp8 (kept so by the default storage).
    """

    params: int
    file_bytes: int
    quantized: bool = False
    blocks: int = 57
    matrix_params: int | None = None
    fp8_params: int = 0

    def memory_bytes(self, bytes_per_param: int, storage: str = "default") -> int:
        """Bytes once loaded with `storage` (params.WEIGHT_STORAGE_CHOICES) in a `bytes_per_param` compute dtype."""
        if self.quantized:
            return self.file_bytes
        one_byte = {"fp8": self.params if self.matrix_params is None else self.matrix_params,
                    "default": self.fp8_params}.get(storage, 0)
        return one_byte + (self.params - one_byte) * bytes_per_param


@dataclass(frozen=True)
class Placement:
    offload: str  # none | model | group | sequential (params.OFFLOAD_CHOICES without auto)
    weight_storage: str  # params.WEIGHT_STORAGE_CHOICES
    reason: str

    def describe(self) -> str:
        storage = ", fp8 weights" if self.weight_storage == "fp8" else ""
        return f"{self.offload}{storage}: {self.reason}"


def _gb(n: int) -> str:
    return f"{n / GB:.1f} GB"


def decide(transformer: Footprint, other_bytes: int, free_vram: int | None, bytes_per_param: int = 2,
           weight_storage: str = "default") -> Placement:
    """Pick a placement for a transformer of `transformer` size plus `other_bytes` (VAE) given `free_vram`
    bytes (None: no CUDA device), on what the weights cost once loaded: an fp8 file kept in fp8 counts one byte
    a weight. weight_storage is the user's choice; only `default` lets auto store the weights in fp8."""
    if free_vram is None:
        return Placement("none", weight_storage, "no CUDA device, the model runs where it is loaded")
    if transformer.quantized:
        weight_storage = "default"  # GGUF blocks keep their own format: fp8 storage does not apply
    free = _gb(free_vram)
    kept = transformer.memory_bytes(bytes_per_param, weight_storage)
    if kept + other_bytes + ACTIVATION_BYTES <= free_vram:
        why = "asked for fp8 weights" if weight_storage == "fp8" else "transformer"
        return Placement("none", weight_storage, f"{why} {_gb(kept)} + VAE + activations fit in {free} free")
    fp8 = transformer.memory_bytes(bytes_per_param, "fp8")
    if weight_storage == "default" and not transformer.quantized and fp8 + other_bytes + ACTIVATION_BYTES <= free_vram:
        return Placement("none", "fp8", f"{_gb(kept)} does not fit, fp8 weights ({_gb(fp8)}) + VAE + activations "
                                        f"fit in {free} free")
    group = kept * PREFETCHED_BLOCKS // max(transformer.blocks, 1) + other_bytes + ACTIVATION_BYTES
    if group <= free_vram:
        return Placement("group", weight_storage, f"{_gb(kept)} of weights do not fit in {free} free; "
                                                  f"streaming blocks needs about {_gb(group)}")
    return Placement("sequential", weight_storage, f"even streamed blocks ({_gb(group)}) exceed {free} free; "
                                                   "layer by layer is slowest but needs least")
