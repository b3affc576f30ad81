"""Headless CLI: `python -m pipelines variation IMG_OR_FOLDER... --models-dir ComfyUI/models --out out/`.

Each input image gets its own variations (batch restyle). PNGs carry the parameters in their metadata.
Everything checkable is checked before any model loads (cli_checks.py); files are never overwritten or left
half-written (cli_outputs.py). Exit status: 0 all done, 1 done but some inputs were skipped, 2 an error
stopped the run (one line on stderr; --debug adds the traceback), 130 interrupted.

Another subcommand plugs in with `add_<name>_parser(sub)` in build_parser: its parser sets
`handler=function(args) -> exit status` and calls add_common_options.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from . import cli_checks, cli_restyle, lora, params, speed
from .server import cli as server_cli
from .loading import LoadOptions
from .cli_outputs import OutputWriter
from .models import FluxModelSpec, ReduxEncoderSpec, load_flux_model, load_redux_encoder
from .sampling import generate
from .text import TextEncoderSpec
from .weights import SLOTS, WeightsError

log = logging.getLogger("flux-redux")
EXIT_OK, EXIT_SKIPPED, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_BUG = 0, 1, 2, 130, 3
# Errors a user can fix from the message alone: one line, exit 2. Anything else is a bug: one line and a hint.
EXPECTED_ERRORS = (ValueError, WeightsError, OSError)
LOAD_DEFAULTS = LoadOptions()


class _HelpFormatter(argparse.HelpFormatter):
    """Show a default only where there is one."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, argparse.SUPPRESS, False) and "default" not in text and action.option_strings:
            text += " (default: %(default)s)"
        return text


def add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")


def add_variation_parser(sub) -> argparse.ArgumentParser:
    v = sub.add_parser("variation", help="make variations of reference images", formatter_class=_HelpFormatter)
    v.set_defaults(handler=variation_command)
    v.add_argument("inputs", nargs="*", type=Path,
                   help="reference images and/or folders of them: each gets its own variations (batch restyle)")
    v.add_argument("--model", choices=params.VARIANT_CHOICES, default=params.VARIANT_CHOICES[0],
                   help="FLUX.1 variant; auto reads it from the transformer's weights")
    v.add_argument("--models-dir", type=Path, help="ComfyUI's models/ folder (searched for every file below)")
    for name, what in (("transformer", "FLUX transformer"), ("vae", "VAE (ae.safetensors)"),
                       ("redux", "Redux projector"), ("siglip", "SigLIP vision encoder")):
        v.add_argument(f"--{name}", type=Path, help=f"{what}: .safetensors file or diffusers folder "
                                                   "(always wins over --models-dir)")
    v.add_argument("--size", default=params.DEFAULT_IMAGE_SIZE, choices=params.IMAGE_SIZE_CHOICES,
                   help="output size preset; custom uses --width/--height")
    v.add_argument("--width", type=int, help=f"custom width: {params.WIDTH.minimum}–{params.WIDTH.maximum}, a multiple of 16")
    v.add_argument("--height", type=int, help=f"custom height: {params.HEIGHT.minimum}–{params.HEIGHT.maximum}, a multiple of 16")
    steps = ", ".join(f"{n} {s.steps.describe()}" for n, s in params.VARIANTS.items())
    v.add_argument("--steps", type=int, help=f"denoising steps ({steps}; 0 = the variant's default)")
    v.add_argument("--guidance", type=float, help=f"guidance scale, dev only ({params.GUIDANCE.describe()})")
    v.add_argument("--seed", type=int, help="seed (0–2^64-1); omitted: random, printed and saved in the PNG")
    v.add_argument("--num-images", type=int, default=params.NUM_IMAGES.default,
                   help=f"images per input ({params.NUM_IMAGES.minimum}–{params.NUM_IMAGES.maximum})")
    v.add_argument("--crop", choices=params.CROP_MODES, default=params.CROP_MODES[0],
                   help="how the reference is fitted to SigLIP's square input")
    v.add_argument("--out", type=Path, default=Path("out"), help="output folder")
    v.add_argument("--overwrite", action="store_true",
                   help="replace existing files of the same name (default: a new name, name-2.png, ...)")
    v.add_argument("--fail-fast", action="store_true",
                   help="stop at the first unreadable input image (default: skip it and report it at the end)")
    v.add_argument("--device", default=LOAD_DEFAULTS.device, help="auto, cpu, cuda, cuda:1, mps")
    v.add_argument("--dtype", choices=params.DTYPE_CHOICES, default=LOAD_DEFAULTS.dtype, help="compute dtype")
    v.add_argument("--weight-storage", choices=params.WEIGHT_STORAGE_CHOICES, default=LOAD_DEFAULTS.weight_storage,
                   help="default: the file's own precision (an fp8 file stays fp8); fp8: every Linear weight in "
                        "float8 (about half the memory); compute: all in --dtype")
    v.add_argument("--offload", choices=params.OFFLOAD_CHOICES, default=LOAD_DEFAULTS.offload,
                   help="where weights wait between uses on a GPU (see the README)")
    v.add_argument("--vae-tiling", choices=params.VAE_TILING_CHOICES, default=LOAD_DEFAULTS.vae_tiling)
    # speed modes and LoRAs (pipelines/speed.py, pipelines/lora.py)
    modes = ", ".join(params.SPEED_MODES + params.ATTENTION_MODES)
    v.add_argument("--speed", default=params.SPEED_NONE, help=f"speed modes joined by + ({modes}), e.g. compile+fp8")
    v.add_argument("--cache-threshold", type=float, default=params.CACHE_THRESHOLD.default,
                   help=f"First Block Cache threshold, lossy ({params.CACHE_THRESHOLD.describe()}; 0.08 suggested)")
    v.add_argument("--lora", action="append", default=[], metavar="FILE[:STRENGTH]",
                   help=f"a FLUX.1 LoRA .safetensors, strength {params.LORA_STRENGTH.describe()}; repeat to stack")
    cli_restyle.add_arguments(v)
    add_common_options(v)
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipelines", description="FLUX.1 Redux image variation, offline.")
    sub = p.add_subparsers(dest="command", required=True)
    add_variation_parser(sub)
    serve = server_cli.add_parser(sub)
    serve.set_defaults(handler=server_cli.run)
    add_common_options(serve)
    return p


