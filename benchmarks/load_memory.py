"""Full-size FLUX.1 loads: RAM and time of the pack's engine next to ComfyUI's own loader (not a test).

    python benchmarks/load_memory.py --small                  # 1+1 blocks at full width: checks the script
    python benchmarks/load_memory.py --comfyui /work/comfyui/0.33 \\
        --comfyui-python /work/comfyui/0.33/.venv/bin/python   # full size, every format, both loaders
    python benchmarks/load_memory.py --device cuda ...        # on a GPU box: VRAM peak and RAM above baseline

Writes full-size random FLUX.1 files tensor by tensor (BFL key names and shapes: 19 double + 38 single blocks,
width 3072, 11.9 B parameters), never holding the model: safetensors headers and data are streamed by hand,
GGUF blocks are one small buffer of valid random blocks tiled to each tensor's size. Formats: fp8 (dev,
float8_e4m3fn matrices, bf16 vectors, 11.9 GB), fp8-schnell (no guidance_in), bf16 (23.8 GB, loaded with fp8
storage), gguf-q8_0, gguf-q4_k, checkpoint (ComfyUI all-in-one: model.diffusion_model.* fp8 + vae.* bf16),
fp8-scaled (ComfyUI scaled fp8). A FLUX VAE file (LDM names, fp32, 0.3 GB) goes beside the transformer files.

Each load runs in its own process: the pack (`load_flux_model` with LoadOptions(device, dtype=bf16,
weight_storage), transformer + VAE) and, with --comfyui, ComfyUI in its own venv (`comfy.sd.load_diffusion_model`
+ `comfy.sd.VAE`, or `load_checkpoint_guess_config`; GGUF through city96's ComfyUI-GGUF "Unet Loader (GGUF)" node,
given --comfyui-gguf DIR, as ComfyUI users load GGUF). A thread in the child samples /proc/self/status every
20 ms: peak private RAM (RssAnon) and peak file-backed RAM (RssFile, page cache the kernel can drop). The file
is read once (`cat > /dev/null`) before each load, so both loaders start from a warm page cache where the file
fits in RAM. On the CPU a child gets oom_score_adj 1000 and is killed by this process once its private RAM
passes what was free at its start minus 1 GiB, so a load that does not fit fails alone instead of pushing other
processes out; the table says where it stopped. (RLIMIT_DATA cannot be that cap: it counts the private
copy-on-write file mappings that safetensors and ComfyUI make of the whole file, so every load fails at 0.4 GiB.)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
import tiny_models as tm  # noqa: E402  the streamed writers the load-limit tests use too
GIB = 2**30
IN_CHANNELS, JOINT, POOLED = 64, 4096, 768  # FLUX.1: latent patches, T5-XXL, CLIP-L pooled
SAMPLE_S = 0.02


# -- what the files hold ------------------------------------------------------------------------------------------

def flux_shapes(double: int, single: int, guidance: bool) -> dict[str, tuple[int, ...]]:
    """BFL key names and shapes of a FLUX.1 transformer (flux1-dev/schnell.safetensors' layout)."""
    return tm.bfl_shapes(guidance, in_channels=IN_CHANNELS, joint=JOINT, pooled=POOLED, double=double,
                         single=single)


def vae_shapes() -> dict[str, tuple[int, ...]]:
    """The FLUX autoencoder's LDM key names and shapes (ae.safetensors), from diffusers' model on meta."""
    import torch
    from diffusers import AutoencoderKL

    from pipelines.loading import CONFIG_DIR

    with torch.device("meta"):
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(CONFIG_DIR / "vae"))
    return {k: tuple(v.shape) for k, v in tm.vae_state_ldm(vae).items()}


def fp8_dtypes(shapes: dict) -> dict[str, str]:
    """fp8 files as users have them: matrices float8_e4m3fn, biases and norm scales bf16."""
    return {k: "F8_E4M3" if len(s) == 2 else "BF16" for k, s in shapes.items()}


