"""The pack's models in ComfyUI's memory manager: ModelPatcher + load_models_gpu, ComfyUI's public surface.

The engine keeps its own cache (pipelines.cache.CACHE: one copy of each model, shared by every node) and
ComfyUI's memory manager decides where the weights of a cached model live, as it does for its own models:
- offload none (the default): the engine builds a FLUX model on the GPU itself when it fits there (a private RAM
  copy of the whole model avoided), else on ComfyUI's offload device (RAM, or VRAM with --highvram/--gpu-only),
  in the compute dtype of the load device. The pack wraps the model's modules in a
  ComfyUI ModelPatcher and calls load_models_gpu before every use: ComfyUI frees room (unloading its own or
  other models) and moves the weights to the GPU. When ComfyUI needs the room later (another model, POST /free,
  "Unload models") it moves them back to RAM, as it does its own; the next use moves them in again, with no
  disk read. The engine reads the device at call time, so it follows. With --novram ComfyUI moves none of
  them (it can only stream its own layer types), so the model computes where it is: use offload sequential.
- offload model / sequential / group: diffusers' hooks move the weights during a run, so ComfyUI must not
  move them; the pack only asks ComfyUI to free the VRAM the run will take (free_memory) before each use.
RAM: ComfyUI frees its own models when it drops the loader outputs that hold them ("Free model and node cache",
i.e. POST /free with free_memory; a workflow without that loader; 0.33's RAM-pressure cache). The pack's loaders
output light specs and the model lives in the engine's shared cache, so keep_while() ties each cached model to
the loader outputs that use it: when ComfyUI has dropped the last of them, the model leaves the cache and RAM. The
Unload node frees them at once (CACHE.unload()). Either way the patcher dies with the cached model, and ComfyUI
drops its entry when the wrapped modules are garbage-collected.

DynamicVRAM (ComfyUI 0.33+, comfy-aimdo, on by default on NVIDIA GPUs): ComfyUI then gives its own models a
ModelPatcherDynamic (comfy.model_patcher.CoreModelPatcher). The pack deliberately keeps the plain ModelPatcher:
- ModelPatcherDynamic streams only ComfyUI's own layer types (comfy.ops, `comfy_cast_weights`) through aimdo's
  VRAM buffers. The pack's diffusers/transformers modules have none, so its load() would copy every weight to the
  GPU whole and keep the RAM copy beside it as a backup: nothing streamed, and the RAM copy kept while the GPU
  one is in use. Its load() also refuses full loads, which the engine needs (one device per run unless
  diffusers' hooks place the weights).
- ComfyUI supports the mix: it builds plain ModelPatchers itself for models that opt out (text encoders with
  dynamic VRAM disabled, clone(disable_dynamic=True)), and load_models_gpu on a plain patcher frees dynamic
  models' VRAM and pinned RAM first (free_memory with for_dynamic=False, ensure_pin_budget); a dynamic model
  loading later unloads ours when it needs the room, and make_ready moves it back before our next run.
tests/comfy_memory_check.py runs this inside a real ComfyUI, with and without 0.33's DynamicVRAM switch.
"""

from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import replace
from typing import Any

import torch

from ..pipelines.cache import CACHE
from ..pipelines.loading import DTYPES, LoadOptions
from ..pipelines.models import FluxModelSpec, modules_bytes, resolve_placement
from .comfy_bridge import comfy_module

log = logging.getLogger(__name__)
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}


class ManagedModules(torch.nn.Module):
    """One cached model's modules as one nn.Module, the unit ComfyUI's ModelPatcher moves. ModelPatcher sets a
    plain `device` attribute on what it wraps, which diffusers and transformers models have as a read-only
    property, so they are held as children instead."""

    def __init__(self, modules: dict[str, torch.nn.Module]):
        super().__init__()
        self.parts = torch.nn.ModuleDict(modules)


_PATCHERS: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()  # cached model (its pipeline) -> its patcher


_OWNERS: dict[Any, set[int]] = {}  # cache key -> ids of the live loader outputs (specs) using that model


def keep_while(owner, key) -> None:
    """Keep the cached model `key` while ComfyUI holds `owner` (the loader node's output it passes on and caches);
    free it once ComfyUI has dropped every owner using it. Specs compare by value, so owners are counted by
    identity. Outside ComfyUI nothing changes: the CLI, the server and tests keep the engine's LRU cache."""
    if comfy_module("comfy.model_management") is None:
        return
    owners = _OWNERS.setdefault(key, set())
    if id(owner) not in owners:
        owners.add(id(owner))
        weakref.finalize(owner, _owner_dropped, key, id(owner))


