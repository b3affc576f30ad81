"""Local FLUX.1 Redux nodes: encode reference images, blend conditionings, generate, unload.

A basic variation graph is 6 nodes: Load Redux Encoder, Load FLUX Model, LoadImage, Redux Encode,
Redux Generate, SaveImage. The nodes only declare and convert; the work is in ..pipelines.

Steps: the widget defaults to 0, the variant's default (28 dev, 4 schnell), so one graph suits both; any
1-50 runs as set on either variant. Guidance is ignored for schnell (it has no guidance input), with a note in
`info`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace

from ..pipelines import checks, params
from ..pipelines.models import FluxModelSpec, ReduxEncoderSpec, kept_bytes, load_flux_model, load_redux_encoder
from ..pipelines.params import ParameterError
from ..pipelines.redux import ReduxConditioning, check_encode_options, encode
from ..pipelines.cache import CACHE
from ..pipelines.sampling import generate
from . import comfy_bridge as bridge
from . import comfy_memory as memory
from . import local_loaders
from .conditioning import ComfyReduxEncoder
from .convert import images_from_comfy
from .local_loaders import CATEGORY, model_variant
from .widgets import GENERATE_RETURN_NAMES, GENERATE_RETURN_TYPES, apply_variant_rules, number_widget

log = logging.getLogger(__name__)

MAX_BLEND_INPUTS = 4
CROP_TOOLTIP = ("How the image is fitted to SigLIP's square input. center: the largest centred square (ComfyUI's "
                "default); squash: the whole image, aspect not kept; pad: the whole image, aspect kept, grey bars "
                "whose tokens are dropped.")
CONDITIONING_TOOLTIP = "From Redux Encode (or its advanced version), Redux Combine or Redux + Prompt."


ENCODE_WORKING_BYTES = 256 * 2**20  # SigLIP activations for one 384x384 image, with room to spare
GIB_PER_MEGAPIXEL = 2**30  # activations of one image per megapixel (ComfyUI's own FLUX estimate is ~0.9 GiB)


def load_encoder(spec: ReduxEncoderSpec):
    """The Redux encoder from the shared cache, placed on its device by ComfyUI's memory manager."""
    options = memory.resolve_auto(spec)
    placed = replace(spec, options=memory.build_placement(options))
    encoder = load_redux_encoder(placed)
    memory.keep_while(spec, placed.cache_key())
    memory.make_ready(encoder, options, ENCODE_WORKING_BYTES)
    return encoder


def load_flux(spec: FluxModelSpec, gen: params.GenerationParams):
    """The FLUX model from the shared cache, placed by ComfyUI's memory manager with room for this run."""
    options = memory.resolve_auto(spec)
    resolved = replace(spec, options=options)
    placed = replace(spec, options=memory.build_placement(options, lambda: kept_bytes(resolved)))
    flux = load_flux_model(placed)
    memory.keep_while(spec, placed.cache_key())
    working = int(gen.num_images * gen.width * gen.height / 1e6 * GIB_PER_MEGAPIXEL)
    memory.make_ready(flux, options, working)
    return flux


# -- encode and blend --------------------------------------------------------------------------------------------

ENCODER_INPUTS = {
    "redux_encoder": ("REDUX_ENCODER", {"tooltip": "From Load Redux Encoder; or connect clip_vision and "
                                                   "style_model instead."}),
    "clip_vision": ("CLIP_VISION", {"tooltip": (
        "ComfyUI's Load CLIP Vision (sigclip_vision_patch14_384), with style_model: reuses the SigLIP the graph "
        "already loaded instead of redux_encoder.")}),
    "style_model": ("STYLE_MODEL", {"tooltip": "ComfyUI's Load Style Model (flux1-redux-dev), with clip_vision."}),
}


