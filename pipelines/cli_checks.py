"""Everything the CLI checks before loading a model: input images, the output folder, the device, and the
weight files' headers (kind, completeness, dtypes, a sample of their values, the FLUX variant).

Loading a real FLUX transformer takes minutes; a mistake found after it is a wasted run, so every check that
needs only arguments, headers or a few bytes happens here first.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from . import checks, files, params
from .cli_outputs import name_bytes, name_max, output_name
from .loading import folder_with
from .weights import (KIND_NAMES, SLOTS, TensorIndex, WeightsError, check_diffusers_folder,
                      check_transformer_complete, check_values, detect_variant, find_weights, read_index)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
# Slot -> (weights kind, diffusers subfolder, model class name): how each slot looks on disk.
SLOT_LAYOUT = {
    "transformer": ("flux_transformer", "transformer", "FluxTransformer2DModel"),
    "vae": ("vae", "vae", "AutoencoderKL"),
    "redux": ("redux", "image_embedder", "ReduxImageEncoder"),
    "siglip": ("siglip", "image_encoder", "SiglipVisionModel"),
}


class InputError(ValueError):
    """An input file cannot be used; the message names the file and what is wrong."""


@dataclass
class Inputs:
    """The usable input images, and the ones skipped with the reason."""

    images: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    hidden: int = 0  # dot files in folders (macOS `._name.jpg` and the like), ignored


def image_problem(path: Path) -> str | None:
    """Why `path` is not a usable image (decoded in full, so truncation shows), or None. A FIFO, socket or
    device is named, never opened in a way that could wait (files.py)."""
    problem = files.not_regular(path)
    if problem:
        return problem
    try:
        with files.open_regular(path) as handle:
            if os.fstat(handle.fileno()).st_size == 0:
                return "empty file (0 bytes)"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # large photos are fine
                with Image.open(handle) as image:
                    width, height = image.size
                    image.load()
    except Image.DecompressionBombError:  # PIL's limit: twice MAX_IMAGE_PIXELS (a decompression bomb)
        limit = 2 * Image.MAX_IMAGE_PIXELS / 1e6
        return f"too many pixels (over the {limit:.0f} megapixel limit for input images); downscale it"
    except PermissionError:
        return "permission denied (make the file readable)"
    except files.NotRegularFileError as exc:  # replaced by a FIFO or the like since the check above
        return exc.strerror
    except (OSError, SyntaxError, ValueError) as exc:  # PIL's errors for unknown or broken files
        return f"not a readable image ({exc})"
    if width * height == 0:
        return "image has no pixels"
    return None


def collect_inputs(items: list[Path], fail_fast: bool) -> Inputs:
    """Every image in the given files and folders, checked; bad ones are skipped (or stop the run)."""
    found = Inputs()
    for item in items:
        if item.is_dir():  # sub-folders are not searched; FIFOs, sockets and devices are skipped and named
            entries = sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir())
            visible = [p for p in entries if not p.name.startswith(".")]
            found.hidden += len(entries) - len(visible)
            candidates = visible
        elif item.exists() or item.is_symlink():
            candidates = [item]
        else:
            raise InputError(f"input {item} does not exist (expected an image file or a folder of images)")
        for path in candidates:
            problem = image_problem(path)
            if problem is None:
                found.images.append(path)
            elif fail_fast:
                raise InputError(f"input {path}: {problem}")
            else:
                found.skipped.append((path, problem))
    return found


def check_image_option(option: str, path: Path) -> None:
    """A file every job uses (--ref, --mask, --init-image): any problem stops the run."""
    if not path.exists() and not path.is_symlink():
        raise InputError(f"{option} {path}: file not found (expected an image file)")
    problem = image_problem(path)
    if problem:
        raise InputError(f"{option} {path}: {problem}")


def check_out_dir(out: Path) -> None:
    """--out must be a folder this user can write to (created when missing)."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: is a file; expected a folder (it is created when missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise InputError(f"--out {out}: cannot write there ({exc.strerror or exc}); choose another folder") from None


