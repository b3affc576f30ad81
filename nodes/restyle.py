"""Restyle nodes: Redux Encode (advanced), Redux + Prompt, Redux Generate img2img.

They add the restyle controls of the engine (strength, token-grid downsampling, masks, crop modes, auto-crop,
prompt mixing with ComfyUI's own CLIPTextEncode output, img2img) to the local graph. Like the other nodes they
only declare, convert and validate (before any model work); the work is in ..pipelines.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace

from ..pipelines import checks, params
from ..pipelines.models import FluxModelSpec, ReduxEncoderSpec
from ..pipelines.redux import ReduxConditioning, check_encode_options, encode
from .conditioning import text_from_comfy
from .convert import image_batch_to_pils, images_from_comfy, masks_from_comfy
from .local import ENCODER_INPUTS, FluxReduxEncode, FluxReduxGenerate, encode_progress, pick_encoder, run_generation
from .widgets import number_widget

log = logging.getLogger(__name__)

CATEGORY = "FLUX Redux/restyle"
STRENGTH = replace(params.REFERENCE_WEIGHT, name="strength")
MATCH_INIT = "match_init_image"
IMG2IMG_SIZE_CHOICES = (MATCH_INIT, *params.IMAGE_SIZE_CHOICES)
MATCH_PIXELS = 1024 * 1024  # match_init_image: about one megapixel, FLUX's native size


class FluxReduxEncodeAdvanced:
    CATEGORY = CATEGORY
    FUNCTION = "encode"
    RETURN_TYPES = ("REDUX_CONDITIONING",)
    RETURN_NAMES = ("conditioning",)
    OUTPUT_TOOLTIPS = ("Redux image tokens: connect to Redux + Prompt, Redux Combine or a Redux Generate node.",)
    DESCRIPTION = ("Encode a reference with the restyle controls: strength multiplies its tokens, downsampling "
                   "shrinks the 27x27 token grid so the reference copies less and a prompt says more, a mask keeps "
                   "only the tokens it covers (optionally after auto-cropping to the mask), and crop pad keeps the "
                   "whole image at its aspect. With every control at its default it equals Redux Encode.")

    @classmethod
    def INPUT_TYPES(cls):
        inputs = dict(FluxReduxEncode.INPUT_TYPES()["required"])  # image, crop
        inputs["image"] = ("IMAGE", {"tooltip": "Reference image(s); the images of a batch are averaged, then "
                                                "multiplied by strength."})
        return {"required": {
            **inputs,
            "strength": ("FLOAT", number_widget(STRENGTH, (
                "Multiplies this reference's Redux tokens: below 1 loosens its hold on the result, above 1 "
                "tightens it, 0 leaves it out."))),
            "downsample_factor": ("FLOAT", number_widget(params.DOWNSAMPLE_FACTOR, (
                "Shrinks the 27x27 grid of Redux tokens by this factor (3 gives 9x9 = 81 tokens), so the reference "
                "dictates less detail and a prompt has more say; 1 keeps every token."))),
            "downsample_mode": (params.DOWNSAMPLE_MODES, {"default": "area", "tooltip": (
                "How tokens are merged when downsampling: area averages them (smoothest), bilinear and bicubic "
                "interpolate, nearest keeps one of each group.")}),
            "autocrop": ("BOOLEAN", {"default": False, "tooltip": (
                "Crop the reference to the mask's bounding box (plus autocrop_margin) before encoding, so the "
                "masked subject fills SigLIP's view; needs a mask.")}),
            "autocrop_margin": ("INT", number_widget(params.AUTOCROP_MARGIN, (
                "Pixels kept around the mask's bounding box when autocrop is on."))),
        }, "optional": {
            **ENCODER_INPUTS,
            "mask": ("MASK", {"tooltip": (
                "Only the Redux tokens this mask covers (1 = keep) count; it is resized to the image and follows "
                "the crop. LoadImage's MASK is the area painted in its Mask Editor.")}),
        }}

    def encode(self, image, crop, strength, downsample_factor, downsample_mode, autocrop, autocrop_margin,
               redux_encoder: ReduxEncoderSpec | None = None, clip_vision=None, style_model=None, mask=None):
        margin = autocrop_margin if autocrop else None
        check_encode_options(crop, downsample_factor, downsample_mode, margin)  # all before the encoder loads
        strength = STRENGTH.validate(strength)
        images = images_from_comfy(image, "image")
        masks = None if mask is None else masks_from_comfy(mask, len(images), "mask")
        if autocrop and masks is None:
            raise ValueError("autocrop needs a mask: connect a MASK (e.g. LoadImage's, painted in its Mask "
                             "Editor) or turn autocrop off")
        masks, margin = drop_unpainted_masks(masks, margin)
        encoder = pick_encoder(redux_encoder, clip_vision, style_model)
        return (encode(encoder, images, [strength / len(images)] * len(images), crop, masks=masks,
                       downsample_factor=downsample_factor, downsample_mode=downsample_mode,
                       autocrop_margin=margin, on_image=encode_progress()),)


def drop_unpainted_masks(masks, margin):
    """(masks, autocrop margin) with an all-empty mask batch read as "nothing painted yet": LoadImage gives an
    empty MASK for a reference without a painted area, so the whole reference is used (and a warning logged),
    which lets the masked-reference template run as shipped. A batch where only some masks are empty is refused:
    which references should count whole is not for the node to guess."""
    if masks is None:
        return None, margin
    empty = [n for n, m in enumerate(masks, 1) if float(m.max()) < 0.5]
    if not empty:
        return masks, margin
    if len(empty) < len(masks):
        raise ValueError(f"mask {empty[0]} is empty (no value >= 0.5) while others are painted, so that reference "
                         "would give no Redux token: paint it in the Mask Editor, or connect one mask per image")
    log.warning("FLUX Redux Encode (advanced): the mask is empty (nothing painted in LoadImage's Mask Editor), so "
                "the whole reference is used%s; paint the part to keep to restrict it",
                " and autocrop is skipped" if margin is not None else "")
    return None, None


class FluxReduxPrompt:
    CATEGORY = CATEGORY
    FUNCTION = "apply"
    RETURN_TYPES = ("REDUX_CONDITIONING",)
    RETURN_NAMES = ("conditioning",)
    OUTPUT_TOOLTIPS = ("The Redux conditioning with the prompt put before its image tokens.",)
    DESCRIPTION = ("Mix a text prompt into the Redux conditioning: the prompt's T5 tokens come first and the Redux "
                   "image tokens follow (as diffusers' Redux pipeline does), each with its own scale. The prompt is "
                   "ComfyUI's CLIPTextEncode output with a FLUX DualCLIPLoader (t5xxl + clip_l), so no second T5 "
                   "is loaded. Put it after Redux Combine to prompt a blend; a later prompt replaces an earlier one.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "conditioning": ("REDUX_CONDITIONING", {"tooltip": "From Redux Encode (advanced) or Redux Combine."}),
            "prompt_scale": ("FLOAT", number_widget(params.PROMPT_SCALE, (
                "Multiplies the prompt's T5 tokens: 0 silences the text, higher values let it steer more against "
                "the image tokens."))),
            "pooled_scale": ("FLOAT", number_widget(params.POOLED_SCALE, (
                "Multiplies the prompt's pooled CLIP-L vector (FLUX's global summary of the text); 0 leaves it "
                "out, as Redux alone does."))),
        }, "optional": {
            "prompt": ("CONDITIONING", {"tooltip": (
                "From CLIPTextEncode fed by DualCLIPLoader with type flux (t5xxl + clip_l); unconnected, the "
                "conditioning passes through unchanged.")}),
        }}

    def apply(self, conditioning: ReduxConditioning, prompt_scale, pooled_scale, prompt=None):
        checks.redux_conditioning(conditioning, "conditioning", used=False)
        if prompt is None:
            return (conditioning,)
        text = text_from_comfy(prompt, conditioning.width, "prompt")
        return (conditioning.with_prompt(text, prompt_scale, pooled_scale),)


def match_size(width: int, height: int, pixels: int | None = None) -> tuple[int, int]:
    """An output size with the aspect of width x height, about `pixels` in area, sides multiples of 16."""
    scale = math.sqrt((pixels or MATCH_PIXELS) / (width * height))
    side = lambda v, spec: int(min(spec.maximum, max(spec.minimum, round(v * scale / 16) * 16)))  # noqa: E731
    return side(width, params.WIDTH), side(height, params.HEIGHT)


class FluxReduxGenerateImg2Img:
    CATEGORY = CATEGORY
    FUNCTION = "generate"
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("images", "info")
    OUTPUT_TOOLTIPS = FluxReduxGenerate.OUTPUT_TOOLTIPS
    DESCRIPTION = ("Restyle a picture: start from init_image instead of pure noise and redraw it toward the Redux "
                   "conditioning (diffusers' FLUX img2img, same embeddings as Redux Generate). denoise sets how "
                   "much is redrawn. The other widgets are Redux Generate's, with the same rules; image_size "
                   "match_init_image keeps the picture's aspect ratio.")

    @classmethod
    def INPUT_TYPES(cls):
        inputs = dict(FluxReduxGenerate.INPUT_TYPES()["required"])
        inputs["image_size"] = (IMG2IMG_SIZE_CHOICES, {"default": MATCH_INIT, "tooltip": (
            "match_init_image: the init image's aspect ratio at about one megapixel (sides multiples of 16); the "
            "presets and custom are as in Redux Generate.")})
        inputs["init_image"] = ("IMAGE", {"tooltip": "The picture to restyle (one image); it is resized to the "
                                                     "output size."})
        inputs["denoise"] = ("FLOAT", number_widget(params.DENOISE, (
            "How much of init_image is redrawn: 1.0 ignores it, about 0.3 keeps its layout and colours; only "
            "steps x denoise of the steps run."), round=0.01))
        return {"required": inputs}

    @classmethod
    def VALIDATE_INPUTS(cls, image_size=None, width=None, height=None):
        return image_size == MATCH_INIT or FluxReduxGenerate.VALIDATE_INPUTS(image_size, width, height)

    def generate(self, model: FluxModelSpec, conditioning: ReduxConditioning, image_size, width, height,
                 num_inference_steps, guidance_scale, seed, num_images, init_image, denoise):
        denoise = params.DENOISE.validate(denoise)
        pictures = image_batch_to_pils(init_image, "init_image")
        if len(pictures) != 1:
            raise ValueError(f"init_image is a batch of {len(pictures)} images; this node restyles one: pick one "
                             "with ImageFromBatch, or queue one run per image")
        params.check_choice("image_size", image_size, IMG2IMG_SIZE_CHOICES)
        if image_size == MATCH_INIT:
            image_size, (width, height) = params.CUSTOM_SIZE, match_size(*pictures[0].size)
        settings = (image_size, width, height, num_inference_steps, guidance_scale, seed, num_images)
        return run_generation(model, conditioning, settings, init_image=pictures[0], denoise=denoise)


NODE_CLASS_MAPPINGS = {
    "FluxReduxEncodeAdvanced": FluxReduxEncodeAdvanced,
    "FluxReduxPrompt": FluxReduxPrompt,
    "FluxReduxGenerateImg2Img": FluxReduxGenerateImg2Img,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "FluxReduxEncodeAdvanced": "Redux Encode Advanced (FLUX Redux)",
    "FluxReduxPrompt": "Redux + Prompt (FLUX Redux)",
    "FluxReduxGenerateImg2Img": "Redux Generate img2img (FLUX Redux)",
}
