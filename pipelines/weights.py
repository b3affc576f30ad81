"""Weight files: refuse pickles, read safetensors headers, tell what a file holds, find files in model folders.

Reading a safetensors header lists keys and shapes without loading tensors, so a 24 GB transformer is
classified in milliseconds and a wrong file in a slot is reported before any real work.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

from safetensors import safe_open

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
    if not os.access(path, os.R_OK):
        raise WeightsError(f"{path}: permission denied; make the file readable by this user (expected {want}).")
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
    refuse_integer_weights(index)
    return index


INTEGER_DTYPES = frozenset({"BOOL", "U8", "I8", "U16", "I16", "U32", "I32", "U64", "I64"})
WEIGHT_SUFFIXES = (".weight", ".bias", ".scale")


def refuse_integer_weights(index: TensorIndex) -> None:
    """Model weights are floats (fp8 included); integer ones are a broken or foreign quantised export that
    would run and give garbage. Integer buffers (position_ids) are fine."""
    bad = sorted(k for k, d in index.dtypes.items() if d in INTEGER_DTYPES and k.endswith(WEIGHT_SUFFIXES))
    if bad:
        raise WeightsError(f"{index.path}: {len(bad)} weight tensor(s) are integer-typed ({bad[0]} is "
                           f"{index.dtypes[bad[0]]}); expected float weights (fp32/bf16/fp16/fp8). Re-download "
                           "the .safetensors release of this model.")


def check_values(index: TensorIndex, sample: int = 64) -> None:
    """Read the first values of every tensor (milliseconds, the file is memory-mapped) and refuse NaN or
    infinite ones: such a file gives black or noise images without any other error."""
    import torch

    with safe_open(str(index.path), framework="pt") as f:
        for key in f.keys():
            values = f.get_slice(key)
            shape = values.get_shape()
            if not shape or 0 in shape:
                continue
            head = values[:1].reshape(-1)[:sample] if len(shape) > 1 else values[:sample]
            if head.is_floating_point() and not torch.isfinite(head.float()).all():
                raise WeightsError(f"{index.path}: tensor {key} holds NaN or infinite values; the file is "
                                   "corrupt (re-download it).")


PICKLE_WEIGHT_PATTERNS = tuple(f"*{suffix}" for suffix in PICKLE_SUFFIXES)


def check_diffusers_folder(folder: Path, model_class, what: str) -> None:
    """Before `from_pretrained`: the folder holds safetensors weights only (pickles are never loaded) and
    its config names `model_class` (a wrong folder would otherwise end in an obscure meta-tensor error)."""
    folder = Path(folder)
    pickles = sorted(p.name for pattern in PICKLE_WEIGHT_PATTERNS for p in folder.glob(pattern))
    if pickles:  # refused even beside safetensors: a name mismatch would make the library fall back to them
        raise WeightsError(f"{folder}: holds pickle weights ({pickles[0]}), which are never loaded because "
                           f"unpickling can run arbitrary code; keep only the .safetensors files of {what}.")
    if not any(folder.glob("*.safetensors")):
        raise WeightsError(f"{folder}: no .safetensors weights in this folder; expected {what} as a diffusers "
                           "folder (config.json + *.safetensors).")
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{folder / 'config.json'}: unreadable ({type(exc).__name__}); expected the "
                           f"config of {what}.") from None
    expected = getattr(model_class, "__name__", model_class)  # a class or its name
    names = {config.get("_class_name"), *(config.get("architectures") or [])} - {None}
    if names and expected not in names:
        raise WeightsError(f"{folder}: this folder holds {', '.join(sorted(map(str, names)))}, but this slot "
                           f"expects {what} ({expected}).")


# Non-block tensors every FLUX transformer has, in BFL and diffusers naming (facts of the two formats).
TRANSFORMER_REQUIRED = {
    True: ("img_in.weight", "txt_in.weight", "time_in.in_layer.weight", "time_in.out_layer.weight",
           "vector_in.in_layer.weight", "vector_in.out_layer.weight", "final_layer.linear.weight",
           "final_layer.adaLN_modulation.1.weight"),
    False: ("x_embedder.weight", "context_embedder.weight", "time_text_embed.timestep_embedder.linear_1.weight",
            "time_text_embed.timestep_embedder.linear_2.weight", "time_text_embed.text_embedder.linear_1.weight",
            "time_text_embed.text_embedder.linear_2.weight", "norm_out.linear.weight", "proj_out.weight"),
}
BLOCK_FAMILIES = (r"double_blocks", r"single_blocks", r"transformer_blocks", r"single_transformer_blocks")


def check_transformer_complete(index: TensorIndex) -> None:
    """Name the first tensor a FLUX transformer file lacks: the fixed ones, and any that one numbered block
    has and another lacks (an incomplete download or a bad merge), instead of a later IndexError."""
    # Parameters only: quantisation extras (scale_weight, input_scale, ...) may exist for some layers only.
    keys = {k.removeprefix("model.diffusion_model.") for k in index.keys if k.endswith(WEIGHT_SUFFIXES)}
    layout = transformer_layout(index)
    missing = [k for k in TRANSFORMER_REQUIRED[layout.bfl_names] if k not in keys]
    for family in BLOCK_FAMILIES:
        blocks: dict[int, set[str]] = {}
        for key in keys:
            if m := re.match(rf"{family}\.(\d+)\.(.+)$", key):
                blocks.setdefault(int(m.group(1)), set()).add(m.group(2))
        every = set().union(*blocks.values()) if blocks else set()
        missing += [f"{family}.{n}.{s}" for n in sorted(blocks) for s in sorted(every - blocks[n])]
    if missing:
        raise WeightsError(f"{index.path}: this FLUX transformer lacks {len(missing)} tensor(s) (first: "
                           f"{missing[0]}); the file is incomplete or a partial merge (re-download it).")


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

    transformer: Path | None
    vae: Path | None
    redux: Path | None
    siglip: Path | None

    def as_dict(self) -> dict[str, str]:
        """The slots that were searched and found."""
        return {k: str(v) for k, v in self.__dict__.items() if v is not None}


SLOTS = ("transformer", "vae", "redux", "siglip")


def find_weights(models_dir: str | Path, variant: str, slots: tuple[str, ...] = SLOTS) -> FoundWeights:
    """Look in a ComfyUI `models` folder (single files first, then `diffusers/` folders) for `slots` only
    (a slot the caller already has is not searched, so its absence is no error). variant "auto" accepts a
    dev or a schnell transformer (dev first).

    Raises WeightsError listing every place looked at, so the user knows where to put what.
    """
    root = Path(models_dir)
    if not root.is_dir():
        raise WeightsError(f"models folder {root} does not exist (expected ComfyUI's models/ folder).")
    variants = ("dev", "schnell") if variant == "auto" else (variant,)
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

    def first(candidates) -> Path | None:
        """The first hit of lazy searches: what comes after it is neither searched nor listed in `looked`."""
        return next((path for path in candidates if path is not None), None)

    searches = {
        "transformer": lambda: first(chain((single(f"transformer-{v}") for v in variants),
                                           (folder(v, "transformer") for v in variants))),
        "vae": lambda: single("vae") or first(folder(v, "vae") for v in variants),
        "redux": lambda: single("redux") or folder("redux", "image_embedder"),
        "siglip": lambda: single("siglip") or folder("redux", "image_encoder"),
    }
    found = {slot: searches[slot]() for slot in slots}
    missing = [slot for slot, path in found.items() if path is None]
    if missing:
        which = "dev or schnell" if variant == "auto" else variant
        raise WeightsError(f"missing FLUX.1 {which} weights for: {', '.join(missing)}. Looked for:\n  "
                           + "\n  ".join(looked)
                           + "\nPut the files in those ComfyUI folders (see the README's model table), or name them "
                           "explicitly.")
    return FoundWeights(**{slot: found.get(slot) for slot in SLOTS})
