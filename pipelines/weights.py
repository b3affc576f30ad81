"""Weight files: refuse pickles, read safetensors headers, tell what a file holds, find files in model folders.

Reading a safetensors header lists keys and shapes without loading tensors, so a 24 GB transformer is
classified in milliseconds and a wrong file in a slot is reported before any real work.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

from safetensors import safe_open

from . import files
from .placement import Footprint

log = logging.getLogger(__name__)

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
    """Keys, shapes and dtypes of a safetensors or GGUF file, read from its header only.

    prefix: the keys carry it in the file (one component of a ComfyUI all-in-one checkpoint; stripped here).
    nbytes: bytes of each tensor in the file (GGUF blocks are smaller than their element count says).
    offsets: where each tensor's bytes start in a safetensors file, so rows of one can be read alone.
    """

    path: Path
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str] = field(default_factory=dict)
    prefix: str = ""
    nbytes: dict[str, int] = field(default_factory=dict)
    offsets: dict[str, int] = field(default_factory=dict)

    @property
    def keys(self) -> set[str]:
        return set(self.shapes)

    @property
    def is_gguf(self) -> bool:
        return self.path.suffix.lower() == ".gguf"

    @property
    def scaled(self) -> bool:
        """ComfyUI's scaled fp8: a `scaled_fp8` marker and a `scale_weight` per layer."""
        return any(k == "scaled_fp8" or k.endswith(".scale_weight") for k in self.shapes)

    def has_prefix(self, prefix: str) -> bool:
        return any(k.startswith(prefix) for k in self.shapes)

    def block_count(self, pattern: str) -> int:
        """Number of numbered blocks, e.g. block_count(r'double_blocks\\.(\\d+)\\.')."""
        numbers = {int(m.group(1)) for k in self.shapes if (m := re.search(pattern, k))}
        return max(numbers) + 1 if numbers else 0

    def component(self, prefix: str) -> "TensorIndex":
        """The keys under `prefix`, without it (e.g. `vae.` of an all-in-one checkpoint)."""
        def strip(d):
            return {k[len(prefix):]: v for k, v in d.items() if k.startswith(prefix)}
        return TensorIndex(self.path, strip(self.shapes), strip(self.dtypes), self.prefix + prefix, strip(self.nbytes),
                           strip(self.offsets))


def open_safetensors(path: str | Path):
    """safe_open reading with pread(2): its default memory map is private and writable, which the kernel counts
    as the process's private data (RLIMIT_DATA) for the whole file while it is open, even for a header read.
    safetensors < 0.8 has no pread backend; its memory map is then the only way."""
    try:
        return safe_open(str(path), framework="pt", backend="pread")
    except TypeError:
        return safe_open(str(path), framework="pt")


def refuse_pickle(path: Path) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise WeightsError(
            f"{path}: pickle checkpoints ({path.suffix}) are not loaded, because unpickling can run arbitrary "
            "code. Use the .safetensors release of this model, or a diffusers folder.")


def read_header(path: Path) -> TensorIndex:
    """A safetensors or GGUF header, whatever it holds. Raises the format library's own errors, or
    files.NotRegularFileError for a FIFO, socket or device (which the libraries' open would wait on forever)."""
    path = Path(path)
    files.require_regular(path)
    if path.suffix.lower() == ".gguf":
        from gguf import GGUFReader

        tensors = GGUFReader(str(path)).tensors  # memory-mapped: only the header is read
        return TensorIndex(path, {t.name: tuple(int(d) for d in reversed(t.shape.tolist())) for t in tensors},
                           {t.name: t.tensor_type.name for t in tensors},
                           nbytes={t.name: int(t.n_bytes) for t in tensors})
    with open_safetensors(path) as f:
        slices = {key: f.get_slice(key) for key in f.keys()}
        shapes = {k: tuple(s.get_shape()) for k, s in slices.items()}
        dtypes = {k: s.get_dtype() for k, s in slices.items()}
    return TensorIndex(path, shapes, dtypes,
                       nbytes={k: math.prod(v) * DTYPE_BYTES.get(dtypes[k], 4) for k, v in shapes.items()},
                       offsets=data_offsets(path))


