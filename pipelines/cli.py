"""Headless CLI: `python -m pipelines variation IMG_OR_FOLDER... --models-dir ComfyUI/models --out out/`.

Each input image gets its own variations (batch restyle). PNGs carry the parameters in their metadata.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from . import cli_restyle, lora, params
from .loading import LoadOptions
from .models import FluxModelSpec, ReduxEncoderSpec, load_flux_model, load_redux_encoder
from .redux import encode
from .sampling import generate
from .weights import WeightsError, find_weights

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
log = logging.getLogger("flux-redux")


class _HelpFormatter(argparse.HelpFormatter):
    """Show a default only where there is one."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, argparse.SUPPRESS) and "default" not in text and action.option_strings:
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipelines", description="FLUX.1 Redux image variation, offline.")
    sub = p.add_subparsers(dest="command", required=True)
    v = sub.add_parser("variation", help="make variations of reference images",
                       formatter_class=_HelpFormatter)
    v.add_argument("inputs", nargs="*", type=Path,
                   help="reference images and/or folders of them: each gets its own variations (batch restyle)")
    v.add_argument("--model", choices=params.VARIANT_CHOICES, default="auto",
                   help="FLUX.1 variant; auto reads it from the transformer's weights")
    v.add_argument("--models-dir", type=Path, help="ComfyUI's models/ folder (searched for every file below)")
    for name, what in (("transformer", "FLUX transformer"), ("vae", "VAE (ae.safetensors)"),
                       ("redux", "Redux projector"), ("siglip", "SigLIP vision encoder")):
        v.add_argument(f"--{name}", type=Path, help=f"{what}: .safetensors file or diffusers folder "
                                                   "(overrides --models-dir)")
    v.add_argument("--size", default=params.DEFAULT_IMAGE_SIZE, choices=params.IMAGE_SIZE_CHOICES,
                   help="output size preset; custom uses --width/--height")
    v.add_argument("--width", type=int, help=f"custom width: {params.WIDTH.minimum}–{params.WIDTH.maximum}, a multiple of 16")
    v.add_argument("--height", type=int, help=f"custom height: {params.HEIGHT.minimum}–{params.HEIGHT.maximum}, a multiple of 16")
    steps = ", ".join(f"{n} {s.steps.describe()}" for n, s in params.VARIANTS.items())
    v.add_argument("--steps", type=int, help=f"denoising steps ({steps})")
    v.add_argument("--guidance", type=float, help=f"guidance scale, dev only ({params.GUIDANCE.describe()})")
    v.add_argument("--seed", type=int, help="seed (0–2^64-1); omitted: random, printed and saved in the PNG")
    v.add_argument("--num-images", type=int, default=params.NUM_IMAGES.default,
                   help=f"images per input ({params.NUM_IMAGES.minimum}–{params.NUM_IMAGES.maximum})")
    v.add_argument("--crop", choices=params.CROP_MODES, default="center",
                   help="how the reference is fitted to SigLIP's square input")
    v.add_argument("--out", type=Path, default=Path("out"), help="output folder")
    v.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    v.add_argument("--dtype", choices=params.DTYPE_CHOICES, default="auto", help="compute dtype")
    v.add_argument("--weight-storage", choices=params.WEIGHT_STORAGE_CHOICES, default="default",
                   help="fp8 keeps transformer weights in float8 (about half the memory)")
    v.add_argument("--offload", choices=params.OFFLOAD_CHOICES, default="none",
                   help="model: whole models to GPU in turn; sequential: layer by layer (least VRAM, slowest)")
    v.add_argument("--vae-tiling", choices=params.VAE_TILING_CHOICES, default="auto")
    # speed helper: speed modes and LoRAs (pipelines/speed.py, pipelines/lora.py)
    modes = ", ".join(params.SPEED_MODES + params.ATTENTION_MODES)
    v.add_argument("--speed", default=params.SPEED_NONE, help=f"speed modes joined by + ({modes}), e.g. compile+fp8")
    v.add_argument("--cache-threshold", type=float, default=params.CACHE_THRESHOLD.default,
                   help=f"First Block Cache threshold, lossy ({params.CACHE_THRESHOLD.describe()}; 0.08 suggested)")
    v.add_argument("--lora", action="append", default=[], metavar="FILE[:STRENGTH]",
                   help=f"a FLUX.1 LoRA .safetensors, strength {params.LORA_STRENGTH.describe()}; repeat to stack")
    cli_restyle.add_arguments(v)
    return p


