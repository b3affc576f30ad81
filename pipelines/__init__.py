"""The engine: FLUX.1 Redux variations with plain torch + diffusers. Never imports ComfyUI.

    from pipelines import *            # in a script run from the pack folder
    enc = load_redux_encoder(ReduxEncoderSpec(redux=..., siglip=...))
    flux = load_flux_model(FluxModelSpec(transformer=..., vae=...))
    cond = encode(enc, [image])
    result = generate(flux, cond, validate_generation(flux.variant, "square_hd", seed=42))
"""

from .cache import CACHE, ModelCache
from .loading import LoadOptions
from .lora import LoraSpec  # speed helper
from .models import FluxModel, FluxModelSpec, ReduxEncoder, ReduxEncoderSpec, load_flux_model, load_redux_encoder
from .params import GenerationParams, ParameterError, resolve_size, validate_generation
from .redux import ReduxConditioning, TextConditioning, encode
from .sampling import GenerationAborted, GenerationResult, generate
from .text import TextEncoderSpec, encode_prompt, load_text_encoders
from .weights import FoundWeights, WeightsError, find_weights

__all__ = [
    "CACHE", "ModelCache", "LoadOptions", "LoraSpec", "FluxModel", "FluxModelSpec", "ReduxEncoder", "ReduxEncoderSpec",
    "load_flux_model", "load_redux_encoder", "GenerationParams", "ParameterError", "resolve_size",
    "validate_generation", "ReduxConditioning", "TextConditioning", "encode", "TextEncoderSpec", "encode_prompt",
    "load_text_encoders", "GenerationAborted", "GenerationResult", "generate",
    "FoundWeights", "WeightsError", "find_weights",
]