def scaled_fp8(shapes: dict) -> tuple[dict, dict]:
    """ComfyUI's scaled fp8: a `scaled_fp8` marker and scalar scale_weight/scale_input per fp8 matrix."""
    shapes, dtypes = dict(shapes), fp8_dtypes(shapes)
    for key in [k for k, s in shapes.items() if len(s) == 2]:
        for extra in ("scale_weight", "scale_input"):
            shapes[key[:-6] + extra], dtypes[key[:-6] + extra] = (), "F32"
    shapes["scaled_fp8"], dtypes["scaled_fp8"] = (0,), "F8_E4M3"
    return shapes, dtypes


# -- the formats --------------------------------------------------------------------------------------------------

@dataclass
class Run:
    loader: str  # pack | comfyui
    storage: str = "default"  # pack: weight_storage; comfyui: weight dtype asked of the loader (default / fp8)


@dataclass
class Format:
    name: str
    what: str
    runs: list[Run]
    checkpoint: bool = False
    suffix: str = ".safetensors"
    comfyui_note: str = ""  # why ComfyUI's core cannot load it
    files: list[Path] = field(default_factory=list)


FORMATS = {
    "fp8": Format("fp8", "dev, float8_e4m3fn matrices + bf16 vectors",
                  [Run("comfyui"), Run("pack", "default"), Run("pack", "fp8")]),
    "fp8-schnell": Format("fp8-schnell", "schnell (no guidance_in), fp8 as above", [Run("comfyui"), Run("pack")]),
    "bf16": Format("bf16", "dev, bf16, fp8 storage asked", [Run("comfyui", "fp8"), Run("pack", "fp8")]),
    "gguf-q8_0": Format("gguf-q8_0", "dev, GGUF Q8_0 (vectors F32)", [Run("comfyui"), Run("pack")], suffix=".gguf",
                        comfyui_note="ComfyUI's core loader reads no GGUF: give --comfyui-gguf DIR (city96's node pack)"),
    "gguf-q4_k": Format("gguf-q4_k", "dev, GGUF Q4_K (vectors F32)", [Run("comfyui"), Run("pack")], suffix=".gguf",
                        comfyui_note="ComfyUI's core loader reads no GGUF: give --comfyui-gguf DIR (city96's node pack)"),
    "checkpoint": Format("checkpoint", "all-in-one: model.diffusion_model.* fp8 + vae.* bf16",
                         [Run("comfyui"), Run("pack")], checkpoint=True),
    "fp8-scaled": Format("fp8-scaled", "dev, ComfyUI scaled fp8 (scale_weight per matrix)",
                         [Run("comfyui"), Run("pack", "fp8"), Run("pack")]),
}
DEFAULT_FORMATS = ["fp8", "fp8-schnell", "bf16", "gguf-q8_0", "gguf-q4_k", "checkpoint"]


def write_format(fmt: Format, folder: Path, small: bool, vae: Path) -> Path:
    """Write the format's file into `folder` (streamed) and return its path."""
    double, single = (1, 1) if small else (19, 38)
    shapes = flux_shapes(double, single, guidance=fmt.name != "fp8-schnell")
    path = folder / f"flux1-{'small-' if small else ''}{fmt.name}{fmt.suffix}"
    if fmt.name.startswith("gguf-"):
        tm.write_gguf_streamed(path, shapes, fmt.name.removeprefix("gguf-").upper())
    elif fmt.name == "bf16":
        tm.write_safetensors_streamed(path, shapes, dict.fromkeys(shapes, "BF16"))
    elif fmt.name == "fp8-scaled":
        tm.write_safetensors_streamed(path, *scaled_fp8(shapes))
    elif fmt.checkpoint:
        write_checkpoint(path, shapes)
    else:
        tm.write_safetensors_streamed(path, shapes, fp8_dtypes(shapes))
    return path


