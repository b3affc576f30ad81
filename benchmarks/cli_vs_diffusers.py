"""The pack's CLI against a plain-diffusers script on the same files (not a test): wall time and peak memory.

    python benchmarks/cli_vs_diffusers.py                 # CPU, about 5 minutes on 2 cores
    python benchmarks/cli_vs_diffusers.py --device cuda   # the same on a GPU (adds peak VRAM of each process)

Real-format mini weights, written once into a ComfyUI models/ folder: a FLUX.1 dev transformer under BFL names
at full widths with 1 double + 1 single block (bf16), the full-size FLUX VAE (LDM names, fp32), SigLIP so400m
widths with one layer (`vision_model.` prefix), the full Redux projector. Both sides run as whole processes
(imports, loading, one reference image, 256x256, 2 steps, 3 images in one batch, PNGs written), interleaved
--repeats times; the figures are medians. The plain side is what a diffusers user writes:
`from_single_file` for the transformer and VAE, SigLIP and Redux weights through `load_state_dict`,
`FluxPriorReduxPipeline` then `FluxPipeline`. Peak memory is each process's peak RSS (wait4's ru_maxrss) and its
peak private RAM (RssAnon, sampled by this process every 20 ms). Target (issue 16): the CLI at or below 1.0x
the plain script in wall time and peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GIB = 2**30
SIZE, STEPS, IMAGES, SEED = 256, 2, 3, 7


def write_files(root: Path) -> dict[str, Path]:
    """The four files in their ComfyUI formats (random weights, seeded)."""
    import torch
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    import tiny_models as tm
    from pipelines.loading import CONFIG_DIR

    m = root / "models"
    for sub in ("diffusion_models", "vae", "clip_vision", "style_models"):
        (m / sub).mkdir(parents=True, exist_ok=True)
    files = {"transformer": m / "diffusion_models" / "flux1-dev-mini.safetensors", "vae": m / "vae" / "ae.safetensors",
             "siglip": m / "clip_vision" / "sigclip_vision_patch14_384.safetensors",
             "redux": m / "style_models" / "flux1-redux-dev.safetensors"}
    save_file(tm.bfl_transformer_state(True, in_channels=64, joint=4096, pooled=768), str(files["transformer"]))
    torch.manual_seed(1)
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(CONFIG_DIR / "vae"))
    save_file(tm.vae_state_ldm(vae), str(files["vae"]))
    from transformers import SiglipVisionModel

    torch.manual_seed(2)
    siglip = SiglipVisionModel(_siglip_config())
    save_file(tm.siglip_state_comfy(siglip), str(files["siglip"]))
    save_file(tm._contiguous(tm.make_redux(txt_width=4096, redux_dim=1152).state_dict()), str(files["redux"]))
    from PIL import Image
    import numpy as np

    pixels = np.random.default_rng(0).integers(0, 256, (384, 512, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / "reference.png")
    files["image"] = root / "reference.png"
    return files


def _siglip_config():
    """so400m widths (the shipped config) with one layer."""
    from transformers import SiglipVisionConfig

    sys.path[:0] = [str(ROOT)]
    from pipelines.loading import CONFIG_DIR

    config = json.loads((CONFIG_DIR / "siglip" / "config.json").read_text())
    config.pop("model_type")
    return SiglipVisionConfig(**dict(config, num_hidden_layers=1))


# -- the plain-diffusers side (runs as its own process: --plain) ---------------------------------------------------

def plain_diffusers(files: dict, out: Path, device: str) -> None:
    """What a diffusers user writes for Redux variations from ComfyUI's files."""
    import torch
    from diffusers import AutoencoderKL, FluxPipeline, FluxPriorReduxPipeline, FluxTransformer2DModel
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.modeling_flux import ReduxImageEncoder
    from PIL import Image
    from safetensors.torch import load_file
    from transformers import SiglipImageProcessor, SiglipVisionModel

    configs = ROOT / "pipelines" / "configs"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    transformer = FluxTransformer2DModel.from_single_file(
        files["transformer"], config=str(configs / "transformer"), local_files_only=True, torch_dtype=dtype,
        num_layers=1, num_single_layers=1)
    vae = AutoencoderKL.from_single_file(files["vae"], config=str(configs / "vae"), local_files_only=True,
                                         torch_dtype=dtype)
    siglip = SiglipVisionModel(_siglip_config())
    state = load_file(files["siglip"])
    if not any(k.startswith("vision_model.") for k in siglip.state_dict()):
        state = {k.removeprefix("vision_model."): v for k, v in state.items()}
    siglip.load_state_dict(state)
    redux = ReduxImageEncoder(redux_dim=1152, txt_in_features=4096)
    redux.load_state_dict(load_file(files["redux"]))
    prior = FluxPriorReduxPipeline(image_encoder=siglip.to(device, dtype), image_embedder=redux.to(device, dtype),
                                   feature_extractor=SiglipImageProcessor.from_pretrained(configs / "siglip"))
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(configs / "scheduler-dev"),
                        vae=vae, transformer=transformer, text_encoder=None, tokenizer=None, text_encoder_2=None,
                        tokenizer_2=None).to(device)
    with torch.inference_mode():
        embeds = prior(Image.open(files["image"]).convert("RGB"))
        images = pipe(**embeds, height=SIZE, width=SIZE, num_inference_steps=STEPS, guidance_scale=3.5,
                      num_images_per_prompt=IMAGES, generator=torch.Generator("cpu").manual_seed(SEED)).images
    out.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        image.save(out / f"plain_{i}.png")


