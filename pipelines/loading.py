"""Build each component from the files users have: ComfyUI single files or diffusers folders.

Single files: the model is built on the meta device from the config shipped in configs/, adapted to what the
file's keys say (block counts, widths, guidance), and its tensors are streamed in one at a time onto their device
in their storage dtype (pipelines/streaming.py, pipelines/storage.py), with diffusers' own key converters: one
copy of the weights, never a state dict of the file. Folders go through from_pretrained. Nothing reaches the hub:
every diffusers/transformers call gets a local config and local_files_only=True.
"""

from __future__ import annotations

import gc
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import init_empty_weights

from . import params
from .storage import cast_to_fp8, enable_weight_casting, fp8_weight_names, storage_dtype
from .streaming import WeightFile, converted_pieces, finish, stream_into, whole_pieces
from .weights import (TensorIndex, WeightsError, check_diffusers_folder, check_transformer_complete, read_index,
                      refuse_pickle, transformer_layout)

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class LoadOptions:
    """How to place a model: device, compute dtype, fp8 weight storage, offload (auto: fit the card),
    speed modes (they change the loaded model, so they are part of the cache key).

    vae_tiling is only the default for generate()'s own argument: it changes no weights, so it is left out of
    equality and hashing, and a model cached under other tiling is reused as it is.
    """

    device: str = "auto"
    dtype: str = "auto"
    weight_storage: str = "default"
    offload: str = "auto"
    vae_tiling: str = field(default="auto", compare=False)
    speed: str = params.SPEED_NONE  # load-time speed modes (pipelines/speed.py)
    placement_reason: str = field(default="chosen in the options", compare=False)  # why this offload (for info)
    # where the weights wait after loading when a caller (ComfyUI) moves them to `device`: not in the cache key, since
    # the caller moves a cached model wherever it is (ComfyUI builds on the GPU only while there is room for it)
    build_device: str = field(default="", compare=False)

    def torch_build_device(self) -> torch.device:
        """Where the weights are put at load: build_device, else the compute device."""
        return torch.device(self.build_device) if self.build_device else self.torch_device()

    def __post_init__(self):
        object.__setattr__(self, "speed", "+".join(params.parse_speed(self.speed)) or params.SPEED_NONE)
        params.check_choice("dtype", self.dtype, params.DTYPE_CHOICES)
        params.check_choice("weight_storage", self.weight_storage, params.WEIGHT_STORAGE_CHOICES)
        params.check_choice("offload", self.offload, params.OFFLOAD_CHOICES)
        params.check_choice("vae_tiling", self.vae_tiling, params.VAE_TILING_CHOICES)

    def torch_device(self) -> torch.device:
        if self.device != "auto":
            return torch.device(self.device)
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")

    def torch_dtype(self) -> torch.dtype:
        if self.dtype != "auto":
            return DTYPES[self.dtype]
        if self.torch_device().type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32


def vae_dtype(compute: torch.dtype) -> torch.dtype:
    """FLUX's VAE overflows in fp16: where fp16 is the compute dtype (no bf16 on the card) it runs in fp32."""
    return torch.float32 if compute == torch.float16 else compute


PROJECTOR_DTYPE = torch.float32  # the Redux projector is small (0.13 GB in bf16); fp32 keeps its tokens exact


def folder_with(path: Path, sub: str, marker: str) -> Path | None:
    """A diffusers component folder: `path` itself, or `path/sub` inside a whole repo folder."""
    for candidate in (path / sub, path):
        if (candidate / marker).is_file():
            return candidate
    return None


def _require_folder(path: Path, sub: str, marker: str, what: str) -> Path:
    folder = folder_with(path, sub, marker)
    if folder is None:
        raise WeightsError(f"{path}: not a diffusers folder for {what} (no {marker} in it or in {path / sub}).")
    return folder


def _wrap(path: Path, what: str, exc: Exception) -> WeightsError:
    return WeightsError(f"{path}: could not load {what}: {type(exc).__name__}: {exc}")


def from_folder(path: Path, sub: str, model_class, dtype: torch.dtype, what: str, device="cpu"):
    """A diffusers/transformers component from a whole repo folder (`path/sub`) or the component folder, through
    the library's own from_pretrained (meta init, tensor-by-tensor loading), straight onto `device`."""
    folder = _require_folder(path, sub, "config.json", what)
    check_diffusers_folder(folder, model_class, what)
    device = torch.device(device)
    placed = {} if device.type == "cpu" else {"device_map": {"": device}}
    try:
        return model_class.from_pretrained(folder, torch_dtype=dtype, local_files_only=True, **placed).eval()
    except Exception as exc:
        raise _wrap(folder, what, exc) from exc


