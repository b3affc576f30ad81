"""Weights streamed from a file into a model built on the meta device: one copy, a tensor at a time.

Each tensor goes from the file to its storage dtype on its final device and into the model through accelerate's
`set_module_tensor_to_device`, the way accelerate's `load_checkpoint_and_dispatch` and ComfyUI's loader work: no
state dict of the whole file, no copy of the model in another dtype. A process holds the model plus the tensor in
flight. On the CPU, safetensors tensors are copied (and cast) straight from a read-only shared mapping of the file
into the tensor being built; those bound for another device are read (seek + readinto at their header offsets)
through one 16 MB scratch buffer, a chunk at a time. (safetensors' default mmap backend maps the file private and
writable, which the kernel counts as the process's private data (RLIMIT_DATA) for as long as the file is open; a
read-only shared mapping is page cache the kernel can drop.) The file is read front to back and the kernel is told
so (sequential read-ahead), so the disk works while a chunk is cast. GGUF files are memory-mapped read-only by the
gguf package, and only the rows a tensor needs are copied out.

BFL and LDM key names are converted by diffusers' own single-file converters, run on stand-ins that hold row
numbers instead of weights (a few MB for a full FLUX transformer), so the result says which rows of which file
tensor each model tensor takes, and only then are the real tensors read, under their converted names.
"""

from __future__ import annotations

import logging
import math
import mmap
import os
import warnings
from bisect import bisect_right
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Callable

import torch

from .weights import SCALE_SUFFIXES, TensorIndex, WeightsError

log = logging.getLogger(__name__)

SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64, "I32": torch.int32,
    "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}
SCRATCH_BYTES = 16 * 2**20  # one chunk of a tensor being cast or moved to another device
READ_AHEAD_BYTES = 64 * 2**20  # asked of the kernel past each scratch read, so the disk works while a chunk moves
GGUF_PLAIN = {"F32": torch.float32, "F16": torch.float16}  # diffusers keeps these as plain tensors


@dataclass(frozen=True)
class Piece:
    """Where one model tensor comes from: rows [start, stop) of file keys (index keys, without the index prefix),
    joined in order. Most tensors are one whole file tensor; fused qkv layers give row ranges."""

    parts: tuple[tuple[str, int, int], ...]

    @property
    def key(self) -> str:
        return self.parts[0][0]