@dataclass
class Plan:
    """What a variation run will do, all checked before loading anything."""

    jobs: list[Path | None]
    sources: dict[str, Path]
    gen: params.GenerationParams
    options: LoadOptions
    text: TextEncoderSpec | None = None  # with --prompt
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    loras: tuple = ()  # lora.LoraSpec entries, applied at generate time
    cache_threshold: float = 0.0


def size_notes(args) -> list[str]:
    if args.size != params.CUSTOM_SIZE and (args.width is not None or args.height is not None):
        w, h = params.SIZE_PRESETS[args.size]
        return [f"--width/--height do nothing with --size {args.size} ({w}x{h}); use --size custom"]
    return []


def prepare(args) -> Plan:
    """Every check that needs no model: arguments, input images, output folder, device, weight headers."""
    for note in size_notes(args) + cli_restyle.validate(args):
        log.warning("warning: %s", note)
    if not args.inputs and not args.ref:
        raise cli_checks.InputError("no reference image: give image files or folders, or --ref IMG[:WEIGHT]")
    found = cli_checks.collect_inputs(args.inputs, args.fail_fast)
    if found.hidden:
        log.info("ignored %d hidden file(s) (names starting with '.')", found.hidden)
    if args.inputs and not found.images:
        reasons = "; ".join(f"{path.name}: {why}" for path, why in found.skipped[:3]) or \
            f"no {', '.join(sorted(cli_checks.IMAGE_SUFFIXES))} files"
        raise cli_checks.InputError(f"no usable input image in {', '.join(map(str, args.inputs))} ({reasons})")
    for option, path in cli_restyle.image_options(args):
        cli_checks.check_image_option(option, path)
    cli_checks.check_device(args.device)
    options = LoadOptions(device=args.device, dtype=args.dtype, weight_storage=args.weight_storage,
                          offload=args.offload, vae_tiling=args.vae_tiling, speed=args.speed)
    loras, cache_threshold = speed.runtime_settings(map(lora.parse_lora_arg, args.lora), args.cache_threshold)
    sources = cli_checks.resolve_sources({slot: getattr(args, slot) for slot in SLOTS}, args.models_dir, args.model)
    variant = cli_checks.check_weights(sources, args.model)
    gen = params.validate_generation(variant, args.size, args.width, args.height, args.steps, args.guidance,
                                     args.seed, args.num_images)
    text = cli_restyle.text_spec(args, options)
    cli_restyle.check_text_encoders(text)
    cli_checks.check_out_dir(args.out)
    return Plan(found.images or [None], sources, gen, options, text, found.skipped, loras, cache_threshold)