def pick_encoder(redux_encoder: ReduxEncoderSpec | None = None, clip_vision=None, style_model=None):
    """ComfyUI's CLIP vision + style model when both are connected, else the pack's Redux encoder."""
    if clip_vision is not None and style_model is not None:
        return ComfyReduxEncoder(clip_vision, style_model)
    if clip_vision is not None or style_model is not None:
        raise ValueError("connect both clip_vision (Load CLIP Vision: sigclip_vision_patch14_384) and style_model "
                         "(Load Style Model: flux1-redux-dev), or neither and use redux_encoder")
    if redux_encoder is None:
        raise ValueError("no encoder: connect redux_encoder (Load Redux Encoder), or clip_vision and style_model "
                         "from ComfyUI's Load CLIP Vision and Load Style Model")
    return load_encoder(redux_encoder)


def encode_progress():
    """on_image for the engine's encode: ComfyUI's progress bar, and Cancel between images."""
    progress = None

    def on_image(done: int, total: int) -> None:
        nonlocal progress
        progress = progress or bridge.Progress(total)
        progress.update(done, total)
        bridge.check_interrupt()

    return on_image


class FluxReduxEncode:
    CATEGORY = CATEGORY
    FUNCTION = "encode"
    RETURN_TYPES = ("REDUX_CONDITIONING",)
    RETURN_NAMES = ("conditioning",)
    OUTPUT_TOOLTIPS = ("Redux image tokens (small, on the CPU): connect to Redux Generate, Redux Combine or "
                       "Redux → Conditioning.",)
    DESCRIPTION = ("Encode reference image(s) with SigLIP + the Redux projector (the pack's Load Redux Encoder, or "
                   "ComfyUI's Load CLIP Vision + Load Style Model). A batch of N images is averaged (weight 1/N "
                   "each), so it is as strong as one image and keeps 729 tokens; use Redux Combine for other "
                   "weights, or blend concat to keep every image's tokens.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "Reference image(s); the images of a batch are averaged."}),
            "crop": (params.CROP_MODES, {"default": "center", "tooltip": CROP_TOOLTIP}),
        }, "optional": dict(ENCODER_INPUTS)}

    def encode(self, image, crop, redux_encoder=None, clip_vision=None, style_model=None):
        check_encode_options(crop)
        images = images_from_comfy(image, "image")
        encoder = pick_encoder(redux_encoder, clip_vision, style_model)
        return (encode(encoder, images, [1.0 / len(images)] * len(images), crop, on_image=encode_progress()),)


class FluxReduxCombine:
    CATEGORY = CATEGORY
    FUNCTION = "combine"
    RETURN_TYPES = ("REDUX_CONDITIONING",)
    RETURN_NAMES = ("conditioning",)
    OUTPUT_TOOLTIPS = ("The weighted blend of the connected conditionings.",)
    DESCRIPTION = ("Blend up to four Redux conditionings (multi-image blending). blend sum: a weighted sum of "
                   "their image tokens (diffusers' Redux; needs equal token counts); concat: their tokens one after "
                   "another (ComfyUI's chained Apply Style Model; any counts). Unconnected inputs are skipped; "
                   "weight 0 leaves an input out. A prompt from Redux + Prompt is kept (the first one found).")

    @classmethod
    def INPUT_TYPES(cls):
        weight = lambda n: ("FLOAT", number_widget(params.REFERENCE_WEIGHT,
                                                   f"Weight of conditioning_{n} in the blend."))
        optional = {}
        for n in range(2, MAX_BLEND_INPUTS + 1):
            optional[f"conditioning_{n}"] = ("REDUX_CONDITIONING", {"tooltip": f"Reference {n} (optional)."})
            optional[f"weight_{n}"] = weight(n)
        optional["blend"] = (params.BLEND_MODES, {"default": "sum", "tooltip": (  # last: older saved graphs still load
            "sum: add the weighted tokens (diffusers' Redux; inputs must have the same token count); concat: put "
            "them one after another (ComfyUI's chained Apply Style Model; any downsampling or masks).")})
        return {"required": {"conditioning_1": ("REDUX_CONDITIONING", {"tooltip": "Reference 1."}),
                             "weight_1": weight(1)},
                "optional": optional}

    def combine(self, conditioning_1: ReduxConditioning, weight_1: float, blend: str = "sum", **more):
        """Every connected input checked by the engine under its own name; all weights 0 is refused (the
        result would ignore every reference)."""
        params.check_choice("blend", blend, params.BLEND_MODES)
        named = {1: (conditioning_1, weight_1)}
        for n in range(2, MAX_BLEND_INPUTS + 1):
            if more.get(f"conditioning_{n}") is not None:
                named[n] = (more[f"conditioning_{n}"], more.get(f"weight_{n}", params.REFERENCE_WEIGHT.default))
        for n, (conditioning, weight) in named.items():
            checks.redux_conditioning(conditioning, f"conditioning_{n}", used=False)
            replace(params.REFERENCE_WEIGHT, name=f"weight_{n}").validate(weight)
        checks.total_weight({f"weight_{n}": weight for n, (_, weight) in named.items()})
        return (ReduxConditioning.combine(list(named.values()), blend),)


