"""Assembled, ready-to-run models (FLUX pipeline, Redux encoder), placed per LoadOptions and cached."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import params, speed
from .cache import CACHE, ModelCache, file_identity
from .loading import (PROJECTOR_DTYPE, LoadOptions, load_redux_projector, load_scheduler, load_siglip,
                      load_transformer, load_vae, vae_dtype)
from .placement import Placement, decide
from .storage import stores_fp8
from .weights import component_params, transformer_footprint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FluxModelSpec:
    """Everything that identifies a loaded FLUX model; light enough to pass between nodes."""

    transformer: str
    vae: str
    variant: str = "auto"
    options: LoadOptions = field(default_factory=LoadOptions)
    # applied at generate time, deliberately NOT in cache_key (changing them never reloads)
    loras: tuple = ()  # of lora.LoraSpec
    cache_threshold: float = 0.0  # First Block Cache; 0 = off

    def cache_key(self) -> tuple:
        return ("flux", file_identity(self.transformer), file_identity(self.vae), self.variant, self.options)


@dataclass(frozen=True)
class ReduxEncoderSpec:
    redux: str
    siglip: str
    options: LoadOptions = field(default_factory=LoadOptions)

    def cache_key(self) -> tuple:
        return ("redux", file_identity(self.redux), file_identity(self.siglip), self.options)


def module_device(module: torch.nn.Module) -> torch.device:
    """Where `module` computes right now: an offload hook's execution device, else where its weights are.

    Read at call time, never remembered from load time: ComfyUI's memory manager may move modules later.
    """
    from diffusers.hooks.group_offloading import _get_group_onload_device

    for sub in module.modules():
        hook_device = getattr(getattr(sub, "_hf_hook", None), "execution_device", None)
        if hook_device is not None:
            return torch.device(hook_device)
    try:
        return torch.device(_get_group_onload_device(module))
    except ValueError:
        pass
    return next(module.parameters()).device


def modules_bytes(modules) -> int:
    """Bytes of every parameter and buffer (wherever they are: GPU, CPU, or quantized in GGUF blocks)."""
    seen, total = set(), 0
    for module in modules:
        for tensor in (*module.parameters(), *module.buffers()):
            if id(tensor) not in seen:
                seen.add(id(tensor))
                total += tensor.numel() * tensor.element_size()
    return total


class FluxModel:
    """A FluxPipeline without text encoders, plus what the engine needs to know about it.

    Adapters use modules(), latent_channels and vae_scale_factor instead of reaching into the pipeline.
    """

    speed_state = None  # speed.SpeedState from speed.apply; loras/cache_threshold: a per-call view's
    loras: tuple = ()
    cache_threshold: float = 0.0

    def __init__(self, spec: FluxModelSpec, pipe, variant: str, device: torch.device, dtype: torch.dtype,
                 placement: Placement | None = None):
        self.spec, self.pipe, self.variant, self.device, self.dtype = spec, pipe, variant, device, dtype
        self.placement = placement or Placement("none", spec.options.weight_storage, "placed by the caller")
        self._img2img = None

    @property
    def execution_device(self) -> torch.device:
        """The device diffusers runs the denoising loop on now (offload hooks included)."""
        return self.pipe._execution_device

    @property
    def compute_dtype(self) -> torch.dtype:
        """The transformer's compute dtype (fp8 storage reports its compute dtype)."""
        return self.pipe.transformer.dtype

    @property
    def latent_channels(self) -> int:
        return self.pipe.vae.config.latent_channels

    @property
    def vae_scale_factor(self) -> int:
        return self.pipe.vae_scale_factor

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"transformer": self.pipe.transformer, "vae": self.pipe.vae}

    def memory_bytes(self) -> int:
        return modules_bytes(self.modules().values()) if self.pipe is not None else 0

    def img2img_pipe(self):
        """diffusers' FLUX img2img pipeline over the same modules (no second copy of the weights)."""
        from diffusers import FluxImg2ImgPipeline

        if self._img2img is None:
            self._img2img = FluxImg2ImgPipeline(**{k: self.pipe.components[k] for k in (
                "scheduler", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "transformer")})
        return self._img2img

    def release(self) -> None:
        """Detach offload hooks and drop every pipeline over the modules, so their memory can be freed."""
        if self.pipe is not None:
            self.pipe.remove_all_hooks()
        self.pipe = self._img2img = None

    def __repr__(self) -> str:
        return f"FluxModel({self.variant}, {Path(self.spec.transformer).name}, {self.device}, {self.dtype})"


