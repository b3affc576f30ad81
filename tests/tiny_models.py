"""Tiny random-weight models written in the on-disk formats users have.

ComfyUI single files (Redux projector, SigLIP with its `vision_model.` prefix, LDM-named VAE, BFL-named FLUX
transformer with and without `model.diffusion_model.`, fp8-stored) and diffusers folders. The key names are
facts of those formats; the mapping below only writes test files and is not used by the engine.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

LATENT_CHANNELS = 4
JOINT_WIDTH = 32  # transformer text-stream width == Redux token width
POOLED_WIDTH = 32
SIGLIP = dict(hidden_size=64, intermediate_size=37, num_hidden_layers=2, num_attention_heads=16, image_size=32,
              patch_size=8)  # 16 heads: the engine keeps the shipped head count (it is not in the shapes)
SIGLIP_TOKENS = (SIGLIP["image_size"] // SIGLIP["patch_size"]) ** 2


def _seeded(seed: int):
    torch.manual_seed(seed)


def make_transformer(guidance: bool, seed: int = 0, heads: int = 1):
    from diffusers import FluxTransformer2DModel

    _seeded(seed)
    return FluxTransformer2DModel(patch_size=1, in_channels=4 * LATENT_CHANNELS, num_layers=1, num_single_layers=1,
                                  attention_head_dim=128, num_attention_heads=heads, joint_attention_dim=JOINT_WIDTH,
                                  pooled_projection_dim=POOLED_WIDTH, axes_dims_rope=[16, 56, 56],
                                  guidance_embeds=guidance).eval()


def make_vae(seed: int = 1):
    """Four levels like FLUX's VAE (8x downscale), 32 channels each so GroupNorm(32) holds."""
    from diffusers import AutoencoderKL

    _seeded(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
                         up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[32, 32, 32, 32],
                         layers_per_block=1, latent_channels=LATENT_CHANNELS, norm_num_groups=32,
                         use_quant_conv=False, use_post_quant_conv=False, scaling_factor=0.3611,
                         shift_factor=0.1159).eval()


def make_siglip(seed: int = 2, width: int = SIGLIP["hidden_size"]):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    _seeded(seed)
    return SiglipVisionModel(SiglipVisionConfig(**dict(SIGLIP, hidden_size=width))).eval()


def make_siglip_processor():
    from transformers import SiglipImageProcessor

    size = SIGLIP["image_size"]
    return SiglipImageProcessor(size={"height": size, "width": size}, resample=3, image_mean=[0.5] * 3,
                                image_std=[0.5] * 3)


def make_redux(seed: int = 3, txt_width: int = JOINT_WIDTH, redux_dim: int = SIGLIP["hidden_size"]):
    from diffusers.pipelines.flux.modeling_flux import ReduxImageEncoder

    _seeded(seed)
    return ReduxImageEncoder(redux_dim=redux_dim, txt_in_features=txt_width).eval()


def _contiguous(state: dict) -> dict:
    return {k: v.detach().contiguous().clone() for k, v in state.items()}


def siglip_state_comfy(model) -> dict:
    """ComfyUI's clip_vision file: every key under `vision_model.`."""
    state = _contiguous(model.state_dict())
    return {k if k.startswith("vision_model.") else f"vision_model.{k}": v for k, v in state.items()}


_VAE_RULES = [  # diffusers name -> LDM name, applied in order
    (r"(encoder|decoder)\.mid_block\.resnets\.(\d)", lambda m: f"{m[1]}.mid.block_{int(m[2]) + 1}"),
    (r"(encoder|decoder)\.mid_block\.attentions\.0\.group_norm", r"\1.mid.attn_1.norm"),
    (r"(encoder|decoder)\.mid_block\.attentions\.0\.to_(q|k|v)", r"\1.mid.attn_1.\2"),
    (r"(encoder|decoder)\.mid_block\.attentions\.0\.to_out\.0", r"\1.mid.attn_1.proj_out"),
    (r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)", r"encoder.down.\1.block.\2"),
    (r"encoder\.down_blocks\.(\d+)\.downsamplers\.0", r"encoder.down.\1.downsample"),
    (r"\.conv_shortcut", ".nin_shortcut"),
    (r"(encoder|decoder)\.conv_norm_out", r"\1.norm_out"),
]


