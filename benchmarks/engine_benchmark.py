"""Engine benchmark (not a test): prints tables of measured figures.

    python benchmarks/engine_benchmark.py            # CPU, tiny random models (about a minute)
    python benchmarks/engine_benchmark.py --gpu      # also full-size FLUX.1 dev with random weights on CUDA

CPU: the pack's engine against the same work done with direct diffusers calls on the same weights (the ratio
shows the engine's overhead), a cold call against a warm (cached) one, and every placement and file format
on tiny models against the plain path (same seed: largest pixel difference, 0..1 scale).
GPU: full-size FLUX.1 dev (19 + 38 blocks, width 3072) with random weights at 1024x1024, 28 steps: seconds
per image and peak VRAM for each placement (none, model, group with CUDA streams, sequential, auto) and
each weight format (bf16, fp8 storage, GGUF Q8_0 and Q4_K files of random blocks), next to plain diffusers
defaults (FluxPipeline in bf16 on the GPU) in the same run. `--dry-run` runs the same GPU code on the CPU
with tiny models, to check the script without a GPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import torch  # noqa: E402

import pipelines as engine  # noqa: E402
from pipelines import params  # noqa: E402
from pipelines.loading import CONFIG_DIR  # noqa: E402


def timed(fn, repeats: int = 1) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def print_table(title: str, header: list[str], rows: list[list]) -> None:
    print(f"\n{title}")
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for line in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths)))


def cpu_benchmark(repeats: int) -> None:
    import tiny_models as tm
    from diffusers import FluxPipeline

    models = tm.build_models_dir(Path(tempfile.mkdtemp()))
    files = models["files"]
    image = torch.rand(96, 128, 3)
    gen = params.validate_generation("dev", "custom", 512, 512, num_inference_steps=8, seed=1)

    def engine_call(cache):
        enc = engine.load_redux_encoder(engine.ReduxEncoderSpec(str(files["redux"]), str(files["siglip"])), cache)
        flux = engine.load_flux_model(engine.FluxModelSpec(str(files["dev"]), str(files["vae"])), cache)
        return engine.generate(flux, engine.encode(enc, image, crop="squash"), gen)

    cache = engine.ModelCache()
    cold, _ = timed(lambda: engine_call(cache))

    flux = engine.load_flux_model(engine.FluxModelSpec(str(files["dev"]), str(files["vae"])), cache)
    pipe = FluxPipeline(scheduler=flux.pipe.scheduler, vae=flux.pipe.vae, text_encoder=None, tokenizer=None,
                        text_encoder_2=None, tokenizer_2=None, transformer=flux.pipe.transformer)
    pipe.set_progress_bar_config(disable=True)
    enc = engine.load_redux_encoder(engine.ReduxEncoderSpec(str(files["redux"]), str(files["siglip"])), cache)

    def direct_call():  # the same work written against diffusers/transformers directly
        with torch.inference_mode():
            pil = engine.redux.to_pil_rgb(image)
            pixels = enc.processor(images=[pil], return_tensors="pt")["pixel_values"]
            tokens = enc.projector(enc.vision(pixel_values=pixels).last_hidden_state).image_embeds
            embeds = torch.cat([torch.zeros(1, 512, tokens.shape[-1]), tokens], dim=1)
            return pipe(prompt_embeds=embeds, pooled_prompt_embeds=torch.zeros(1, tm.POOLED_WIDTH), height=512,
                        width=512, num_inference_steps=8, guidance_scale=3.5,
                        generator=torch.Generator().manual_seed(1), output_type="pt").images

    engine_times, direct_times = [], []
    for _ in range(repeats):  # interleaved, so drift in machine speed hits both alike
        seconds, result = timed(lambda: engine_call(cache))
        engine_times.append(seconds)
        seconds, images = timed(direct_call)
        direct_times.append(seconds)
    warm, direct = statistics.median(engine_times), statistics.median(direct_times)
    same = torch.allclose(images.permute(0, 2, 3, 1), result.images, atol=1e-5)
    print_table(f"CPU, tiny random models, 512x512, 8 steps, median of {repeats} (torch {torch.__version__}, "
                f"{torch.get_num_threads()} threads)", ["measure", "seconds", "note"], [
        ["engine, cold (load + encode + generate)", f"{cold:.3f}", ""],
        ["engine, warm (cache hit)", f"{warm:.3f}", f"cold/warm = {cold / warm:.1f}x"],
        ["direct diffusers calls", f"{direct:.3f}", f"engine/direct = {warm / direct:.3f}; same images: {same}"],
    ])
    cpu_placements(files, image)


def cpu_placements(files: dict, image: torch.Tensor) -> None:
    """Every placement and weight format on tiny models against the plain path, same seed."""
    import tiny_models as tm
    from pipelines.models import place_pipeline

    gen = params.validate_generation("dev", "custom", 256, 256, num_inference_steps=4, seed=3)
    enc = engine.load_redux_encoder(engine.ReduxEncoderSpec(str(files["redux"]), str(files["siglip"])),
                                    engine.ModelCache())
    cond = engine.encode(enc, image, crop="squash")

    def images(transformer: str, **options):
        spec = engine.FluxModelSpec(transformer, str(files["vae"]),
                                    options=engine.LoadOptions(device="cpu", **dict({"offload": "none"}, **options)))
        flux = engine.load_flux_model(spec, engine.ModelCache())
        return flux, lambda: engine.generate(flux, cond, gen).images

    base_seconds, base = timed(images(str(files["dev"]))[1])
    rows = [["none (plain)", "fp32 file", f"{base_seconds:.2f}", "0", "reference"]]
    for mode in ("model", "group"):
        flux, call = images(str(files["dev"]))
        place_pipeline(flux.pipe, mode, torch.device("cpu"))  # the hooks run; they move nothing on the CPU
        seconds, out = timed(call)
        rows.append([mode, "same file", f"{seconds:.2f}", f"{(out - base).abs().max():.1e}", "<= 1e-5 expected"])
    rows.append(["sequential", "same file", "-", "-", "needs an accelerator: accelerate's hooks fail on cpu->cpu"])
    seconds, out = timed(images(str(files["dev"]), weight_storage="fp8")[1])
    rows.append(["none", "fp8 storage", f"{seconds:.2f}", f"{(out - base).abs().max():.1e}",
                 f"mean {(out - base).abs().mean():.1e} (float8 rounding)"])
    folder = Path(tempfile.mkdtemp())
    source = tm._contiguous(tm.make_transformer(True, seed=12, heads=2).state_dict())
    for qtype in ("Q8_0", "Q4_K"):
        held = tm.write_gguf(folder / f"flux-{qtype}.gguf", source, qtype)
        plain = tm.write_safetensors(folder / f"flux-{qtype}-dequantized.safetensors",
                                     {k: v.contiguous() for k, v in held.items()})
        reference = images(str(plain))[1]()
        seconds, out = timed(images(str(folder / f"flux-{qtype}.gguf"))[1])
        rows.append(["none", f"GGUF {qtype}", f"{seconds:.2f}", f"{(out - reference).abs().max():.1e}",
                     "vs its dequantized weights as safetensors, <= 1e-3 expected"])
    print_table("CPU, tiny models, 256x256, 4 steps: each placement / format against the plain path, same seed",
                ["placement", "weights", "seconds", "max |diff|", "note"], rows)


# -- GPU: full-size random weights -----------------------------------------------------------------------------

GPU_ROWS = [  # (label, weight format, placement)
    ("diffusers defaults", "bf16", "diffusers"), ("engine", "bf16", "none"), ("engine", "bf16", "auto"),
    ("engine", "fp8", "none"), ("engine", "gguf-Q8_0", "none"), ("engine", "gguf-Q4_K", "none"),
    ("engine", "bf16", "model"), ("engine", "bf16", "group"), ("engine", "fp8", "group"),
    ("engine", "bf16", "sequential"),
]


def random_module(model_class, config: dict, device: str, dtype: torch.dtype):
    """Random init directly in `dtype` on `device` (a 12B model in fp32 would need 48 GB first)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return model_class.from_config(config).eval()
    finally:
        torch.set_default_dtype(previous)