class ReduxEncoder:
    """SigLIP vision tower + Redux projector + the matching image preprocessing."""

    def __init__(self, spec: ReduxEncoderSpec, vision, processor, projector, device, dtype):
        self.spec, self.vision, self.processor, self.projector = spec, vision, processor, projector
        self.device, self.dtype = device, dtype

    @property
    def image_size(self) -> int:
        return self.vision.config.image_size

    @property
    def execution_device(self) -> torch.device:
        return module_device(self.vision)

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"vision": self.vision, "projector": self.projector}

    def memory_bytes(self) -> int:
        return modules_bytes(self.modules().values()) if self.vision is not None else 0

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """Square images [N, size, size, 3] in 0..1 -> Redux tokens [N, tokens, width] (float32, CPU).
        The device is read now: a memory manager may have moved the modules since they were loaded. The compute
        dtypes are the ones they were loaded for, not a parameter's: a file's narrower Linear weights are kept
        narrow and cast as they compute."""
        mean = torch.tensor(self.processor.image_mean, dtype=torch.float32)
        std = torch.tensor(self.processor.image_std, dtype=torch.float32)
        normalised = ((pixels.float() - mean) / std).permute(0, 3, 1, 2)
        with torch.inference_mode():
            features = self.vision(pixel_values=normalised.to(self.execution_device, self.dtype)).last_hidden_state
            return self.projector(features.to(PROJECTOR_DTYPE)).image_embeds.float().cpu()

    def release(self) -> None:
        self.vision = self.projector = None


def resolve_placement(spec: FluxModelSpec, device: torch.device, dtype: torch.dtype,
                      free_vram: int | None = None) -> Placement:
    """The user's explicit choice, or (auto) the decision for these files on this card's free VRAM (or on
    `free_vram` bytes: what a caller such as ComfyUI can make free by unloading its other models)."""
    opts = spec.options
    if opts.offload != "auto":
        offload = opts.offload
        if offload != "none" and device.type == "cpu":
            log.warning("offload=%s ignored: the model already runs on the CPU", offload)
            offload = "none"
        return Placement(offload, opts.weight_storage, opts.placement_reason)
    if device.type != "cuda":
        free = None
    else:
        free = free_vram if free_vram is not None else torch.cuda.mem_get_info(device)[0]
    vae = component_params(spec.vae, "vae", "vae") * vae_dtype(dtype).itemsize
    return decide(transformer_footprint(spec.transformer), vae, free, dtype.itemsize, opts.weight_storage)


def kept_bytes(spec: FluxModelSpec, storage: str | None = None) -> int:
    """Bytes a FLUX model (transformer + VAE) keeps once loaded with `storage` (default: the spec's), from the
    files' headers only: what a caller must find room for before it builds the model on a device."""
    dtype = spec.options.torch_dtype()
    vae = component_params(spec.vae, "vae", "vae") * vae_dtype(dtype).itemsize
    storage = storage or spec.options.weight_storage
    return transformer_footprint(spec.transformer).memory_bytes(dtype.itemsize, storage) + vae


def match_vae_io(vae: torch.nn.Module, compute: torch.dtype) -> None:
    """A VAE kept in another dtype than the transformer (fp32 next to fp16) casts what it is handed, and the
    encoder hands its latents back in the compute dtype, so diffusers' pipelines need not know."""
    vae_dtype_ = vae.dtype

    def cast_in(_module, args, kwargs):
        cast = lambda t: t.to(vae_dtype_) if isinstance(t, torch.Tensor) and t.is_floating_point() else t  # noqa: E731
        return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}

    for part in (vae.encoder, vae.decoder):
        part.register_forward_pre_hook(cast_in, with_kwargs=True)
    vae.encoder.register_forward_hook(lambda _m, _a, out: out.to(compute))