# -- generate ----------------------------------------------------------------------------------------------------

def plan_generation(variant: str, image_size, width, height, num_inference_steps, guidance_scale, seed,
                    num_images) -> tuple[params.GenerationParams, list[str]]:
    """Validated parameters for `variant`, and the warnings to report (guidance ignored for schnell)."""
    num_inference_steps, guidance_scale, warnings = apply_variant_rules(variant, num_inference_steps, guidance_scale)
    width, height = (width, height) if image_size == params.CUSTOM_SIZE else (None, None)
    gen = params.validate_generation(variant, image_size, width, height, num_inference_steps, guidance_scale,
                                     seed, num_images)
    return gen, warnings


def check_size(image_size=None, width=None, height=None) -> None:
    """The size rules ComfyUI's own min/max check cannot express (a custom side must divide by 16; width and
    height matter only for custom). None = a linked input, checked when the node runs."""
    if image_size is None:
        return
    params.check_choice("image_size", image_size, params.IMAGE_SIZE_CHOICES)
    if image_size == params.CUSTOM_SIZE:
        for spec, value in ((params.WIDTH, width), (params.HEIGHT, height)):
            if value is not None:
                spec.validate(value, "a custom image_size")
        if width is not None and height is not None:
            params.resolve_size(image_size, width, height)


class FluxReduxGenerate:
    CATEGORY = CATEGORY
    FUNCTION = "generate"
    RETURN_TYPES, RETURN_NAMES = GENERATE_RETURN_TYPES, GENERATE_RETURN_NAMES
    OUTPUT_TOOLTIPS = ("num_images images, [batch, height, width, 3].",
                       "JSON: seed used, size, steps, guidance, variant, timings and warnings.")
    DESCRIPTION = ("Generate variations of the Redux conditioning with a local FLUX.1 model, in one batched "
                   "call. Parameters are validated before any model work. Steps: 0 = the variant's default (28 dev, "
                   "4 schnell), or 1-50. guidance_scale is ignored for schnell. The same inputs and seed reproduce "
                   "the same images on the same device and dtype (the noise is drawn on the CPU, but CPU fp32 and "
                   "GPU bf16 compute differ).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("FLUX_REDUX_MODEL", {"tooltip": "From Load FLUX Model."}),
            "conditioning": ("REDUX_CONDITIONING", {"tooltip": CONDITIONING_TOOLTIP}),
            "image_size": (params.IMAGE_SIZE_CHOICES, {"default": params.DEFAULT_IMAGE_SIZE, "tooltip": (
                "Output size: " + ", ".join(f"{k} {w}x{h}" for k, (w, h) in params.SIZE_PRESETS.items())
                + "; custom uses width and height.")}),
            "width": ("INT", number_widget(params.WIDTH, "Output width when image_size is custom; a multiple of 16.")),
            "height": ("INT", number_widget(params.HEIGHT,
                                            "Output height when image_size is custom; a multiple of 16.")),
            "num_inference_steps": ("INT", number_widget(params.STEPS_LIMITS, (
                "Denoising steps: 0 = the variant's default (28 dev, 4 schnell), or 1-50 on either."))),
            "guidance_scale": ("FLOAT", number_widget(params.GUIDANCE, (
                "Distilled guidance (dev only): higher follows the references more closely. Ignored for "
                "schnell."), round=0.01)),
            "seed": ("INT", number_widget(params.SEED, "Seed of the noise; the same seed gives the same images on "
                                                       "the same device and dtype.",
                                          control_after_generate=True)),
            "num_images": ("INT", number_widget(params.NUM_IMAGES, "Images generated in one batched call (1-4).")),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, image_size=None, width=None, height=None):
        """Runs when the prompt is queued, before any node; steps, guidance, seed and num_images get ComfyUI's
        own min/max check (the same ranges). ComfyUI repeats a failure message once per argument here."""
        try:
            check_size(image_size, width, height)
        except ParameterError as exc:
            return str(exc)
        return True

    def generate(self, model: FluxModelSpec, conditioning: ReduxConditioning, image_size, width, height,
                 num_inference_steps, guidance_scale, seed, num_images):
        settings = (image_size, width, height, num_inference_steps, guidance_scale, seed, num_images)
        return run_generation(model, conditioning, settings)


