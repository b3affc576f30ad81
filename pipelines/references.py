"""Reference images and masks before SigLIP: any input format to RGB, masks, auto-crop, crop modes.

A mask travels with its image through every crop, so it still covers the same pixels when it is resized to
the Redux token grid.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageOps

from . import params

PAD_GREY = (127, 127, 127)  # SigLIP normalises with mean 0.5: padding becomes ~0 input


EXIF_ORIENTATION = 0x0112
FLOAT_RANGE_SLACK = 2.0  # float images are 0..1 (ComfyUI's IMAGE, clipped); above this they are 0..255 data


def upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation a camera wrote (phone photos are stored sideways), as viewers do."""
    if image.getexif().get(EXIF_ORIENTATION, 1) != 1:
        return ImageOps.exif_transpose(image)
    return image


def to_pil_rgb(image) -> Image.Image:
    """One image from PIL (any mode, 16-bit too; EXIF orientation applied), numpy or a torch tensor (HW, HWC,
    CHW; uint8/integer 0..255, uint16, bool, or float 0..1 as in ComfyUI's IMAGE; float data in 0..255 is
    recognised by its range). Transparent areas are composited onto white."""
    if isinstance(image, torch.Tensor):
        image = _tensor_to_numpy(image)
    if isinstance(image, np.ndarray):
        image = Image.fromarray(to_uint8(_image_layout(image)))
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image, numpy array or torch tensor, got {type(image).__name__}")
    image = upright(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        image = Image.fromarray(to_uint8(np.asarray(image)))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return image.convert("RGB")


def _tensor_to_numpy(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach().cpu()
    return (tensor.float() if tensor.is_floating_point() else tensor).numpy()


def _image_layout(array: np.ndarray) -> np.ndarray:
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = array.transpose(1, 2, 0)  # CHW -> HWC
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3):
        raise ValueError(f"image array must be HxW or HxWxC, got shape {array.shape}")
    return array


def to_unit_range(array: np.ndarray, what: str = "image") -> np.ndarray:
    """float32 in 0..1 from any pixel dtype: uint8/integers as 0..255 (0..65535 for uint16 or larger values),
    bool as 0/1, floats as 0..1 or, when their range says so, 0..255. Refuses what fits no convention."""
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if array.dtype.kind in "ui":
        low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
        if low < 0 or high > 65535:
            raise ValueError(f"{what} integer values must be 0..255 (or 0..65535 for 16-bit), got {low}..{high}")
        sixteen_bit = (array.dtype.kind == "u" and array.dtype.itemsize == 2) or high > 255
        return array.astype(np.float32) / (65535.0 if sixteen_bit else 255.0)
    if array.dtype.kind != "f":
        raise ValueError(f"{what} array has dtype {array.dtype}; expected uint8, uint16 or float")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise ValueError(f"{what} holds NaN or infinite values")
    low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
    if high > FLOAT_RANGE_SLACK and low >= -0.5 and high <= 255.5:
        return np.clip(array / 255.0, 0.0, 1.0)  # 0..255 floats (a uint8 image converted without scaling)
    if low < -0.5 or high > FLOAT_RANGE_SLACK:
        raise ValueError(f"float {what} values must be in 0..1 (or 0..255), got {low:.3g}..{high:.3g}")
    return np.clip(array, 0.0, 1.0)


def to_uint8(array: np.ndarray) -> np.ndarray:
    """uint8 pixels from an array of any supported dtype (see to_unit_range)."""
    if array.dtype == np.uint8:
        return array
    return (to_unit_range(array) * 255.0 + 0.5).astype(np.uint8)


def to_mask(mask, size: tuple[int, int]) -> np.ndarray:
    """A mask (PIL, numpy or tensor; HW, or ComfyUI's [1,H,W]; float 0..1 or uint8 0..255) as float32 HxW in
    0..1 at the image's size."""
    if isinstance(mask, torch.Tensor):
        mask = _tensor_to_numpy(mask)
    if isinstance(mask, Image.Image):
        mask = np.asarray(upright(mask).convert("L"))
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[0] == 1:
        mask = mask[0]
    if mask.ndim != 2:
        raise ValueError(f"mask must be HxW (or 1xHxW), got shape {mask.shape}")
    if 0 in mask.shape:
        raise ValueError(f"a mask has no pixels ({mask.shape[1]}x{mask.shape[0]}); expected at least 1x1")
    mask = to_unit_range(mask, "mask")
    if mask.shape[::-1] != size:  # resize to the image, as ComfyUI does when sizes differ
        mask = np.asarray(Image.fromarray(mask).resize(size, Image.BILINEAR), dtype=np.float32)
    return np.clip(mask, 0.0, 1.0)


def autocrop_to_mask(image: Image.Image, mask: np.ndarray, margin: int) -> tuple[Image.Image, np.ndarray]:
    """Crop image and mask to the mask's bounding box grown by `margin` pixels (clamped to the image)."""
    rows, cols = np.nonzero(mask >= 0.5)
    if rows.size == 0:
        raise ValueError("the reference mask is empty (no pixel >= 0.5): nothing to crop to or keep")
    top, bottom = max(0, rows.min() - margin), min(mask.shape[0], rows.max() + 1 + margin)
    left, right = max(0, cols.min() - margin), min(mask.shape[1], cols.max() + 1 + margin)
    return image.crop((left, top, right, bottom)), mask[top:bottom, left:right]


def fit_square(image: Image.Image, mask: np.ndarray | None, crop: str):
    """Fit to SigLIP's square input. center: the largest centred square (ComfyUI's default); squash: the
    whole image, aspect not kept; pad: the whole image, aspect kept, grey bars that the mask marks as empty."""
    params.check_choice("crop", crop, params.CROP_MODES)
    w, h = image.size
    if crop == "squash":
        return image, mask
    side = min(w, h) if crop == "center" else max(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    if crop == "center":
        box = (left, top, left + side, top + side)
        return image.crop(box), None if mask is None else mask[top:top + side, left:left + side]
    canvas = Image.new("RGB", (side, side), PAD_GREY)
    canvas.paste(image, (-left, -top))
    full = np.zeros((side, side), dtype=np.float32)
    full[-top:-top + h, -left:-left + w] = 1.0 if mask is None else mask
    return canvas, full


def square_pixels(images: list[Image.Image], size: int) -> torch.Tensor:
    """SigLIP's input before normalisation: [N, size, size, 3] float32 in 0..1, in steps of 1/255.

    PIL's bicubic resize of the 8-bit image, exactly what diffusers' Redux pipeline gets from transformers' PIL
    SigLIP processor; done here so the result never depends on which optional packages (torchvision) are
    installed. ComfyUI's CLIP vision preprocessing leaves an image of this size unresized and 8-bit values
    unchanged, so its CLIP_VISION sees the same pixels."""
    arrays = [np.asarray(image.convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.float32)
              for image in images]
    return torch.from_numpy(np.stack(arrays) / np.float32(255.0))


def prepare(image, mask=None, crop: str = "center", autocrop_margin: int | None = None):
    """-> (square-ish PIL RGB image for SigLIP, float mask HxW or None)."""
    pil = to_pil_rgb(image)
    if 0 in pil.size:  # the CLI refuses such a file up front; an API caller or node gets the same rule here
        raise ValueError(f"a reference image has no pixels ({pil.width}x{pil.height}); expected at least 1x1")
    array = None if mask is None else to_mask(mask, pil.size)
    if autocrop_margin is not None:
        if array is None:
            raise ValueError("autocrop_margin needs a mask: it crops the reference to the mask's bounding box")
        params.AUTOCROP_MARGIN.validate(autocrop_margin)
        pil, array = autocrop_to_mask(pil, array, autocrop_margin)
    return fit_square(pil, array, crop)