def data_offsets(path: Path) -> dict[str, int]:
    """Each tensor's first byte in a safetensors file: the format is an 8-byte little-endian header length, the
    JSON header (data_offsets relative to the end of the header), then the data. Called after safe_open has
    accepted the header, so its layout is known to be valid."""
    with open(path, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(length))
    return {k: 8 + length + v["data_offsets"][0] for k, v in header.items() if k != "__metadata__"}


CHECKPOINT_PARTS = {"flux_transformer": "model.diffusion_model.", "vae": "vae."}  # ComfyUI all-in-one files


def is_checkpoint(index: TensorIndex) -> bool:
    return index.has_prefix(CHECKPOINT_PARTS["flux_transformer"]) and index.has_prefix(CHECKPOINT_PARTS["vae"])


def read_index(path: str | Path, expected: str) -> TensorIndex:
    """Open a header and check it holds `expected` (a KIND_NAMES key), named in every error. From an
    all-in-one checkpoint, the part for that slot."""
    path = Path(path)
    want = KIND_NAMES[expected]
    if not path.exists():
        raise WeightsError(f"{path}: file not found (expected {want}).")
    if path.is_dir():
        raise WeightsError(f"{path} is a folder; expected a .safetensors or .gguf file with {want}.")
    problem = files.not_regular(path)
    if problem:
        raise WeightsError(f"{path}: {problem}; expected a .safetensors or .gguf file with {want}.")
    refuse_pickle(path)
    if not os.access(path, os.R_OK):
        raise WeightsError(f"{path}: permission denied; make the file readable by this user (expected {want}).")
    try:
        index = read_header(path)
    except files.NotRegularFileError as exc:  # swapped for a FIFO or the like since the check above
        raise WeightsError(f"{exc}; expected a .safetensors or .gguf file with {want}.") from None
    except Exception as exc:  # safetensors and gguf raise several types for bad headers
        kind = "GGUF" if path.suffix.lower() == ".gguf" else "safetensors"
        raise WeightsError(f"{path}: not a readable {kind} file ({exc}). The download may be truncated or the "
                           f"file may be another format; expected {want}.") from exc
    if is_checkpoint(index) and expected in CHECKPOINT_PARTS:
        index = index.component(CHECKPOINT_PARTS[expected])
    expect_kind(index, expected)
    check_quant_layout(index)
    refuse_integer_weights(index)
    return index


# Other quantized layouts (ComfyUI's newer mixed formats, ModelOpt): not dequantized here, so refused by name.
UNSUPPORTED_QUANT_SUFFIXES = (".weight_scale", ".weight_scale_2", ".input_scale", ".comfy_quant")


def check_quant_layout(index: TensorIndex) -> None:
    """Refuse, from the header, weights whose scales this pack would otherwise drop."""
    odd = sorted(k for k in index.keys if k.endswith(UNSUPPORTED_QUANT_SUFFIXES))
    if odd:
        raise WeightsError(f"{index.path}: quantized with scales this pack cannot apply (e.g. {odd[0]}); use the "
                           "bf16/fp16, plain fp8, ComfyUI scaled fp8 or GGUF release of this model.")


INTEGER_DTYPES = frozenset({"BOOL", "U8", "I8", "U16", "I16", "U32", "I32", "U64", "I64"})
PARAMETER_SUFFIXES = (".weight", ".bias", ".scale")


def refuse_integer_weights(index: TensorIndex) -> None:
    """Model weights are floats (fp8 included); integer ones are a broken or foreign quantised export that
    would run and give garbage. Integer buffers (position_ids) are fine."""
    bad = sorted(k for k, d in index.dtypes.items() if d in INTEGER_DTYPES and k.endswith(PARAMETER_SUFFIXES))
    if bad:
        raise WeightsError(f"{index.path}: {len(bad)} weight tensor(s) are integer-typed ({bad[0]} is "
                           f"{index.dtypes[bad[0]]}); expected float weights (fp32/bf16/fp16/fp8). Re-download "
                           "the .safetensors release of this model.")