def write_random_gguf(path: Path, model, qtype: str) -> Path:
    """A GGUF file of `model`'s shapes (diffusers key names): random quantized blocks for every 2-D weight whose
    rows fill whole blocks, small random F32 for the rest. Quantizing 12B real values would take an hour."""
    import gguf
    import numpy as np
    import tiny_models as tm

    kind = gguf.GGMLQuantizationType[qtype]
    block = gguf.GGML_QUANT_SIZES[kind][0]
    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(str(path), "flux")
    for name, tensor in model.state_dict().items():
        shape = tuple(tensor.shape)
        if len(shape) == 2 and shape[1] % block == 0:
            writer.add_tensor(name, tm.random_blocks(rng, shape[0], shape[1], kind), raw_dtype=kind)
        else:
            writer.add_tensor(name, (rng.standard_normal(shape, dtype=np.float32) * 0.02))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


class GpuSetup:
    """Full-size configs on CUDA, or tiny ones on the CPU for --dry-run."""

    def __init__(self, dry_run: bool):
        from diffusers import AutoencoderKL, FluxTransformer2DModel

        self.dry_run, self.device = dry_run, torch.device("cpu" if dry_run else "cuda")
        self.dtype = torch.float32 if dry_run else torch.bfloat16
        if dry_run:
            import tiny_models as tm
            self.transformer_config = dict(tm.make_transformer(True, heads=2).config)
            self.vae_config = dict(tm.make_vae().config)
            self.width, self.pooled = tm.JOINT_WIDTH, tm.POOLED_WIDTH
        else:
            self.transformer_config = FluxTransformer2DModel.load_config(CONFIG_DIR / "transformer")
            self.vae_config = AutoencoderKL.load_config(CONFIG_DIR / "vae")
            self.width, self.pooled = 4096, 768
        self.folder = Path(tempfile.mkdtemp(prefix="flux-bench-"))

    def transformer(self, weights: str):
        from diffusers import FluxTransformer2DModel
        from pipelines.loading import load_transformer

        model = random_module(FluxTransformer2DModel, self.transformer_config, self.device.type, self.dtype)
        if not weights.startswith("gguf-"):
            return model
        path = write_random_gguf(self.folder / f"{weights}.gguf", model.to("meta"), weights.removeprefix("gguf-"))
        return load_transformer(path, self.dtype)[0]

    def vae(self):
        from diffusers import AutoencoderKL

        return random_module(AutoencoderKL, self.vae_config, self.device.type, self.dtype)


