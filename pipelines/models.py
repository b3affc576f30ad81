"""Assembled, ready-to-run models (FLUX pipeline, Redux encoder), placed per LoadOptions and cached."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import params, speed
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
    # speed helper: applied at generate time, deliberately NOT in cache_key (changing them never reloads)
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


class FluxModel:
    """A FluxPipeline without text encoders, plus what the engine needs to know about it."""

    speed_state = None  # speed helper: speed.SpeedState from speed.apply; loras/cache_threshold per call view
    loras: tuple = ()
    cache_threshold: float = 0.0

    def __init__(self, spec: FluxModelSpec, pipe, variant: str, device: torch.device, dtype: torch.dtype):
        self.spec, self.pipe, self.variant, self.device, self.dtype = spec, pipe, variant, device, dtype

    @property
    def transformer_config(self):
        return self.pipe.transformer.config

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
    model = FluxModel(spec, pipe, variant, device, dtype)
    model.speed_state = speed.apply(pipe, opts.speed, device, opts.weight_storage, offload)  # speed helper
    return model


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
    runtime = speed.runtime_settings(spec.loras, spec.cache_threshold)  # speed helper: validated before loading
    return speed.with_runtime(cache.get(spec.cache_key(), lambda: _build_flux(spec)), *runtime)


def load_redux_encoder(spec: ReduxEncoderSpec, cache: ModelCache = CACHE) -> ReduxEncoder:
    return cache.get(spec.cache_key(), lambda: _build_redux(spec))
