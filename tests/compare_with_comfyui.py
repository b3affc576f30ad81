"""Measure the pack's Redux encoding against ComfyUI's own (the README's figures). Not part of pytest; run it with
the Python of a ComfyUI environment that has the pack's requirements, after tests/run_in_comfyui.py wrote the
full-size random SigLIP and Redux files into WORK/models (/tmp/redux_in_comfyui/models by default):

    COMFYUI_PYTHON tests/compare_with_comfyui.py COMFYUI_DIR MODELS_DIR

1. SigLIP's input: the pack's preprocessing vs transformers' PIL and torchvision processors and ComfyUI's
   CLIPVisionEncode (clip_preprocess), in 8-bit levels, for crop none/squash and center.
2. Redux tokens: ComfyUI's Load CLIP Vision + Load Style Model (through the pack's adapter) vs the pack's encoder,
   same files, same pixels.
"""

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

COMFY, MODELS = Path(sys.argv[1]), Path(sys.argv[2])
sys.path.insert(0, str(COMFY))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import comfy.options  # noqa: E402

comfy.options.enable_args_parsing()
sys.argv = [sys.argv[0], "--cpu", "--fp32-text-enc"]
import comfy.clip_vision  # noqa: E402
import comfy.sd  # noqa: E402
from comfy.clip_vision import clip_preprocess  # noqa: E402
from transformers import SiglipImageProcessor, SiglipImageProcessorPil  # noqa: E402

import packloader  # noqa: E402
from run_in_comfyui import REDUX_FULL_FILE, SIGLIP_FILE  # noqa: E402

references = packloader.submodule("pipelines.references")
models = packloader.submodule("pipelines.models")
loading = packloader.submodule("pipelines.loading")
conditioning = packloader.submodule("nodes.conditioning")
SIZE = 384


def scene(width: int, height: int, seed: int) -> Image.Image:
    """Smooth gradients and discs, a stand-in for a photograph."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    for y in range(height):
        draw.line([(0, y), (width, y)], fill=(255 * y // height, 100, 255 - 255 * y // height))
    for _ in range(30):
        x, y, r = rng.integers(0, width), rng.integers(0, height), rng.integers(10, 200)
        draw.ellipse([x, y, x + r, y + r], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    return image.filter(ImageFilter.GaussianBlur(1))


def levels(a: torch.Tensor, b: torch.Tensor) -> str:
    difference = (a - b).abs() * 255 / 2  # normalised with std 0.5: 2/255 per 8-bit level
    return f"max {difference.max().item():.0f} mean {difference.mean().item():.3f}"


def preprocessing() -> None:
    options = dict(size={"height": SIZE, "width": SIZE}, resample=3, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    pil, torchvision = SiglipImageProcessorPil(**options), SiglipImageProcessor(**options)
    noise = Image.fromarray(np.random.default_rng(2).integers(0, 256, (768, 1024, 3), dtype=np.uint8))
    for name, image in (("scene 1024x768", scene(1024, 768, 1)), ("noise 1024x768", noise),
                        ("scene 300x200", scene(300, 200, 3))):
        loaded = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None]  # LoadImage's IMAGE
        for crop in ("squash", "center"):
            square, _ = references.fit_square(image, None, crop)
            ours = ((references.square_pixels([square], SIZE) - 0.5) / 0.5).permute(0, 3, 1, 2)
            comfy_pixels = clip_preprocess(loaded, size=SIZE, mean=[0.5] * 3, std=[0.5] * 3, crop=crop == "center")
            by_pil, by_torchvision = (processor(images=[square], return_tensors="pt")["pixel_values"]
                                      for processor in (pil, torchvision))
            print(f"{name} crop {crop}: PIL processor {levels(ours, by_pil)}; torchvision processor "
                  f"{levels(ours, by_torchvision)}; ComfyUI CLIPVisionEncode {levels(ours, comfy_pixels)}")


def tokens() -> None:
    siglip, redux = MODELS / "clip_vision" / SIGLIP_FILE, MODELS / "style_models" / REDUX_FULL_FILE
    theirs = conditioning.ComfyReduxEncoder(comfy.clip_vision.load(str(siglip)), comfy.sd.load_style_model(str(redux)))
    ours = models.load_redux_encoder(models.ReduxEncoderSpec(str(redux), str(siglip),
                                                             loading.LoadOptions(device="cpu", dtype="fp32")))
    pixels = references.square_pixels([scene(SIZE, SIZE, 4)], SIZE)
    with torch.inference_mode():
        a, b = ours.embed(pixels), theirs.embed(pixels)
    print(f"Redux tokens {tuple(a.shape)}: max difference {(a - b).abs().max().item():.2e}, "
          f"largest value {a.abs().max().item():.2f}")


preprocessing()
tokens()
