"""Assembled, ready-to-run models (FLUX pipeline, Redux encoder), placed per LoadOptions and cached."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import params
from .cache import CACHE, ModelCache, file_identity
from .loading import (LoadOptions, load_redux_projector, load_scheduler, load_siglip, load_transformer,
                      load_vae)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FluxModelSpec:
    """Everything that identifies a loaded FLUX model; light enough to pass between nodes."""

    transformer: str
    vae: str
    variant: str = "auto"
    options: LoadOptions = field(default_factory=LoadOptions)

    def cache_key(self) -> tuple:
        return ("flux", file_identity(self.transformer), file_identity(self.vae), self.variant, self.options)


@dataclass(frozen=True)
class ReduxEncoderSpec:
    redux: str
    siglip: str
    options: LoadOptions = field(default_factory=LoadOptions)

    def cache_key(self) -> tuple:
        return ("redux", file_identity(self.redux), file_identity(self.siglip), self.options)


def modules_bytes(modules: dict[str, torch.nn.Module]) -> int:
    """Bytes of the modules' weights and buffers (as stored: fp8 counts one byte)."""
    return sum(t.numel() * t.element_size() for m in modules.values() for t in [*m.parameters(), *m.buffers()])


class FluxModel:
    """A FluxPipeline without text encoders, plus what the engine needs to know about it."""

    def __init__(self, spec: FluxModelSpec, pipe, variant: str, device: torch.device, dtype: torch.dtype):
        self.spec, self.pipe, self.variant, self.device, self.dtype = spec, pipe, variant, device, dtype

    @property
    def transformer_config(self):
        return self.pipe.transformer.config

    def modules(self) -> dict[str, torch.nn.Module]:
        """The weight-holding modules, by name: what a memory manager (ComfyUI's) may move between devices."""
        return {"transformer": self.pipe.transformer, "vae": self.pipe.vae}

    def memory_bytes(self) -> int:
        return modules_bytes(self.modules())

    @property
    def latent_channels(self) -> int:
        return self.pipe.vae.config.latent_channels

    @property
    def vae_scale_factor(self) -> int:
        return self.pipe.vae_scale_factor

    def release(self) -> None:
        """Detach offload hooks and drop the modules so their memory can be freed."""
        if self.pipe is not None:
            self.pipe.remove_all_hooks()
            self.pipe = None

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
    def token_width(self) -> int:
        return self.projector.config.txt_in_features

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"vision": self.vision, "projector": self.projector}

    def memory_bytes(self) -> int:
        return modules_bytes(self.modules())

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """Square images [N, size, size, 3] in 0..1 -> Redux tokens [N, tokens, width] (float32, CPU).
        The device is read now: a memory manager may have moved the modules since they were loaded."""
        mean = torch.tensor(self.processor.image_mean, dtype=torch.float32)
        std = torch.tensor(self.processor.image_std, dtype=torch.float32)
        normalised = ((pixels.float() - mean) / std).permute(0, 3, 1, 2)
        weight = next(self.vision.parameters())
        with torch.inference_mode():
            features = self.vision(pixel_values=normalised.to(weight.device, weight.dtype)).last_hidden_state
            projector_dtype = next(self.projector.parameters()).dtype
            return self.projector(features.to(projector_dtype)).image_embeds.float().cpu()

    def release(self) -> None:
        self.vision = self.projector = None


def _build_flux(spec: FluxModelSpec) -> FluxModel:
    from diffusers import FluxPipeline

    opts = spec.options
    device, dtype = opts.torch_device(), opts.torch_dtype()
    transformer, detected = load_transformer(spec.transformer, dtype)
    variant = detected if spec.variant == "auto" else params.variant_spec(spec.variant).name
    if variant != detected:
        log.warning("variant %s requested for %s, whose weights look like %s: using %s parameter ranges and "
                    "scheduler", variant, spec.transformer, detected, variant)
    vae = load_vae(spec.vae, dtype)
    if opts.weight_storage == "fp8":
        transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=dtype)
    pipe = FluxPipeline(scheduler=load_scheduler(variant), vae=vae, text_encoder=None, tokenizer=None,
                        text_encoder_2=None, tokenizer_2=None, transformer=transformer)
    offload = opts.offload
    if offload != "none" and device.type == "cpu":
        log.warning("offload=%s ignored: the model already runs on the CPU", offload)
        offload = "none"
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.to(device)
    return FluxModel(spec, pipe, variant, device, dtype)


def _build_redux(spec: ReduxEncoderSpec) -> ReduxEncoder:
    opts = spec.options
    device, dtype = opts.torch_device(), opts.torch_dtype()
    vision, processor = load_siglip(spec.siglip, dtype)
    projector = load_redux_projector(spec.redux, dtype)
    if projector.config.redux_dim != vision.config.hidden_size:
        raise ValueError(f"Redux projector {spec.redux} takes {projector.config.redux_dim}-wide SigLIP features "
                         f"but {spec.siglip} produces {vision.config.hidden_size}: pair flux1-redux-dev with "
                         "sigclip_vision_patch14_384.")
    return ReduxEncoder(spec, vision.to(device), processor, projector.to(device), device, dtype)


def load_flux_model(spec: FluxModelSpec, cache: ModelCache = CACHE) -> FluxModel:
    return cache.get(spec.cache_key(), lambda: _build_flux(spec))


def load_redux_encoder(spec: ReduxEncoderSpec, cache: ModelCache = CACHE) -> ReduxEncoder:
    return cache.get(spec.cache_key(), lambda: _build_redux(spec))
