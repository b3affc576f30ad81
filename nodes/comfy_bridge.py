"""Everything the local nodes need from ComfyUI, imported lazily, each with a fallback for plain Python.

Inside ComfyUI the top-level modules `folder_paths`, `comfy.*` and `latent_preview` exist; in tests they do
not, and the pack must still import. Outside ComfyUI the model lists come from a models folder laid out like
ComfyUI's `models/`: `MODELS_ROOT` below (settable), else the FLUX_REDUX_MODELS_DIR environment variable.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Hashable

import torch

from ..pipelines.cache import CACHE

log = logging.getLogger(__name__)

MODELS_ROOT: str | Path | None = None  # outside ComfyUI: a `models/` folder (tests set this)
MODELS_ROOT_ENV = "FLUX_REDUX_MODELS_DIR"
WEIGHT_SUFFIXES = (".safetensors", ".sft", ".gguf")  # pickles are refused by the engine, so they are not offered
DIFFUSERS_PREFIX = "diffusers/"

# ComfyUI folder name -> sub-folders of models/ (ComfyUI maps diffusion_models to unet too)
FALLBACK_FOLDERS = {
    "diffusion_models": ("diffusion_models", "unet"),
    "vae": ("vae",),
    "style_models": ("style_models",),
    "clip_vision": ("clip_vision",),
    "diffusers": ("diffusers",),
}


def _comfy(module: str):
    """A ComfyUI module, or None outside ComfyUI."""
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        return None


def in_comfyui() -> bool:
    return _comfy("folder_paths") is not None


# -- model folders --------------------------------------------------------------------------------------------

def _fallback_root() -> Path | None:
    root = MODELS_ROOT or os.environ.get(MODELS_ROOT_ENV)
    return Path(root) if root else None


def folder_dirs(folder: str) -> list[Path]:
    """The directories ComfyUI searches for `folder` (e.g. 'style_models')."""
    fp = _comfy("folder_paths")
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
    fp = _comfy("folder_paths")
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
    fp = _comfy("folder_paths")
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
    mm = _comfy("comfy.model_management")
    return str(mm.get_torch_device()) if mm is not None else "auto"


def check_interrupt() -> None:
    """Raise ComfyUI's InterruptProcessingException if the user pressed Cancel."""
    mm = _comfy("comfy.model_management")
    if mm is not None:
        mm.throw_exception_if_processing_interrupted()


def interrupt_requested() -> bool:
    """A `should_abort` for the remote client: raises ComfyUI's InterruptProcessingException on Cancel (the
    client then cancels its jobs and re-raises it), else False."""
    check_interrupt()
    return False


class Progress:
    """ComfyUI's ProgressBar when there is one; `updates` keeps (step, total, had_preview) for tests."""

    def __init__(self, total: int):
        utils = _comfy("comfy.utils")
        self.bar = utils.ProgressBar(total) if utils is not None else None
        self.updates: list[tuple[int, int, bool]] = []

    def update(self, step: int, total: int, preview: Any = None) -> None:
        self.updates.append((step, total, preview is not None))
        if self.bar is not None:
            self.bar.update_absolute(step, total, preview)


def make_previewer(device: torch.device, latent_channels: int, vae_scale: int, height: int,
                   width: int) -> Callable[[torch.Tensor], Any] | None:
    """A function packed FLUX latents -> ComfyUI preview, using ComfyUI's own previewer for FLUX latents
    (Latent2RGB or TAESD, per the user's preview setting). None outside ComfyUI, with previews off, or
    when the latents are not FLUX's 16 channels (the tiny test models)."""
    lp, formats = _comfy("latent_preview"), _comfy("comfy.latent_formats")
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


# -- ComfyUI memory management ----------------------------------------------------------------------------------

def _normalised(device: torch.device) -> torch.device:
    """cuda -> cuda:N, as comfy.model_management.get_torch_device() reports it."""
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return device


class CachedModelEntry:
    """Stands in comfy.model_management.current_loaded_models for one model in the pack's cache.

    ComfyUI frees memory by calling `model_unload()` on the entries of that list: from unload_all_models()
    ("Free model and node cache", POST /free, --disable-smart-memory) and from free_memory() when another
    model needs room on the same device. This object has exactly the members those functions use (ComfyUI
    0.3.x) and answers by dropping the model from the pack's cache. It reports itself as never
    `currently_used`, so ComfyUI never tries to load it back the way it reloads its own models.
    """

    def __init__(self, key: Hashable, device: torch.device, size: int, label: str):
        self.key, self.device, self.size, self.label = key, _normalised(device), size, label
        self.model = self  # free_memory logs entry.model.model's class; LoadedModel.__eq__ compares .model

    currently_used = property(lambda self: False, lambda self, value: None)

    def model_memory(self) -> int:
        return self.size

    def model_loaded_memory(self) -> int:
        return self.size

    def model_offloaded_memory(self) -> int:
        return 0

    def model_memory_required(self, device) -> int:
        return 0

    def is_dead(self) -> bool:
        return False

    def is_clone(self, other) -> bool:
        return False

    def model_patches_models(self) -> list:
        return []

    def real_model(self):
        return self if self.key in CACHE else None  # None lets ComfyUI's cleanup_models() drop the entry

    def model_unload(self, memory_to_free=None, unpatch_weights=True) -> bool:
        dropped = CACHE.unload(self.key)
        log.info("FLUX Redux: ComfyUI freed memory: unloaded %s (%d cached model(s) dropped)", self.label, dropped)
        return True

    def detach(self, unpatch_all=True) -> None:
        self.model_unload()

    def __repr__(self) -> str:
        return f"CachedModelEntry({self.label}, {self.device}, {self.size / 2**20:.0f} MiB)"


def module_bytes(*modules) -> int:
    return sum(t.numel() * t.element_size() for m in modules if m is not None
               for t in [*m.parameters(), *m.buffers()])


def track_in_comfy_memory(key: Hashable, device: torch.device, size: int, label: str) -> CachedModelEntry | None:
    """Register a cached model with ComfyUI's memory management (once per cache key). No-op outside ComfyUI;
    if ComfyUI's internals ever differ, a warning is logged and the Unload node remains the way to free memory."""
    mm = _comfy("comfy.model_management")
    loaded = getattr(mm, "current_loaded_models", None)
    if not isinstance(loaded, list):
        return None
    try:
        loaded[:] = [e for e in loaded if not (isinstance(e, CachedModelEntry) and e.key not in CACHE)]
        for entry in loaded:
            if isinstance(entry, CachedModelEntry) and entry.key == key:
                return entry
        entry = CachedModelEntry(key, device, size, label)
        loaded.append(entry)
        return entry
    except Exception as exc:
        log.warning("FLUX Redux: could not register %s with ComfyUI's memory management (%s); "
                    "use the Unload node to free it", label, exc)
        return None


def forget_unloaded() -> None:
    """Drop entries whose model is no longer cached (after the Unload node ran)."""
    mm = _comfy("comfy.model_management")
    loaded = getattr(mm, "current_loaded_models", None)
    if isinstance(loaded, list):
        loaded[:] = [e for e in loaded if not (isinstance(e, CachedModelEntry) and e.key not in CACHE)]
