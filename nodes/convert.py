"""ComfyUI IMAGE tensors <-> what the engine and the remote client take: the one converter for every node.

ComfyUI's IMAGE is a float tensor [batch, height, width, channels] in 0..1, channels last (3, or 4 with alpha).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from PIL import Image

from ..pipelines import checks
from ..pipelines.references import to_pil_rgb

log = logging.getLogger(__name__)


def images_from_comfy(image: torch.Tensor, name: str = "image") -> torch.Tensor:
    """ComfyUI IMAGE [B,H,W,C] float 0..1 -> the same batch as the engine accepts it (RGB, CPU float32).
    `name` is the node's input, named in the engine's error for an empty batch, a 0x0 image, NaN, ..."""
    return checks.image_batch(image, name).detach().to("cpu", torch.float32)


def image_batch_to_pils(images: torch.Tensor, name: str = "image") -> list[Image.Image]:
    """ComfyUI IMAGE -> one RGB PIL image per batch entry (an alpha channel is dropped)."""
    return [to_pil_rgb(frame[..., :3]) for frame in images_from_comfy(images, name)]


def pils_to_image_batch(pictures: list[Image.Image]) -> torch.Tensor:
    """RGB PIL images -> ComfyUI IMAGE. Sizes should match (same request); a stray one is resized to the first."""
    size = pictures[0].size
    arrays = []
    for picture in pictures:
        if picture.size != size:
            log.warning("remote output of %s resized to %s to fit the batch", picture.size, size)
            picture = picture.resize(size, Image.LANCZOS)
        arrays.append(np.asarray(picture.convert("RGB"), dtype=np.float32) / 255.0)
    return torch.from_numpy(np.stack(arrays))


def masks_from_comfy(mask: torch.Tensor, count: int, name: str = "mask") -> list[torch.Tensor]:
    """ComfyUI MASK [B,H,W] (or [H,W]) float 0..1 -> one HxW CPU float32 mask per reference image.

    One mask serves every image of the batch; otherwise there must be one mask per image."""
    mask = checks.mask_batch(mask, name).detach().to("cpu", torch.float32)
    if mask.shape[0] not in (1, count):
        raise ValueError(f"{name}: got {count} reference image(s) but {mask.shape[0]} masks: connect one mask for "
                         "all images, or one mask per image")
    return list(mask.expand(count, -1, -1)) if mask.shape[0] == 1 else list(mask)
