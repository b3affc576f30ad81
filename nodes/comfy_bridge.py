"""Everything the local nodes need from ComfyUI, imported lazily, each with a fallback for plain Python.

Inside ComfyUI the top-level modules `folder_paths`, `comfy.*` and `latent_preview` exist; in tests they do
not, and the pack must still import. Outside ComfyUI the model lists come from a models folder laid out like
ComfyUI's `models/`: `MODELS_ROOT` below (settable), else the FLUX_REDUX_MODELS_DIR environment variable.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

import torch

from ..pipelines.weights import WEIGHT_SUFFIXES  # loadable files only: pickles are never offered


log = logging.getLogger(__name__)

MODELS_ROOT: str | Path | None = None  # outside ComfyUI: a `models/` folder (tests set this)
MODELS_ROOT_ENV = "FLUX_REDUX_MODELS_DIR"
DIFFUSERS_PREFIX = "diffusers/"

# ComfyUI folder name -> sub-folders of models/ (ComfyUI maps diffusion_models to unet too)
FALLBACK_FOLDERS = {
    "diffusion_models": ("diffusion_models", "unet"),
    "vae": ("vae",),
    "style_models": ("style_models",),
    "clip_vision": ("clip_vision",),
    "diffusers": ("diffusers",),
}


def comfy_module(module: str):
    """A ComfyUI module, or None outside ComfyUI."""
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        return None


# -- model folders --------------------------------------------------------------------------------------------

def _fallback_root() -> Path | None:
    root = MODELS_ROOT or os.environ.get(MODELS_ROOT_ENV)
    return Path(root) if root else None


def folder_dirs(folder: str) -> list[Path]:
    """The directories ComfyUI searches for `folder` (e.g. 'style_models')."""
    fp = comfy_module("folder_paths")
    if fp is not None:
        try:
            return [Path(p) for p in fp.get_folder_paths(folder)]
        except KeyError:
            return []
    root = _fallback_root()
    return [root / sub for sub in FALLBACK_FOLDERS.get(folder, (folder,))] if root else []


def _files_in(folder: str) -> list[str]:
    names = []
    for base in folder_dirs(folder):
        if base.is_dir():
            names += [p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file()]
    return names


def list_files(folder: str) -> list[str]:
    """Weight files in a ComfyUI folder, names relative to it ('sub/file.safetensors')."""
    fp = comfy_module("folder_paths")
    if fp is not None:
        try:
            names = fp.get_filename_list(folder)
        except KeyError:
            names = []
        names += [n for n in _files_in(folder) if n.lower().endswith(".gguf")]  # not among ComfyUI's extensions
    else:
        names = _files_in(folder)
    return sorted({n for n in names if n.lower().endswith(WEIGHT_SUFFIXES)})


def diffusers_folders(component: str) -> dict[str, Path]:
    """'diffusers/<name>' -> folder, for folders under `diffusers` holding `<component>/config.json`
    (e.g. transformer, vae, image_embedder, image_encoder). One level of nesting (org/name) is searched."""
    found: dict[str, Path] = {}
    for base in folder_dirs("diffusers"):
        if not base.is_dir():
            continue
        for candidate in sorted([*base.glob("*"), *base.glob("*/*")]):
            if (candidate / component / "config.json").is_file():
                found.setdefault(DIFFUSERS_PREFIX + candidate.relative_to(base).as_posix(), candidate)
    return found


def model_choices(folder: str, component: str) -> list[str]:
    """Combo entries for a loader input: the folder's files, then matching diffusers folders."""
    return list_files(folder) + [n for n in diffusers_folders(component) if n not in list_files(folder)]


def resolve_model(folder: str, component: str, name: str) -> str:
    """Full path of a combo entry; a readable error names the folders searched when it is missing."""
    folders = diffusers_folders(component)
    if name in folders:
        return str(folders[name])
    fp = comfy_module("folder_paths")
    if fp is not None:
        path = fp.get_full_path(folder, name)
        if path:
            return path
    else:
        for base in folder_dirs(folder):
            if (base / name).is_file():
                return str(base / name)
    where = ", ".join(str(d) for d in folder_dirs(folder)) or f"(no models folder configured: set {MODELS_ROOT_ENV})"
    raise FileNotFoundError(f"{name!r} not found in the {folder} folder(s): {where}; "
                            f"or as a diffusers folder with {component}/config.json under models/diffusers.")


# -- device, progress, interrupt, preview ---------------------------------------------------------------------

def default_device() -> str:
    """ComfyUI's compute device (honours --cpu, --cuda-device), else 'auto' (the engine picks)."""
    mm = comfy_module("comfy.model_management")
    return str(mm.get_torch_device()) if mm is not None else "auto"


def check_interrupt() -> None:
    """Raise ComfyUI's InterruptProcessingException if the user pressed Cancel."""
    mm = comfy_module("comfy.model_management")
    if mm is not None:
        mm.throw_exception_if_processing_interrupted()


def interrupt_requested() -> bool:
    """A `should_abort` for the remote client: raises ComfyUI's InterruptProcessingException on Cancel (the
    client then cancels its jobs and re-raises it), else False."""
    check_interrupt()
    return False


class Progress:
    """ComfyUI's ProgressBar when there is one (outside ComfyUI updates go nowhere)."""

    def __init__(self, total: int):
        utils = comfy_module("comfy.utils")
        self.bar = utils.ProgressBar(total) if utils is not None else None

    def update(self, step: int, total: int, preview: Any = None) -> None:
        if self.bar is not None:
            self.bar.update_absolute(step, total, preview)


def make_previewer(device: torch.device, latent_channels: int, vae_scale: int, height: int,
                   width: int) -> Callable[[torch.Tensor], Any] | None:
    """A function packed FLUX latents -> ComfyUI preview, using ComfyUI's own previewer for FLUX latents
    (Latent2RGB or TAESD, per the user's preview setting). None outside ComfyUI, with previews off, or
    when the latents are not FLUX's 16 channels (the tiny test models)."""
    lp, formats = comfy_module("latent_preview"), comfy_module("comfy.latent_formats")
    if lp is None or formats is None:
        return None
    flux_format = formats.Flux()
    if latent_channels != flux_format.latent_channels:
        return None
    try:
        previewer = lp.get_previewer(device, flux_format)
    except Exception as exc:  # a preview must never fail a generation
        log.warning("FLUX Redux: live preview unavailable: %s", exc)
        return None
    if previewer is None:
        return None
    h, w = 2 * (height // (vae_scale * 2)), 2 * (width // (vae_scale * 2))

    failed = []

    def preview(packed: torch.Tensor):
        if failed:
            return None
        try:  # FluxPipeline packs 2x2 latent patches: [B, h/2 * w/2, C*4] -> [B, C, h, w]
            b, _, c4 = packed.shape
            latents = packed[:1].reshape(1, h // 2, w // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
            return previewer.decode_latent_to_preview_image("JPEG", latents.reshape(1, c4 // 4, h, w).float())
        except Exception as exc:  # a preview must never fail a generation
            failed.append(exc)
            log.warning("FLUX Redux: live preview switched off: %s", exc)
            return None

    return preview