def vae_state_ldm(vae) -> dict:
    """The VAE's weights under the LDM names of FLUX's ae.safetensors."""
    levels = len(vae.config.block_out_channels)
    out = {}
    for key, value in _contiguous(vae.state_dict()).items():
        m = re.match(r"decoder\.up_blocks\.(\d+)\.(resnets|upsamplers)\.(\d+)(.*)", key)
        if m:  # LDM numbers decoder levels from the bottom
            level = levels - 1 - int(m[1])
            key = (f"decoder.up.{level}.block.{m[3]}{m[4]}" if m[2] == "resnets"
                   else f"decoder.up.{level}.upsample{m[4]}")
        for pattern, repl in _VAE_RULES:
            key = re.sub(pattern, repl, key)
        if re.search(r"mid\.attn_1\.(q|k|v|proj_out)\.weight$", key):
            value = value[:, :, None, None]  # LDM stores attention projections as 1x1 convolutions
        out[key] = value.contiguous()
    return out


def bfl_shapes(guidance: bool, in_channels: int = 4 * LATENT_CHANNELS, joint: int = JOINT_WIDTH,
               pooled: int = POOLED_WIDTH, double: int = 1, single: int = 1) -> dict[str, tuple[int, ...]]:
    """Key names and shapes of a FLUX transformer under BFL names at width 3072 (diffusers' converter assumes
    it): weights, biases and the qk-norm scales."""
    w, mlp, head = 3072, 4 * 3072, 128
    linears = {
        "img_in": (w, in_channels), "txt_in": (w, joint),
        "time_in.in_layer": (w, 256), "time_in.out_layer": (w, w),
        "vector_in.in_layer": (w, pooled), "vector_in.out_layer": (w, w),
        "final_layer.linear": (in_channels, w), "final_layer.adaLN_modulation.1": (2 * w, w),
    }
    if guidance:
        linears.update({"guidance_in.in_layer": (w, 256), "guidance_in.out_layer": (w, w)})
    norms = []
    for i in range(double):
        for stream in ("img", "txt"):
            p = f"double_blocks.{i}.{stream}"
            linears.update({f"{p}_mod.lin": (6 * w, w), f"{p}_attn.qkv": (3 * w, w), f"{p}_attn.proj": (w, w),
                            f"{p}_mlp.0": (mlp, w), f"{p}_mlp.2": (w, mlp)})
            norms.append(f"{p}_attn.norm")
    for i in range(single):
        p = f"single_blocks.{i}"
        linears.update({f"{p}.linear1": (3 * w + mlp, w), f"{p}.linear2": (w, w + mlp),
                        f"{p}.modulation.lin": (3 * w, w)})
        norms.append(f"{p}.norm")
    shapes = {}
    for name, shape in linears.items():
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = shape, (shape[0],)
    for norm in norms:
        shapes[f"{norm}.query_norm.scale"] = shapes[f"{norm}.key_norm.scale"] = (head,)
    return shapes


