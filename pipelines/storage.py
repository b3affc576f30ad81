"""Which weights are kept in float8, and how they still compute in the compute dtype.

ComfyUI keeps an fp8 file's weights in fp8 and casts each layer's weight as it computes; the pack does the same:
- weight_storage "default": the file's own precision. Linear weights stored fp8 in the file stay fp8 (about half
  the memory of bf16); everything else is held in the compute dtype.
- "fp8": every Linear weight in float8 (ComfyUI's fp8 loading: the modulation layers too), cast tensor by tensor
  as it is read; biases, norms and embeddings stay in the compute dtype.
- "compute": everything in the compute dtype (diffusers' own result).
Scaled-fp8 weights are dequantized with their scales first, so under "default" they are held in the compute dtype.

fp8 Linear weights compute through a diffusers layerwise-casting hook that casts the weight only, registered under
diffusers' own name, so `model.dtype` reports the compute dtype as with `enable_layerwise_casting`.
"""

from __future__ import annotations

from functools import cache

import torch
import torch.nn.functional as F

FP8 = torch.float8_e4m3fn
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


def castable_linears(model: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    """The Linear layers whose weight may be stored in fp8: plain nn.Linear forwards only (a subclass with its own
    forward, such as a GGUF layer, computes its weight its own way)."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and type(m).forward is torch.nn.Linear.forward}


def fp8_weight_names(model: torch.nn.Module) -> set[str]:
    return {f"{name}.weight" if name else "weight" for name in castable_linears(model)}


def storage_dtype(name: str, file_dtype: torch.dtype, scaled: bool, storage: str, compute: torch.dtype,
                  linear_weights: set[str], fp32_modules=()) -> torch.dtype:
    """The dtype `name` is kept in. fp32_modules: a model's `_keep_in_fp32_modules` (T5's `wo` overflows in fp16)."""
    if not file_dtype.is_floating_point:
        return file_dtype  # integer buffers (position ids) keep their type
    if any(f".{m}." in f".{name}" for m in fp32_modules):
        return torch.float32
    if name in linear_weights:
        plain_fp8 = file_dtype in FP8_DTYPES and not scaled
        if storage == "fp8":
            return file_dtype if plain_fp8 else FP8
        if storage == "default" and plain_fp8:
            return file_dtype
    return compute


@cache
def _hook_class():
    """Defined on first use: importing diffusers' hooks at pack import would slow ComfyUI's start."""
    from diffusers.hooks.layerwise_casting import LayerwiseCastingHook

    class WeightCastingHook(LayerwiseCastingHook):
        """diffusers' layerwise casting for one Linear, casting its fp8 weight (not the whole module) to the
        compute dtype for the matmul and leaving the stored weight untouched: no cast back, nothing mutated, so
        the layer gives what a compute-dtype copy of the weight would."""

        def __init__(self, storage: torch.dtype, compute: torch.dtype):
            super().__init__(storage, compute, non_blocking=False)

        def initialize_hook(self, module):
            return module  # the weight is already in its storage dtype

        def pre_forward(self, module, *args, **kwargs):
            return args, kwargs

        def post_forward(self, module, output):
            return output

        def new_forward(self, module, input, *args, **kwargs):
            return F.linear(input, module.weight.to(self.compute_dtype), module.bias)

    return WeightCastingHook


def enable_weight_casting(model: torch.nn.Module, compute: torch.dtype) -> int:
    """Hook every Linear whose weight is stored in fp8 (and not hooked yet). Returns how many are fp8."""
    from diffusers.hooks import HookRegistry
    from diffusers.hooks.layerwise_casting import _LAYERWISE_CASTING_HOOK

    count = 0
    for module in castable_linears(model).values():
        if module.weight.dtype not in FP8_DTYPES:
            continue
        count += 1
        module.compute_dtype = compute  # read by peft: a LoRA on this layer is kept in it, not in fp8
        registry = HookRegistry.check_if_exists_or_initialize(module)
        if registry.get_hook(_LAYERWISE_CASTING_HOOK) is None:
            registry.register_hook(_hook_class()(module.weight.dtype, compute), _LAYERWISE_CASTING_HOOK)
    return count


def cast_to_fp8(model: torch.nn.Module, compute: torch.dtype) -> None:
    """fp8 storage for a model already loaded (a diffusers folder): each Linear weight in turn."""
    for module in castable_linears(model).values():
        if module.weight.dtype not in FP8_DTYPES:
            module.weight = torch.nn.Parameter(module.weight.detach().to(FP8), requires_grad=False)
    enable_weight_casting(model, compute)


def stores_fp8(model: torch.nn.Module) -> bool:
    return any(m.weight.dtype in FP8_DTYPES for m in castable_linears(model).values())
