"""LoRAs on a loaded FLUX model, applied at generate time so they never reload the base model.

Design: the base model is cached by its files and load options only. A FluxModelSpec carries the wanted
LoRAs (`loras`, a tuple of LoraSpec) outside its cache key; `load_flux_model` returns the cached base with
those LoRAs attached as a light per-call view, and `generate` calls `activate` first, which makes the
shared pipeline's adapters match exactly: new files are loaded, strengths set, unwanted adapters deleted,
and with no LoRA left the PEFT layers are removed (`unload_lora_weights`), so the output is the base
model's again, bit for bit. Changing a LoRA or its strength costs a LoRA load, never a model load.

Files go through diffusers' own converters (`lora_state_dict`: kohya/sd-scripts, ComfyUI `diffusion_model.`,
XLabs, diffusers/PEFT keys). Only .safetensors files are read; every failure names the file in one line.

With `compile`, one LoRA at a time is hot-swapped into a fixed adapter slot (diffusers' `enable_lora_hotswap`,
ranks padded to HOTSWAP_RANK) with its strength folded into its up matrices, because a changed adapter
weight is a new Python float to torch.compile and would recompile; so swapping files or strengths, or going
to no LoRA (the slot at strength 0 adds exactly zero), does not recompile. Stacking several LoRAs, a rank
above HOTSWAP_RANK, or a LoRA touching other layers than the first one falls back to a normal load, after
which the compiled blocks recompile once (logged).
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from . import files, params
from .cache import file_identity
from .weights import WeightsError, refuse_pickle

log = logging.getLogger(__name__)

HOTSWAP_RANK = 128  # diffusers' default target rank; LoRAs up to this rank hot-swap under compile
HOTSWAP_SLOT = "hotswap"  # the adapter name LoRAs are swapped into under compile


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA file and its strength (0 = off)."""

    path: str
    strength: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "strength", params.LORA_STRENGTH.validate(self.strength))

    def adapter_name(self) -> str:
        """Changes when the file is replaced (path, size, mtime), so a new file is loaded again."""
        return "lora_" + hashlib.sha1(repr(file_identity(self.path)).encode()).hexdigest()[:12]


def parse_lora_arg(text: str) -> LoraSpec:
    """`FILE` or `FILE:STRENGTH` (the CLI's --lora). The strength is after the last colon, if it is a number."""
    path, sep, strength = text.rpartition(":")
    if sep:
        try:
            value = float(strength)
        except ValueError:
            if Path(text).exists():  # a colon inside the path and no strength
                return LoraSpec(text)
            raise params.ParameterError("lora", text, "expected FILE or FILE:STRENGTH with a number in "
                                        f"{_strength_range()}, e.g. style.safetensors:0.8") from None
        try:
            return LoraSpec(path, value)
        except params.ParameterError:  # 11, -11, inf, nan: say the range, not "not a number"
            raise params.ParameterError("lora", text, f"the strength {strength} is outside {_strength_range()} "
                                        "(0 = off, 1 = as trained, negative inverts it)") from None
    return LoraSpec(text)


def _strength_range() -> str:
    spec = params.LORA_STRENGTH
    return f"{spec.minimum:g} to {spec.maximum:g}"


def _one_line(exc: Exception, limit: int = 200) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_path(path: str | Path) -> Path:
    """A LoRA path that exists and is not a pickle (checked before any model is loaded)."""
    path = Path(path)
    refuse_pickle(path)
    problem = files.not_regular(path)
    if problem == "does not exist":
        raise WeightsError(f"{path}: LoRA file not found (expected a .safetensors LoRA for FLUX.1).")
    if problem:
        raise WeightsError(f"{path}: {problem}; expected a .safetensors LoRA file for FLUX.1.")
    return path


def read_lora(path: str | Path) -> dict[str, torch.Tensor]:
    """The LoRA file's tensors as stored, after checking diffusers can convert them to FLUX transformer LoRA
    keys; a one-line WeightsError naming the file otherwise. (Loading converts again, alphas included.)"""
    from diffusers import FluxPipeline
    from safetensors.torch import load_file

    path = check_path(path)
    try:
        files.require_regular(path)  # safetensors opens it itself: never a FIFO swapped in since the check
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises several types for bad or cut-off files
        raise WeightsError(f"{path}: not a readable safetensors LoRA ({_one_line(exc)}); the download may be "
                           "truncated.") from exc
    try:
        converted = FluxPipeline.lora_state_dict(dict(tensors))  # a copy: the converters pop keys
    except Exception as exc:
        raise WeightsError(f"{path}: not a FLUX.1 LoRA diffusers can read ({_one_line(exc)}); "
                           "is it a LoRA for another model?") from exc
    converted = converted[0] if isinstance(converted, tuple) else converted
    if not any(k.startswith("transformer.") and ".lora_" in k for k in converted):
        first = next(iter(tensors), "no keys")
        raise WeightsError(f"{path}: no FLUX.1 transformer LoRA weights in it (first key: {first}); is it a "
                           "LoRA for another model, or not a LoRA?")
    return tensors


