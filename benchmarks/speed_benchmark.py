"""Speed modes side by side (not a test): plain diffusers vs the pack's modes on the same random weights.

    python benchmarks/speed_benchmark.py              # GPU if there is one, else tiny models on the CPU
    python benchmarks/speed_benchmark.py --device cpu --repeats 5 --json cpu.json

Rows: plain diffusers defaults (FluxPipeline, no speed setting), the pack at bf16 (fp32 on the CPU), compile,
compile+fp8, compile+fp8+best-attention, First Block Cache 0.08, and GGUF Q8_0 / Q4_K transformers quantized
from the same weights. Columns: seconds per image (median of --repeats after one warm-up call), the warm-up call
(compiling included), peak VRAM, and PSNR against the pack's eager image at the same seed (inf = identical).
GPU: full-size FLUX.1 dev (28 steps) and schnell (4 steps) transformers with random bf16 weights, 1024x1024.
CPU: a small FLUX-shaped transformer (1+1 blocks, 128 wide; Q4_K quantizes only its 512-wide MLP-out
layers), the tiny VAE and 81 Redux tokens (downsampled 3x) at 256x256, same step counts.
Modes the machine cannot run (fp8 without fp8 tensor cores, a missing flash-attn) are run without them and
the row says so. Needs diffusers, gguf and (for fp8) torchao; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import numpy as np  # noqa: E402
import torch  # noqa: E402

import pipelines as engine  # noqa: E402
from pipelines import params, speed  # noqa: E402
from pipelines.loading import CONFIG_DIR, load_scheduler  # noqa: E402

CONFIGS = {  # row name -> (speed modes, cache threshold, GGUF type or None); "diffusers" is the plain pipeline
    "diffusers default": None,
    "pack bf16": ("none", 0.0, None),
    "compile": ("compile", 0.0, None),
    "compile+fp8": ("compile+fp8", 0.0, None),
    "compile+fp8+best-attention": ("compile+fp8+best-attention", 0.0, None),
    "cache 0.08": ("none", 0.08, None),
    "gguf Q8_0": ("none", 0.0, "Q8_0"),
    "gguf Q4_K": ("none", 0.0, "Q4_K"),
}
REFERENCE = "pack bf16"
SMALL_CPU_MODEL = dict(num_layers=1, num_single_layers=1, num_attention_heads=1, attention_head_dim=128,
                       joint_attention_dim=64, pooled_projection_dim=64, in_channels=16, axes_dims_rope=[16, 56, 56])


# -- GGUF files of the same weights (Q8_0: 32 values per block; Q4_K: 256 per super-block) ------------------------

def quantize_q8_0(weight: torch.Tensor) -> torch.Tensor:
    """Rows of Q8_0 blocks as bytes: fp16 scale + 32 int8 values (ggml's layout)."""
    blocks = weight.float().reshape(-1, 32)
    scale = blocks.abs().amax(1, keepdim=True) / 127
    q = torch.where(scale > 0, blocks / scale.clamp_min(1e-30), 0).round().clamp(-127, 127).to(torch.int8)
    packed = torch.cat([scale.half().view(torch.uint8).reshape(-1, 2), q.view(torch.uint8)], 1)
    return packed.reshape(weight.shape[0], -1)


def quantize_q4_k(weight: torch.Tensor) -> torch.Tensor:
    """Rows of Q4_K super-blocks as bytes: fp16 d, fp16 dmin, 12 bytes of 6-bit scales/mins, 128 bytes of nibbles.
    A plain min/max fit per 32 values (llama.cpp searches better scales; the layout and the speed are the same)."""
    x = weight.float().reshape(-1, 8, 32)
    low = x.amin(2).clamp(max=0)
    scale, offset = (x.amax(2) - low) / 15, -low
    d, dmin = (scale.amax(1) / 63).half(), (offset.amax(1) / 63).half()
    sc = torch.where(d[:, None] > 0, scale / d.float()[:, None].clamp_min(1e-30), 0).round().clamp(0, 63)
    mn = torch.where(dmin[:, None] > 0, offset / dmin.float()[:, None].clamp_min(1e-30), 0).round().clamp(0, 63)
    step, shift = (d.float()[:, None] * sc)[..., None], (dmin.float()[:, None] * mn)[..., None]
    q = torch.where(step > 0, (x + shift) / step.clamp_min(1e-30), 0).round().clamp(0, 15).to(torch.uint8)
    sc, mn = sc.to(torch.uint8), mn.to(torch.uint8)
    scales = torch.cat([sc[:, :4] | ((sc[:, 4:] >> 4) << 6), mn[:, :4] | ((mn[:, 4:] >> 4) << 6),
                        (sc[:, 4:] & 0xF) | ((mn[:, 4:] & 0xF) << 4)], 1)
    nibbles = (q[:, 0::2] | (q[:, 1::2] << 4)).reshape(-1, 128)
    packed = torch.cat([d.view(torch.uint8).reshape(-1, 2), dmin.view(torch.uint8).reshape(-1, 2), scales, nibbles], 1)
    return packed.reshape(weight.shape[0], -1)


QUANTIZERS = {"Q8_0": (quantize_q8_0, 32), "Q4_K": (quantize_q4_k, 256)}


def write_gguf(state: dict, path: Path, qtype: str) -> Path:
    """2-D weights whose rows divide into blocks are quantized (as city96's files do); the rest stay F32."""
    import gguf

    quantize, block = QUANTIZERS[qtype]
    writer = gguf.GGUFWriter(str(path), "flux")
    for name, tensor in state.items():
        if tensor.ndim == 2 and tensor.shape[1] % block == 0 and name.endswith(".weight"):
            data = quantize(tensor.to("cuda" if torch.cuda.is_available() else "cpu")).cpu().numpy()
            writer.add_tensor(name, data, raw_dtype=getattr(gguf.GGMLQuantizationType, qtype))  # shape from bytes
        else:
            writer.add_tensor(name, tensor.float().cpu().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# -- models -----------------------------------------------------------------------------------------------------

def transformer_config(variant: str, small: bool) -> dict:
    from diffusers import FluxTransformer2DModel

    config = dict(FluxTransformer2DModel.load_config(CONFIG_DIR / "transformer"), guidance_embeds=variant == "dev")
    return dict(config, **SMALL_CPU_MODEL) if small else config


def random_state(variant: str, small: bool, device: str, dtype: torch.dtype) -> dict:
    """Seeded random weights (diffusers' init), kept on the CPU so every row starts from the same ones."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0 if variant == "dev" else 1)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # created in bf16 directly: a full-size fp32 copy would need 48 GB
    try:
        with torch.device(device):
            model = FluxTransformer2DModel.from_config(transformer_config(variant, small))
    finally:
        torch.set_default_dtype(default)
    return {k: v.to("cpu") for k, v in model.state_dict().items()}


def build_transformer(variant: str, small: bool, state: dict, device: str, dtype: torch.dtype, gguf_path=None):
    from diffusers import FluxTransformer2DModel, GGUFQuantizationConfig

    if gguf_path is not None:
        model = FluxTransformer2DModel.from_single_file(
            str(gguf_path), quantization_config=GGUFQuantizationConfig(compute_dtype=dtype), torch_dtype=dtype,
            config=str(CONFIG_DIR / "transformer"), local_files_only=True, **transformer_config(variant, small))
        return model.to(device).eval()
    with torch.device("meta"):
        model = FluxTransformer2DModel.from_config(transformer_config(variant, small))
    model.load_state_dict(state, assign=True)
    return model.to(device, dtype).eval()


def build_vae(small: bool, device: str, dtype: torch.dtype):
    from diffusers import AutoencoderKL

    if small:
        import tiny_models

        return tiny_models.make_vae().to(device, dtype)
    torch.manual_seed(2)
    return AutoencoderKL.from_config(AutoencoderKL.load_config(CONFIG_DIR / "vae")).to(device, dtype).eval()


# -- one row ------------------------------------------------------------------------------------------------------

def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn) -> tuple[float, torch.Tensor]:
    sync()
    start = time.perf_counter()
    images = fn()
    sync()
    return time.perf_counter() - start, images


def psnr(images: torch.Tensor, reference: torch.Tensor | None) -> float | None:
    if reference is None:
        return None
    mse = float(((images.float().cpu() - reference.float().cpu()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def make_call(name: str, variant: str, pipe, device, dtype, embeds, size: int, steps: int):
    """A zero-argument function generating one image (NHWC, 0..1, CPU) and the row's notes."""
    cond = engine.ReduxConditioning(embeds, (1.0,))
    if CONFIGS[name] is None:  # plain diffusers: FluxPipeline called directly, its own defaults, same tokens
        kwargs = {} if variant == "schnell" else {"guidance_scale": 3.5}
        config = pipe.transformer.config
        prompt, pooled = cond.prompt_embeds(config.joint_attention_dim, config.pooled_projection_dim)

        def plain():
            with torch.inference_mode():
                out = pipe(prompt_embeds=prompt.to(device, dtype), pooled_prompt_embeds=pooled.to(device, dtype),
                           height=size, width=size, num_inference_steps=steps,
                           generator=torch.Generator("cpu").manual_seed(1), output_type="pt", **kwargs).images
            return out.float().cpu().permute(0, 2, 3, 1)
        return plain, {}
    modes, threshold, _ = CONFIGS[name]
    model = engine.FluxModel(engine.FluxModelSpec(name, name), pipe, variant, torch.device(device), dtype)
    model.speed_state = speed.apply(pipe, modes, torch.device(device))
    view = speed.with_runtime(model, (), threshold)
    gen = params.validate_generation(variant, "custom", size, size, num_inference_steps=steps, seed=1)
    notes = {"skipped": model.speed_state.skipped} if model.speed_state.skipped else {}
    return (lambda: engine.generate(view, cond, gen).images), notes


def prepare_row(name, variant, state, small, device, dtype, embeds, size, steps, workdir) -> dict:
    """Build the row's pipeline and run its warm-up call; the row keeps its `call` for the timed runs."""
    qtype = CONFIGS[name][2] if CONFIGS[name] else None
    gguf_path = write_gguf(state, workdir / f"{variant}-{qtype}.gguf", qtype) if qtype else None
    transformer = build_transformer(variant, small, state, device, dtype, gguf_path)
    from diffusers import FluxPipeline

    pipe = FluxPipeline(scheduler=load_scheduler(variant), vae=build_vae(small, device, dtype), text_encoder=None,
                        tokenizer=None, text_encoder_2=None, tokenizer_2=None, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    call, notes = make_call(name, variant, pipe, device, dtype, embeds, size, steps)
    warmup, images = timed(call)
    if gguf_path is not None:
        gguf_path.unlink()
    return dict(variant=variant, steps=steps, config=name, warmup_s=warmup, peak_vram_gib=None, images=images,
                seconds=[], call=call, **notes)


def measure(row: dict, repeats: int) -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    row["seconds"] += [timed(row["call"])[0] for _ in range(repeats)]
    if torch.cuda.is_available():
        row["peak_vram_gib"] = torch.cuda.max_memory_allocated() / 2**30


def finish(row: dict) -> dict:
    row.pop("call")
    row["s_per_image"] = statistics.median(row.pop("seconds"))
    return row


def run_variant(variant, configs, small, device, dtype, size, repeats, workdir) -> list[dict]:
    """GPU: one row at a time (memory). CPU: all rows built first, then timed round-robin, so a change in the
    machine's load (other processes) hits every row alike."""
    steps = params.VARIANTS[variant].steps.default
    state = random_state(variant, small, device, dtype)
    width = transformer_config(variant, small)["joint_attention_dim"]
    tokens = 81 if small else 729  # Redux's 27x27 tokens; 9x9 (downsample 3) keeps the CPU run short
    embeds = torch.randn(1, tokens, width, generator=torch.Generator().manual_seed(3)) * 0.1
    rows = []
    for name in sorted(configs, key=lambda c: c != REFERENCE):  # the reference image first
        print(f"{variant} {steps} steps: {name} ...", flush=True)
        rows.append(prepare_row(name, variant, state, small, device, dtype, embeds, size, steps, workdir))
        if not small:
            measure(rows[-1], repeats)
            finish(rows[-1])
            torch._dynamo.reset()  # compiled code keeps the row's modules (and their VRAM) alive otherwise
            gc.collect()
            torch.cuda.empty_cache()
    if small:
        for _ in range(repeats):
            for row in rows:
                measure(row, 1)
        rows = [finish(row) for row in rows]
    reference = rows[0]["images"]
    for row in rows:
        row["psnr_db"] = psnr(row.pop("images"), reference)
    return rows


# -- the table ----------------------------------------------------------------------------------------------------

def fmt(value, spec: str) -> str:
    if value is None:
        return "-"
    return "inf" if value == math.inf else format(value, spec)


def print_table(title: str, rows: list[dict]) -> None:
    header = ["variant", "steps", "config", "s/image", "vs diffusers", "warm-up s", "peak VRAM GiB", "PSNR dB", "note"]
    lines = []
    for row in rows:
        base = next((r for r in rows if r["variant"] == row["variant"] and r["config"] == "diffusers default"), None)
        ratio = f"{base['s_per_image'] / row['s_per_image']:.2f}x" if base else "-"
        skipped = "; ".join(f"{k} skipped" for k in row.get("skipped", {}))
        lines.append([row["variant"], row["steps"], row["config"], fmt(row["s_per_image"], ".3f"),
                      ratio, fmt(row["warmup_s"], ".1f"),
                      fmt(row["peak_vram_gib"], ".1f"), fmt(row["psnr_db"], ".1f"), skipped])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    print(f"\n{title}")
    for line in [header, ["-" * w for w in widths], *lines]:
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per row after the warm-up (median)")
    parser.add_argument("--variants", nargs="+", default=["dev", "schnell"], choices=list(params.VARIANTS))
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--json", type=Path, help="where to write the figures (default: speed_benchmark_<device>.json)")
    args = parser.parse_args()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    small = device == "cpu"
    dtype = torch.float32 if small else torch.bfloat16
    size = 256 if small else 1024
    machine = f"CPU, {torch.get_num_threads()} threads" if small else torch.cuda.get_device_name()
    configs = [c for c in CONFIGS if c in args.configs or c == REFERENCE]
    rows, workdir = [], Path(tempfile.mkdtemp(prefix="speed-bench-"))
    for variant in args.variants:
        rows += run_variant(variant, configs, small, device, dtype, size, args.repeats, workdir)
    title = (f"{machine}, torch {torch.__version__}, {'small random FLUX-shaped model' if small else 'full-size random FLUX'}"
             f", {size}x{size}, median of {args.repeats} after warm-up{', interleaved' if small else ''}, {time.strftime('%Y-%m-%d')}")
    print_table(title, rows)
    target = args.json or Path(f"speed_benchmark_{device}.json")
    target.write_text(json.dumps({"title": title, "rows": rows}, indent=1, default=str))
    print(f"\nfigures written to {target}")


if __name__ == "__main__":
    main()