def bfl_transformer_state(guidance: bool, in_channels: int = 4 * LATENT_CHANNELS, joint: int = JOINT_WIDTH,
                          pooled: int = POOLED_WIDTH, prefix: str = "", dtype=torch.bfloat16, seed: int = 4) -> dict:
    """A random FLUX transformer under BFL key names: width 3072, 1 double + 1 single block."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in bfl_shapes(guidance, in_channels, joint, pooled).items():
        value = torch.ones(shape) if name.endswith(".scale") else torch.randn(shape, generator=gen) * 0.02
        state[f"{prefix}{name}"] = value.to(dtype)
    return state


def write_safetensors(path: Path, state: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


# -- bigger files written tensor by tensor (the model is never held in memory) ---------------------------------

SAFETENSORS_BYTES = {"F32": 4, "BF16": 2, "F16": 2, "F8_E4M3": 1}


class RandomBytes:
    """Random values of each dtype from one small pool per dtype, rotated from tensor to tensor."""

    def __init__(self, elements: int = 1 << 22, seed: int = 0):
        values = torch.randn(elements, generator=torch.Generator().manual_seed(seed)) * 0.02
        pools = {"F32": values, "BF16": values.bfloat16(), "F16": values.half(),
                 "F8_E4M3": values.to(torch.float8_e4m3fn)}
        self.pools = {k: memoryview(v.view(torch.uint8).numpy()).cast("B") for k, v in pools.items()}
        self.turn = 0

    def write(self, out, dtype: str, nbytes: int) -> None:
        pool, step = self.pools[dtype], SAFETENSORS_BYTES[dtype]
        self.turn = (self.turn + 4099) % (len(pool) // step // 2)
        start = self.turn * step
        while nbytes > 0:
            chunk = pool[start: start + nbytes]
            out.write(chunk)
            nbytes -= len(chunk)
            start = 0


def write_safetensors_streamed(path: Path, shapes: dict, dtypes: dict, fill: RandomBytes | None = None) -> Path:
    """A safetensors file as the format is laid out (8-byte header length, JSON header, raw bytes), tensor by
    tensor. dtypes: safetensors dtype names (F8_E4M3, BF16, F32, F16)."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = SAFETENSORS_BYTES[dtypes[name]] * math.prod(shape)
        header[name] = {"dtype": dtypes[name], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    fill = fill or RandomBytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        out.write(len(text).to_bytes(8, "little") + text)
        for name, shape in shapes.items():
            fill.write(out, dtypes[name], SAFETENSORS_BYTES[dtypes[name]] * math.prod(shape))
    return path


def write_gguf_streamed(path: Path, shapes: dict, qtype: str) -> Path:
    """A GGUF file as city96's are (matrices whose rows fill whole blocks in `qtype`, the rest F32), each tensor
    tiled from one pool of valid random blocks and written in turn."""
    import gguf
    import numpy as np

    kind = gguf.GGMLQuantizationType[qtype]
    block, size = gguf.GGML_QUANT_SIZES[kind]
    rng = np.random.default_rng(0)
    pool = random_blocks(rng, 64, 256 * block, kind).reshape(-1)
    vectors = rng.standard_normal(1 << 20).astype(np.float32) * 0.02
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), "flux")
    plan = []
    for name, shape in shapes.items():
        if len(shape) == 2 and shape[1] % block == 0:
            row = shape[1] // block * size
            writer.add_tensor_info(name, (shape[0], row), np.dtype(np.uint8), shape[0] * row, raw_dtype=kind)
            plan.append((pool, (shape[0], row)))
        else:
            writer.add_tensor_info(name, shape, np.dtype(np.float32), 4 * math.prod(shape))
            plan.append((vectors, shape))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for source, shape in plan:
        writer.write_tensor_data(np.resize(source, shape))
    writer.close()
    return path


# -- the other formats users have: GGUF, ComfyUI all-in-one checkpoints, ComfyUI scaled fp8 -----------------

GGUF_QUANTS = ("Q8_0", "Q5_K", "Q4_K", "Q4_0")