def check_values(index: TensorIndex, sample: int = 64) -> None:
    """Read the first values of every tensor (milliseconds, the file is memory-mapped) and refuse NaN or
    infinite ones: such a file gives black or noise images without any other error. GGUF blocks are
    quantized (no float values to sample), so GGUF files are passed over."""
    import torch

    if index.is_gguf:
        return

    with open_safetensors(index.path) as f:
        for key in f.keys():
            values = f.get_slice(key)
            shape = values.get_shape()
            if not shape or 0 in shape:
                continue
            head = values[:1].reshape(-1)[:sample] if len(shape) > 1 else values[:min(sample, shape[0])]
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
    for part in sorted([folder / "config.json", *folder.glob("*.safetensors")]):  # the loader would wait on a FIFO
        problem = files.not_regular(part)
        if problem:
            raise WeightsError(f"{part}: {problem}; expected {what} as a diffusers folder of regular files.")
    try:
        config = json.loads(files.read_text(folder / "config.json"))
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
    keys = {k.removeprefix("model.diffusion_model.") for k in index.keys if k.endswith(PARAMETER_SUFFIXES)}
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


DTYPE_BYTES = {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2, "I16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
               "I8": 1, "U8": 1, "BOOL": 1}
SCALE_SUFFIXES = ("scaled_fp8", ".scale_weight", ".scale_input")


def _index_footprint(index: TensorIndex, keys) -> tuple[int, int]:
    return sum(math.prod(index.shapes[k]) for k in keys), sum(index.nbytes[k] for k in keys)


def _matrix_params(index: TensorIndex, keys) -> tuple[int, int]:
    """Parameters of the 2-D weights (FLUX's Linear layers) and of those kept in fp8 as stored: plain fp8, and
    scaled fp8 with one scale per layer (a scale per row is dequantized at load)."""
    matrices = [k for k in keys if k.endswith(".weight") and len(index.shapes[k]) == 2]
    fp8 = [k for k in matrices if index.dtypes.get(k, "").startswith("F8_") and
           math.prod(index.shapes.get(f"{k[:-len('weight')]}scale_weight", ())) == 1]
    return sum(math.prod(index.shapes[k]) for k in matrices), sum(math.prod(index.shapes[k]) for k in fp8)


def transformer_footprint(path: str | Path) -> Footprint:
    """Parameter count, bytes and block count of a FLUX transformer, from headers only (nothing loaded)."""
    path = Path(path)
    if path.is_dir():
        folder = path / "transformer" if (path / "transformer").is_dir() else path
        params = stored = matrices = 0
        for file in sorted(folder.glob("*.safetensors")):
            index = read_header(file)
            p, b = _index_footprint(index, index.keys)
            params, stored, matrices = params + p, stored + b, matrices + _matrix_params(index, index.keys)[0]
        config = json.loads((folder / "config.json").read_text())
        blocks = config.get("num_layers", 19) + config.get("num_single_layers", 38)
        return Footprint(params, stored, False, blocks, matrices)  # from_pretrained: all in the compute dtype
    index = read_index(path, "flux_transformer")
    layout = transformer_layout(index)
    keys = [k for k in index.keys if not k.endswith(SCALE_SUFFIXES)]
    params, stored = _index_footprint(index, keys)
    matrices, fp8 = _matrix_params(index, keys)
    return Footprint(params, stored, index.is_gguf, layout.num_layers + layout.num_single_layers, matrices, fp8)