def collect_images(inputs: list[Path], refs_given: bool = False) -> list[Path | None]:
    if not inputs:
        if refs_given:
            return [None]  # one job made of the --ref references alone
        raise FileNotFoundError("no reference image: give image files or folders, or --ref IMG[:WEIGHT]")
    found = []
    for item in inputs:
        if item.is_dir():
            found += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            found.append(item)
        else:
            raise FileNotFoundError(f"input {item} does not exist")
    if not found:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {', '.join(map(str, inputs))}")
    return found


def resolve_sources(args) -> dict[str, Path]:
    explicit = {k: getattr(args, k) for k in ("transformer", "vae", "redux", "siglip")}
    if all(explicit.values()):
        return explicit
    if args.models_dir is None:
        missing = [f"--{k}" for k, v in explicit.items() if v is None]
        raise WeightsError(f"no weights given: pass --models-dir ComfyUI/models, or {' '.join(missing)}")
    variant = "dev" if args.model == "auto" else args.model
    try:
        found = find_weights(args.models_dir, variant).as_dict()
    except WeightsError:
        if args.model != "auto":
            raise
        found = find_weights(args.models_dir, "schnell").as_dict()
    return {k: v or Path(found[k]) for k, v in explicit.items()}


def save_png(image: Image.Image, path: Path, metadata: dict) -> None:
    info = PngInfo()
    info.add_text("flux_redux", json.dumps(metadata))
    image.save(path, pnginfo=info)


def run_variation(args) -> list[Path]:
    jobs = collect_images(args.inputs, bool(args.ref))
    cli_restyle.validate(args)
    sources = resolve_sources(args)
    options = LoadOptions(device=args.device, dtype=args.dtype, weight_storage=args.weight_storage,
                          offload=args.offload, vae_tiling=args.vae_tiling, speed=args.speed)

    def validated(variant: str) -> params.GenerationParams:
        return params.validate_generation(variant, args.size, args.width, args.height, args.steps, args.guidance,
                                          args.seed, args.num_images)

    if args.model != "auto":
        validated(args.model)  # fail before loading gigabytes
    prompt = cli_restyle.load_prompt(args, options)
    flux = load_flux_model(FluxModelSpec(str(sources["transformer"]), str(sources["vae"]), args.model, options,
                                         loras=tuple(map(lora.parse_lora_arg, args.lora)),
                                         cache_threshold=args.cache_threshold))
    gen = validated(flux.variant)
    encoder = load_redux_encoder(ReduxEncoderSpec(str(sources["redux"]), str(sources["siglip"]), options))
    init = cli_restyle.init_image(args)
    args.out.mkdir(parents=True, exist_ok=True)
    written = []
    for number, path in enumerate(jobs, 1):
        name = path.stem if path else "blend"
        log.info("[%d/%d] %s", number, len(jobs), path or "references: " + ", ".join(str(r.path) for r in args.ref))
        conditioning = cli_restyle.conditioning_for(encoder, args, path, prompt)
        result = generate(flux, conditioning, gen, init_image=init, denoise=args.denoise, show_progress=True)
        meta = dict(result.metadata, reference=str(path) if path else None, crop=args.crop,
                    refs=[[str(r.path), r.weight, str(r.mask) if r.mask else None] for r in args.ref],
                    prompt=args.prompt, downsample=args.downsample, blend=args.blend,
                    init_image=str(args.init_image) if args.init_image else None)
        for index, image in enumerate(result.pil_images()):
            target = args.out / f"{name}_seed{result.seed}_{index}.png"
            save_png(image, target, meta)
            written.append(target)
        log.info("seed %d, %.2f s per image -> %s", result.seed, result.metadata["timings"]["per_image_s"], args.out)
    return written


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        written = run_variation(args)
    except (ValueError, WeightsError, FileNotFoundError) as exc:  # ParameterError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; images already written are kept", file=sys.stderr)
        return 130
    print(f"wrote {len(written)} image(s) to {args.out}")
    return 0