def gpu_row(setup: GpuSetup, weights: str, placement: str, size: int, steps: int, repeats: int) -> list:
    import gc

    from diffusers import FluxPipeline
    from pipelines.models import place_pipeline
    from pipelines.placement import Footprint, Placement, decide

    transformer, vae = setup.transformer(weights), setup.vae()
    if weights == "fp8":
        transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=setup.dtype)
    pipe = FluxPipeline(scheduler=engine.loading.load_scheduler("dev"), vae=vae, text_encoder=None, tokenizer=None,
                        text_encoder_2=None, tokenizer_2=None, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    chosen = Placement("none" if placement == "diffusers" else placement, "default", "benchmark row")
    if placement == "auto":
        params_count = sum(p.numel() for p in transformer.parameters())
        free = torch.cuda.mem_get_info()[0] if setup.device.type == "cuda" else None
        chosen = decide(Footprint(params_count, params_count * 2), sum(p.numel() * 2 for p in vae.parameters()), free)
    if chosen.offload in ("model", "group", "sequential"):
        if setup.device.type == "cpu" and chosen.offload == "sequential":
            return [weights, placement, "-", "-", "skipped on the CPU (needs an accelerator)"]
        pipe.to("cpu")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    place_pipeline(pipe, chosen.offload, setup.device)
    embeds = torch.randn(1, 512 + 729, setup.width) * 0.1
    if placement == "diffusers":
        def call(n):
            return pipe(prompt_embeds=embeds.to(setup.device, setup.dtype),
                        pooled_prompt_embeds=torch.zeros(1, setup.pooled, device=setup.device, dtype=setup.dtype),
                        height=size, width=size, num_inference_steps=n, guidance_scale=3.5).images
    else:
        flux = engine.FluxModel(engine.FluxModelSpec("random", "random"), pipe, "dev", setup.device, setup.dtype,
                                chosen)
        cond = engine.ReduxConditioning(embeds[:, 512:], (1.0,))

        def call(n):
            return engine.generate(flux, cond, params.validate_generation("dev", "custom", size, size,
                                                                          num_inference_steps=n, seed=1)).images
    call(2)  # warm-up (kernel selection, allocator, offload hooks' first moves)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    seconds, _ = timed(lambda: call(steps), 1 if chosen.offload == "sequential" else repeats)
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
    note = chosen.describe() if placement == "auto" else ""
    del pipe, transformer, vae
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return [weights, placement, f"{seconds:.2f}", f"{peak:.1f}", note]


def gpu_benchmark(size: int, steps: int, repeats: int, dry_run: bool, only: list[str] | None) -> None:
    setup = GpuSetup(dry_run)
    rows = []
    for label, weights, placement in GPU_ROWS:
        name = f"{weights}/{placement}"
        if only and name not in only:
            continue
        print(f"  running {label}: {name} ...", flush=True)
        rows.append([label, *gpu_row(setup, weights, placement, size, steps, repeats)])
    device = "CPU dry run, tiny models" if dry_run else torch.cuda.get_device_name()
    print_table(f"{device}, FLUX.1 dev random full-size weights, {size}x{size}, {steps} steps, 1 image, median of "
                f"{repeats} after warm-up (sequential: 1)",
                ["", "weights", "placement", "s/image", "peak VRAM GiB", "note"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="also run the full-size CUDA benchmark")
    parser.add_argument("--dry-run", action="store_true", help="run the GPU rows on the CPU with tiny models")
    parser.add_argument("--only", nargs="+", help="GPU rows to run, as weights/placement (e.g. bf16/group)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gpu-repeats", type=int, default=2)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=28)
    args = parser.parse_args()
    if args.dry_run:
        gpu_benchmark(256, 2, 1, True, args.only)
        return
    cpu_benchmark(args.repeats)
    if args.gpu:
        if not torch.cuda.is_available():
            print("\n--gpu: no CUDA device here; GPU table skipped")
        else:
            gpu_benchmark(args.size, args.steps, args.gpu_repeats, False, args.only)


if __name__ == "__main__":
    main()