def component_params(path: str | Path, kind: str, sub: str) -> int:
    """Parameter count of one component (a KIND_NAMES key) from headers only: a single file (its part of an
    all-in-one checkpoint), or a diffusers folder (its `sub` folder inside a whole repo folder)."""
    path = Path(path)
    if path.is_dir():
        folder = path / sub if (path / sub).is_dir() else path
        return sum(_index_footprint(index, index.keys)[0] for index in map(read_header, folder.rglob("*.safetensors")))
    index = read_index(path, kind)
    return _index_footprint(index, index.keys)[0]


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


TRANSFORMER_FOLDERS = ("diffusion_models", "unet", "checkpoints")  # searched by header, any file name
WEIGHT_SUFFIXES = (".safetensors", ".sft", ".gguf")


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


def transformer_candidates(root: Path, variant: str) -> list[Path]:
    """Every FLUX transformer of `variant` in diffusion_models/, unet/ and checkpoints/, told by its header
    (milliseconds a file), whatever its name; files that are something else are passed over. What is not a
    regular file (a FIFO, socket or device would block the header read; a folder named like a file) is
    skipped with a warning naming it, never opened."""
    found = []
    for folder in TRANSFORMER_FOLDERS:
        base = root / folder
        named = sorted(p for p in base.rglob("*") if p.suffix.lower() in WEIGHT_SUFFIXES) if base.is_dir() else []
        for path in named:
            problem = files.not_regular(path)
            if problem:
                log.warning("skipped %s while looking for a FLUX transformer: %s", path, problem)
                continue
            try:
                if transformer_layout(read_index(path, "flux_transformer")).variant == variant:
                    found.append(path)
            except WeightsError:
                continue
    return found


def pick_transformer(root: Path, variant: str) -> Path | None:
    candidates = transformer_candidates(root, variant)
    if len(candidates) > 1:
        log.warning("several FLUX.1 %s transformers in %s: %s; using %s (pass the file explicitly to choose)",
                    variant, root, ", ".join(str(p.relative_to(root)) for p in candidates), candidates[0].name)
    return candidates[0] if candidates else None


def checkpoint_vae(path: Path | None) -> Path | None:
    """An all-in-one checkpoint carries its own VAE."""
    if path is None or path.is_dir() or path.suffix.lower() == ".gguf":
        return None
    return path if is_checkpoint(read_header(path)) else None



def find_weights(models_dir: str | Path, variant: str, slots: tuple[str, ...] = SLOTS) -> FoundWeights:
    """Look in a ComfyUI `models` folder for `slots` only (a slot the caller already has is not searched, so
    its absence is no error): the usual file names first, then any FLUX transformer file found by its header
    (diffusion_models/, unet/, checkpoints/), then `diffusers/` folders. variant "auto" accepts a dev or a
    schnell transformer (dev first).

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

    def any_transformer(variant: str) -> Path | None:
        looked.append(f"any FLUX.1 {variant} file in " + ", ".join(f"{root / f}/" for f in TRANSFORMER_FOLDERS))
        return pick_transformer(root, variant)

    searches = {
        "transformer": lambda: first(chain((single(f"transformer-{v}") for v in variants),
                                           (any_transformer(v) for v in variants),
                                           (folder(v, "transformer") for v in variants))),
        "vae": lambda: (single("vae") or checkpoint_vae(found.get("transformer"))
                        or first(folder(v, "vae") for v in variants)),
        "redux": lambda: single("redux") or folder("redux", "image_embedder"),
        "siglip": lambda: single("siglip") or folder("redux", "image_encoder"),
    }
    found: dict[str, Path | None] = {}
    for slot in SLOTS:  # in order: the VAE may come from the transformer's checkpoint
        if slot in slots:
            found[slot] = searches[slot]()
    missing = [slot for slot, path in found.items() if path is None]
    if missing:
        which = "dev or schnell" if variant == "auto" else variant
        raise WeightsError(f"missing FLUX.1 {which} weights for: {', '.join(missing)}. Looked for:\n  "
                           + "\n  ".join(looked)
                           + "\nPut the files in those ComfyUI folders (see the README's model table), or name them "
                           "explicitly.")
    return FoundWeights(**{slot: found.get(slot) for slot in SLOTS})
