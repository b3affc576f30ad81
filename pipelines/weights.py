"""Weight files: refuse pickles, read safetensors headers, tell what a file holds, find files in model folders.

Reading a safetensors header lists keys and shapes without loading tensors, so a 24 GB transformer is
classified in milliseconds and a wrong file in a slot is reported before any real work.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from safetensors import safe_open

from .placement import Footprint

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")

# What each slot expects, in words, for error messages.
KIND_NAMES = {
    "flux_transformer": "a FLUX.1 transformer (BFL keys double_blocks.N / single_blocks.N, or diffusers keys)",
    "vae": "the FLUX autoencoder (ae.safetensors: encoder.down.N / decoder.up.N keys)",
    "redux": "the Redux projector (flux1-redux-dev.safetensors: redux_up / redux_down keys)",
    "siglip": "a SigLIP vision tower (sigclip_vision_patch14_384.safetensors: vision_model.* keys)",
    "text_encoder": "a FLUX text encoder (clip_l.safetensors: text_model.* keys; t5xxl: encoder.block.N keys)",
}


class WeightsError(RuntimeError):
    """A weight file or folder is missing, unreadable, or not what its slot expects."""


@dataclass
class TensorIndex:
    """Keys, shapes and dtypes of a safetensors file, read from its header only."""

    path: Path
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str] = field(default_factory=dict)

    @property
    def keys(self) -> set[str]:
        return set(self.shapes)

    def has_prefix(self, prefix: str) -> bool:
        return any(k.startswith(prefix) for k in self.shapes)

    def block_count(self, pattern: str) -> int:
        """Number of numbered blocks, e.g. block_count(r'double_blocks\\.(\\d+)\\.')."""
        numbers = {int(m.group(1)) for k in self.shapes if (m := re.search(pattern, k))}
        return max(numbers) + 1 if numbers else 0


def refuse_pickle(path: Path) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise WeightsError(
            f"{path}: pickle checkpoints ({path.suffix}) are not loaded, because unpickling can run arbitrary "
            "code. Use the .safetensors release of this model, or a diffusers folder.")


def read_index(path: str | Path, expected: str) -> TensorIndex:
    """Open a safetensors header and check it holds `expected` (a KIND_NAMES key), named in every error."""
    path = Path(path)
    want = KIND_NAMES[expected]
    if not path.exists():
        raise WeightsError(f"{path}: file not found (expected {want}).")
    if path.is_dir():
        raise WeightsError(f"{path} is a folder; expected a .safetensors file with {want}.")
    refuse_pickle(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            shapes, dtypes = {}, {}
            for key in f.keys():
                sl = f.get_slice(key)
                shapes[key] = tuple(sl.get_shape())
                dtypes[key] = sl.get_dtype()
    except Exception as exc:  # safetensors raises several types for bad headers
        raise WeightsError(f"{path}: not a readable safetensors file ({exc}). The download may be truncated or "
                           f"the file may be another format; expected {want}.") from exc
    index = TensorIndex(path, shapes, dtypes)
    expect_kind(index, expected)
    return index


def read_any_index(path: Path) -> TensorIndex:
    """A safetensors header whatever it holds (for sizes; slots check the kind with read_index)."""
    with safe_open(str(path), framework="pt") as f:
        slices = {key: f.get_slice(key) for key in f.keys()}
        return TensorIndex(Path(path), {k: tuple(s.get_shape()) for k, s in slices.items()},
                           {k: s.get_dtype() for k, s in slices.items()})


def classify(index: TensorIndex) -> str | None:
    """Return the KIND_NAMES key this file holds, or None."""
    keys = index.keys
    if any(re.search(r"(^|\.)(double_blocks|single_blocks|transformer_blocks|single_transformer_blocks)\.\d+\.", k)
           for k in keys):
        return "flux_transformer"
    if {"redux_up.weight", "redux_down.weight"} <= keys:
        return "redux"
    if any("encoder.layers." in k for k in keys) and any("embeddings.patch_embedding" in k for k in keys):
        return "siglip"
    if any("embeddings.token_embedding" in k for k in keys) or any(k.startswith("encoder.block.") for k in keys):
        return "text_encoder"
    if any(k.startswith(("encoder.down.", "decoder.up.", "encoder.down_blocks.", "decoder.up_blocks.")) for k in keys):
        return "vae"
    return None


def expect_kind(index: TensorIndex, expected: str) -> None:
    found = classify(index)
    if found != expected:
        what = KIND_NAMES.get(found, "no model this pack recognises")
        raise WeightsError(f"{index.path}: this file holds {what}, but this slot expects {KIND_NAMES[expected]}.")


@dataclass
class TransformerLayout:
    """What the shipped FLUX config must be adapted to, read from the file's keys."""

    bfl_names: bool
    num_layers: int
    num_single_layers: int
    guidance_embeds: bool

    @property
    def variant(self) -> str:
        return "dev" if self.guidance_embeds else "schnell"


def transformer_layout(index: TensorIndex) -> TransformerLayout:
    bfl = any(re.search(r"(^|\.)double_blocks\.\d+\.", k) for k in index.keys)
    if bfl:
        layers = index.block_count(r"(?:^|\.)double_blocks\.(\d+)\.")
        singles = index.block_count(r"(?:^|\.)single_blocks\.(\d+)\.")
        guidance = index.has_prefix("guidance_in.") or index.has_prefix("model.diffusion_model.guidance_in.")
    else:
        layers = index.block_count(r"(?:^|\.)transformer_blocks\.(\d+)\.")
        singles = index.block_count(r"(?:^|\.)single_transformer_blocks\.(\d+)\.")
        guidance = any("guidance_embedder" in k for k in index.keys)
    return TransformerLayout(bfl, layers, singles, guidance)