def random_blocks(rng, rows: int, cols: int, qtype) -> "np.ndarray":
    """Random but valid quantized blocks, for K-quants (the gguf package reads them but cannot write them) and
    for full-size benchmark files: small fp16 scales first (d; d and dmin for K-quants), random bytes after."""
    import gguf
    import numpy as np

    block, size = gguf.GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, (rows * cols // block, size), dtype=np.uint8)
    scales = rng.uniform(1e-6, 5e-6, (blocks.shape[0], 2)).astype(np.float16)
    blocks[:, :4] = scales.view(np.uint8)
    return blocks.reshape(rows, cols // block * size)


def write_gguf(path: Path, state: dict, qtype: str, seed: int = 0, quantize=lambda name: True,
               plain: str = "float32") -> dict:
    """`state` as a GGUF file: 2-D weights whose rows fill whole blocks (and `quantize(name)` allows) in
    `qtype`, the rest in `plain` (F32 as city96's converter keeps small tensors; F16 halves a big test file).
    Returns the tensors the file holds, dequantized."""
    import gguf
    import numpy as np

    kind = gguf.GGMLQuantizationType[qtype]
    block = gguf.GGML_QUANT_SIZES[kind][0]
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), "flux")
    held = {}
    for name, tensor in state.items():
        data = tensor.detach().float().numpy()
        if data.ndim == 2 and data.shape[1] % block == 0 and quantize(name):
            raw = (gguf.quants.quantize(data, kind) if qtype in ("Q8_0", "Q4_0")
                   else random_blocks(rng, data.shape[0], data.shape[1], kind))
            writer.add_tensor(name, raw, raw_dtype=kind)
            held[name] = torch.from_numpy(gguf.quants.dequantize(raw, kind).reshape(data.shape).copy())
        else:
            data = np.ascontiguousarray(data.astype(plain))
            writer.add_tensor(name, data)
            held[name] = torch.from_numpy(data.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return held


def write_checkpoint(path: Path, transformer_state: dict, vae_ldm_state: dict, text_state: dict | None = None) -> Path:
    """A ComfyUI all-in-one checkpoint: transformer under model.diffusion_model., VAE under vae., and
    optionally text encoders under text_encoders."""
    state = {f"model.diffusion_model.{k}": v for k, v in transformer_state.items()}
    state.update({f"vae.{k}": v for k, v in vae_ldm_state.items()})
    state.update({f"text_encoders.{k}": v for k, v in (text_state or {}).items()})
    return write_safetensors(path, _contiguous(state))


def scaled_fp8_state(state: dict) -> tuple[dict, dict]:
    """ComfyUI's scaled fp8 layout: every 2-D weight stored as float8 divided by a per-layer scale_weight (with a
    scale_input beside it) and a `scaled_fp8` marker. Returns (file state, the weights it stands for)."""
    out, meant = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}, {}
    for name, value in state.items():
        if name.endswith(".weight") and value.ndim == 2:
            scale = value.float().abs().max().clamp(min=1e-8) / 448.0
            stored = (value.float() / scale).to(torch.float8_e4m3fn)
            out[name], out[name[:-6] + "scale_weight"] = stored, scale.reshape(())
            out[name[:-6] + "scale_input"] = torch.ones(())
            meant[name] = stored.float() * scale
        else:
            out[name] = meant[name] = value
    return out, meant