def planned_bytes(fmt: Format, small: bool) -> int:
    """About the size the format's file will have (for the free-disk check before writing it)."""
    double, single = (1, 1) if small else (19, 38)
    shapes = flux_shapes(double, single, guidance=True)
    numel = sum(math.prod(s) for s in shapes.values())
    per_value = {"bf16": 2, "gguf-q8_0": 34 / 32, "gguf-q4_k": 144 / 256}.get(fmt.name, 1)
    return int(numel * per_value) + (200 << 20 if fmt.checkpoint else 0)


def wait_for_disk(folder: Path, need: int, patience_s: float) -> bool:
    import shutil

    deadline = time.time() + patience_s
    while shutil.disk_usage(folder).free < need:
        if time.time() > deadline:
            return False
        print(f"    waiting: {shutil.disk_usage(folder).free / GIB:.1f} GiB of disk free, {need / GIB:.1f} wanted",
              flush=True)
        time.sleep(60)
    return True


def write_checkpoint(path: Path, shapes: dict) -> None:
    """One header over both parts (model.diffusion_model.* fp8, vae.* bf16), then their bytes in that order."""
    parts = {f"model.diffusion_model.{k}": v for k, v in shapes.items()}
    dtypes = {f"model.diffusion_model.{k}": d for k, d in fp8_dtypes(shapes).items()}
    for k, v in vae_shapes().items():
        parts[f"vae.{k}"], dtypes[f"vae.{k}"] = v, "BF16"
    tm.write_safetensors_streamed(path, parts, dtypes)


def write_vae(folder: Path) -> Path:
    path = folder / "ae.safetensors"
    if not path.exists():
        shapes = vae_shapes()
        tm.write_safetensors_streamed(path, shapes, dict.fromkeys(shapes, "F32"))
    return path


# -- in the child process -----------------------------------------------------------------------------------------

class Sampler(threading.Thread):
    """Peaks of RssAnon (private) and RssFile (file-backed) from /proc/self/status every 20 ms."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak = {"RssAnon": 0, "RssFile": 0}
        self.running = True
        self.baseline = read_status("self")

    def run(self):
        while self.running:
            self.sample()
            time.sleep(SAMPLE_S)

    def sample(self):
        now = read_status("self")
        for key in self.peak:
            self.peak[key] = max(self.peak[key], now.get(key, 0))

    def stop(self) -> dict:
        self.running = False
        self.join()
        self.sample()
        return {"baseline_anon": self.baseline["RssAnon"], "peak_anon": self.peak["RssAnon"],
                "peak_file": self.peak["RssFile"]}


def read_status(pid) -> dict[str, int]:
    """RssAnon / RssFile / RssShmem of a process, in bytes (empty once it is gone)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    out = {}
    for line in lines:
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile", "RssShmem"):
            out[key] = int(value.split()[0]) * 1024
    return out


