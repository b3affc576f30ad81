"""The measured side of tests/test_load_limits.py: one load in a child forked from benchmarks/memory_probe's
ForkServer (which imported this module, so the children start with torch, diffusers and the pack imported).

Each function warms up, takes the baseline, caps private memory (RLIMIT_DATA) at the baseline plus `factor`
times the bytes the model will keep, loads, and reports what it saw: the kept bytes, the cap above the baseline,
the peak private RAM (RssAnon) and VmData above the baseline, and the seconds the load took.
"""

from __future__ import annotations

import gc
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [p for p in (str(ROOT / "tests"),) if p not in sys.path]

import gguf  # noqa: E402,F401  (the load path's lazy imports, done once in the server)
import torch  # noqa: E402
from diffusers import AutoencoderKL, FluxPipeline, FluxTransformer2DModel  # noqa: E402,F401
from diffusers.loaders import single_file_utils  # noqa: E402,F401
from diffusers.quantizers import DiffusersAutoQuantizer  # noqa: E402,F401
from diffusers.quantizers.gguf import utils as gguf_utils  # noqa: E402,F401
from packloader import submodule  # noqa: E402



def memory_probe():
    """benchmarks/memory_probe.py, imported by path (benchmarks/ is not a package)."""
    if "memory_probe" not in sys.modules:
        import importlib.util

        spec = importlib.util.spec_from_file_location("memory_probe", ROOT / "benchmarks" / "memory_probe.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["memory_probe"] = module
        spec.loader.exec_module(module)
    return sys.modules["memory_probe"]


probe = memory_probe()
loading = submodule("pipelines.loading")
models_mod = submodule("pipelines.models")
params = submodule("pipelines.params")
ModelCache = submodule("pipelines.cache").ModelCache
local = submodule("nodes.local")
loaders = submodule("nodes.local_loaders")
bridge = submodule("nodes.comfy_bridge")
submodule("nodes.comfy_memory")


def _warm_up() -> None:
    """First uses that allocate for good (torch's thread pool, allocator arenas), before the baseline."""
    a = torch.randn(256, 256)
    (a @ a).to(torch.bfloat16).to(torch.float8_e4m3fn).float().sum()
    gc.collect()


def measure(load, keep_bytes: int, factor: float) -> dict:
    sampler = probe.PeakSampler()
    _warm_up()
    base = sampler.reset()
    limit = probe.cap_private_memory(factor * keep_bytes)
    start = time.perf_counter()
    model = load()
    seconds = time.perf_counter() - start
    peak = sampler.stop()
    return {"kept": model.memory_bytes(), "cap_above_baseline": limit - base["VmData"],
            "peak_anon_above_baseline": peak["RssAnon"] - base["RssAnon"],
            "peak_data_above_baseline": peak["VmData"] - base["VmData"],
            "baseline_anon": base["RssAnon"], "vm_hwm": peak["VmHWM"], "seconds": seconds,
            "transformer_dtypes": sorted({str(p.dtype) for p in model.pipe.transformer.parameters()})}


def engine_load(transformer: str, vae: str, storage: str, keep_bytes: int, factor: float = 1.2) -> dict:
    """The engine as the CLI and server call it, on the CPU in bf16."""
    options = loading.LoadOptions(device="cpu", dtype="bf16", weight_storage=storage, offload="none")
    spec = models_mod.FluxModelSpec(transformer, vae, options=options)
    return measure(lambda: models_mod.load_flux_model(spec, ModelCache()), keep_bytes, factor)


def device_load(transformer: str, storage: str, device: str, cap_bytes: int) -> dict:
    """The transformer loaded straight onto `device` (cuda on a GPU box; meta in CI, which holds nothing, so what
    RAM the load takes is all transient) with private RAM capped at the baseline plus `cap_bytes`."""
    sampler = probe.PeakSampler()
    _warm_up()
    base = sampler.reset()
    limit = probe.cap_private_memory(cap_bytes)
    start = time.perf_counter()
    model, _ = loading.load_transformer(transformer, torch.bfloat16, storage, device)
    seconds = time.perf_counter() - start
    peak = sampler.stop()
    return {"on_device": sum(t.numel() * t.element_size() for t in model.parameters()),
            "cap_above_baseline": limit - base["VmData"],
            "peak_anon_above_baseline": peak["RssAnon"] - base["RssAnon"],
            "peak_data_above_baseline": peak["VmData"] - base["VmData"], "seconds": seconds,
            "devices": sorted({str(p.device) for p in model.parameters()}),
            "transformer_dtypes": sorted({str(p.dtype) for p in model.parameters()})}


def node_load(models_root: str, transformer: str, vae: str, weight_dtype: str, keep_bytes: int,
              factor: float = 1.2) -> dict:
    """The loader node, then the model as Redux Generate gets it, inside a ComfyUI stand-in on the CPU (its
    folder_paths and memory manager, as ComfyUI calls the pack: build on the offload device, then place)."""
    install_comfyui_stand_in(Path(models_root))
    spec = loaders.FluxReduxLoadModel().load(transformer=transformer, vae=vae, variant="auto",
                                             weight_dtype=weight_dtype, offload="auto", vae_tiling="auto",
                                             device="auto")[0]
    gen = params.validate_generation("dev", "custom", 256, 256, num_inference_steps=1, seed=1)
    return measure(lambda: local.load_flux(spec, gen), keep_bytes, factor)


def install_comfyui_stand_in(root: Path) -> None:
    """The members of comfy.model_management, comfy.model_patcher and folder_paths the pack calls, for ComfyUI
    run with --cpu (ComfyUI itself is not installed in CI)."""
    cpu = torch.device("cpu")

    class ModelPatcher:
        def __init__(self, model, load_device, offload_device, size=0):
            self.model, self.load_device, self.size = model, load_device, size

        def model_size(self):
            return self.size

        def loaded_size(self):
            return self.size

    def load_models_gpu(models, memory_required=0, force_full_load=False):
        for patcher in models:
            patcher.model.to(patcher.load_device)

    mm = types.SimpleNamespace(get_torch_device=lambda: cpu, unet_offload_device=lambda: cpu,
                               load_models_gpu=load_models_gpu, free_memory=lambda memory, device: None,
                               get_total_memory=lambda device=None: 0, minimum_inference_memory=lambda: 0,
                               throw_exception_if_processing_interrupted=lambda: None)
    dirs = {name: [str(root / sub) for sub in subs] for name, subs in bridge.FALLBACK_FOLDERS.items()}
    fp = types.SimpleNamespace(
        get_folder_paths=lambda name: dirs[name],
        get_filename_list=lambda name: sorted(p.name for d in dirs[name] for p in Path(d).glob("*")),
        get_full_path=lambda name, f: next((f"{d}/{f}" for d in dirs[name] if Path(d, f).is_file()), None))
    comfy = types.ModuleType("comfy")
    comfy.model_management, comfy.model_patcher = mm, types.SimpleNamespace(ModelPatcher=ModelPatcher)
    comfy.utils = types.SimpleNamespace(ProgressBar=None)
    sys.modules.update({"comfy": comfy, "comfy.model_management": mm, "comfy.model_patcher": comfy.model_patcher,
                        "comfy.utils": comfy.utils, "folder_paths": fp})