def _on_meta(build):
    """A model built with its parameters on the meta device (no memory, no random init); buffers stay real.
    torch.nn.init is switched off too, as diffusers' from_pretrained does (random init still ran on meta tensors),
    and automatic garbage collection is paused: the first full FLUX transformer build after a GGUF header read
    took 0.34 s with it running, 0.03 s paused."""
    from diffusers.models.modeling_utils import no_init_weights

    collecting = gc.isenabled()
    gc.disable()
    try:
        with init_empty_weights(), no_init_weights():
            return build()
    finally:
        if collecting:
            gc.enable()


def _stream_file(model, source: WeightFile, pieces: dict, storage: str, compute: torch.dtype, what: str,
                 quantizer=None):
    """Fill `model` (on meta) from `source` in the storage dtypes, then hook its fp8 Linear layers."""
    linear = fp8_weight_names(model)
    fp32 = getattr(type(model), "_keep_in_fp32_modules", None) or []

    def dtype_of(name: str, file_dtype: torch.dtype, dequantized: bool) -> torch.dtype:
        return storage_dtype(name, file_dtype, dequantized, storage, compute, linear, fp32)

    loaded, scales = stream_into(model, pieces, source, dtype_of, quantizer)
    finish(model, loaded, source, what)
    enable_weight_casting(model, compute, scales)
    return model.eval()


# -- FLUX transformer ---------------------------------------------------------------------------------------

