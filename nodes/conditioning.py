"""Redux for any ComfyUI sampler: the pack's Redux tokens appended to a ComfyUI CONDITIONING, and ComfyUI's own
CLIP_VISION + STYLE_MODEL as the encoder of the pack's encode nodes.

CONDITIONING is ComfyUI's format (a list of [tokens [B, n, width], dict] pairs), so everything about it lives here.
Redux → Conditioning does what ComfyUI's StyleModelApply does with its tokens (same strength types, same
attention-bias layout), with the pack's Redux tokens, so KSampler / SamplerCustomAdvanced with any FLUX MODEL
(UNETLoader, GGUF loaders, LoRA chains) get the pack's restyle controls.
"""

from __future__ import annotations

import logging
import math

import torch

from ..pipelines import checks, params
from ..pipelines.redux import TEXT_TOKENS, ReduxConditioning, TextConditioning
from .local_loaders import CATEGORY
from .widgets import number_widget

STRENGTH_TYPES = ("multiply", "attn_bias")  # StyleModelApply's choices
STRENGTH = params.NumberSpec("strength", 0.0, 10.0, 1.0, step=0.001, integer=False,
                             help="StyleModelApply's strength")
FLUX_POOLED_WIDTH = 768  # CLIP-L's pooled vector, FLUX's vector input
log = logging.getLogger(__name__)


def empty_flux_conditioning(redux: ReduxConditioning) -> list:
    """What a FLUX text encoder would give, without loading one: the Redux conditioning's own prompt (from Redux
    + Prompt) or, without one, diffusers' Redux text part (512 zero tokens, zero pooled vector)."""
    embeds, pooled = redux.prompt_embeds(redux.width, FLUX_POOLED_WIDTH)
    return [[embeds[:, :-redux.token_count], {"pooled_output": pooled}]]


def attention_bias(keys: dict, n_txt: int, n_redux: int, batch: int, bias: float) -> torch.Tensor:
    """ComfyUI's attention_mask for FLUX after inserting `n_redux` tokens after the `n_txt` text tokens: an
    additive bias over text + Redux + reference-image tokens (attention_mask_img_shape), float16. An earlier mask
    is kept around the new block (a boolean one becomes log(mask)); attention *to* the new tokens from the text
    and from everything after them gets `bias`."""
    height, width = keys.get("attention_mask_img_shape", (1, 1))
    n_ref = height * width
    old = keys.get("attention_mask")
    if old is None:
        old = torch.zeros(batch, n_txt + n_ref, n_txt + n_ref, dtype=torch.float16)
    elif old.dtype == torch.bool:
        old = torch.log(old.to(torch.float16))
    old = old.to("cpu", torch.float16)
    total = n_txt + n_redux + n_ref
    keep = torch.cat([torch.arange(n_txt), torch.arange(n_txt + n_redux, total)])  # old rows/columns, new places
    mask = torch.zeros(batch, total, total, dtype=torch.float16)
    mask[:, keep[:, None], keep[None, :]] = old
    new = slice(n_txt, n_txt + n_redux)
    mask[:, :n_txt, new] = bias
    mask[:, n_txt + n_redux:, new] = bias
    return mask


def append_redux(conditioning: list, tokens: torch.Tensor, strength: float, strength_type: str) -> list:
    """StyleModelApply's rule with these tokens [1, n, width]: multiply scales them; attn_bias leaves them and
    biases attention to them by log(strength) (0 ignores them, 1 is no bias); an existing attention mask is
    always enlarged to cover them."""
    strength = STRENGTH.validate(strength)
    params.check_choice("strength_type", strength_type, STRENGTH_TYPES)
    if strength_type == "multiply":
        tokens = tokens * strength
    bias = math.log(strength) if strength > 0 else -math.inf
    out = []
    for embeds, keys in conditioning:
        keys = dict(keys)
        if "attention_mask" in keys or (strength_type == "attn_bias" and strength != 1.0):
            keys["attention_mask"] = attention_bias(keys, embeds.shape[1], tokens.shape[1], embeds.shape[0],
                                                    bias if strength_type == "attn_bias" else 0.0).to(embeds.device)
            keys["attention_mask_img_shape"] = keys.get("attention_mask_img_shape", (1, 1))
        batch_tokens = tokens.to(embeds.device, embeds.dtype).expand(embeds.shape[0], -1, -1)
        out.append([torch.cat([embeds, batch_tokens], dim=1), keys])
    return out