def name_problems(jobs: list[Path | None], seed: int | None, num_images: int, out: Path) -> dict[Path, str]:
    """Inputs whose output names would not fit the --out file system's name limit (checked before any model
    loads, so a batch never dies after generating): {input: reason}. A random seed counts at its longest."""
    limit = name_max(out)
    longest_seed = params.SEED.maximum if seed is None else seed
    problems = {}
    for path in jobs:
        if path is None:
            continue
        name = output_name(path.stem, longest_seed, num_images - 1)
        size = name_bytes(name)
        if size > limit:
            room = limit - (size - name_bytes(path.stem))
            problems[path] = (f"its output name would be {size} bytes ({name[:24]}...), over the {limit}-byte "
                              f"file name limit of --out {out}; rename it to a stem of at most {room} bytes")
    return problems


def check_device(device: str) -> None:
    """--device names a device torch has on this machine (the engine's check, as the loader nodes use it)."""
    checks.check_device(device, "device", "--device cpu or auto")


def resolve_sources(explicit: dict[str, Path | None], models_dir: Path | None, model: str) -> dict[str, Path]:
    """Each slot's file or folder: an explicit path always wins; only the other slots are searched."""
    wanted = tuple(slot for slot in SLOTS if explicit.get(slot) is None)
    if not wanted:
        return dict(explicit)
    if models_dir is None:
        raise WeightsError(f"no weights given for {', '.join(wanted)}: pass --models-dir ComfyUI/models, or "
                           + " ".join(f"--{slot} FILE" for slot in wanted))
    found = find_weights(models_dir, model, wanted).as_dict()
    return {slot: explicit.get(slot) or Path(found[slot]) for slot in SLOTS}


def check_source(slot: str, path: Path) -> TensorIndex | None:
    """The file or folder holds what the slot expects, complete, float-typed, without NaN. Returns a single
    file's header index (None for a folder)."""
    kind, sub, class_name = SLOT_LAYOUT[slot]
    what = KIND_NAMES[kind]
    if path.is_dir():
        folder = folder_with(path, sub, "config.json")
        if folder is None:
            raise WeightsError(f"--{slot} {path}: not a diffusers folder (no config.json in it or in "
                               f"{path / sub}); expected {what}")
        check_diffusers_folder(folder, class_name, what)
        return None
    index = read_index(path, kind)
    if slot == "transformer":
        check_transformer_complete(index)
    check_values(index)
    return index


def _shape(index: TensorIndex, *names: str) -> tuple[int, ...] | None:
    """The shape of the first of `names` in the file, with or without ComfyUI's key prefixes."""
    shapes = {k.removeprefix("model.diffusion_model.").removeprefix("vision_model."): v
              for k, v in index.shapes.items()}
    return next((shapes[name] for name in names if name in shapes), None)


def check_pairing(indexes: dict[str, TensorIndex | None]) -> None:
    """Files that cannot work together (a Redux projector for another FLUX width, a VAE with other latent
    channels), told from their headers before anything loads."""
    if any(index is None for index in indexes.values()):
        return  # diffusers folders: checked by the loaders
    transformer, vae, redux, siglip = (indexes[slot] for slot in SLOTS)
    joint = _shape(transformer, "context_embedder.weight", "txt_in.weight")
    image_in = _shape(transformer, "x_embedder.weight", "img_in.weight")
    latent = _shape(vae, "encoder.conv_out.weight")
    tokens, features = _shape(redux, "redux_down.weight"), _shape(redux, "redux_up.weight")
    vision = _shape(siglip, "embeddings.patch_embedding.weight")
    problems = []
    if tokens and joint and tokens[0] != joint[1]:
        problems.append(f"{redux.path} makes {tokens[0]}-wide tokens but {transformer.path} takes {joint[1]}-wide "
                        "text tokens")
    if features and vision and features[1] != vision[0]:
        problems.append(f"{redux.path} takes {features[1]}-wide SigLIP features but {siglip.path} produces "
                        f"{vision[0]}")
    if latent and image_in and image_in[1] != 4 * (latent[0] // 2):
        problems.append(f"{vae.path} has {latent[0] // 2} latent channels but {transformer.path} expects "
                        f"{image_in[1] // 4}")
    if problems:
        raise WeightsError(f"{problems[0]}: they belong to different models")


def check_weights(sources: dict[str, Path], model: str) -> str:
    """Check every slot and return the FLUX variant the run uses (read from the transformer for auto)."""
    check_pairing({slot: check_source(slot, sources[slot]) for slot in SLOTS})
    return detect_variant(sources["transformer"]) if model == "auto" else model
