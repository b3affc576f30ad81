"""Redux conditioning: reference image(s) -> SigLIP features -> Redux tokens -> FLUX text-stream embeddings.

The maths is that of diffusers' FluxPriorReduxPipeline (image tokens appended after 512 text tokens, zero
when there is no prompt; pooled zeros; per-image scales, then a sum), written against the model's own widths
so any transformer size works.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from . import params
from .models import ReduxEncoder

TEXT_TOKENS = 512  # FLUX's T5 sequence length; Redux tokens follow it


@dataclass
class ReduxConditioning:
    """Weighted sum of the references' Redux tokens, [1, tokens, width], kept on the CPU in float32.

    Small (729 x 4096 floats) so it can be cached, saved or passed between nodes. The text part is built
    for a given transformer by `prompt_embeds()`.
    """

    image_tokens: torch.Tensor
    weights: tuple[float, ...]

    @property
    def width(self) -> int:
        return self.image_tokens.shape[-1]

    def prompt_embeds(self, joint_width: int, pooled_width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(prompt_embeds [1, 512 + tokens, joint_width], pooled [1, pooled_width]) as FLUX expects them."""
        if joint_width != self.width:
            raise ValueError(f"Redux tokens are {self.width} wide but this transformer's text stream is "
                             f"{joint_width} wide: the Redux model does not belong to this FLUX model.")
        zeros = self.image_tokens.new_zeros(1, TEXT_TOKENS, self.width)
        return torch.cat([zeros, self.image_tokens], dim=1), self.image_tokens.new_zeros(1, pooled_width)

    @staticmethod
    def combine(items: Sequence[tuple["ReduxConditioning", float]]) -> "ReduxConditioning":
        """Blend conditionings with extra weights (a weighted sum, as for several reference images)."""
        if not items:
            raise ValueError("combine needs at least one Redux conditioning")
        widths = {c.width for c, _ in items}
        if len(widths) > 1:
            raise ValueError(f"cannot combine Redux conditionings of different widths {sorted(widths)}")
        weights = [params.REFERENCE_WEIGHT.validate(w) for _, w in items]
        tokens = sum(c.image_tokens * w for (c, _), w in zip(items, weights))
        return ReduxConditioning(tokens, tuple(w * cw for (c, _), w in zip(items, weights) for cw in c.weights))


def to_pil_rgb(image) -> Image.Image:
    """One image from PIL (any mode, 16-bit too), numpy (HW, HWC; uint8, uint16 or float 0..1) or a torch
    tensor (HWC float 0..1, as in ComfyUI's IMAGE). Transparent areas are composited onto white."""
    if isinstance(image, torch.Tensor):
        image = image.detach().to("cpu", torch.float32).numpy()
    if isinstance(image, np.ndarray):
        array = image
        if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
            array = array.transpose(1, 2, 0)  # CHW -> HWC
        if array.dtype == np.uint16:
            array = array / 65535.0
        elif array.dtype != np.uint8:
            array = np.clip(array.astype(np.float32), 0.0, 1.0)
        if array.dtype != np.uint8:
            array = (array * 255.0 + 0.5).astype(np.uint8)
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.ndim not in (2, 3):
            raise ValueError(f"image array must be HxW or HxWxC, got shape {image.shape}")
        image = Image.fromarray(array)
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image, numpy array or torch tensor, got {type(image).__name__}")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float32)
        scale = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray((np.clip(array / scale, 0, 1) * 255 + 0.5).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def split_images(images) -> list:
    """A list, a single image, or a batch ([B,H,W,C] tensor/array) -> list of single images."""
    if isinstance(images, (list, tuple)):
        return [im for item in images for im in split_images(item)]
    if isinstance(images, (torch.Tensor, np.ndarray)) and images.ndim == 4:
        return list(images)
    return [images]


def crop_for_siglip(image: Image.Image, crop: str) -> Image.Image:
    """center: the largest centred square (ComfyUI's default); squash: the whole image, aspect not kept."""
    params.check_choice("crop", crop, params.CROP_MODES)
    if crop == "squash":
        return image
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side))


@torch.inference_mode()
def image_tokens(encoder: ReduxEncoder, images: Iterable, crop: str = "center") -> torch.Tensor:
    """Redux tokens [N, tokens, width] (float32, CPU) for N images."""
    pil = [crop_for_siglip(to_pil_rgb(im), crop) for im in images]
    if not pil:
        raise ValueError("no reference image given")
    pixels = encoder.processor(images=pil, return_tensors="pt")["pixel_values"]
    pixels = pixels.to(encoder.device, encoder.dtype)
    features = encoder.vision(pixel_values=pixels).last_hidden_state
    return encoder.projector(features).image_embeds.float().cpu()


def encode(encoder: ReduxEncoder, images, weights: Sequence[float] | None = None,
           crop: str = "center") -> ReduxConditioning:
    """Encode one or more reference images; several are blended by `weights` (default 1 each)."""
    singles = split_images(images)
    if weights is None:
        weights = [1.0] * len(singles)
    if len(weights) != len(singles):
        raise ValueError(f"got {len(singles)} reference images but {len(weights)} weights")
    weights = [params.REFERENCE_WEIGHT.validate(w) for w in weights]
    tokens = image_tokens(encoder, singles, crop)
    scale = torch.tensor(weights, dtype=tokens.dtype)[:, None, None]
    return ReduxConditioning((tokens * scale).sum(dim=0, keepdim=True), tuple(weights))