DTYPE_BYTES = {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2, "I16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
               "I8": 1, "U8": 1, "BOOL": 1}
CHECKPOINT_PREFIX = "model.diffusion_model."  # ComfyUI all-in-one checkpoints keep the transformer here


def _index_footprint(index: TensorIndex, keys) -> tuple[int, int]:
    params = sum(math.prod(index.shapes[k]) for k in keys)
    return params, sum(math.prod(index.shapes[k]) * DTYPE_BYTES.get(index.dtypes.get(k, "F32"), 4) for k in keys)


def transformer_footprint(path: str | Path) -> Footprint:
    """Parameter count, bytes and block count of a FLUX transformer, from headers only (nothing loaded)."""
    path = Path(path)
    if path.is_dir():
        folder = path / "transformer" if (path / "transformer").is_dir() else path
        params = stored = 0
        for file in sorted(folder.glob("*.safetensors")):
            index = read_any_index(file)
            p, b = _index_footprint(index, index.keys)
            params, stored = params + p, stored + b
        config = json.loads((folder / "config.json").read_text())
        return Footprint(params, stored, False, config.get("num_layers", 19) + config.get("num_single_layers", 38))
    index = read_index(path, "flux_transformer")
    layout = transformer_layout(index)
    keys = [k for k in index.keys if k.startswith(CHECKPOINT_PREFIX)] or index.keys
    params, stored = _index_footprint(index, keys)
    return Footprint(params, stored, False, layout.num_layers + layout.num_single_layers)


def file_params(path: str | Path) -> int:
    """Parameter count of a safetensors file or a diffusers component folder (headers only)."""
    path = Path(path)
    files = sorted(path.rglob("*.safetensors")) if path.is_dir() else [path]
    return sum(_index_footprint(index, index.keys)[0] for index in map(read_any_index, files))


def detect_variant(path: str | Path) -> str:
    """'dev' or 'schnell' without loading anything (a guidance embedding means dev): from a single file's
    header, or from a diffusers folder's transformer config (the model folder or its transformer/ folder)."""
    path = Path(path)
    if not path.is_dir():
        return transformer_layout(read_index(path, "flux_transformer")).variant
    config = path / "transformer" / "config.json"
    config = config if config.is_file() else path / "config.json"
    return "dev" if json.loads(config.read_text()).get("guidance_embeds") else "schnell"


# ComfyUI folder layout: the slots and the file names users have, in order of preference.
COMFY_LOCATIONS = {
    "redux": (("style_models",), ("flux1-redux-dev.safetensors",)),
    "siglip": (("clip_vision",), ("sigclip_vision_patch14_384.safetensors", "siglip-so400m-patch14-384.safetensors")),
    "vae": (("vae",), ("ae.safetensors", "flux1-vae.safetensors")),
    "transformer-dev": (("diffusion_models", "unet"),
                        ("flux1-dev.safetensors", "flux1-dev-fp8.safetensors", "flux1-dev-fp8-e4m3fn.safetensors")),
    "transformer-schnell": (("diffusion_models", "unet"),
                            ("flux1-schnell.safetensors", "flux1-schnell-fp8.safetensors",
                             "flux1-schnell-fp8-e4m3fn.safetensors")),
}
DIFFUSERS_FOLDERS = {"dev": ("FLUX.1-dev",), "schnell": ("FLUX.1-schnell",), "redux": ("FLUX.1-Redux-dev",)}


@dataclass
class FoundWeights:
    """Where each component comes from: a single file, or a diffusers folder (with its subfolder)."""

    transformer: Path
    vae: Path
    redux: Path
    siglip: Path

    def as_dict(self) -> dict[str, str]:
        return {k: str(v) for k, v in self.__dict__.items()}


def find_weights(models_dir: str | Path, variant: str) -> FoundWeights:
    """Look in a ComfyUI `models` folder (single files first, then `diffusers/` folders).

    Raises WeightsError listing every place looked at, so the user knows where to put what.
    """
    root = Path(models_dir)
    if not root.is_dir():
        raise WeightsError(f"models folder {root} does not exist (expected ComfyUI's models/ folder).")
    looked: list[str] = []

    def single(slot: str) -> Path | None:
        folders, names = COMFY_LOCATIONS[slot]
        for folder in folders:
            for name in names:
                candidate = root / folder / name
                looked.append(str(candidate))
                if candidate.is_file():
                    return candidate
        return None

    def folder(kind: str, sub: str) -> Path | None:
        for name in DIFFUSERS_FOLDERS[kind]:
            candidate = root / "diffusers" / name / sub
            looked.append(str(candidate) + "/")
            if candidate.is_dir():
                return candidate
        return None

    found = {
        "transformer": single(f"transformer-{variant}") or folder(variant, "transformer"),
        "vae": single("vae") or folder(variant, "vae"),
        "redux": single("redux") or folder("redux", "image_embedder"),
        "siglip": single("siglip") or folder("redux", "image_encoder"),
    }
    missing = [slot for slot, path in found.items() if path is None]
    if missing:
        raise WeightsError(f"missing FLUX.1 {variant} weights for: {', '.join(missing)}. Looked for:\n  "
                           + "\n  ".join(looked)
                           + "\nPut the files in those ComfyUI folders (see the README's model table).")
    return FoundWeights(**found)