def _owner_dropped(key, owner_id: int) -> None:
    """Runs where the owner died, often inside ComfyUI's gc.collect(), where a nested collection does nothing:
    the model (held in reference cycles) is freed from a thread of its own instead."""
    owners = _OWNERS.get(key, set())
    owners.discard(owner_id)
    if not owners:
        threading.Thread(target=_release, args=(key,), name="flux-redux-release", daemon=True).start()


def _release(key) -> None:
    if _OWNERS.get(key):  # a new loader output took the model meanwhile
        return
    _OWNERS.pop(key, None)
    if CACHE.unload(key):
        log.info("FLUX Redux: ComfyUI dropped the last node using a model: freed it")


def resolve_auto(spec) -> LoadOptions:
    """The spec's options with offload `auto` resolved for ComfyUI: the engine's own decision, made on what
    ComfyUI can give the model (the card's memory less its inference reserve: it unloads other models to make
    room) instead of the VRAM free right now. The Redux encoder is small and always managed by ComfyUI."""
    options, mm = spec.options, comfy_module("comfy.model_management")
    if mm is None or options.offload != "auto":
        return options
    if not isinstance(spec, FluxModelSpec):
        return replace(options, offload="none")
    device = load_device(options)
    budget = mm.get_total_memory(device) - mm.minimum_inference_memory() if device.type == "cuda" else None
    placement = resolve_placement(spec, device, options.torch_dtype(), budget)
    log.info("FLUX Redux: placement for %s in ComfyUI: %s", spec.transformer, placement.describe())
    return replace(options, offload=placement.offload, weight_storage=placement.weight_storage,
                   placement_reason=f"auto in ComfyUI: {placement.reason}")


def build_placement(options: LoadOptions, kept=lambda: 0) -> LoadOptions:
    """Where the engine should build a model of `kept()` bytes inside ComfyUI, in the dtype the load device computes
    in (auto on CUDA is bf16 even when the weights wait in RAM); the compute device stays in the options, so speed
    modes and the cache key see it. On the load device itself when it is a GPU with room for the model and a run
    (and ComfyUI is not in --novram), since weights built in RAM are a private copy of the whole model there;
    else on ComfyUI's offload device. Unchanged outside ComfyUI or when diffusers' offload hooks place the model."""
    mm = comfy_module("comfy.model_management")
    if mm is None or options.offload != "none":
        return options
    dtype = options.dtype if options.dtype != "auto" else DTYPE_NAMES[options.torch_dtype()]
    device = load_device(options)
    fits = device.type == "cuda" and 0 < kept() < mm.get_free_memory(device) - mm.minimum_inference_memory() \
        and mm.vram_state != mm.VRAMState.NO_VRAM
    return replace(options, build_device=str(device if fits else mm.unet_offload_device()), dtype=dtype)


def _patcher(model, load_device: torch.device):
    # a FLUX model's pipeline is shared by its per-call LoRA views and dies with the cached model; the patcher
    # must not hold the key (it holds the modules), or the weak entry would never go
    key = getattr(model, "pipe", None) or model
    patcher = _PATCHERS.get(key)
    if patcher is None:
        mm, mp = comfy_module("comfy.model_management"), comfy_module("comfy.model_patcher")
        modules = ManagedModules(model.modules())
        patcher = mp.ModelPatcher(modules, load_device=load_device, offload_device=mm.unet_offload_device(),
                                  size=model.memory_bytes())
        _PATCHERS[key] = patcher
    return patcher


def load_device(options: LoadOptions) -> torch.device:
    """The device a model computes on, as ComfyUI names it (cuda -> cuda:N, so it compares equal)."""
    device = options.torch_device()
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return device


def make_ready(model, options: LoadOptions, working_bytes: int = 0) -> None:
    """Before a run of `model` (built with build_placement(options)): have ComfyUI place it on its device.
    `working_bytes` is what the run needs beyond the weights (activations). No-op outside ComfyUI."""
    mm = comfy_module("comfy.model_management")
    if mm is None:
        return
    device = load_device(options)
    if options.offload != "none":  # diffusers' hooks move the weights; ComfyUI only makes room
        largest = max(modules_bytes([m]) for m in model.modules().values())
        if device.type != "cpu":
            mm.free_memory(working_bytes + (largest if options.offload == "model" else 0), device)
        return
    patcher = _patcher(model, device)
    mm.load_models_gpu([patcher], memory_required=working_bytes, force_full_load=True)
    if patcher.loaded_size() < patcher.model_size() and device.type != "cpu":
        log.warning("FLUX Redux: ComfyUI kept %s in RAM (--novram?), so it computes on the CPU; set the "
                    "loader's offload to sequential to compute on the GPU layer by layer", model)