def run_variation(args, writer: OutputWriter) -> Plan:
    plan = prepare(args)
    prompt = cli_restyle.load_prompt(plan.text, args.prompt)
    flux = load_flux_model(FluxModelSpec(str(plan.sources["transformer"]), str(plan.sources["vae"]),
                                         plan.gen.variant, plan.options, loras=plan.loras,
                                         cache_threshold=plan.cache_threshold))
    encoder = load_redux_encoder(ReduxEncoderSpec(str(plan.sources["redux"]), str(plan.sources["siglip"]),
                                                  plan.options))
    init = cli_restyle.init_image(args)
    for number, path in enumerate(plan.jobs, 1):
        name = path.stem if path else "blend"
        log.info("[%d/%d] %s", number, len(plan.jobs), path or "references: " + ", ".join(str(r.path) for r in args.ref))
        conditioning = cli_restyle.conditioning_for(encoder, args, path, prompt)
        result = generate(flux, conditioning, plan.gen, init_image=init, denoise=args.denoise, show_progress=True)
        if not result.images.isfinite().all():
            raise ValueError(f"the model produced NaN pixels for {path or 'the references'}: the weights are "
                             "broken or the dtype overflows; try --dtype bf16 or fp32")
        meta = dict(result.metadata, reference=str(path) if path else None, crop=args.crop,
                    refs=[[str(r.path), r.weight, str(r.mask) if r.mask else None] for r in args.ref],
                    prompt=args.prompt, downsample=args.downsample, blend=args.blend,
                    init_image=str(args.init_image) if args.init_image else None)
        for index, image in enumerate(result.pil_images()):
            writer.save_png(image, f"{name}_seed{result.seed}_{index}.png", meta)
        log.info("seed %d, %.2f s per image -> %s", result.seed, result.metadata["timings"]["per_image_s"], args.out)
    return plan


def report_error(exc: BaseException, debug: bool) -> int:
    """One line on stderr (the traceback too with --debug); the exit status for it."""
    if debug:
        traceback.print_exception(exc)
    expected = isinstance(exc, EXPECTED_ERRORS)
    text = str(exc) if expected else f"unexpected {type(exc).__name__}: {exc}"
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}"
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":  # torch's is a RuntimeError
        expected, text = True, (f"out of memory ({str(exc).splitlines()[0] if str(exc) else 'MemoryError'}); "
                                "try --offload, --weight-storage fp8, fewer --num-images or a smaller size")
    hint = "" if expected or debug else " (a bug? rerun with --debug for the traceback and report it)"
    print(f"error: {text}{hint}", file=sys.stderr)
    return EXIT_ERROR if expected else EXIT_BUG


def variation_command(args) -> int:
    writer = OutputWriter(args.out, overwrite=args.overwrite)
    kept = lambda: f"{len(writer.written)} complete image(s) kept in {args.out}"  # noqa: E731
    try:
        plan = run_variation(args, writer)
    except KeyboardInterrupt:
        print(f"interrupted; {kept()}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        status = report_error(exc, args.debug)
        if writer.written:
            print(kept(), file=sys.stderr)
        return status
    print(f"wrote {len(writer.written)} image(s) to {args.out}")
    if plan.skipped:
        print(f"skipped {len(plan.skipped)} input(s):", file=sys.stderr)
        for path, why in plan.skipped:
            print(f"  {path}: {why}", file=sys.stderr)
        return EXIT_SKIPPED
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = getattr(args, "debug", False)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        return report_error(exc, debug)