class WeightFile:
    """One weight file (or its part of an all-in-one checkpoint) opened for reading tensor by tensor."""

    def __init__(self, index: TensorIndex, device: torch.device | str = "cpu", keep_mapped: bool = False):
        self.index, self.device = index, torch.device(device)
        # GGUF blocks left in the file's read-only mapping, for a model that computes on the CPU (see _gguf_rows)
        self.keep_mapped = keep_mapped and self.device.type == "cpu"
        self._stack = ExitStack()
        self._scratch: torch.Tensor | None = None
        self._map: torch.Tensor | None = None  # the whole file, mapped read-only, for every read bound for the CPU
        self._scalars: dict[str, float | None] = {}  # scaled-fp8 weights' single scales, read once
        self._check_scales()

    def __enter__(self) -> "WeightFile":
        if self.index.is_gguf:
            from gguf import GGUFReader

            self._gguf = {t.name: t for t in GGUFReader(str(self.index.path)).tensors}  # read-only memory map
        else:
            self._raw_file = self._stack.enter_context(open(self.index.path, "rb", buffering=0))
            self._advise(0, 0, "POSIX_FADV_SEQUENTIAL")  # tensors are read front to back: a wider read-ahead
        return self

    def _advise(self, offset: int, length: int, advice: str) -> None:
        """A hint to the kernel's page cache (POSIX only; a no-op on Windows and where it is refused)."""
        if hasattr(os, "posix_fadvise") and hasattr(os, advice):
            try:
                os.posix_fadvise(self._raw_file.fileno(), offset, length, getattr(os, advice))
            except OSError:
                pass

    def __exit__(self, *exc):
        self._stack.close()
        self._gguf = self._scratch = None

    @property
    def name(self) -> str:
        return str(self.index.path)

    def keys(self) -> list[str]:
        """The file's tensors, without the scaled-fp8 extras (scales are applied when their weight is read)."""
        return [k for k in self.index.shapes if not k.endswith(SCALE_SUFFIXES)]

    def rows(self, key: str) -> int:
        shape = self.index.shapes[key]
        return shape[0] if shape else 1

    def dtype(self, key: str) -> torch.dtype | None:
        """The tensor's dtype in the file; None for GGUF quantized blocks (they stay quantized)."""
        name = self.index.dtypes.get(key, "F32")
        return GGUF_PLAIN.get(name) if self.index.is_gguf else SAFETENSORS_DTYPES.get(name, torch.float32)

    def quant_type(self, key: str):
        """A GGUF tensor's GGMLQuantizationType."""
        return self._gguf[self.index.prefix + key].tensor_type

    def scaled(self, key: str) -> bool:
        return key.endswith(".weight") and f"{key[:-len('weight')]}scale_weight" in self.index.shapes

    def kept_scale(self, piece: Piece) -> float | None:
        """The one scale of a scaled-fp8 piece, which may stay beside its fp8 rows: every part scaled by the same
        single number (ComfyUI's layout). None for unscaled pieces and for scales per row or differing by part."""
        if self.index.is_gguf or not all(self.scaled(key) for key, _, _ in piece.parts):
            return None
        scales = {self._scalar_scale(key) for key, _, _ in piece.parts}
        return scales.pop() if len(scales) == 1 and None not in scales else None

    def dequantized(self, piece: Piece) -> bool:
        """Whether reading the piece applies scales to its values: a scaled piece whose scale cannot be kept."""
        return any(self.scaled(key) for key, _, _ in piece.parts) and self.kept_scale(piece) is None

    def _scalar_scale(self, key: str) -> float | None:
        if key not in self._scalars:
            shape = self.index.shapes[key[: -len("weight")] + "scale_weight"]
            self._scalars[key] = float(self._stored_scale(key)) if torch.Size(shape).numel() == 1 else None
        return self._scalars[key]

    def _check_scales(self) -> None:
        for key, shape in self.index.shapes.items():
            if not key.endswith(".scale_weight"):
                continue
            weight = key[: -len("scale_weight")] + "weight"
            numel = torch.Size(shape).numel()
            if weight not in self.index.shapes or (numel > 1 and numel != self.rows(weight)):
                raise WeightsError(f"{self.name}: {key} matches no weight it could scale; the file is not in "
                                   "ComfyUI's scaled fp8 layout.")

    def position(self, piece: Piece) -> int:
        """Where the piece's first byte lies in the file. Reading in this order reads the file front to back, so
        the kernel's read-ahead serves a file that is not in the page cache (a model's own order jumps about)."""
        key, start, _ = piece.parts[0]
        if self.index.is_gguf:
            return int(self._gguf[self.index.prefix + key].data_offset)
        return self._offset(key, start)

    def _offset(self, key: str, row: int) -> int:
        """A safetensors tensor's row `row`, as a byte offset in the file."""
        return self.index.offsets[key] + row * self._row_bytes(key)

    def _gguf_rows(self, key: str, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of a GGUF tensor (quantized blocks as a GGUFParameter, F32/F16 tensors plain): copied
        out of the read-only map, or, with keep_mapped, left in it as ComfyUI-GGUF leaves them: page cache read
        when a layer first computes, not private RAM (a full Q8_0 FLUX: 0.8-1.0 s instead of 9.6 s, peak private
        RAM 0.64 GiB instead of 12.41). Only for a model that computes on the CPU: nothing moves or pins those weights,
        and nothing writes to them (the blocks are dequantized into new tensors)."""
        import numpy as np

        rows = self._gguf[self.index.prefix + key].data[start:stop]
        if self.keep_mapped:
            with warnings.catch_warnings():  # torch warns that the array is read-only; it is only read
                warnings.simplefilter("ignore", UserWarning)
                data = torch.from_numpy(rows)
        else:
            data = torch.from_numpy(np.array(rows))
        if self.dtype(key) is not None:
            return data
        from diffusers.quantizers.gguf.utils import GGUFParameter

        return GGUFParameter(data, quant_type=self.quant_type(key))

    def _row_bytes(self, key: str) -> int:
        shape = self.index.shapes[key]
        return math.prod(shape[1:]) * self.dtype(key).itemsize

    def _read_into(self, buffer: memoryview, key: str, start: int) -> None:
        """Fill `buffer` with the bytes of `key` from row `start` on (seek + readinto: works on Windows too)."""
        self._raw_file.seek(self._offset(key, start))
        done = 0
        while done < len(buffer):
            got = self._raw_file.readinto(buffer[done:])
            if not got:
                raise self._truncated(key)
            done += got
        self._advise(self._raw_file.tell(), READ_AHEAD_BYTES, "POSIX_FADV_WILLNEED")

    def _fill(self, target: torch.Tensor, key: str, start: int, stop: int, scaled: bool) -> None:
        """Rows [start, stop) of `key` into `target` (their place in the tensor being built). On the CPU they are
        copied, and cast, straight from a read-only mapping of the file in one pass: 2x faster than readinto on
        a warm page cache, and no private temporaries (freed ones between kept tensors fragment the heap, which
        held 150-380 MB past a mid-size load). Rows bound for another device go through one small scratch
        buffer, a chunk at a time; scaled-fp8 rows being dequantized (`scaled`) are scaled a chunk at a time."""
        on_cpu = target.device.type == "cpu"
        if on_cpu and not scaled:  # copied (and cast) straight from the page cache in one pass
            target.copy_(self._mapped(key, start, stop))
            return
        row_bytes = self._row_bytes(key)
        step = max(1, SCRATCH_BYTES // max(row_bytes, 1))
        if not on_cpu and (self._scratch is None or self._scratch.numel() < step * row_bytes):
            self._scratch = torch.empty(max(SCRATCH_BYTES, step * row_bytes), dtype=torch.uint8)
        trailing = self.index.shapes[key][1:]
        scale = self._scale(key) if scaled else None
        for low in range(start, stop, step):
            high = min(stop, low + step)
            if on_cpu:
                chunk = self._mapped(key, low, high)
            else:
                raw = self._scratch[: (high - low) * row_bytes]
                self._read_into(_bytes_of(raw), key, low)
                chunk = raw.view(self.dtype(key)).reshape(high - low, *trailing).to(self.device)
            if scale is not None:
                chunk = chunk.float() * (scale if scale.dim() == 0 else scale[low:high])
            target[low - start: high - start].copy_(chunk)

    def _mapped(self, key: str, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of `key` as a tensor over a read-only shared mapping of the file: page cache the
        kernel can drop, not the process's private data (a private or writable mapping would be)."""
        if self._map is None:
            mapping = mmap.mmap(self._raw_file.fileno(), 0, access=mmap.ACCESS_READ)
            if hasattr(mapping, "madvise") and hasattr(mmap, "MADV_SEQUENTIAL"):
                mapping.madvise(mmap.MADV_SEQUENTIAL)  # read front to back: the kernel reads further ahead
            self._stack.callback(_close_mapping, mapping)
            with warnings.catch_warnings():  # torch warns that the buffer is read-only; it is only read
                warnings.simplefilter("ignore", UserWarning)
                self._map = torch.frombuffer(mapping, dtype=torch.uint8)
            self._stack.callback(setattr, self, "_map", None)  # runs first: the view goes before the mapping
        offset, size = self._offset(key, start), (stop - start) * self._row_bytes(key)
        if offset + size > self._map.numel():  # reading past the end of a mapping kills the process (SIGBUS)
            raise self._truncated(key)
        rows = self._map[offset: offset + size].view(self.dtype(key))
        return rows.reshape(stop - start, *self.index.shapes[key][1:])

    def _truncated(self, key: str) -> WeightsError:
        return WeightsError(f"{self.name}: ends inside tensor {key}; the file is truncated.")

    def _scale(self, key: str) -> torch.Tensor:
        """The scale of a scaled-fp8 weight, float32 on the device: a scalar, or one per row shaped to broadcast
        over the row. Read once per tensor, sliced per chunk."""
        scale = self._stored_scale(key).to(self.device, torch.float32)
        if scale.numel() == 1:
            return scale.reshape(())
        return scale.reshape(-1, *[1] * (len(self.index.shapes[key]) - 1))

    def _stored_scale(self, key: str) -> torch.Tensor:
        name = key[: -len("weight")] + "scale_weight"
        scale = torch.empty(self.index.shapes[name], dtype=self.dtype(name))
        self._read_into(_bytes_of(scale), name, 0)
        return scale

    def read(self, piece: Piece, dtype: torch.dtype | None) -> torch.Tensor:
        """The piece on this file's device in `dtype` (None: as stored), built in place: its parts are read
        into their rows of one tensor made in the final dtype on the final device, so a GPU-bound tensor never
        has a copy in RAM and a cast never has a second whole copy anywhere. A scaled-fp8 piece read in its own
        dtype with a kept scale (`kept_scale`) is read as stored; in any other case it is dequantized."""
        if self.index.is_gguf:
            return self._read_gguf(piece, dtype)
        shape = self.index.shapes[piece.key]
        rows = sum(stop - start for _, start, stop in piece.parts)
        dtype = dtype or self.dtype(piece.key)
        out = torch.empty((rows, *shape[1:]), dtype=dtype, device=self.device)
        scaled = self.dequantized(piece) or (dtype != self.dtype(piece.key) and self.kept_scale(piece) is not None)
        row = 0
        for key, start, stop in piece.parts:
            self._fill(out[row: row + stop - start], key, start, stop, scaled and self.scaled(key))
            row += stop - start
        return out.reshape(()) if not shape else out

    def _read_gguf(self, piece: Piece, dtype: torch.dtype | None) -> torch.Tensor:
        out = []
        for key, start, stop in piece.parts:
            value = self._gguf_rows(key, start, stop).to(self.device)
            if dtype is not None and value.dtype != dtype and type(value) is torch.Tensor:
                value = value.to(dtype)
            out.append(value)
        return out[0] if len(out) == 1 else torch.cat(out)


def _close_mapping(mapping: mmap.mmap) -> None:
    try:
        mapping.close()
    except BufferError:  # a view is still referenced (an error's traceback): the mapping goes with it
        pass


def _bytes_of(tensor: torch.Tensor) -> memoryview:
    """A contiguous CPU tensor's memory as a writable byte buffer."""
    if not tensor.numel():
        return memoryview(bytearray())
    return memoryview(tensor.reshape(-1).view(torch.uint8).numpy()).cast("B")


# -- names: which file rows each model tensor takes ---------------------------------------------------------

def whole_pieces(source: WeightFile, rename: Callable[[str], str] = lambda k: k) -> dict[str, Piece]:
    """File tensors under their own names (or `rename`d ones), whole."""
    return {rename(k): Piece(((k, 0, source.rows(k)),)) for k in source.keys()}


def converted_pieces(source: WeightFile, convert: Callable[[dict], dict]) -> dict[str, Piece]:
    """Run a diffusers key converter (BFL -> diffusers, LDM -> diffusers) on stand-ins: one small int64 tensor per
    file tensor holding its row numbers, with its trailing dimensions of size one. Converters that pick, split,
    swap and join rows, or index away size-one dimensions, give stand-ins that name exactly the rows they took."""
    keys = source.keys()
    starts, offset, standins = [], 0, {}
    for key in keys:
        rows, dims = source.rows(key), len(source.index.shapes[key])
        standins[key] = torch.arange(offset, offset + rows).reshape(rows, *[1] * max(dims - 1, 0))
        starts.append(offset)
        offset += rows
    try:
        converted = convert(dict(standins))
    except Exception as exc:
        raise WeightsError(f"{source.name}: diffusers could not convert its key names ({type(exc).__name__}: "
                           f"{exc}); the file may be incomplete or another model.") from exc
    rows = [source.rows(k) for k in keys]
    return {name: _piece(name, ids, keys, starts, rows, source.name)
            for name, ids in converted.items() if isinstance(ids, torch.Tensor)}


def _piece(name: str, ids: torch.Tensor, keys: list[str], starts: list[int], rows: list[int], path: str) -> Piece:
    """The stand-in a converter returned for `name`, read back as runs of consecutive rows of file tensors."""
    if ids.dtype != torch.int64 or ids.ndim == 0 or ids.shape[0] != ids.numel():
        raise WeightsError(f"{path}: the key converter reshaped {name} beyond picking rows; this pack cannot "
                           "stream it (please report the file).")
    ids = ids.reshape(-1)
    breaks = (torch.nonzero(ids[1:] - ids[:-1] != 1).reshape(-1) + 1).tolist()
    edges = [0, *breaks, ids.numel()]
    parts = []
    for a, b in zip(edges, edges[1:]):
        low, high = int(ids[a]), int(ids[b - 1]) + 1
        while low < high:  # a run may cross from one file tensor into the next
            k = bisect_right(starts, low) - 1
            end = min(high, starts[k] + rows[k])
            parts.append((keys[k], low - starts[k], end - starts[k]))
            low = end
    return Piece(tuple(parts))


# -- into the model -------------------------------------------------------------------------------------------

DtypeOf = Callable[[str, torch.dtype, bool], torch.dtype]  # (model name, file dtype, dequantized) -> storage dtype


def stream_into(model: torch.nn.Module, pieces: dict[str, Piece], source: WeightFile, dtype_of: DtypeOf,
                quantizer=None) -> tuple[set[str], dict[str, float]]:
    """Read every tensor `model` (built on meta) has a piece for, in its storage dtype on the source's device,
    and put it in place. A piece wanted under several names (tied weights) is read once and shared. GGUF blocks
    go through diffusers' GGUF quantizer. Returns the model names filled, and the scales of the scaled-fp8
    weights kept as stored (to be multiplied in as they compute)."""
    from accelerate.utils import set_module_tensor_to_device

    placed: dict[Piece, str] = {}
    loaded: set[str] = set()
    scales: dict[str, float] = {}
    wanted = [(name, meta, pieces[name]) for name, meta in model.state_dict(keep_vars=True).items()
              if name in pieces]
    for name, meta, piece in sorted(wanted, key=lambda entry: source.position(entry[2])):
        if piece in placed:
            _share(model, name, placed[piece])
            loaded.add(name)
            if placed[piece] in scales:
                scales[name] = scales[placed[piece]]
            continue
        file_dtype = source.dtype(piece.key)
        dtype = None if file_dtype is None else dtype_of(name, file_dtype, source.dequantized(piece))
        value = source.read(piece, dtype)
        if dtype == file_dtype and source.kept_scale(piece) is not None:
            scales[name] = source.kept_scale(piece)
        if file_dtype is None:
            _check_gguf_shape(quantizer, name, meta, value, source, piece)
            quantizer.create_quantized_param(model, value, name, source.device)
        else:
            value = _fit(value, meta, name, source, piece)
            set_module_tensor_to_device(model, name, source.device, value=value, dtype=value.dtype,
                                        clear_cache=False)
        placed[piece] = name
        loaded.add(name)
    return loaded, scales


def _fit(value: torch.Tensor, meta: torch.Tensor, name: str, source: WeightFile, piece: Piece) -> torch.Tensor:
    """The value in the model's shape: equal, or differing by size-one dimensions only (an LDM attention stored as
    a 1x1 convolution where diffusers has a Linear)."""
    if value.shape == meta.shape:
        return value
    if [d for d in value.shape if d != 1] == [d for d in meta.shape if d != 1]:
        return value.reshape(meta.shape)
    raise WeightsError(f"{source.name}: tensor {piece.key} has shape {tuple(value.shape)} but the model needs "
                       f"{tuple(meta.shape)} for {name}; is it the right file for this slot?")


def _check_gguf_shape(quantizer, name, meta, value, source: WeightFile, piece: Piece) -> None:
    try:
        quantizer.check_quantized_param_shape(name, meta, value)
    except ValueError as exc:
        raise WeightsError(f"{source.name}: tensor {piece.key}: {exc}; is it the right file for this slot?") from None


def _module_and_leaf(model: torch.nn.Module, name: str):
    path, _, leaf = name.rpartition(".")
    return (model.get_submodule(path) if path else model), leaf


def _share(model: torch.nn.Module, name: str, source_name: str) -> None:
    """Make `name` the very tensor already placed under `source_name` (tied weights: one tensor, two names)."""
    owner, leaf = _module_and_leaf(model, source_name)
    target, target_leaf = _module_and_leaf(model, name)
    if leaf in owner._parameters:
        target._parameters[target_leaf] = owner._parameters[leaf]
    else:
        target._buffers[target_leaf] = owner._buffers[leaf]


def finish(model: torch.nn.Module, loaded: set[str], source: WeightFile, what: str) -> torch.nn.Module:
    """Refuse a model with tensors left on meta that the file did not fill, naming the first; move the buffers
    the model made itself (non-persistent ones, such as position ids) to the device."""
    missing = [n for n, t in model.state_dict(keep_vars=True).items() if t.is_meta and n not in loaded]
    missing += [n for n, t in model.named_parameters() if t.is_meta and n not in loaded and n not in missing]
    if missing:
        raise WeightsError(f"{source.name}: lacks {len(missing)} of the tensors {what} needs (first: {missing[0]}); "
                           "is it the right file for this slot?")
    for module in model.modules():
        for key, buffer in module._buffers.items():
            if buffer is not None and buffer.device != source.device:
                module._buffers[key] = buffer.to(source.device)
    return model
