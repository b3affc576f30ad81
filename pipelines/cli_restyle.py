"""The CLI's restyle options: extra references (`--ref img.png:0.7[:mask.png]`), prompt, img2img."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from . import files, params
from .cache import CACHE
from .loading import LoadOptions
from .redux import ReduxConditioning, TextConditioning, encode
from .references import upright
from .text import TextEncoderSpec, encode_prompt, find_text_encoders, load_text_encoders
from .weights import read_index


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
            try:
                weight = params.REFERENCE_WEIGHT.validate(weight)
            except params.ParameterError as exc:  # argparse would replace the message by "invalid value"
                raise argparse.ArgumentTypeError(f"{text}: {exc}") from None
            return Reference(Path(parts[0]), weight, mask)
    return Reference(Path(text))


def add_arguments(v: argparse.ArgumentParser) -> None:
    g = v.add_argument_group("restyle controls")
    g.add_argument("--ref", type=parse_ref, action="append", default=[], metavar="IMG[:WEIGHT[:MASK]]",
                   help="a reference blended into every job (repeatable); weight "
                        f"{params.REFERENCE_WEIGHT.describe()}; MASK: white where the reference counts")
    g.add_argument("--mask", type=Path, help="mask for the positional input images (white = keep)")
    g.add_argument("--blend", choices=params.BLEND_MODES,
                   help=f"sum: weighted sum of the references' tokens (diffusers); concat: one after another "
                        f"(ComfyUI's chained Apply Style Model) (default: {params.BLEND_MODES[0]})")
    g.add_argument("--downsample", type=float, default=params.DOWNSAMPLE_FACTOR.default,
                   help=f"shrink the 27x27 token grid ({params.DOWNSAMPLE_FACTOR.describe()}; 3 -> 81 tokens): "
                        "less copying of the reference, more room for the prompt")
    g.add_argument("--downsample-mode", choices=params.DOWNSAMPLE_MODES,
                   help=f"how the token grid is shrunk (default: {params.DOWNSAMPLE_MODES[0]})")
    g.add_argument("--autocrop-margin", type=int,
                   help=f"crop each reference to its mask's box plus this many pixels "
                        f"({params.AUTOCROP_MARGIN.minimum}–{params.AUTOCROP_MARGIN.maximum})")
    g.add_argument("--prompt", help="text mixed with the references (needs FLUX's T5-XXL + CLIP-L)")
    g.add_argument("--prompt-scale", type=float,
                   help=f"multiplies the prompt's tokens ({params.PROMPT_SCALE.describe()})")
    g.add_argument("--pooled-scale", type=float,
                   help=f"multiplies the prompt's pooled CLIP vector ({params.POOLED_SCALE.describe()})")
    g.add_argument("--text-encoders", type=Path,
                   help="a FLUX diffusers folder with text_encoder(_2)/ and tokenizer(_2)/ (default: found in "
                        "--models-dir: text_encoders/clip_l + t5xxl files with diffusers/FLUX.1-dev tokenizers)")
    g.add_argument("--init-image", type=Path, help="start from this image (img2img: restyle it)")
    g.add_argument("--denoise", type=float,
                   help=f"img2img strength ({params.DENOISE.describe()}): 1.0 ignores the init image")


# Options that only act together with another one: (option, default, what it needs, is that given?).
DEPENDENT_OPTIONS = (
    ("denoise", params.DENOISE.default, "--init-image", lambda a: a.init_image is not None),
    ("prompt_scale", params.PROMPT_SCALE.default, "--prompt", lambda a: bool(a.prompt)),
    ("pooled_scale", params.POOLED_SCALE.default, "--prompt", lambda a: bool(a.prompt)),
    ("text_encoders", None, "--prompt", lambda a: bool(a.prompt)),
    ("downsample_mode", params.DOWNSAMPLE_MODES[0], "--downsample above 1", lambda a: a.downsample > 1),
    ("blend", params.BLEND_MODES[0], "two or more references per job (--ref)",
     lambda a: len(a.ref) + bool(a.inputs) > 1),
    ("mask", None, "positional input images (--ref takes IMG:WEIGHT:MASK)", lambda a: bool(a.inputs)),
)


def validate(args) -> list[str]:
    """Check every restyle option (before loading models), fill in defaults, and return a warning for each
    option given where it does nothing."""
    notes = []
    for name, default, needs, active in DEPENDENT_OPTIONS:
        if getattr(args, name) is not None and not active(args):
            notes.append(f"--{name.replace('_', '-')} does nothing without {needs}")
        if getattr(args, name) is None:
            setattr(args, name, default)
    params.DOWNSAMPLE_FACTOR.validate(args.downsample)
    params.PROMPT_SCALE.validate(args.prompt_scale)
    params.POOLED_SCALE.validate(args.pooled_scale)
    params.DENOISE.validate(args.denoise)
    if args.autocrop_margin is not None:
        params.AUTOCROP_MARGIN.validate(args.autocrop_margin)
        if args.mask is None and not any(r.mask for r in args.ref):
            raise params.ParameterError("autocrop_margin", args.autocrop_margin,
                                        "it crops each reference to its mask: give --mask or --ref IMG:WEIGHT:MASK")
    if args.prompt is not None and not args.prompt.strip():
        raise params.ParameterError("prompt", args.prompt, "expected some text (leave --prompt out for none)")
    return notes


def check_weights(args) -> list[str]:
    """Refuse a run whose every reference has weight 0 (its images would ignore every reference, silently);
    return a note for each --ref at weight 0 beside others (it is left out, and not recorded as used)."""
    if args.inputs or not args.ref:
        weights = {}
    else:
        weights = {f"--ref {r.path}:{r.weight:g}": r.weight for r in args.ref}
    if weights and not any(w > 0 for w in weights.values()):
        raise params.ParameterError("weight", 0.0, "every --ref has weight 0, so the images would ignore every "
                                    "reference; give at least one a weight above 0 (allowed range "
                                    f"{params.REFERENCE_WEIGHT.minimum}–{params.REFERENCE_WEIGHT.maximum})")
    return [f"--ref {r.path}:{r.weight:g} has weight 0: that reference is left out" for r in args.ref
            if r.weight == 0]


def used_refs(args) -> list[list]:
    """The --ref entries that shape the images ([path, weight, mask]), for the PNG metadata: weight 0 ones are
    left out, so the metadata never names a reference the images ignored."""
    return [[str(r.path), r.weight, str(r.mask) if r.mask else None] for r in args.ref if r.weight > 0]


def image_options(args) -> list[tuple[str, Path]]:
    """The image files every job reads: (option, path)."""
    files = [("--ref", r.path) for r in args.ref] + [("--ref mask", r.mask) for r in args.ref if r.mask]
    return files + [(option, path) for option, path in (("--mask", args.mask), ("--init-image", args.init_image))
                    if path is not None]


def text_spec(args, options: LoadOptions) -> TextEncoderSpec | None:
    if not args.prompt:
        return None
    if args.text_encoders is not None:
        return TextEncoderSpec(str(args.text_encoders), str(args.text_encoders), options=options)
    if args.models_dir is None:
        raise FileNotFoundError("--prompt needs --text-encoders DIR (a FLUX diffusers folder) or --models-dir")
    return find_text_encoders(args.models_dir, options)


def check_text_encoders(spec: TextEncoderSpec | None) -> None:
    """Header check of single-file text encoders, before anything is loaded."""
    for source in (() if spec is None else (spec.clip, spec.t5)):
        if Path(source).is_file():
            read_index(source, "text_encoder")


def load_prompt(spec: TextEncoderSpec | None, prompt: str) -> TextConditioning | None:
    """Encode the prompt, then free T5-XXL and CLIP-L (about 10 GB) before FLUX is loaded."""
    if spec is None:
        return None
    try:
        return encode_prompt(load_text_encoders(spec), prompt)
    finally:
        CACHE.unload(spec.cache_key())


def open_image(path: Path | None):
    """A file fully read (so it can be closed), turned upright by its EXIF orientation."""
    if path is None:
        return None
    with files.open_regular(path) as handle, Image.open(handle) as image:
        image.load()
        return upright(image)


def conditioning_for(encoder, args, main: Path | None, prompt: TextConditioning | None) -> ReduxConditioning:
    """The job's references: the positional input (if any) plus every --ref, in one conditioning."""
    refs = ([Reference(main, 1.0, args.mask)] if main else []) + list(args.ref)
    masks = [open_image(r.mask) for r in refs]
    images = [open_image(r.path) for r in refs]
    if any(m is not None for m in masks):  # an image without a mask keeps every token
        masks = [m if m is not None else Image.new("L", im.size, 255) for m, im in zip(masks, images)]
    else:
        masks = None
    cond = encode(encoder, images, [r.weight for r in refs], args.crop, masks=masks,
                  downsample_factor=args.downsample, downsample_mode=args.downsample_mode,
                  autocrop_margin=args.autocrop_margin, blend=args.blend)
    return cond if prompt is None else cond.with_prompt(prompt, args.prompt_scale, args.pooled_scale)


def init_image(args):
    return open_image(args.init_image)
