"""Speed modes for a loaded FLUX pipeline: regional compile, fp8 compute, attention backend, First Block Cache.

Each mode uses diffusers' or torchao's own API. A mode the machine cannot run (fp8 without a GPU with fp8
tensor cores, a flash/sage backend whose package is missing) is skipped with one log line and listed in
`SpeedState.skipped`, never an exception: the model still runs, only slower.

What each mode costs and whether it changes the image (README "Speed and LoRA"):
- compile: `compile_repeated_blocks()` on the 19 + 38 transformer blocks, compiled at the first
  generate (warm-up, once per loaded model and process); the same image within float rounding. A new image
  size recompiles once (torch marks the sizes dynamic on the second size seen; a log line says so).
- fp8: torchao fp8 dynamic activation + weight quantization after fusing QKV; halves the transformer's
  memory; small changes to the image.
- attention (flash / fa3 / sage / best-attention): `set_attention_backend` with an installed package, never a
  `*_hub` backend (those download kernels). flash/fa3 are exact up to rounding; sage quantizes Q/K to int8.
- cache: First Block Cache at generate time (threshold 0 = off, no hooks at all); lossy.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import time
from dataclasses import dataclass, field

import torch

from . import lora, params

log = logging.getLogger(__name__)

# our mode name -> (diffusers backend name, the package that provides it)
ATTENTION_BACKENDS = {"fa3": ("_flash_3", "flash_attn_interface"), "flash": ("flash", "flash_attn"),
                      "sage": ("sage", "sageattention")}
BEST_ATTENTION_ORDER = ("fa3", "flash")  # exact backends only: sage (int8 Q/K) is never picked implicitly
FP8_MIN_CAPABILITY = (8, 9)  # Ada, Hopper, Blackwell have fp8 tensor cores


@dataclass
class SpeedState:
    """What was applied to one loaded pipeline; kept on the FluxModel, reported in generate's metadata."""

    requested: tuple[str, ...] = ()
    applied: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # mode -> why
    cache_threshold: float = 0.0
    sizes_seen: set = field(default_factory=set)
    warmup_s: float | None = None  # the first generate's time with compile (includes compiling)
    loras: lora.LoraState = field(default_factory=lora.LoraState)


def _skip(state: SpeedState, mode: str, why: str) -> None:
    log.warning("speed mode %s skipped: %s", mode, why)
    state.skipped[mode] = why


