"""Loader nodes: pick weight files (ComfyUI folders or diffusers folders) and return light engine specs.

Nothing heavy is loaded here. The specs travel to the Encode/Generate nodes, which load through the engine's
process-wide cache, so unloading that cache (ComfyUI's "free memory", or the Unload node) really frees the
weights: no node output keeps a model alive. A file's header is read here (milliseconds) so a wrong file in
a slot is reported at the loader node, before any model work.
"""

from __future__ import annotations

from pathlib import Path

from ..pipelines import checks, params
from ..pipelines.loading import LoadOptions
from ..pipelines.models import FluxModelSpec, ReduxEncoderSpec
from ..pipelines.weights import detect_variant, read_index
from . import comfy_bridge as bridge
from .widgets import number_widget

CATEGORY = "FLUX Redux/local"
DEVICE_CHOICES = ("auto", "cuda", "cpu", "mps")
DEVICE_TOOLTIP = "auto: ComfyUI's device (follows --cpu / --cuda-device); outside ComfyUI: CUDA when available."
DTYPE_TOOLTIP = "Compute dtype. auto: bf16 on CUDA (fp16 if bf16 is unsupported), fp32 on CPU."

# One widget for ComfyUI users' "weight_dtype": compute dtypes, plus fp8 weight storage (computed in auto dtype).
WEIGHT_DTYPES = {("default" if d == "auto" else d): (d, "default") for d in params.DTYPE_CHOICES}
WEIGHT_DTYPES["fp8"] = ("auto", "fp8")
WEIGHT_DTYPE_CHOICES = tuple(WEIGHT_DTYPES)
SPEED_TOOLTIP = ("compile: torch.compile of the transformer blocks (warm-up on the first run, same image). fp8: "
                 "fp8 compute on GPUs with fp8 tensor cores (RTX 40xx, H100; slight changes). best-attention: "
                 "FlashAttention 3/2 if installed. A mode this machine cannot run is skipped with a note in info.")


def device_option(device: str) -> str:
    """The device widget checked by the engine (an API workflow may carry cuda on a machine without CUDA, or
    any string); auto is ComfyUI's own device."""
    return bridge.default_device() if checks.check_device(device, "device", "device cpu or auto") == "auto" else device


def check_file(path: str, kind: str) -> None:
    """Header check of a single file (a diffusers folder is checked when it loads)."""
    if not Path(path).is_dir():
        read_index(path, kind)  # also checks the file holds `kind`


def model_variant(spec: FluxModelSpec) -> str:
    """dev or schnell without loading the model: the loader's choice, else the weights' own answer."""
    if spec.variant != "auto":
        return params.variant_spec(spec.variant).name
    return detect_variant(spec.transformer)


def files_checked_when_run() -> bool:
    """The loaders' VALIDATE_INPUTS: taking the file inputs turns off ComfyUI's queue-time "value not in list"
    check for them, so a graph whose loaders feed only Redux Variation's lazy inputs runs on a hosted backend
    on a machine without the files (the loaders never run). A missing file is reported when the loader runs,
    naming the folders searched."""
    return True


class FluxReduxLoadEncoder:
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("REDUX_ENCODER",)
    RETURN_NAMES = ("redux_encoder",)
    OUTPUT_TOOLTIPS = ("The Redux encoder (SigLIP + Redux projector); loaded on first use by Redux Encode.",)
    DESCRIPTION = ("Choose the Redux image encoder: the Redux projector (models/style_models, e.g. "
                   "flux1-redux-dev.safetensors) and the SigLIP vision tower (models/clip_vision, "
                   "sigclip_vision_patch14_384.safetensors), or a diffusers FLUX.1-Redux-dev folder in "
                   "models/diffusers. The weights load once, on first use, and are shared by every node.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "redux_model": (bridge.model_choices("style_models", "image_embedder"), {
                "tooltip": "Redux projector: a file in models/style_models (flux1-redux-dev.safetensors) or "
                           "diffusers/<folder> holding image_embedder/."}),
            "clip_vision": (bridge.model_choices("clip_vision", "image_encoder"), {
                "tooltip": "SigLIP so400m vision encoder: a file in models/clip_vision "
                           "(sigclip_vision_patch14_384.safetensors) or diffusers/<folder> holding image_encoder/."}),
            "device": (DEVICE_CHOICES, {"default": "auto", "tooltip": DEVICE_TOOLTIP}),
            "dtype": (params.DTYPE_CHOICES, {"default": "auto", "tooltip": DTYPE_TOOLTIP}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, redux_model, clip_vision):
        return files_checked_when_run()

    def load(self, redux_model, clip_vision, device, dtype):
        checks.file_choice(redux_model, "redux_model", "style_models")
        checks.file_choice(clip_vision, "clip_vision", "clip_vision")
        device = device_option(device)
        redux = bridge.resolve_model("style_models", "image_embedder", redux_model)
        siglip = bridge.resolve_model("clip_vision", "image_encoder", clip_vision)
        check_file(redux, "redux")
        check_file(siglip, "siglip")
        return (ReduxEncoderSpec(redux, siglip, LoadOptions(device=device, dtype=dtype)),)


