"""The CLI's restyle options: extra references (`--ref img.png:0.7[:mask.png]`), prompt, img2img."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from . import params
from .loading import LoadOptions
from .redux import ReduxConditioning, TextConditioning, encode
from .text import TextEncoderSpec, encode_prompt, find_text_encoders, load_text_encoders


@dataclass
class Reference:
    path: Path
    weight: float = 1.0
    mask: Path | None = None


def parse_ref(text: str) -> Reference:
    """IMG, IMG:WEIGHT or IMG:WEIGHT:MASK (parsed from the right, so Windows drive letters survive)."""
    for parts in (text.rsplit(":", 2), text.rsplit(":", 1)):
        if len(parts) >= 2:
            try:
                weight = float(parts[1])
            except ValueError:
                continue
            mask = Path(parts[2]) if len(parts) == 3 else None
            return Reference(Path(parts[0]), params.REFERENCE_WEIGHT.validate(weight), mask)
    return Reference(Path(text))


def add_arguments(v: argparse.ArgumentParser) -> None:
    g = v.add_argument_group("restyle controls")
    g.add_argument("--ref", type=parse_ref, action="append", default=[], metavar="IMG[:WEIGHT[:MASK]]",
                   help="a reference blended into every job (repeatable); weight "
                        f"{params.REFERENCE_WEIGHT.describe()}; MASK: white where the reference counts")
    g.add_argument("--mask", type=Path, help="mask for the positional input images (white = keep)")
    g.add_argument("--blend", choices=params.BLEND_MODES, default="sum",
                   help="sum: weighted sum of the references' tokens (diffusers); concat: one after another "
                        "(ComfyUI's chained Apply Style Model)")
    g.add_argument("--downsample", type=float, default=params.DOWNSAMPLE_FACTOR.default,
                   help=f"shrink the 27x27 token grid ({params.DOWNSAMPLE_FACTOR.describe()}; 3 -> 81 tokens): "
                        "less copying of the reference, more room for the prompt")
    g.add_argument("--downsample-mode", choices=params.DOWNSAMPLE_MODES, default="area")
    g.add_argument("--autocrop-margin", type=int,
                   help=f"crop each reference to its mask's box plus this many pixels "
                        f"({params.AUTOCROP_MARGIN.minimum}–{params.AUTOCROP_MARGIN.maximum})")
    g.add_argument("--prompt", help="text mixed with the references (needs FLUX's T5-XXL + CLIP-L)")
    g.add_argument("--prompt-scale", type=float, default=params.PROMPT_SCALE.default,
                   help=f"multiplies the prompt's tokens ({params.PROMPT_SCALE.describe()})")
    g.add_argument("--pooled-scale", type=float, default=params.POOLED_SCALE.default,
                   help=f"multiplies the prompt's pooled CLIP vector ({params.POOLED_SCALE.describe()})")
    g.add_argument("--text-encoders", type=Path,
                   help="a FLUX diffusers folder with text_encoder(_2)/ and tokenizer(_2)/ (default: found in "
                        "--models-dir: text_encoders/clip_l + t5xxl files with diffusers/FLUX.1-dev tokenizers)")
    g.add_argument("--init-image", type=Path, help="start from this image (img2img: restyle it)")
    g.add_argument("--denoise", type=float, default=params.DENOISE.default,
                   help=f"img2img strength ({params.DENOISE.describe()}): 1.0 ignores the init image")


def validate(args) -> None:
    """Everything checkable before loading models."""
    params.DOWNSAMPLE_FACTOR.validate(args.downsample)
    params.PROMPT_SCALE.validate(args.prompt_scale)
    params.POOLED_SCALE.validate(args.pooled_scale)
    if args.autocrop_margin is not None:
        params.AUTOCROP_MARGIN.validate(args.autocrop_margin)
    if args.init_image is not None:
        params.DENOISE.validate(args.denoise)
    for path in [r.path for r in args.ref] + [r.mask for r in args.ref if r.mask] + \
            [p for p in (args.mask, args.init_image) if p]:
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist")


def text_spec(args, options: LoadOptions) -> TextEncoderSpec | None:
    if not args.prompt:
        return None
    if args.text_encoders is not None:
        return TextEncoderSpec(str(args.text_encoders), str(args.text_encoders), options=options)
    if args.models_dir is None:
        raise FileNotFoundError("--prompt needs --text-encoders DIR (a FLUX diffusers folder) or --models-dir")
    return find_text_encoders(args.models_dir, options)


def load_prompt(args, options: LoadOptions) -> TextConditioning | None:
    spec = text_spec(args, options)
    return None if spec is None else encode_prompt(load_text_encoders(spec), args.prompt)


def _open(path: Path | None):
    if path is None:
        return None
    with Image.open(path) as image:
        image.load()
        return image


def conditioning_for(encoder, args, main: Path | None, prompt: TextConditioning | None) -> ReduxConditioning:
    """The job's references: the positional input (if any) plus every --ref, in one conditioning."""
    refs = ([Reference(main, 1.0, args.mask)] if main else []) + list(args.ref)
    masks = [_open(r.mask) for r in refs]
    images = [_open(r.path) for r in refs]
    if any(m is not None for m in masks):  # an image without a mask keeps every token
        masks = [m if m is not None else Image.new("L", im.size, 255) for m, im in zip(masks, images)]
    else:
        masks = None
    cond = encode(encoder, images, [r.weight for r in refs], args.crop, masks=masks,
                  downsample_factor=args.downsample, downsample_mode=args.downsample_mode,
                  autocrop_margin=args.autocrop_margin, blend=args.blend)
    return cond if prompt is None else cond.with_prompt(prompt, args.prompt_scale, args.pooled_scale)


def init_image(args):
    return _open(args.init_image)