def disk_read() -> int:
    """Bytes this process made the kernel read from storage (page-cache misses), from /proc/self/io."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    return 0


def module_bytes(modules) -> int:
    """Bytes of every distinct parameter and buffer as stored: GGUF blocks as quantized, and a tensor subclass
    (ComfyUI's QuantizedTensor for scaled fp8) by the tensors inside it, not by its logical dtype."""
    seen, total = set(), 0
    for module in modules:
        for t in (*module.parameters(), *module.buffers()):
            for inner in stored_tensors(t):
                key = (inner.data_ptr(), inner.device.type) if inner.device.type != "meta" else id(inner)
                if key not in seen:
                    seen.add(key)
                    total += inner.numel() * inner.element_size()
    return total


def stored_tensors(t) -> list:
    data = t.data if type(t).__name__ == "Parameter" else t
    if hasattr(data, "__tensor_flatten__") and type(data).__tensor_flatten__ is not None:
        try:
            names, _ = data.__tensor_flatten__()
        except Exception:  # a subclass that defines the hook but cannot flatten this instance
            return [data]
        return [x for name in names for x in stored_tensors(getattr(data, name))]
    return [data]


def child_pack(job: dict):
    """The pack's engine: transformer + VAE through load_flux_model, as the CLI and the nodes load them."""
    sys.path.insert(0, str(ROOT))
    from pipelines.cache import ModelCache
    from pipelines.loading import LoadOptions
    from pipelines.models import FluxModelSpec, load_flux_model
    import diffusers  # the engine imports these lazily; imported here so that import time is not load time
    for name in ("FluxTransformer2DModel", "AutoencoderKL", "FluxPipeline", "GGUFQuantizationConfig"):
        getattr(diffusers, name)

    options = LoadOptions(device=job["device"], dtype="bf16", weight_storage=job["storage"], offload="none")
    spec = FluxModelSpec(job["transformer"], job["vae"], options=options)
    return lambda: load_flux_model(spec, ModelCache()), lambda model: module_bytes(model.modules().values())


def child_comfyui(job: dict):
    """ComfyUI's own loaders, imported from its tree in its venv (`--cpu` unless on CUDA)."""
    sys.argv = ["main.py"] + (["--cpu"] if job["device"] == "cpu" else [])
    sys.path.insert(0, job["comfyui"])
    os.chdir(job["comfyui"])
    import comfy.options

    comfy.options.enable_args_parsing()
    import torch
    import comfy.model_management
    import comfy.sd
    import comfy.utils

    unet_gguf = comfyui_gguf_loader(job)

    def load():
        if unet_gguf:
            model = unet_gguf(job["transformer"])
            vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(job["vae"]))
        elif job["checkpoint"]:
            model, _clip, vae, _vision = comfy.sd.load_checkpoint_guess_config(
                job["transformer"], output_vae=True, output_clip=False)
        else:
            options = {"dtype": torch.float8_e4m3fn} if job["storage"] == "fp8" else {}
            model = comfy.sd.load_diffusion_model(job["transformer"], model_options=options)
            vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(job["vae"]))
        if job["device"] != "cpu":
            comfy.model_management.load_models_gpu([model, vae.patcher])
        return model, vae

    return load, lambda loaded: module_bytes([loaded[0].model, loaded[1].first_stage_model])