def check_conditioning(conditioning, width: int, name: str = "conditioning") -> None:
    """A readable error naming the input `name` for what is not a FLUX CONDITIONING as wide as the Redux tokens,
    with finite tokens and pooled vector (the engine's checks)."""
    if not isinstance(conditioning, (list, tuple)) or not conditioning:
        raise ValueError(f"{name}: expected ComfyUI CONDITIONING (from CLIPTextEncode), a non-empty list of "
                         f"[tensor, dict]; got {checks.describe(conditioning)}")
    for entry in conditioning:
        embeds = entry[0] if isinstance(entry, (list, tuple)) and entry else entry
        keys = entry[1] if isinstance(entry, (list, tuple)) and len(entry) > 1 else {}
        if not isinstance(embeds, torch.Tensor) or embeds.ndim != 3:
            raise ValueError(f"{name}: CONDITIONING tensor must be [batch, tokens, width], got "
                             f"{getattr(embeds, 'shape', type(embeds).__name__)}")
        if not isinstance(keys, dict):
            raise ValueError(f"{name}: each CONDITIONING entry is [tensor, dict]; got {checks.describe(keys)} "
                             "for the dict")
        if embeds.shape[-1] != width:
            raise ValueError(f"{name}: the prompt CONDITIONING is {embeds.shape[-1]} wide but the Redux tokens are "
                             f"{width} wide: encode the prompt with DualCLIPLoader type flux (t5xxl + clip_l) and "
                             "CLIPTextEncode; SD 1.5 or SDXL text conditionings do not fit FLUX")
        checks.text_conditioning(embeds, keys.get("pooled_output"), name)


def text_from_comfy(conditioning, width: int, name: str = "prompt") -> TextConditioning:
    """A FLUX CONDITIONING (CLIPTextEncode) -> the engine's prompt: its first entry's T5 tokens [1, L, width] and
    pooled CLIP-L vector (float32, CPU)."""
    check_conditioning(conditioning, width, name)
    if len(conditioning) > 1:
        log.warning("CONDITIONING has %d entries; only the first is used as the Redux prompt", len(conditioning))
    embeds, keys = conditioning[0][0], (conditioning[0][1] if len(conditioning[0]) > 1 else {})
    pooled = keys.get("pooled_output")
    to_cpu = lambda t: t[:1].detach().to("cpu", torch.float32)  # noqa: E731
    return TextConditioning(to_cpu(embeds), None if pooled is None else to_cpu(pooled))


class FluxReduxToConditioning:
    DESCRIPTION = ("Append the pack's Redux tokens (with every restyle control of the encode nodes: strength, "
                   "downsampling, masks, auto-crop, several references) to a ComfyUI CONDITIONING, exactly as "
                   "ComfyUI's Apply Style Model does, so KSampler or SamplerCustomAdvanced with any FLUX model "
                   "(UNETLoader, GGUF, LoRAs) use them. Without a conditioning input the node makes FLUX's empty one "
                   "(no text encoder needed), or uses the prompt set with Redux + Prompt.")
    CATEGORY, FUNCTION = CATEGORY, "apply"
    RETURN_TYPES, RETURN_NAMES = ("CONDITIONING",), ("conditioning",)
    OUTPUT_TOOLTIPS = ("The conditioning with the Redux tokens appended: connect to KSampler's positive, "
                       "BasicGuider, or FluxGuidance.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "redux_conditioning": ("REDUX_CONDITIONING", {"tooltip": "From Redux Encode (advanced), Redux Combine "
                                                                     "or Redux + Prompt."}),
            "strength": ("FLOAT", number_widget(STRENGTH, (
                "As in Apply Style Model. multiply: scales the Redux tokens. attn_bias: attention to them is biased "
                "by log(strength); 1 = no bias, 0 = ignored."))),
            "strength_type": (STRENGTH_TYPES, {"default": "multiply", "tooltip": (
                "multiply scales the tokens; attn_bias leaves them and weights how much the image attends to "
                "them (ComfyUI's attention mask).")}),
        }, "optional": {
            "conditioning": ("CONDITIONING", {"tooltip": (
                "From CLIPTextEncode with a FLUX text encoder; unconnected: FLUX's empty text conditioning "
                f"({TEXT_TOKENS} zero tokens), or the prompt set with Redux + Prompt.")}),
        }}

    def apply(self, redux_conditioning: ReduxConditioning, strength, strength_type, conditioning=None):
        checks.redux_conditioning(redux_conditioning, "redux_conditioning")
        if conditioning is None:
            conditioning = empty_flux_conditioning(redux_conditioning)
        check_conditioning(conditioning, redux_conditioning.width)
        return (append_redux(conditioning, redux_conditioning.image_tokens, strength, strength_type),)


class ComfyReduxEncoder:
    """The engine's image-token encoder (image_size, embed) over ComfyUI's own CLIP_VISION (CLIPVisionLoader) and
    STYLE_MODEL (StyleModelLoader), so a graph that loaded them does not load SigLIP a second time. The pack
    resizes to the vision model's size first, so ComfyUI's preprocessing only normalises (no second resize)."""

    def __init__(self, clip_vision, style_model):
        self.clip_vision, self.style_model = clip_vision, style_model

    @property
    def image_size(self) -> int:
        return self.clip_vision.image_size

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        output = self.clip_vision.encode_image(pixels, crop=False)
        return self.style_model.get_cond(output).float().cpu()


NODE_CLASS_MAPPINGS = {"FluxReduxToConditioning": FluxReduxToConditioning}
NODE_DISPLAY_NAME_MAPPINGS = {"FluxReduxToConditioning": "Redux → Conditioning (FLUX Redux)"}