def _build_flux(spec: FluxModelSpec) -> FluxModel:
    """Load the transformer and VAE straight onto the device they will wait on (the compute device, or the
    caller's build device; the CPU when diffusers' offload hooks will move them), each tensor streamed there in
    its storage dtype: no copy on the way."""
    from diffusers import FluxPipeline

    opts = spec.options
    device, dtype = opts.torch_device(), opts.torch_dtype()
    placement = resolve_placement(spec, device, dtype)
    if placement.weight_storage == "fp8" and Path(spec.transformer).suffix.lower() == ".gguf":
        log.warning("weight_storage=fp8 ignored for %s: GGUF weights stay in their own quantized format",
                    spec.transformer)
        placement = Placement(placement.offload, "default", placement.reason)
    log.info("FLUX placement for %s: %s", Path(spec.transformer).name, placement.describe())
    build = opts.torch_build_device() if placement.offload == "none" else torch.device("cpu")
    transformer, detected = load_transformer(spec.transformer, dtype, placement.weight_storage, build,
                                             keep_mapped=device.type == "cpu")
    variant = detected if spec.variant == "auto" else params.variant_spec(spec.variant).name
    if variant != detected:
        log.warning("variant %s requested for %s, whose weights look like %s: using %s parameter ranges and "
                    "scheduler", variant, spec.transformer, detected, variant)
    vae = load_vae(spec.vae, vae_dtype(dtype), build)
    if vae.dtype != dtype:
        match_vae_io(vae, dtype)
    pipe = FluxPipeline(scheduler=load_scheduler(variant), vae=vae, text_encoder=None, tokenizer=None,
                        text_encoder_2=None, tokenizer_2=None, transformer=transformer)
    place_pipeline(pipe, placement.offload, device, build)
    model = FluxModel(spec, pipe, variant, device, dtype, placement)
    # after placement, before the first call: compile, fp8 compute, attention backend; fp8 weights kept from the
    # file count as fp8 storage there (torchao cannot quantize them again)
    stored = "fp8" if stores_fp8(transformer) else placement.weight_storage
    model.speed_state = speed.apply(pipe, opts.speed, device, stored, placement.offload)
    return model


def place_pipeline(pipe, offload: str, device: torch.device, build_device: torch.device | None = None) -> None:
    """Put the pipeline's modules on `device` (or on `build_device`, when a caller such as ComfyUI's memory
    manager moves them to `device` itself), or install diffusers' offload hooks that move them there.

    group: transformer blocks one at a time, the next one copied ahead on a CUDA stream while one computes.
    """
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "group":
        pipe.enable_group_offload(onload_device=device, offload_type="block_level", num_blocks_per_group=1,
                                  use_stream=device.type == "cuda")
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.to(build_device or device)


def _build_redux(spec: ReduxEncoderSpec) -> ReduxEncoder:
    opts = spec.options
    device, dtype, build = opts.torch_device(), opts.torch_dtype(), opts.torch_build_device()
    vision, processor = load_siglip(spec.siglip, dtype, build)
    projector = load_redux_projector(spec.redux, PROJECTOR_DTYPE, build)
    if projector.config.redux_dim != vision.config.hidden_size:
        raise ValueError(f"Redux projector {spec.redux} takes {projector.config.redux_dim}-wide SigLIP features "
                         f"but {spec.siglip} produces {vision.config.hidden_size}: pair flux1-redux-dev with "
                         "sigclip_vision_patch14_384.")
    return ReduxEncoder(spec, vision, processor, projector, device, dtype)


def load_flux_model(spec: FluxModelSpec, cache: ModelCache = CACHE) -> FluxModel:
    runtime = speed.runtime_settings(spec.loras, spec.cache_threshold)  # validated before loading
    return speed.with_runtime(cache.get(spec.cache_key(), lambda: _build_flux(spec)), *runtime)


def load_redux_encoder(spec: ReduxEncoderSpec, cache: ModelCache = CACHE) -> ReduxEncoder:
    return cache.get(spec.cache_key(), lambda: _build_redux(spec))