def _transformer_overrides(index: TensorIndex) -> dict:
    """Config values the file's tensors determine (the shipped config is FLUX.1-dev full size).

    The rotary split (axes_dims_rope 16/56/56) is FLUX's and assumes 128-wide heads, as all FLUX.1 models have.
    """
    layout = transformer_layout(index)
    shapes = {k.removeprefix("model.diffusion_model."): v for k, v in index.shapes.items()}
    names = (("img_in.weight", "txt_in.weight", "vector_in.in_layer.weight") if layout.bfl_names else
             ("x_embedder.weight", "context_embedder.weight", "time_text_embed.text_embedder.linear_1.weight"))
    missing = [n for n in names if n not in shapes]
    if missing:
        raise WeightsError(f"{index.path}: FLUX transformer file lacks {', '.join(missing)}; it may be an "
                           "incomplete or non-FLUX checkpoint.")
    in_channels, joint, pooled = (shapes[n][1] for n in names)
    inner = shapes[names[0]][0]
    norm = "double_blocks.0.img_attn.norm.query_norm.scale" if layout.bfl_names else "transformer_blocks.0.attn.norm_q.weight"
    head_dim = shapes[norm][0] if norm in shapes else 128
    return dict(num_layers=layout.num_layers, num_single_layers=layout.num_single_layers,
                guidance_embeds=layout.guidance_embeds, in_channels=in_channels, joint_attention_dim=joint,
                pooled_projection_dim=pooled, attention_head_dim=head_dim, num_attention_heads=inner // head_dim)


def load_transformer(source: str | Path, dtype: torch.dtype, storage: str = "default", device="cpu",
                     keep_mapped: bool = False):
    """Return (FluxTransformer2DModel, detected variant) from a single file or a diffusers folder, its weights on
    `device` in `storage` (params.WEIGHT_STORAGE_CHOICES; GGUF blocks stay quantized whatever it says).
    `keep_mapped`: the model computes on the CPU, so GGUF blocks may stay in the file's mapping (WeightFile)."""
    from diffusers import FluxTransformer2DModel

    path = Path(source)
    what = "the FLUX transformer"
    if path.is_dir():
        model = from_folder(path, "transformer", FluxTransformer2DModel, dtype, what, device)
        if storage == "fp8":
            cast_to_fp8(model, dtype)
    else:
        index = read_index(path, "flux_transformer")
        check_transformer_complete(index)
        config = dict(FluxTransformer2DModel.load_config(CONFIG_DIR / "transformer"), **_transformer_overrides(index))
        model = _on_meta(lambda: FluxTransformer2DModel.from_config(config))
        with WeightFile(index, device, keep_mapped) as weights:
            pieces = _transformer_pieces(weights, transformer_layout(index).bfl_names)
            quantizer = _on_meta(lambda: _gguf_quantizer(model, weights, pieces, dtype)) if index.is_gguf else None
            _stream_file(model, weights, pieces, storage, dtype, "the FLUX transformer", quantizer)
        if quantizer is not None:
            quantizer.postprocess_model(model)
            model.hf_quantizer = quantizer
    return model.eval(), ("dev" if model.config.guidance_embeds else "schnell")


def _transformer_pieces(weights: WeightFile, bfl_names: bool) -> dict:
    """diffusers names for the file's tensors: BFL names through diffusers' own converter."""
    if not bfl_names:
        return whole_pieces(weights, lambda k: k.removeprefix("model.diffusion_model."))
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    return converted_pieces(weights, lambda state: convert_flux_transformer_checkpoint_to_diffusers(state))


def _gguf_quantizer(model, weights: WeightFile, pieces: dict, dtype: torch.dtype):
    """diffusers' GGUF quantizer, having swapped in its GGUF Linear layers where the file holds quantized blocks
    (as from_single_file does; it only asks which names are quantized, so stand-ins serve)."""
    from diffusers import GGUFQuantizationConfig
    from diffusers.quantizers import DiffusersAutoQuantizer
    from diffusers.quantizers.gguf.utils import GGUFParameter

    quantizer = DiffusersAutoQuantizer.from_config(GGUFQuantizationConfig(compute_dtype=dtype))
    quantizer.validate_environment()
    quantized = {name: GGUFParameter(torch.empty(0, dtype=torch.uint8, device="meta"),
                                     quant_type=weights.quant_type(piece.key))
                 for name, piece in pieces.items() if weights.dtype(piece.key) is None}
    quantizer.preprocess_model(model=model, device_map=None, state_dict=quantized, keep_in_fp32_modules=[])
    return quantizer


# -- VAE ------------------------------------------------------------------------------------------------------

def _vae_overrides(index: TensorIndex) -> dict:
    """Geometry of an LDM-named autoencoder file (the FLUX ae.safetensors has 4 levels of 2 blocks)."""
    shapes = index.shapes
    levels = index.block_count(r"^encoder\.down\.(\d+)\.")
    if levels == 0 or "encoder.conv_out.weight" not in shapes:
        return {}  # diffusers-named single file: the shipped config applies as is
    block_out = [shapes[f"encoder.down.{i}.block.0.conv2.weight"][0] for i in range(levels)]
    return dict(
        block_out_channels=block_out,
        down_block_types=["DownEncoderBlock2D"] * levels,
        up_block_types=["UpDecoderBlock2D"] * levels,
        layers_per_block=index.block_count(r"^encoder\.down\.0\.block\.(\d+)\."),
        latent_channels=shapes["encoder.conv_out.weight"][0] // 2,
        use_quant_conv="quant_conv.weight" in shapes,
        use_post_quant_conv="post_quant_conv.weight" in shapes,
    )


def load_vae(source: str | Path, dtype: torch.dtype, device="cpu"):
    from diffusers import AutoencoderKL

    path = Path(source)
    what = "the FLUX VAE"
    if path.is_dir():
        return from_folder(path, "vae", AutoencoderKL, dtype, what, device)
    index = read_index(path, "vae")
    config = dict(AutoencoderKL.load_config(CONFIG_DIR / "vae"), **_vae_overrides(index))
    model = _on_meta(lambda: AutoencoderKL.from_config(config))
    with WeightFile(index, device) as weights:
        if index.has_prefix("encoder.down."):  # LDM names (ae.safetensors): diffusers' own converter
            from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

            pieces = converted_pieces(weights, lambda state: convert_ldm_vae_checkpoint(state, dict(model.config)))
        else:
            pieces = whole_pieces(weights)
        return _stream_file(model, weights, pieces, "default", dtype, what)


def load_scheduler(variant: str):
    from diffusers import FlowMatchEulerDiscreteScheduler

    params.variant_spec(variant)
    return FlowMatchEulerDiscreteScheduler.from_pretrained(CONFIG_DIR / f"scheduler-{variant}")


# -- Redux: SigLIP vision tower + projector ------------------------------------------------------------------

def load_transformers_file(index: TensorIndex, model_class, make_config, prefix: str, dtype: torch.dtype,
                           tied: dict[str, str] | None = None, device="cpu"):
    """A transformers model from a ComfyUI single file: the shipped config adapted by
    `make_config(index, prefix)`, built on meta and streamed onto `device`. ComfyUI's files carry a prefix
    (`vision_model.`, `text_model.`) that transformers 5 state dicts lack and 4.x ones have; both work.
    `tied` names weights that may be absent because they share storage with another (T5's embeddings): they get
    the very tensor of the other."""
    if not all(k.startswith(prefix) for k in index.keys if k != "scaled_fp8"):  # the marker has no prefix
        prefix = ""
    config = make_config(index, prefix)
    model = _on_meta(lambda: model_class(config))
    expected = set(model.state_dict())
    with WeightFile(index, device) as weights:
        names = {k.removeprefix(prefix) for k in weights.keys()}
        inner = prefix if prefix and not names & expected else ""  # transformers 4.x keeps the prefix
        pieces = whole_pieces(weights, lambda k: inner + k.removeprefix(prefix))
        for target, source in (tied or {}).items():
            if target in expected and target not in pieces and source in pieces:
                pieces[target] = pieces[source]
        return _stream_file(model, weights, pieces, "default", dtype, model_class.__name__)


def _siglip_config_from_file(index: TensorIndex, prefix: str):
    """The shipped so400m config, adapted to the widths and depth the file holds.

    Head count cannot be read from shapes; the shipped value (16) is kept.
    """
    from transformers import SiglipVisionConfig

    config = json.loads((CONFIG_DIR / "siglip" / "config.json").read_text())
    shapes = {k.removeprefix(prefix): v for k, v in index.shapes.items()}
    patch = shapes["embeddings.patch_embedding.weight"]
    positions = shapes["embeddings.position_embedding.weight"][0]
    config.update(hidden_size=patch[0], patch_size=patch[2], num_channels=patch[1],
                  image_size=int(math.isqrt(positions)) * patch[2],
                  intermediate_size=shapes["encoder.layers.0.mlp.fc1.weight"][0],
                  num_hidden_layers=index.block_count(r"encoder\.layers\.(\d+)\."),
                  vision_use_head=any(k.startswith("head.") for k in shapes))
    config.pop("model_type")
    return SiglipVisionConfig(**config)


def _pil_image_processor():
    """SigLIP preprocessing with PIL resizing (as diffusers' Redux pipeline does), whether or not torchvision
    is installed: transformers 5 names that class SiglipImageProcessorPil."""
    try:
        from transformers import SiglipImageProcessorPil as processor_class
    except ImportError:
        from transformers import SiglipImageProcessor as processor_class
    return processor_class


def load_siglip(source: str | Path, dtype: torch.dtype, device="cpu"):
    """Return (SiglipVisionModel, image processor). ComfyUI's file has a `vision_model.` prefix."""
    from transformers import SiglipVisionModel

    path = Path(source)
    what = "the SigLIP vision encoder"
    if path.is_dir():
        model = from_folder(path, "image_encoder", SiglipVisionModel, dtype, what, device)
        processor_dir = folder_with(path, "feature_extractor", "preprocessor_config.json")
    else:
        index = read_index(path, "siglip")
        model = load_transformers_file(index, SiglipVisionModel, _siglip_config_from_file, "vision_model.", dtype,
                                       device=device)
        processor_dir = None
    size = model.config.image_size
    processor = _pil_image_processor().from_pretrained(processor_dir or CONFIG_DIR / "siglip",
                                                     size={"height": size, "width": size})
    return model.eval(), processor


def load_redux_projector(source: str | Path, dtype: torch.dtype, device="cpu"):
    from diffusers.pipelines.flux.modeling_flux import ReduxImageEncoder

    path = Path(source)
    what = "the Redux projector"
    if path.is_dir():
        return from_folder(path, "image_embedder", ReduxImageEncoder, dtype, what, device)
    index = read_index(path, "redux")
    up, down = index.shapes["redux_up.weight"], index.shapes["redux_down.weight"]
    model = _on_meta(lambda: ReduxImageEncoder(redux_dim=up[1], txt_in_features=down[0]))
    with WeightFile(index, device) as weights:
        return _stream_file(model, weights, whole_pieces(weights), "default", dtype, what)


__all__ = ["LoadOptions", "load_transformer", "load_vae", "load_scheduler", "load_siglip",
           "load_redux_projector", "refuse_pickle", "CONFIG_DIR", "DTYPES"]