# -- the two processes, measured -----------------------------------------------------------------------------------

def commands(files: dict, out: Path, device: str) -> dict[str, list[str]]:
    cli = [sys.executable, "-m", "pipelines", "variation", str(files["image"]), "--transformer", str(files["transformer"]),
           "--vae", str(files["vae"]), "--siglip", str(files["siglip"]), "--redux", str(files["redux"]),
           "--size", "custom", "--width", str(SIZE), "--height", str(SIZE), "--steps", str(STEPS),
           "--num-images", str(IMAGES), "--seed", str(SEED), "--device", device, "--out", str(out / "cli"),
           "--overwrite"]
    plain = [sys.executable, str(Path(__file__).resolve()), "--plain",
             json.dumps({k: str(v) for k, v in files.items()}), "--out", str(out / "plain"), "--device", device]
    return {"CLI": cli, "plain diffusers": plain}


def measure(command: list[str]) -> dict:
    """Wall time, peak RSS (ru_maxrss) and sampled peak RssAnon of one whole process."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak_anon, done = 0, threading.Event()

    def sample():
        nonlocal peak_anon
        while not done.is_set():
            try:
                for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                    if line.startswith("RssAnon:"):
                        peak_anon = max(peak_anon, int(line.split()[1]) * 1024)
            except OSError:
                pass
            done.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{command[1:4]} failed ({proc.returncode}): {err.strip()[-800:]}")
    return {"seconds": seconds, "peak_rss": usage.ru_maxrss * 1024, "peak_anon": peak_anon}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side, interleaved (median)")
    parser.add_argument("--plain", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain:
        return plain_diffusers(json.loads(args.plain), args.out, args.device)
    work = Path(tempfile.mkdtemp(prefix="cli-vs-diffusers-"))
    files = write_files(work)
    runs = {name: [] for name in commands(files, work, args.device)}
    for _ in range(args.repeats):
        for name, command in commands(files, work, args.device).items():
            runs[name].append(measure(command))
            print(f"  {name}: {runs[name][-1]['seconds']:.1f} s, peak RSS {runs[name][-1]['peak_rss'] / GIB:.2f} GiB, "
                  f"peak RssAnon {runs[name][-1]['peak_anon'] / GIB:.2f} GiB", flush=True)
    med = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
    cli, plain = med["CLI"], med["plain diffusers"]
    print(f"\n{args.device}, {os.cpu_count()} cores, real-format mini weights (full widths, 1+1 blocks), {SIZE}x{SIZE}, "
          f"{STEPS} steps, {IMAGES} images, whole processes, median of {args.repeats}, {time.strftime('%Y-%m-%d')}\n")
    print("| | wall s | peak RSS GiB | peak private (RssAnon) GiB |\n|---|---|---|---|")
    for name, r in med.items():
        print(f"| {name} | {r['seconds']:.1f} | {r['peak_rss'] / GIB:.2f} | {r['peak_anon'] / GIB:.2f} |")
    print(f"| CLI / plain | {cli['seconds'] / plain['seconds']:.2f}× | {cli['peak_rss'] / plain['peak_rss']:.2f}× | "
          f"{cli['peak_anon'] / plain['peak_anon']:.2f}× |")
    ok = all(cli[k] <= plain[k] for k in ("seconds", "peak_rss"))
    print(f"\ntarget (≤ 1.0× in wall time and peak memory): {'met' if ok else 'MISSED'}")


if __name__ == "__main__":
    main()
