"""Redux conditioning: reference image(s) -> SigLIP features -> Redux tokens -> FLUX text-stream embeddings.

Without restyle controls the maths is that of diffusers' FluxPriorReduxPipeline (image tokens appended after
512 text tokens, zero when there is no prompt; pooled zeros; per-image scales, then a sum), written against
the model's own widths so any transformer size works. Restyle controls act on the token grid (27x27 for
FLUX Redux): downsampling shrinks it, masks drop tokens, weights multiply them, a prompt fills the text part.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Callable, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import params
from .references import prepare, square_pixels, to_pil_rgb  # noqa: F401  (to_pil_rgb is part of this module's API)

TEXT_TOKENS = 512  # FLUX's T5 sequence length; Redux tokens follow it
log = logging.getLogger(__name__)


class ImageTokenEncoder(Protocol):
    """What encoding needs: the square input size, and square images [N, size, size, 3] in 0..1 -> Redux tokens
    [N, tokens, width] (float32, CPU). The pack's ReduxEncoder is one; the ComfyUI nodes adapt ComfyUI's own
    CLIP vision + style model to it."""

    image_size: int

    def embed(self, pixels: torch.Tensor) -> torch.Tensor: ...


@dataclass
class TextConditioning:
    """A prompt's T5 tokens [1, L, width] and CLIP pooled vector [1, P] (None: zeros)."""

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None