UP_WEIGHT = re.compile(r"(lora_B|lora_up|\.up)\.weight$")  # the LoRA's output matrix in every key format


def scaled(tensors: dict[str, torch.Tensor], strength: float) -> dict[str, torch.Tensor]:
    """The LoRA with its strength folded into the up matrices (its delta is linear in them)."""
    return {k: v * strength if UP_WEIGHT.search(k) else v for k, v in tensors.items()}


def _wanted(loras: tuple[LoraSpec, ...]) -> dict[str, tuple[str, float]]:
    """adapter name -> (path, summed strength); strength 0 entries dropped (0 = off)."""
    wanted: dict[str, tuple[str, float]] = {}
    for spec in loras:
        name = spec.adapter_name()
        strength = wanted.get(name, (spec.path, 0.0))[1] + spec.strength
        wanted[name] = (spec.path, strength)
    return {n: v for n, v in wanted.items() if v[1] != 0}


def _load(pipe, name: str, path: str, strength: float | None = None, hotswap: bool = False) -> None:
    """Load a file as adapter `name`; with `strength`, folded into the weights (the hot-swap path)."""
    tensors = read_lora(path)
    if strength is not None:
        tensors = scaled(tensors, strength)
    try:
        pipe.load_lora_weights(tensors, adapter_name=name, hotswap=hotswap)
    except Exception as exc:  # shapes or layer names that do not fit this transformer
        raise WeightsError(f"{path}: this LoRA does not fit the loaded FLUX transformer ({_one_line(exc)})") from exc


def loaded_adapters(pipe) -> list[str]:
    if not getattr(pipe.transformer, "peft_config", None):
        return []
    return list(pipe.get_list_adapters().get("transformer", []))


class LoraState:
    """What is in the pipeline now; under compile, which file at which strength sits in the hot-swap slot."""

    def __init__(self, compiled: bool = False, quantized: bool = False):
        self.compiled, self.quantized = compiled, quantized
        self.slot: tuple[str, str, float] | None = None  # (adapter name, path, strength) in HOTSWAP_SLOT


def _unload_all(pipe, state: LoraState) -> None:
    if loaded_adapters(pipe):
        pipe.unload_lora_weights()
        state.slot = None
        if state.compiled:
            log.info("LoRAs unloaded: the compiled blocks recompile once")


def _hotswap(pipe, state: LoraState, name: str, path: str, strength: float) -> bool:
    """Compiled model, at most one LoRA: its weights (strength folded in) replace the slot's in place, so nothing
    recompiles; no LoRA = the slot's LoRA at strength 0, which adds exactly zero. False: use a normal load."""
    loaded = loaded_adapters(pipe)
    if loaded and loaded != [HOTSWAP_SLOT]:
        return False
    if state.slot == (name, path, strength):
        return True
    try:
        if not loaded:
            pipe.enable_lora_hotswap(target_rank=HOTSWAP_RANK)  # pads ranks, makes scalings tensors
            _load(pipe, HOTSWAP_SLOT, path, strength)
            log.info("LoRA %s loaded into the hot-swap slot; the compiled blocks recompile once", path)
        else:
            _load(pipe, HOTSWAP_SLOT, path, strength, hotswap=True)
    except WeightsError as exc:
        if not loaded:
            raise
        log.info("LoRA %s cannot be hot-swapped (%s); loading it normally, the compiled blocks recompile", path, exc)
        _unload_all(pipe, state)
        return False
    state.slot = (name, path, strength)
    return True


def activate(pipe, loras: tuple[LoraSpec, ...], state: LoraState) -> None:
    """Make the pipeline's adapters exactly `loras` (strength 0 counts as absent)."""
    wanted = _wanted(loras)
    if wanted and state.quantized:
        raise ValueError("LoRAs cannot be applied to the fp8-quantized transformer (speed fp8): choose a speed "
                         "without fp8, or remove the LoRA")
    if state.compiled and len(wanted) <= 1 and (wanted or state.slot):
        name, (path, strength) = next(iter(wanted.items())) if wanted else (state.slot[0], (state.slot[1], 0.0))
        if _hotswap(pipe, state, name, path, strength):
            return
    if not wanted:
        return _unload_all(pipe, state)
    if HOTSWAP_SLOT in loaded_adapters(pipe):
        _unload_all(pipe, state)
    stale = [n for n in loaded_adapters(pipe) if n not in wanted]
    if stale:
        pipe.delete_adapters(stale)
    for name, (path, _) in wanted.items():
        if name not in loaded_adapters(pipe):
            _load(pipe, name, path)
            log.info("LoRA %s loaded as %s", path, name)
    pipe.set_adapters(list(wanted), [strength for _, strength in wanted.values()])
