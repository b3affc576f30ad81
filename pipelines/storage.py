"""Which weights are kept in float8, and how they still compute in the compute dtype.

ComfyUI keeps an fp8 file's weights in fp8 and casts each layer's weight as it computes; the pack does the same:
- weight_storage "default": the file's own precision. Linear weights the file stores narrower than the compute
  dtype stay so: fp8 (about half the memory of bf16), and bf16/fp16 when computing in fp32 (the CPU); they are
  cast to the compute dtype layer by layer, with the same results as a cast at load. Everything else is held in
  the compute dtype.
- "fp8": every Linear weight in float8 (ComfyUI's fp8 loading: the modulation layers too), cast tensor by tensor
  as it is read; biases, norms and embeddings stay in the compute dtype.
- "compute": everything in the compute dtype (diffusers' own result).
ComfyUI's scaled fp8 (a float8 weight and one scale per layer) is kept the way ComfyUI keeps it: the fp8 weight as
stored, its scale beside it, multiplied in as the layer computes (under "default" and "fp8"; "compute" dequantizes
at load). A weight with a scale per row, rare, is dequantized at load.

Narrow Linear weights compute through a diffusers layerwise-casting hook that casts the weight only, registered
under diffusers' own name, so `model.dtype` reports the compute dtype as with `enable_layerwise_casting`.
"""

from __future__ import annotations

from functools import cache

import torch
import torch.nn.functional as F

FP8 = torch.float8_e4m3fn
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


def castable_linears(model: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    """The Linear layers whose weight may be stored narrower than the compute dtype: plain nn.Linear forwards only
    (a subclass with its own forward, such as a GGUF layer, computes its weight its own way), and not the output
    projection of an nn.MultiheadAttention (SigLIP's pooling head), whose weight it reads without calling it."""
    read_directly = {f"{name}.out_proj" if name else "out_proj" for name, m in model.named_modules()
                     if isinstance(m, torch.nn.MultiheadAttention)}
    return {name: m for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and type(m).forward is torch.nn.Linear.forward
            and name not in read_directly}


def fp8_weight_names(model: torch.nn.Module) -> set[str]:
    return {f"{name}.weight" if name else "weight" for name in castable_linears(model)}


def storage_dtype(name: str, file_dtype: torch.dtype, dequantized: bool, storage: str, compute: torch.dtype,
                  linear_weights: set[str], fp32_modules=()) -> torch.dtype:
    """The dtype `name` is kept in. dequantized: a scaled-fp8 weight whose scale cannot stay beside it (a scale
    per row), so its fp8 values are not kept as stored. fp32_modules: a model's `_keep_in_fp32_modules` (T5's
    `wo` overflows in fp16)."""
    if not file_dtype.is_floating_point:
        return file_dtype  # integer buffers (position ids) keep their type
    if any(f".{m}." in f".{name}" for m in fp32_modules):
        return torch.float32
    if name in linear_weights:
        kept_fp8 = file_dtype in FP8_DTYPES and not dequantized
        if storage == "fp8":
            return file_dtype if kept_fp8 else FP8
        narrower = file_dtype not in FP8_DTYPES and file_dtype.itemsize < compute.itemsize
        if storage == "default" and (kept_fp8 or narrower):
            return file_dtype
    return compute


@cache
def _hook_class():
    """Defined on first use: importing diffusers' hooks at pack import would slow ComfyUI's start."""
    from diffusers.hooks.layerwise_casting import LayerwiseCastingHook

    class WeightCastingHook(LayerwiseCastingHook):
        """diffusers' layerwise casting for one Linear, casting its narrow weight (not the whole module) to the
        compute dtype for the matmul and leaving the stored weight untouched: no cast back, nothing mutated, so
        the layer gives what a compute-dtype copy of the weight would."""

        def __init__(self, storage: torch.dtype, compute: torch.dtype, scale: float = 1.0):
            super().__init__(storage, compute, non_blocking=False)
            self.scale = scale  # scaled fp8: a Python float, so it never needs moving with the weight

        def initialize_hook(self, module):
            return module  # the weight is already in its storage dtype

        def pre_forward(self, module, *args, **kwargs):
            return args, kwargs

        def post_forward(self, module, output):
            return output

        def weight(self, module) -> torch.Tensor:
            """The weight the matmul uses: cast, then scaled (a bf16 product rounds once, like a dequantize in
            fp32 followed by a cast)."""
            weight = module.weight.to(self.compute_dtype)
            return weight if self.scale == 1.0 else weight * self.scale

        def new_forward(self, module, input, *args, **kwargs):
            return F.linear(input, self.weight(module), module.bias)

    return WeightCastingHook


def enable_weight_casting(model: torch.nn.Module, compute: torch.dtype, scales: dict[str, float] | None = None) -> int:
    """Hook every Linear whose weight is stored narrower than `compute` (and not hooked yet); a wider one (T5's
    `wo` kept in fp32) computes as it is. scales: scaled-fp8 weights' scales by weight name. Returns how many
    are fp8."""
    from diffusers.hooks import HookRegistry
    from diffusers.hooks.layerwise_casting import _LAYERWISE_CASTING_HOOK

    count, scales = 0, scales or {}
    for name, module in castable_linears(model).items():
        if module.weight.dtype.itemsize >= compute.itemsize:
            continue
        count += module.weight.dtype in FP8_DTYPES
        module.compute_dtype = compute  # read by peft: a LoRA on this layer is kept in it, not in fp8
        registry = HookRegistry.check_if_exists_or_initialize(module)
        if registry.get_hook(_LAYERWISE_CASTING_HOOK) is None:
            scale = scales.get(f"{name}.weight" if name else "weight", 1.0)
            registry.register_hook(_hook_class()(module.weight.dtype, compute, scale), _LAYERWISE_CASTING_HOOK)
    return count


def computed_weight(module: torch.nn.Linear) -> torch.Tensor:
    """The weight a Linear computes with: its fp8 weight cast (and scaled) by its hook, else the weight itself."""
    from diffusers.hooks import HookRegistry
    from diffusers.hooks.layerwise_casting import _LAYERWISE_CASTING_HOOK

    hook = HookRegistry.check_if_exists_or_initialize(module).get_hook(_LAYERWISE_CASTING_HOOK)
    return hook.weight(module) if isinstance(hook, _hook_class()) else module.weight


def cast_to_fp8(model: torch.nn.Module, compute: torch.dtype) -> None:
    """fp8 storage for a model already loaded (a diffusers folder): each Linear weight in turn."""
    for module in castable_linears(model).values():
        if module.weight.dtype not in FP8_DTYPES:
            module.weight = torch.nn.Parameter(module.weight.detach().to(FP8), requires_grad=False)
    enable_weight_casting(model, compute)


def stores_fp8(model: torch.nn.Module) -> bool:
    return any(m.weight.dtype in FP8_DTYPES for m in castable_linears(model).values())