class FluxReduxLoadModel:
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("FLUX_REDUX_MODEL",)
    RETURN_NAMES = ("flux_model",)
    OUTPUT_TOOLTIPS = ("The FLUX model (transformer + VAE, no text encoders); loaded on first use by Redux Generate.",)
    DESCRIPTION = ("Choose the FLUX.1 dev or schnell transformer (models/diffusion_models or models/unet, or a "
                   "diffusers folder in models/diffusers) and the FLUX VAE (models/vae, ae.safetensors). No T5 or "
                   "CLIP text encoder is needed. The model loads on first use through the pack's cache and is "
                   "freed by ComfyUI's 'Free model and node cache' or by the Unload node.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "transformer": (bridge.model_choices("diffusion_models", "transformer"), {
                "tooltip": "FLUX.1 transformer: a file in models/diffusion_models or models/unet "
                           "(flux1-dev.safetensors, flux1-schnell.safetensors, fp8 files too) or "
                           "diffusers/<folder> holding transformer/."}),
            "vae": (bridge.model_choices("vae", "vae"), {
                "tooltip": "FLUX autoencoder: models/vae/ae.safetensors, or diffusers/<folder> holding vae/."}),
            "variant": (params.VARIANT_CHOICES, {"default": "auto", "tooltip": (
                "auto: read from the weights (a guidance embedding means dev). Sets the scheduler and the "
                f"default steps: dev {params.VARIANTS['dev'].steps.default} with guidance, schnell "
                f"{params.VARIANTS['schnell'].steps.default} without; either runs "
                f"{params.VARIANTS['schnell'].steps.minimum}-{params.VARIANTS['schnell'].steps.maximum} steps.")}),
            "weight_dtype": (WEIGHT_DTYPE_CHOICES, {"default": "default", "tooltip": (
                "default: bf16 on CUDA, fp32 on CPU. bf16/fp16/fp32: that compute dtype. The weights keep the "
                "file's precision (an fp8 file stays fp8, a bf16 file bf16 under fp32; computed layer by layer in "
                "that dtype). fp8: every "
                "transformer weight stored in float8 (about half the VRAM of bf16), computed in the default "
                "dtype.")}),
            "offload": (params.OFFLOAD_CHOICES, {"default": "auto", "tooltip": (
                "auto: fit the card from the file sizes and free VRAM (all on the GPU, else fp8 weights, else "
                "group, else sequential; the choice is in the log and in info). none: all on the GPU. model: "
                "whole sub-models in turn. group: blocks streamed in ahead of use. sequential: layer by layer "
                "(least VRAM, slowest). Ignored on CPU.")}),
            "vae_tiling": (params.VAE_TILING_CHOICES, {"default": "auto", "tooltip": (
                "Decode in tiles to save memory. auto: on above 2048x2048 pixels.")}),
            "device": (DEVICE_CHOICES, {"default": "auto", "tooltip": DEVICE_TOOLTIP}),
        }, "optional": {  # optional, so workflows saved before them still load
            "speed": (params.SPEED_PRESETS, {"default": params.SPEED_NONE, "tooltip": SPEED_TOOLTIP}),
            "cache_threshold": ("FLOAT", number_widget(params.CACHE_THRESHOLD, params.CACHE_THRESHOLD.help)),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, transformer, vae):
        return files_checked_when_run()

    def load(self, transformer, vae, variant, weight_dtype, offload, vae_tiling, device, speed=params.SPEED_NONE,
             cache_threshold=params.CACHE_THRESHOLD.default):
        params.check_choice("weight_dtype", weight_dtype, WEIGHT_DTYPE_CHOICES)
        checks.file_choice(transformer, "transformer", "diffusion_models")
        checks.file_choice(vae, "vae", "vae")
        device = device_option(device)
        transformer_path = bridge.resolve_model("diffusion_models", "transformer", transformer)
        vae_path = bridge.resolve_model("vae", "vae", vae)
        check_file(transformer_path, "flux_transformer")
        check_file(vae_path, "vae")
        dtype, storage = WEIGHT_DTYPES[weight_dtype]
        options = LoadOptions(device=device, dtype=dtype, weight_storage=storage, offload=offload,
                              vae_tiling=vae_tiling, speed=speed)
        spec = FluxModelSpec(transformer_path, vae_path, params.check_choice("variant", variant,
                                                                             params.VARIANT_CHOICES), options,
                             cache_threshold=params.CACHE_THRESHOLD.validate(cache_threshold))
        return (spec,)


NODE_CLASS_MAPPINGS = {"FluxReduxLoadEncoder": FluxReduxLoadEncoder, "FluxReduxLoadModel": FluxReduxLoadModel}
NODE_DISPLAY_NAME_MAPPINGS = {"FluxReduxLoadEncoder": "Load Redux Encoder (FLUX Redux)",
                              "FluxReduxLoadModel": "Load FLUX Model (FLUX Redux)"}