@dataclass
class ReduxConditioning:
    """Redux image tokens [1, tokens, width] (float32, CPU) and, optionally, a prompt to put before them.

    Small (729 x 4096 floats) so it can be cached, saved or passed between nodes. The text part is built
    for a given transformer by `prompt_embeds()`.
    """

    image_tokens: torch.Tensor
    weights: tuple[float, ...]
    text: TextConditioning | None = None
    prompt_scale: float = 1.0
    pooled_scale: float = 1.0

    @property
    def width(self) -> int:
        return self.image_tokens.shape[-1]

    @property
    def token_count(self) -> int:
        return self.image_tokens.shape[1]

    def with_prompt(self, text: TextConditioning | None, prompt_scale: float = 1.0,
                    pooled_scale: float = 1.0) -> "ReduxConditioning":
        return replace(self, text=text, prompt_scale=params.PROMPT_SCALE.validate(prompt_scale),
                       pooled_scale=params.POOLED_SCALE.validate(pooled_scale))

    def prompt_embeds(self, joint_width: int, pooled_width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(prompt_embeds [1, text + tokens, joint_width], pooled [1, pooled_width]) as FLUX expects them."""
        if joint_width != self.width:
            raise ValueError(f"Redux tokens are {self.width} wide but this transformer's text stream is "
                             f"{joint_width} wide: the Redux model does not belong to this FLUX model.")
        pooled = self.image_tokens.new_zeros(1, pooled_width)
        if self.text is None:
            text = self.image_tokens.new_zeros(1, TEXT_TOKENS, self.width)
        else:
            if self.text.embeds.shape[-1] != joint_width:
                raise ValueError(f"the prompt's tokens are {self.text.embeds.shape[-1]} wide, the transformer "
                                 f"expects {joint_width}: use FLUX's T5-XXL text encoder")
            text = self.text.embeds.to(self.image_tokens.dtype) * self.prompt_scale
            if self.text.pooled is not None:
                if self.text.pooled.shape[-1] != pooled_width:
                    raise ValueError(f"the prompt's pooled vector is {self.text.pooled.shape[-1]} wide, the "
                                     f"transformer expects {pooled_width}: use FLUX's CLIP-L text encoder")
                pooled = self.text.pooled.to(pooled.dtype) * self.pooled_scale
        return torch.cat([text, self.image_tokens], dim=1), pooled

    @staticmethod
    def combine(items: Sequence[tuple["ReduxConditioning", float]], blend: str = "sum") -> "ReduxConditioning":
        """Blend conditionings with extra weights. sum: weighted sum (same token counts needed);
        concat: tokens one after another, as ComfyUI's chained StyleModelApply. Weight 0 leaves one out.
        The first prompt found is kept."""
        if not items:
            raise ValueError("combine needs at least one Redux conditioning")
        widths = {c.width for c, _ in items}
        if len(widths) > 1:
            raise ValueError(f"cannot combine Redux conditionings of different widths {sorted(widths)}")
        weights = [params.REFERENCE_WEIGHT.validate(w) for _, w in items]
        tokens = blend_tokens([(c.image_tokens[0], None, w) for (c, _), w in zip(items, weights)], blend)[None]
        kept = [(c, w) for (c, _), w in zip(items, weights) if w > 0]
        text = next((c for c, _ in items if c.text is not None), items[0][0])
        return ReduxConditioning(tokens, tuple(w * cw for c, w in kept for cw in c.weights), text.text,
                                 text.prompt_scale, text.pooled_scale)


def blend_tokens(parts: Sequence[tuple[torch.Tensor, torch.Tensor | None, float]], blend: str) -> torch.Tensor:
    """The one blend of Redux token sets, each (tokens [n, width], which to keep [n] bool or None = all, weight).
    sum: the weighted sum (diffusers' Redux), kept where any part covers a token, so masked references
    composite; concat: the kept tokens one after another (ComfyUI's chained Apply Style Model). Weight 0 leaves
    a part out (all 0: zero tokens). Returns [tokens, width]."""
    params.check_choice("blend", blend, params.BLEND_MODES)
    live = [part for part in parts if part[2] > 0] or [(parts[0][0], parts[0][1], 0.0)]
    if blend == "concat":
        return torch.cat([(t if k is None else t[k]) * w for t, k, w in live])
    counts = {t.shape[0] for t, _, _ in live}
    if len(counts) > 1:
        raise ValueError(f"cannot sum Redux conditionings with different token counts {sorted(counts)} "
                         "(different downsampling or masks): use blend=concat")
    keeps = [torch.ones(t.shape[0], dtype=torch.bool) if k is None else k for t, k, _ in live]
    summed = sum(t * k[:, None] * w for (t, _, w), k in zip(live, keeps))
    return summed[torch.stack(keeps).any(dim=0)]


def split_images(images) -> list:
    """A list, a single image, or a batch ([B,H,W,C] tensor/array) -> list of single images."""
    if isinstance(images, (list, tuple)):
        return [im for item in images for im in split_images(item)]
    if isinstance(images, (torch.Tensor, np.ndarray)) and images.ndim == 4:
        return list(images)
    return [images]


def _split_masks(masks, count: int) -> list:
    if masks is None:
        return [None] * count
    if isinstance(masks, (torch.Tensor, np.ndarray)) and masks.ndim == 3 and masks.shape[0] == count:
        masks = list(masks)  # ComfyUI MASK batch, one per image
    elif not isinstance(masks, (list, tuple)):
        masks = [masks] * count  # one mask for every image
    if len(masks) != count:
        raise ValueError(f"got {count} reference images but {len(masks)} masks")
    return list(masks)


def downsample_grid(grid: torch.Tensor, factor: float, mode: str) -> torch.Tensor:
    """[g, g, width] -> [n, n, width], n = round(g / factor)."""
    params.DOWNSAMPLE_FACTOR.validate(factor)
    params.check_choice("downsample_mode", mode, params.DOWNSAMPLE_MODES)
    side = max(1, round(grid.shape[0] / factor))
    if side == grid.shape[0]:
        return grid
    x = grid.permute(2, 0, 1)[None]
    if mode == "area":
        x = F.adaptive_avg_pool2d(x, side)
    elif mode == "nearest":
        x = F.interpolate(x, size=(side, side), mode="nearest")
    else:
        x = F.interpolate(x, size=(side, side), mode=mode, align_corners=False, antialias=True)
    return x[0].permute(1, 2, 0)


def mask_to_grid(mask: np.ndarray, side: int) -> torch.Tensor:
    """A pixel mask -> which of side x side tokens to keep (mean coverage >= 0.5)."""
    coverage = F.adaptive_avg_pool2d(torch.from_numpy(np.ascontiguousarray(mask))[None, None], side)[0, 0]
    return coverage >= 0.5


@torch.inference_mode()
def image_tokens(encoder: ImageTokenEncoder, images, crop: str = "center", masks=None,
                 autocrop_margin: int | None = None, on_image: Callable[[int, int], None] | None = None
                 ) -> tuple[torch.Tensor, list]:
    """Redux tokens [N, tokens, width] (float32, CPU) for N images, and their prepared masks. on_image(done,
    total) runs after each image (it may raise to stop)."""
    singles = split_images(images)
    if not singles:
        raise ValueError("no reference image given")
    prepared = [prepare(im, m, crop, autocrop_margin) for im, m in zip(singles, _split_masks(masks, len(singles)))]
    tokens = []
    for n, (picture, _) in enumerate(prepared, 1):  # one at a time: progress, and the memory of one image
        tokens.append(encoder.embed(square_pixels([picture], encoder.image_size)))
        if on_image is not None:
            on_image(n, len(prepared))
    return torch.cat(tokens), [m for _, m in prepared]


def check_encode_options(crop: str = "center", downsample_factor: float = 1.0, downsample_mode: str = "area",
                         autocrop_margin: int | None = None, blend: str = "sum") -> None:
    """Every option of encode(), checked before any image is encoded; callers that load the encoder
    themselves call it first, so a bad value fails before any model work."""
    params.check_choice("crop", crop, params.CROP_MODES)
    params.DOWNSAMPLE_FACTOR.validate(downsample_factor)
    params.check_choice("downsample_mode", downsample_mode, params.DOWNSAMPLE_MODES)
    if autocrop_margin is not None:
        params.AUTOCROP_MARGIN.validate(autocrop_margin)
    params.check_choice("blend", blend, params.BLEND_MODES)


def encode(encoder: ImageTokenEncoder, images, weights: Sequence[float] | None = None, crop: str = "center", *,
           masks=None, downsample_factor: float = 1.0, downsample_mode: str = "area",
           autocrop_margin: int | None = None, blend: str = "sum",
           on_image: Callable[[int, int], None] | None = None) -> ReduxConditioning:
    """Encode one or more reference images into one conditioning.

    weights multiply each reference's tokens (several are blended by `blend`); downsample_factor shrinks the
    token grid; masks keep only the tokens they cover (pad crop marks its bars as uncovered); autocrop_margin
    first crops each reference to its mask's bounding box plus that many pixels.
    """
    count = len(split_images(images))
    weights = [1.0] * count if weights is None else list(weights)
    if len(weights) != count:
        raise ValueError(f"got {count} reference images but {len(weights)} weights")
    weights = [params.REFERENCE_WEIGHT.validate(w) for w in weights]
    check_encode_options(crop, downsample_factor, downsample_mode, autocrop_margin, blend)
    tokens, pixel_masks = image_tokens(encoder, images, crop, masks, autocrop_margin, on_image)
    side = math.isqrt(tokens.shape[1])
    grids = [downsample_grid(t.reshape(side, side, -1), downsample_factor, downsample_mode) for t in tokens]
    new_side = grids[0].shape[0]
    keeps = [None if m is None else mask_to_grid(m, new_side).flatten() for m in pixel_masks]
    flat = [g.reshape(new_side * new_side, -1) for g in grids]
    joined = blend_tokens(list(zip(flat, keeps, weights)), blend)
    if joined.shape[0] == 0:
        raise ValueError("the masks leave no Redux token: make the masked area larger, or check the mask "
                         "is white (1) where the reference should count")
    return ReduxConditioning(joined[None], tuple(weights))
