"""Optional text prompt for Redux restyling: FLUX's T5-XXL + CLIP-L, loaded locally, encoded by diffusers.

Sources: a diffusers FLUX folder (text_encoder/, text_encoder_2/, tokenizer/, tokenizer_2/), or ComfyUI's
`text_encoders` single files (clip_l.safetensors, t5xxl_*.safetensors) plus a local folder holding the two
tokenizers (tokenizer/ and tokenizer_2/, as in a FLUX diffusers folder): tokenizers are never downloaded.
Inside ComfyUI the prompt comes from its own CLIPTextEncode instead (nodes/conditioning.py reads it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .cache import CACHE, ModelCache, file_identity
from .loading import CONFIG_DIR, LoadOptions, folder_with, from_folder, load_transformers_file
from .models import modules_bytes
from .redux import TextConditioning
from .weights import TensorIndex, WeightsError, read_index

T5_HEAD_DIM = 64  # FLUX's T5-XXL: 64 heads of 64; the head count is read as inner width / 64
CLIP_HEAD_DIM = 64  # CLIP-L: 12 heads of 64


@dataclass(frozen=True)
class TextEncoderSpec:
    """clip / t5: a diffusers FLUX folder, a component folder, or a ComfyUI single file each.
    tokenizers: a folder with tokenizer/ and tokenizer_2/ (default: the FLUX folder given as clip or t5)."""

    clip: str
    t5: str
    tokenizers: str | None = None
    options: LoadOptions = field(default_factory=LoadOptions)

    def cache_key(self) -> tuple:
        toks = None if self.tokenizers is None else file_identity(self.tokenizers)
        return ("text", file_identity(self.clip), file_identity(self.t5), toks, self.options)


class TextEncoders:
    def __init__(self, spec: TextEncoderSpec, pipe, device: torch.device):
        self.spec, self.pipe, self.device = spec, pipe, device

    @property
    def execution_device(self) -> torch.device:
        """Where the encoders compute now (read at call time: modules may have moved since loading)."""
        return self.pipe._execution_device

    def memory_bytes(self) -> int:
        if self.pipe is None:
            return 0
        return modules_bytes((self.pipe.text_encoder, self.pipe.text_encoder_2))

    def release(self) -> None:
        self.pipe = None


def _t5_config(index: TensorIndex, prefix: str):
    from transformers import T5Config

    config = json.loads((CONFIG_DIR / "t5-xxl" / "config.json").read_text())
    shapes = {k.removeprefix(prefix): v for k, v in index.shapes.items()}
    q = shapes["encoder.block.0.layer.0.SelfAttention.q.weight"]
    config.update(d_model=q[1], num_heads=q[0] // T5_HEAD_DIM, d_kv=T5_HEAD_DIM,
                  d_ff=shapes["encoder.block.0.layer.1.DenseReluDense.wo.weight"][1],
                  vocab_size=shapes["shared.weight"][0],
                  num_layers=index.block_count(r"encoder\.block\.(\d+)\."))
    config.pop("model_type")
    return T5Config(**config)


def _clip_config(index: TensorIndex, prefix: str):
    from transformers import CLIPTextConfig

    config = json.loads((CONFIG_DIR / "clip-l" / "config.json").read_text())
    shapes = {k.removeprefix(prefix): v for k, v in index.shapes.items()}
    vocab, width = shapes["embeddings.token_embedding.weight"]
    config.update(hidden_size=width, vocab_size=vocab, num_attention_heads=max(1, width // CLIP_HEAD_DIM),
                  intermediate_size=shapes["encoder.layers.0.mlp.fc1.weight"][0],
                  max_position_embeddings=shapes["embeddings.position_embedding.weight"][0],
                  num_hidden_layers=index.block_count(r"encoder\.layers\.(\d+)\."))
    config.pop("model_type")
    return CLIPTextConfig(**config)


def _load_encoder(source: str, sub: str, model_class, make_config, prefix: str, dtype, what: str, device,
                  tied=None):
    path = Path(source)
    if path.is_dir():
        return from_folder(path, sub, model_class, dtype, what, device)
    index = read_index(path, "text_encoder")
    return load_transformers_file(index, model_class, make_config, prefix, dtype, tied, device).eval()


def _load_tokenizer(spec: TextEncoderSpec, sub: str, tokenizer_class):
    candidates = [Path(p) for p in (spec.tokenizers, spec.clip, spec.t5) if p]
    for base in candidates:
        folder = folder_with(base, sub, "tokenizer_config.json") if base.is_dir() else None
        if folder is not None and (folder.name == sub or base == Path(spec.tokenizers or "")):
            return tokenizer_class.from_pretrained(folder, local_files_only=True)
    looked = ", ".join(str(b / sub) for b in candidates if b.is_dir()) or "nowhere (no folder given)"
    raise WeightsError(f"no {sub}/ tokenizer found (looked in {looked}). Text encoders from single files need "
                       f"the tokenizers of a FLUX diffusers folder: pass its path as tokenizers.")


def _build(spec: TextEncoderSpec) -> TextEncoders:
    from diffusers import FluxPipeline
    from transformers import AutoTokenizer, CLIPTextModel, T5EncoderModel

    device, dtype = spec.options.torch_device(), spec.options.torch_dtype()
    build = spec.options.torch_build_device()  # loaded straight where they wait (a caller may move them later)
    clip = _load_encoder(spec.clip, "text_encoder", CLIPTextModel, _clip_config, "text_model.", dtype,
                         "the CLIP-L text encoder", build)
    t5 = _load_encoder(spec.t5, "text_encoder_2", T5EncoderModel, _t5_config, "", dtype,
                       "the T5-XXL text encoder", build, tied={"encoder.embed_tokens.weight": "shared.weight"})
    pipe = FluxPipeline(scheduler=None, vae=None, transformer=None, text_encoder=clip,
                        tokenizer=_load_tokenizer(spec, "tokenizer", AutoTokenizer), text_encoder_2=t5,
                        tokenizer_2=_load_tokenizer(spec, "tokenizer_2", AutoTokenizer))
    return TextEncoders(spec, pipe, device)


def load_text_encoders(spec: TextEncoderSpec, cache: ModelCache = CACHE) -> TextEncoders:
    return cache.get(spec.cache_key(), lambda: _build(spec))


CLIP_FILES = ("clip_l.safetensors",)
T5_FILES = ("t5xxl_fp16.safetensors", "t5xxl_fp8_e4m3fn.safetensors", "t5xxl_fp8_e4m3fn_scaled.safetensors")
TOKENIZER_FOLDERS = ("FLUX.1-dev", "FLUX.1-schnell")


def find_text_encoders(models_dir: str | Path, options: LoadOptions = LoadOptions()) -> TextEncoderSpec:
    """ComfyUI layout: text_encoders/ (or clip/) single files, tokenizers from a diffusers FLUX folder;
    or a whole diffusers FLUX folder with its text encoders."""
    root = Path(models_dir)
    looked: list[str] = []

    def first(folders, names):
        for folder in folders:
            for name in names:
                looked.append(str(root / folder / name))
                if (root / folder / name).exists():
                    return root / folder / name
        return None

    repo = first(["diffusers"], [f"{name}/text_encoder_2" for name in TOKENIZER_FOLDERS])
    if repo is not None and (repo.parent / "text_encoder").is_dir():
        return TextEncoderSpec(str(repo.parent), str(repo.parent), options=options)
    clip, t5 = first(["text_encoders", "clip"], CLIP_FILES), first(["text_encoders", "clip"], T5_FILES)
    tokenizers = first(["diffusers"], [f"{name}/tokenizer_2" for name in TOKENIZER_FOLDERS])
    if clip is None or t5 is None or tokenizers is None:
        raise WeightsError("a prompt needs FLUX's text encoders and their tokenizers; looked for:\n  "
                           + "\n  ".join(looked) + "\n(the tokenizers are the tokenizer/ and tokenizer_2/ "
                           "folders of a FLUX diffusers download; they are never downloaded by this pack)")
    return TextEncoderSpec(str(clip), str(t5), str(tokenizers.parent), options)


@torch.inference_mode()
def encode_prompt(encoders: TextEncoders, prompt: str, max_sequence_length: int = 512) -> TextConditioning:
    """T5 tokens [1, 512, 4096] and CLIP pooled [1, 768] for one prompt, as FluxPipeline computes them."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("prompt must be a non-empty string (leave the prompt out for a pure Redux variation)")
    embeds, pooled, _ = encoders.pipe.encode_prompt(prompt=prompt, prompt_2=None, device=encoders.execution_device,
                                                    max_sequence_length=max_sequence_length)
    return TextConditioning(embeds.float().cpu(), pooled.float().cpu())