def run_generation(model: FluxModelSpec, conditioning: ReduxConditioning, settings: tuple, **img2img):
    """(images, info JSON) for the generate nodes; settings = the GENERATE widgets in order. Validation comes
    before any model work; img2img is `init_image=` and `denoise=`, passed to the engine."""
    checks.redux_conditioning(conditioning, "conditioning")
    gen, warnings = plan_generation(model_variant(model), *settings)
    bridge.check_interrupt()
    flux = load_flux(model, gen)
    for warning in warnings:
        log.warning("FLUX Redux Generate: %s", warning)

    progress = bridge.Progress(gen.num_inference_steps)
    preview = bridge.make_previewer(memory.load_device(model.options), flux.latent_channels, flux.vae_scale_factor,
                                    gen.height, gen.width)

    def on_step(step, total, latents):
        progress.update(step, total, preview(latents) if preview is not None else None)
        bridge.check_interrupt()

    result = generate(flux, conditioning, gen, on_step=on_step, vae_tiling=model.options.vae_tiling, **img2img)
    info = dict(result.metadata, warnings=warnings)
    return (result.images, json.dumps(info))


class FluxReduxUnload:
    CATEGORY = CATEGORY
    FUNCTION = "unload"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_NODE = True
    OUTPUT_TOOLTIPS = ("The images input, passed through unchanged.",)
    DESCRIPTION = ("Free every FLUX model and Redux encoder this pack has loaded (RAM and VRAM), so other models "
                   "fit without restarting ComfyUI. Runs on every queue. Put it between Redux Generate and Save "
                   "Image to free memory once the images exist. ComfyUI's 'Free model and node cache' does the "
                   "same.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"optional": {"images": ("IMAGE", {"tooltip": "Optional: images to pass through, so the unload "
                                                             "happens after they were generated."})}}

    @classmethod
    def IS_CHANGED(cls, **inputs):
        return float("nan")  # never cached: every queue unloads

    def unload(self, images=None):
        dropped = CACHE.unload()
        log.info("FLUX Redux: unloaded %d model(s)", dropped)
        return (images,)


NODE_CLASS_MAPPINGS = {
    **local_loaders.NODE_CLASS_MAPPINGS,
    "FluxReduxEncode": FluxReduxEncode,
    "FluxReduxCombine": FluxReduxCombine,
    "FluxReduxGenerate": FluxReduxGenerate,
    "FluxReduxUnload": FluxReduxUnload,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    **local_loaders.NODE_DISPLAY_NAME_MAPPINGS,
    "FluxReduxEncode": "Redux Encode (FLUX Redux)",
    "FluxReduxCombine": "Redux Combine (FLUX Redux)",
    "FluxReduxGenerate": "Redux Generate (FLUX Redux)",
    "FluxReduxUnload": "Unload Models (FLUX Redux)",
}