def fp8_unavailable_reason(device: torch.device) -> str | None:
    """None when torchao fp8 compute can run on `device`, else a one-line reason."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return f"fp8 compute needs a CUDA GPU with compute capability >= 8.9; this model runs on {device.type}"
    capability = torch.cuda.get_device_capability(device)
    if capability < FP8_MIN_CAPABILITY:
        return (f"fp8 compute needs compute capability >= 8.9 (Ada/Hopper/Blackwell); "
                f"{torch.cuda.get_device_name(device)} has {capability[0]}.{capability[1]}")
    if importlib.util.find_spec("torchao") is None:
        return "fp8 compute needs the torchao package (pip install torchao)"
    return None


def fuse_qkv(transformer) -> None:
    """One matmul for Q, K and V instead of three (diffusers' fusion); helps most under quantization."""
    transformer.fuse_qkv_projections()


def apply_fp8(transformer) -> None:
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, quantize_

    fuse_qkv(transformer)
    quantize_(transformer, Float8DynamicActivationFloat8WeightConfig())


def attention_unavailable_reason(mode: str, device: torch.device) -> str | None:
    backend, package = ATTENTION_BACKENDS[mode]
    if device.type != "cuda":
        return f"attention backend {backend} needs a CUDA GPU; this model runs on {device.type}"
    if importlib.util.find_spec(package) is None:
        return f"attention backend {backend} needs the {package} package installed"
    return None


def pick_attention(mode: str, device: torch.device) -> tuple[str | None, str | None]:
    """(our mode name or None, reason when none can be used). best-attention tries the exact backends in order."""
    candidates = BEST_ATTENTION_ORDER if mode == "best-attention" else (mode,)
    reasons = []
    for candidate in candidates:
        reason = attention_unavailable_reason(candidate, device)
        if reason is None:
            return candidate, None
        reasons.append(reason)
    return None, "; ".join(reasons) + " (native SDPA kept)"


def _apply_attention(pipe, mode: str, device: torch.device, state: SpeedState) -> None:
    chosen, reason = pick_attention(mode, device)
    if chosen is None:
        return _skip(state, mode, reason)
    try:
        pipe.transformer.set_attention_backend(ATTENTION_BACKENDS[chosen][0])
    except (RuntimeError, ValueError) as exc:  # e.g. a package too old for diffusers
        return _skip(state, mode, f"{chosen}: {exc}")
    state.applied.append(chosen)


def _apply_fp8(pipe, device: torch.device, weight_storage: str, state: SpeedState) -> None:
    reason = fp8_unavailable_reason(device)
    if reason is None and weight_storage == "fp8":
        reason = "weight_storage=fp8 already casts the weights layer by layer; choose one of the two"
    if reason is not None:
        return _skip(state, "fp8", reason)
    apply_fp8(pipe.transformer)
    state.applied.append("fp8")


def _apply_compile(pipe, offload: str, state: SpeedState) -> None:
    if offload == "sequential":
        return _skip(state, "compile", "sequential offload moves every layer in and out; compile needs them placed")
    # fullgraph=False: First Block Cache's head hook decides on the host whether to skip the other blocks,
    # a deliberate graph break; without the cache the blocks compile to one graph each all the same.
    pipe.transformer.compile_repeated_blocks(fullgraph=False)
    if pipe.vae.device.type == "cuda":
        pipe.vae.to(memory_format=torch.channels_last)  # faster convolutions on CUDA; no effect on the image
    state.applied.append("compile")


def apply(pipe, speed: str, device: torch.device, weight_storage: str = "default",
          offload: str = "none") -> SpeedState:
    """Apply the load-time modes of `speed` (params.parse_speed) to a placed pipeline; returns what happened.

    Order matters: quantize before compiling, so the compiled graphs see the fp8 layers.
    """
    modes = params.parse_speed(speed)
    state = SpeedState(requested=modes)
    if "fp8" in modes:
        _apply_fp8(pipe, device, weight_storage, state)
    for mode in modes:
        if mode in params.ATTENTION_MODES:
            _apply_attention(pipe, mode, device, state)
    if "compile" in modes:
        _apply_compile(pipe, offload, state)
    state.loras = lora.LoraState(compiled=compiled(state), quantized="fp8" in state.applied)
    if state.applied:
        log.info("speed: %s applied%s", "+".join(state.applied),
                 f" ({', '.join(state.skipped)} skipped)" if state.skipped else "")
    return state


def compiled(state: SpeedState | None) -> bool:
    return state is not None and "compile" in state.applied


def set_cache(transformer, state: SpeedState, threshold: float) -> None:
    """First Block Cache at `threshold` (0 removes the hooks entirely, so the plain path runs).

    Unchanged threshold: the hooks stay (re-registering them would make compiled blocks recompile);
    their state is reset by the pipeline at the end of every call and by `reset_cache` before one.
    """
    from diffusers import FirstBlockCacheConfig

    threshold = params.CACHE_THRESHOLD.validate(threshold)
    if threshold == state.cache_threshold:
        return
    if transformer.is_cache_enabled:
        transformer.disable_cache()
    if threshold > 0:
        transformer.enable_cache(FirstBlockCacheConfig(threshold=threshold))
    state.cache_threshold = threshold


def runtime_settings(loras, cache_threshold: float) -> tuple[tuple, float]:
    """Validated per-call settings of a FluxModelSpec: (LoRAs, cache threshold). Raises before any loading."""
    loras = tuple(loras)
    if not all(isinstance(spec, lora.LoraSpec) for spec in loras):
        raise params.ParameterError("loras", loras, "expected LoraSpec(path, strength) entries")
    for spec in loras:
        lora.check_path(spec.path)
    return loras, params.CACHE_THRESHOLD.validate(cache_threshold)


def with_runtime(model, loras: tuple, cache_threshold: float):
    """The cached base model, or a light view of it carrying this call's LoRAs and cache threshold.

    The view shares the pipeline, speed state and LoRA state with the base; `before_generate` makes the
    shared pipeline match the view's settings, so views with different LoRAs can be used in turn.
    """
    if model.speed_state is None:
        model.speed_state = SpeedState()
    if not loras and cache_threshold == 0:
        return model  # the base itself carries the plain settings (no LoRA, no cache)
    view = copy.copy(model)
    view.loras, view.cache_threshold = loras, cache_threshold
    return view


def before_generate(model, width: int, height: int) -> None:
    """Per-call settings: LoRAs, the cache threshold and a fresh cache state; a log line when compile meets a new
    size."""
    if model.speed_state is None:  # a FluxModel built by hand (benchmarks): plain path
        model.speed_state = SpeedState()
    state, pipe = model.speed_state, model.pipe
    lora.activate(pipe, model.loras, state.loras)
    set_cache(pipe.transformer, state, model.cache_threshold)
    if pipe.transformer.is_cache_enabled:
        pipe.maybe_free_model_hooks()  # resets the cache's residuals, e.g. after an aborted run
    if compiled(state) and (width, height) not in state.sizes_seen:
        if state.sizes_seen:
            log.info("compile: new size %dx%d; the transformer blocks recompile once (torch then treats sizes "
                     "as dynamic)", width, height)
        state.sizes_seen.add((width, height))


def report(model) -> dict:
    """Generate's metadata: speed modes in effect, cache threshold, LoRAs, compile warm-up."""
    state = model.speed_state or SpeedState()
    out = {"speed": "+".join(state.applied) or params.SPEED_NONE, "cache_threshold": state.cache_threshold}
    if state.skipped:
        out["speed_skipped"] = dict(state.skipped)
    if state.warmup_s is not None:
        out["compile_warmup_s"] = round(state.warmup_s, 3)
    if model.loras:
        out["loras"] = [[spec.path, spec.strength] for spec in model.loras]
    return out


class WarmupTimer:
    """Records the first compiled call's duration (compile time included) on the state."""

    def __init__(self, state: SpeedState | None):
        self.state = state
        self.active = compiled(state) and state.warmup_s is None

    def __enter__(self):
        self.started = time.perf_counter()
        return self

    def __exit__(self, exc_type, *_):
        if self.active and exc_type is None:
            self.state.warmup_s = time.perf_counter() - self.started
            log.info("compile warm-up (first generate, compiling included): %.1f s", self.state.warmup_s)
        return False
