"""Engine benchmark (not a test): prints tables of measured figures.

    python benchmarks/engine_benchmark.py            # CPU, tiny random models (seconds)
    python benchmarks/engine_benchmark.py --gpu      # also full-size FLUX with random weights on CUDA

CPU: the pack's engine against the same work done with direct diffusers calls on the same weights
(the ratio shows the engine's overhead), and a cold call (loading included) against a warm (cached) one.
GPU: full-size FLUX.1 dev / schnell transformers with random weights at 1024x1024, 28 and 4 steps:
seconds per image and peak VRAM for bf16, fp8 weight storage and model offload, next to plain diffusers
defaults (FluxPipeline in bf16 on the GPU) in the same run.
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


def random_flux(variant: str, device: str, dtype: torch.dtype):
    """Full-size FLUX transformer + VAE from the shipped configs, random weights, built on the GPU."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel

    with torch.device(device):
        config = FluxTransformer2DModel.load_config(CONFIG_DIR / "transformer")
        config["guidance_embeds"] = variant == "dev"
        transformer = FluxTransformer2DModel.from_config(config).to(dtype)
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(CONFIG_DIR / "vae")).to(dtype)
    return transformer.eval(), vae.eval()


def gpu_benchmark(variants: list[str], modes: list[str], size: int) -> None:
    from diffusers import FluxPipeline

    rows = []
    embeds = torch.randn(1, 512 + 729, 4096) * 0.1
    for variant in variants:
        steps = params.VARIANTS[variant].steps.default
        for mode in modes:
            torch.cuda.empty_cache()
            transformer, vae = random_flux(variant, "cuda", torch.bfloat16)
            pipe = FluxPipeline(scheduler=engine.loading.load_scheduler(variant), vae=vae, text_encoder=None,
                                tokenizer=None, text_encoder_2=None, tokenizer_2=None, transformer=transformer)
            pipe.set_progress_bar_config(disable=True)
            if mode == "fp8":
                transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn,
                                                     compute_dtype=torch.bfloat16)
            if mode == "offload":
                pipe.to("cpu")
                torch.cuda.empty_cache()
                pipe.enable_model_cpu_offload()
            kwargs = {"guidance_scale": 3.5} if variant == "dev" else {}
            if mode == "diffusers-default":
                def call():
                    return pipe(prompt_embeds=embeds.to("cuda", torch.bfloat16),
                                pooled_prompt_embeds=torch.zeros(1, 768, device="cuda", dtype=torch.bfloat16),
                                height=size, width=size, num_inference_steps=steps, **kwargs).images
            else:
                flux = engine.FluxModel(engine.FluxModelSpec("random", "random"), pipe, variant,
                                        torch.device("cuda"), torch.bfloat16)
                cond = engine.ReduxConditioning(embeds[:, 512:], (1.0,))
                gen = params.validate_generation(variant, "custom", size, size, seed=1)

                def call():
                    return engine.generate(flux, cond, gen).images
            call()  # warm-up (kernel selection, allocator)
            torch.cuda.reset_peak_memory_stats()
            seconds, _ = timed(call, 2)
            peak = torch.cuda.max_memory_allocated() / 2**30
            rows.append([variant, steps, mode, f"{seconds:.2f}", f"{peak:.1f}"])
            del pipe, transformer, vae
            torch.cuda.empty_cache()
    print_table(f"GPU {torch.cuda.get_device_name()}, random full-size weights, {size}x{size}, 1 image, "
                "median of 2 after warm-up", ["variant", "steps", "mode", "s/image", "peak VRAM GiB"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="also run the full-size CUDA benchmark")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=["dev", "schnell"])
    parser.add_argument("--modes", nargs="+", default=["diffusers-default", "bf16", "fp8", "offload"])
    parser.add_argument("--size", type=int, default=1024)
    args = parser.parse_args()
    cpu_benchmark(args.repeats)
    if args.gpu:
        if not torch.cuda.is_available():
            print("\n--gpu: no CUDA device here; GPU table skipped")
        else:
            gpu_benchmark(args.variants, args.modes, args.size)


if __name__ == "__main__":
    main()