def comfyui_gguf_loader(job: dict):
    """city96's ComfyUI-GGUF node pack (the GGUF loader ComfyUI users have), imported as ComfyUI imports a custom
    node: its "Unet Loader (GGUF)" node, given the file through ComfyUI's public folder_paths. None without it."""
    if not job.get("comfyui_gguf"):
        return None
    import importlib.util
    import folder_paths

    folder = Path(job["comfyui_gguf"])
    spec = importlib.util.spec_from_file_location("ComfyUI-GGUF", folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = pack
    spec.loader.exec_module(pack)
    node = pack.NODE_CLASS_MAPPINGS["UnetLoaderGGUF"]()

    def load(path: str):
        folder_paths.add_model_folder_path("unet_gguf", str(Path(path).parent))
        folder_paths.add_model_folder_path("diffusion_models", str(Path(path).parent))
        return node.load_unet(Path(path).name)[0]
    return load


def child_main(job: dict) -> None:
    """Load once, print one RESULT line of JSON: seconds, kept bytes, RAM peaks (and VRAM on CUDA)."""
    load, kept_bytes = (child_pack if job["loader"] == "pack" else child_comfyui)(job)
    cuda = job["device"] != "cpu"
    if cuda:
        import torch
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats()
    sampler = Sampler()
    sampler.start()
    disk, start = disk_read(), time.perf_counter()
    loaded = load()
    seconds = time.perf_counter() - start
    result = dict(sampler.stop(), seconds=seconds, kept=kept_bytes(loaded), disk_read=disk_read() - disk)
    if cuda:
        import torch
        result["vram_peak"] = torch.cuda.max_memory_allocated()
    print("RESULT " + json.dumps(result), flush=True)


# -- in the parent ------------------------------------------------------------------------------------------------

def available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def wait_for_memory(need_gib: float, patience_s: float) -> bool:
    """Wait (up to patience_s) until MemAvailable holds need_gib: the machine is shared."""
    deadline = time.time() + patience_s
    while available_bytes() < need_gib * GIB:
        if time.time() > deadline:
            return False
        print(f"    waiting: {available_bytes() / GIB:.1f} GiB available, {need_gib} GiB wanted", flush=True)
        time.sleep(30)
    return True


def warm(path: Path) -> float:
    """Read the file once so both loaders start from the same (warm) page cache."""
    start = time.perf_counter()
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def first_to_go() -> None:
    """preexec_fn: the child is the first process the kernel's OOM killer takes."""
    try:
        Path("/proc/self/oom_score_adj").write_text("1000")
    except OSError:
        pass


def run_child(python: str, job: dict, cap: int | None, timeout_s: float) -> dict:
    """One load in a fresh process, killed once its RssAnon passes `cap` (the RAM free when it started). A
    child that dies (that kill, the kernel's OOM killer, an allocation failure) is reported with the largest
    RssAnon this process saw it reach."""
    proc = subprocess.Popen([python, str(Path(__file__).resolve()), "--child", json.dumps(job)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=first_to_go)
    seen, start, stopped = 0, time.time(), ""
    reader = threading.Thread(target=lambda: setattr(proc, "captured", proc.communicate()), daemon=True)
    reader.start()
    while reader.is_alive():
        seen = max(seen, read_status(proc.pid).get("RssAnon", 0))
        over = cap and seen > cap
        if (over or time.time() - start > timeout_s) and proc.poll() is None and not stopped:
            proc.send_signal(signal.SIGKILL)
            stopped = f"killed (OOM: over the {cap / GIB:.1f} GiB free)" if over else f"stopped after {timeout_s:.0f} s"
        reader.join(SAMPLE_S)
    out, err = proc.captured
    for line in out.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    if stopped:
        cause = stopped
    elif proc.returncode < 0:
        cause = "killed (OOM)" if proc.returncode == -signal.SIGKILL else f"killed by signal {-proc.returncode}"
    else:
        tail = [x for x in err.strip().splitlines() if x.strip()][-1:] or ["no output"]
        cause = ("out of memory" if "memory" in tail[0].lower() or "alloc" in tail[0].lower() else "failed") + \
            f" ({tail[0][:160]})"
    return {"error": f"{cause} past {seen / GIB:.1f} GiB", "stderr": err[-2000:]}


@dataclass
class Row:
    fmt: str
    file_gib: float
    loader: str
    storage: str
    result: dict


def measure_format(fmt: Format, path: Path, vae: Path, args) -> list[Row]:
    """Every run of the format, --repeats times round-robin (so a change in the shared machine's load hits
    every loader alike)."""
    size, results = path.stat().st_size, {i: [] for i in range(len(fmt.runs))}
    for _ in range(args.repeats):
        for i, run in enumerate(fmt.runs):
            if run.loader == "comfyui" and not args.comfyui:
                continue
            if run.loader == "comfyui" and fmt.comfyui_note and not (fmt.suffix == ".gguf" and args.comfyui_gguf):
                results[i] = [{"error": fmt.comfyui_note}]
                continue
            if results[i] and "error" in results[i][-1]:
                continue  # a load that failed once is not retried
            results[i].append(measure_once(fmt, run, path, vae, args))
    return [Row(fmt.name, size / GIB, "pack" if run.loader == "pack" else "ComfyUI", run.storage, combine(results[i]))
            for i, run in enumerate(fmt.runs) if results[i]]


def measure_once(fmt: Format, run: Run, path: Path, vae: Path, args) -> dict:
    full_cpu = not args.small and args.device == "cpu"
    while True:  # the machine is shared: RAM free before the warm-up may be gone after it
        if full_cpu and not wait_for_memory(args.need_gib, args.patience):
            return {"error": "not run: RAM not free"}
        warm_s = warm(path) + (0 if fmt.checkpoint else warm(vae))
        if not full_cpu or available_bytes() >= args.need_gib * GIB:
            break
    job = dict(loader=run.loader, storage=run.storage, device=args.device, transformer=str(path),
               vae=str(path if fmt.checkpoint else vae), checkpoint=fmt.checkpoint, comfyui=args.comfyui,
               comfyui_gguf=args.comfyui_gguf if fmt.suffix == ".gguf" else None)
    python = args.comfyui_python if run.loader == "comfyui" else sys.executable
    cap = None if args.device != "cpu" else max(available_bytes() - GIB, 2 * GIB)
    print(f"  {fmt.name}: {run.loader} storage={run.storage} (cache warmed in {warm_s:.1f} s"
          + (f", private RAM cap {cap / GIB:.1f} GiB)" if cap else ")"), flush=True)
    result = run_child(python, job, cap, args.timeout)
    print("    " + describe(result), flush=True)
    return result


def combine(results: list[dict]) -> dict:
    """Repeats of one load: median seconds, the highest peaks, the lowest baseline; an error wins."""
    errors = [r for r in results if "error" in r]
    if errors:
        return errors[0]
    out = {"seconds": statistics.median(r["seconds"] for r in results), "all_seconds": [r["seconds"] for r in results],
           "disk_read": max(r.get("disk_read", 0) for r in results),
           "kept": results[0]["kept"], "baseline_anon": min(r["baseline_anon"] for r in results)}
    for key in ("peak_anon", "peak_file", "vram_peak"):
        if key in results[0]:
            out[key] = max(r[key] for r in results)
    return out


def describe(result: dict) -> str:
    if "error" in result:
        return result["error"]
    return (f"kept {result['kept'] / GIB:.2f} GiB, peak private {result['peak_anon'] / GIB:.2f} GiB "
            f"(baseline {result['baseline_anon'] / GIB:.2f}), file-backed {result['peak_file'] / GIB:.2f} GiB, "
            f"{result['seconds']:.1f} s, {result.get('disk_read', 0) / GIB:.1f} GiB from disk"
            + (f", VRAM {result['vram_peak'] / GIB:.2f} GiB" if "vram_peak" in result else ""))


def print_table(rows: list[Row], title: str, cuda: bool) -> None:
    """One markdown table; each pack row against the ComfyUI row of the same file, and against the targets."""
    head = ["file", "file GiB", "loader", "storage", "kept GiB", "baseline GiB", "peak private GiB",
            "peak file-backed GiB", "seconds", "private pack/ComfyUI", "time pack/ComfyUI", "RAM target"]
    if cuda:
        head[-1:-1] = ["VRAM peak GiB", "private above baseline GiB"]
    lines = []
    for row in rows:
        r = row.result
        comfy = next((x.result for x in rows if x.fmt == row.fmt and x.loader == "ComfyUI" and "error" not in x.result), None)
        if "error" in r:
            cells = ["–"] * (len(head) - 4)
            cells[-1] = r["error"]
        else:
            kept, peak = r["kept"] / GIB, r["peak_anon"] / GIB
            target = 2 + r["baseline_anon"] / GIB if cuda else 1.1 * kept + 1
            ratio = row.loader == "pack" and comfy
            cells = [f"{kept:.2f}", f"{r['baseline_anon'] / GIB:.2f}", f"{peak:.2f}", f"{r['peak_file'] / GIB:.2f}",
                     f"{r['seconds']:.1f}",
                     f"{r['peak_anon'] / comfy['peak_anon']:.2f}×" if ratio else "",
                     f"{r['seconds'] / comfy['seconds']:.2f}×" if ratio else "",
                     ("meets" if peak <= target else "misses") + f" (≤ {target:.1f})" if row.loader == "pack" else ""]
            if cuda:
                cells[-1:-1] = [f"{r.get('vram_peak', 0) / GIB:.2f}", f"{(r['peak_anon'] - r['baseline_anon']) / GIB:.2f}"]
        lines.append([row.fmt, f"{row.file_gib:.2f}", row.loader, row.storage, *cells])
    print(f"\n{title}\n")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for line in lines:
        print("| " + " | ".join(line) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--formats", nargs="+", default=DEFAULT_FORMATS, choices=list(FORMATS))
    parser.add_argument("--dir", type=Path, default=Path(__file__).resolve().parent.parent / "bench-out" / "files",
                        help="where the files are written (default: bench-out/files, git-ignored)")
    parser.add_argument("--keep", action="store_true", help="keep each file (default: deleted after its loads)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (then VRAM peak and RAM above baseline)")
    parser.add_argument("--small", action="store_true", help="1 double + 1 single block at full width (quick)")
    parser.add_argument("--comfyui", help="a ComfyUI tree: also load each file with ComfyUI's own loader")
    parser.add_argument("--comfyui-python", help="the python of ComfyUI's venv (default: this one)")
    parser.add_argument("--comfyui-gguf", help="city96's ComfyUI-GGUF folder: load the GGUF files with it in ComfyUI "
                                               "(its venv needs the gguf package)")
    parser.add_argument("--need-gib", type=float, default=14.0, help="MemAvailable wanted before a full-size load")
    parser.add_argument("--patience", type=float, default=1800, help="seconds to wait for that RAM")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds one load may take")
    parser.add_argument("--repeats", type=int, default=1, help="loads of each kind per file, round-robin (median time)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child_main(json.loads(args.child))
    args.comfyui = str(Path(args.comfyui).resolve()) if args.comfyui else None
    args.comfyui_gguf = str(Path(args.comfyui_gguf).resolve()) if args.comfyui_gguf and args.comfyui else None
    args.comfyui_python = args.comfyui_python or sys.executable
    args.dir.mkdir(parents=True, exist_ok=True)
    vae = write_vae(args.dir)
    rows = []
    for name in args.formats:
        fmt = FORMATS[name]
        need = planned_bytes(fmt, args.small) + GIB
        if not wait_for_disk(args.dir, need, args.patience):
            rows.append(Row(name, need / GIB - 1, "–", "–", {"error": f"not written: {need / GIB:.0f} GiB of disk not free"}))
            continue
        start = time.perf_counter()
        try:
            path = write_format(fmt, args.dir, args.small, vae)
        except OSError as exc:  # the disk is shared too: another job may have filled it meanwhile
            for partial in args.dir.glob(f"flux1-*{fmt.name}{fmt.suffix}"):
                partial.unlink()
            rows.append(Row(name, need / GIB - 1, "–", "–", {"error": f"not written: {exc}"}))
            continue
        print(f"{name}: wrote {path} ({path.stat().st_size / GIB:.2f} GiB, {fmt.what}) in "
              f"{time.perf_counter() - start:.0f} s", flush=True)
        try:
            rows += measure_format(fmt, path, vae, args)
        finally:
            if not args.keep:
                path.unlink()
    if not args.keep:
        vae.unlink()
    import torch
    machine = (torch.cuda.get_device_name() if args.device != "cpu" else
               f"{os.cpu_count()} cores, {_total_ram() / GIB:.0f} GiB RAM")
    title = (f"{'1+1-block' if args.small else 'Full-size'} FLUX.1 loads, {args.device}, {machine}, "
             f"warm page cache, median of {args.repeats} load(s), {time.strftime('%Y-%m-%d')}")
    print_table(rows, title, args.device != "cpu")
    if args.json:
        args.json.write_text(json.dumps({"title": title, "rows": [r.__dict__ for r in rows]}, indent=1))


def _total_ram() -> int:
    return int(Path("/proc/meminfo").read_text().split()[1]) * 1024


if __name__ == "__main__":
    main()