def write_diffusers_flux_repo(root: Path, transformer, vae, variant: str) -> Path:
    """A whole FLUX repo folder (transformer/, vae/, scheduler/, model_index.json), no text encoders."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    root.mkdir(parents=True, exist_ok=True)
    transformer.save_pretrained(root / "transformer")
    vae.save_pretrained(root / "vae")
    shift = dict(shift=3.0, use_dynamic_shifting=True) if variant == "dev" else dict(shift=1.0,
                                                                                     use_dynamic_shifting=False)
    FlowMatchEulerDiscreteScheduler(**shift).save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "FluxPipeline", "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "transformer": ["diffusers", "FluxTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": [None, None], "text_encoder_2": [None, None], "tokenizer": [None, None],
        "tokenizer_2": [None, None]}))
    return root


def write_diffusers_redux_repo(root: Path, siglip, processor, redux) -> Path:
    siglip.save_pretrained(root / "image_encoder")
    processor.save_pretrained(root / "feature_extractor")
    redux.save_pretrained(root / "image_embedder")
    return root


def build_models_dir(root: Path) -> dict:
    """A ComfyUI `models/` folder with tiny single files, plus diffusers folders beside them.

    Returns the in-memory source models too, so tests can compare what the engine loaded with them.
    """
    dev, schnell, vae = make_transformer(True, seed=10), make_transformer(False, seed=11), make_vae()
    siglip, processor, redux = make_siglip(), make_siglip_processor(), make_redux()
    m = root / "models"
    files = {
        "redux": write_safetensors(m / "style_models" / "flux1-redux-dev.safetensors", _contiguous(redux.state_dict())),
        "siglip": write_safetensors(m / "clip_vision" / "sigclip_vision_patch14_384.safetensors",
                                    siglip_state_comfy(siglip)),
        "vae": write_safetensors(m / "vae" / "ae.safetensors", vae_state_ldm(vae)),
        # tiny transformers under diffusers key names (BFL names need full width: see bfl_transformer_state)
        "dev": write_safetensors(m / "diffusion_models" / "flux1-dev.safetensors", _contiguous(dev.state_dict())),
        "schnell": write_safetensors(m / "unet" / "flux1-schnell.safetensors", _contiguous(schnell.state_dict())),
    }
    folders = {
        "flux_dev": write_diffusers_flux_repo(m / "diffusers" / "FLUX.1-dev", dev, vae, "dev"),
        "redux_repo": write_diffusers_redux_repo(m / "diffusers" / "FLUX.1-Redux-dev", siglip, processor, redux),
    }
    return dict(root=m, files=files, folders=folders,
                sources=dict(dev=dev, schnell=schnell, vae=vae, siglip=siglip, processor=processor, redux=redux))


# -- text encoders (CLIP-L + T5) and their tokenizers, for prompt mixing -------------------------------------

TEXT_WORDS = ["<pad>", "<unk>", "a", "photo", "of", "cat", "dog", "in", "the", "style", "oil", "painting",
              "watercolor", "neon", "</s>"]  # the end token last: CLIP's legacy pooling takes the highest id


def make_tokenizer(max_length: int):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(TEXT_WORDS)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", eos_token="</s>",
                                   model_max_length=max_length)


def make_clip_text(seed: int = 20):
    from transformers import CLIPTextConfig, CLIPTextModel

    _seeded(seed)
    config = CLIPTextConfig(hidden_size=POOLED_WIDTH, intermediate_size=37, num_hidden_layers=1, num_attention_heads=1,
                            vocab_size=len(TEXT_WORDS), max_position_embeddings=77, projection_dim=POOLED_WIDTH,
                            bos_token_id=0, eos_token_id=2, pad_token_id=1)  # FLUX's CLIP-L legacy ids
    return CLIPTextModel(config).eval()


def make_t5(seed: int = 21, width: int = JOINT_WIDTH):
    from transformers import T5Config, T5EncoderModel

    _seeded(seed)
    config = T5Config(d_model=width, d_ff=37, d_kv=64, num_heads=1, num_layers=1, vocab_size=len(TEXT_WORDS),
                      feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False)
    return T5EncoderModel(config).eval()


def write_text_encoders(root: Path) -> dict:
    """ComfyUI single files (clip_l with `text_model.` prefix, t5xxl) and a FLUX-style folder with both
    encoders and tokenizers (text_encoder/, text_encoder_2/, tokenizer/, tokenizer_2/)."""
    clip, t5 = make_clip_text(), make_t5()
    folder = root / "diffusers" / "FLUX.1-dev-text"
    clip.save_pretrained(folder / "text_encoder")
    t5.save_pretrained(folder / "text_encoder_2")
    make_tokenizer(77).save_pretrained(folder / "tokenizer")
    make_tokenizer(512).save_pretrained(folder / "tokenizer_2")
    clip_state = {k if k.startswith("text_model.") else f"text_model.{k}": v
                  for k, v in _contiguous(clip.state_dict()).items()}
    t5_state = {k: v for k, v in _contiguous(t5.state_dict()).items() if k != "encoder.embed_tokens.weight"}
    return dict(folder=folder, clip=clip, t5=t5,
                clip_file=write_safetensors(root / "text_encoders" / "clip_l.safetensors", clip_state),
                t5_file=write_safetensors(root / "text_encoders" / "t5xxl_fp16.safetensors", t5_state))


if __name__ == "__main__":  # python tests/tiny_models.py DIR: a tiny models/ folder to try the CLI without weights
    import sys

    target = Path(sys.argv[1] if len(sys.argv) > 1 else "tiny-models")
    print(build_models_dir(target)["root"])
