"""One streamed copy, at a size where it shows: a mid-size FLUX transformer (full width 3072, 2 double + 2 single
blocks, 1.03 B parameters: 1.0 GB in fp8, 2.1 GB in bf16) loads in a child process whose private memory is capped
(RLIMIT_DATA) at its baseline plus 1.2 times the bytes the model keeps. A loader that makes a second copy of the
weights (a state dict of the file, a bf16 model before fp8 storage, a private mapping of the whole file) fails.

Formats: an fp8 file kept fp8, a bf16 file stored fp8, GGUF Q8_0, an all-in-one checkpoint (fp8 transformer +
FLUX VAE), ComfyUI's scaled fp8 kept fp8 with its scales; through the engine (CPU, bf16) and through the loader node as ComfyUI calls it (a ComfyUI stand-in on
the CPU: fp32 compute, built on the offload device then placed). Each load prints its figures (pytest -s):
kept bytes, the cap, the peak private RAM (RssAnon) and VmData above the baseline, seconds.

Each file is written tensor by tensor when its tests start and deleted when they end; the loads run in children forked from one process that
imported torch, diffusers and the pack (benchmarks/memory_probe.ForkServer), so each costs its load only.
"""

import importlib.util
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
from packloader import submodule

import tiny_models as tm

ROOT = Path(__file__).resolve().parent.parent
CHILD = ROOT / "tests" / "load_limits_child.py"
FACTOR = 1.2  # the cap: baseline + FACTOR x the bytes kept
GIB = 2**30
DOUBLE, SINGLE = 2, 2
FP8_DTYPES = lambda shapes: {k: "F8_E4M3" if len(s) == 2 else "BF16" for k, s in shapes.items()}  # noqa: E731

loading = submodule("pipelines.loading")
weights = submodule("pipelines.weights")


def _probe():
    spec = importlib.util.spec_from_file_location("memory_probe", ROOT / "benchmarks" / "memory_probe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


probe = _probe()


def _vae_shapes() -> dict:
    """The FLUX autoencoder's LDM names and shapes (ae.safetensors), from diffusers' model on meta."""
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(loading.CONFIG_DIR / "vae"))
    return {k: tuple(v.shape) for k, v in tm.vae_state_ldm(vae).items()}


KINDS = ["fp8", "bf16", "gguf", "checkpoint", "scaled"]
STORAGE = {"fp8": "default", "bf16": "fp8", "gguf": "default", "checkpoint": "default",
           "scaled": "default"}  # what each is loaded as


def _write(kind: str, root: Path) -> Path:
    shapes = tm.bfl_shapes(True, in_channels=64, joint=4096, pooled=768, double=DOUBLE, single=SINGLE)
    folder = root / "diffusion_models"
    if kind == "gguf":
        return tm.write_gguf_streamed(root / "unet" / "flux-mid-Q8_0.gguf", shapes, "Q8_0")
    if kind == "bf16":
        return tm.write_safetensors_streamed(folder / "flux-mid-bf16.safetensors", shapes,
                                             dict.fromkeys(shapes, "BF16"), tm.RandomBytes())
    dtypes = FP8_DTYPES(shapes)
    if kind == "scaled":  # ComfyUI's scaled fp8: one float32 scale_weight per fp8 matrix, and the marker
        for key in [k for k in shapes if dtypes[k] == "F8_E4M3"]:
            shapes[key[:-len("weight")] + "scale_weight"], dtypes[key[:-len("weight")] + "scale_weight"] = (), "F32"
        shapes["scaled_fp8"], dtypes["scaled_fp8"] = (0,), "F8_E4M3"
    if kind == "checkpoint":
        vae = _vae_shapes()
        shapes = {f"model.diffusion_model.{k}": v for k, v in shapes.items()} | {f"vae.{k}": v for k, v in vae.items()}
        dtypes = {f"model.diffusion_model.{k}": v for k, v in dtypes.items()} | {f"vae.{k}": "BF16" for k in vae}
    return tm.write_safetensors_streamed(folder / f"flux-mid-{kind}.safetensors", shapes, dtypes, tm.RandomBytes())


@pytest.fixture(scope="module", params=KINDS)
def mid_file(request, tmp_path_factory, models):
    """One mid-size file at a time (1.0-2.1 GB; 6.4 GB for all five): the module-scoped parameter makes pytest
    run every test of one kind before it writes the next, and the file is deleted, passed or failed, before then,
    so the suite fits a CI disk with little room to spare."""
    kind = request.param
    root = tmp_path_factory.mktemp(f"midsize-{kind}") / "models"
    (root / "vae").mkdir(parents=True)
    os.symlink(models["files"]["vae"], root / "vae" / "ae.safetensors")  # the tiny FLUX-shaped VAE
    need, free = (2.3 if kind == "bf16" else 1.3) * GIB, shutil.disk_usage(root).free
    if free < need:
        pytest.fail(f"the mid-size {kind} file needs {need / GIB:.1f} GiB free in {root}; {free / GIB:.1f} GiB is")
    try:
        path = _write(kind, root)
        yield dict(kind=kind, storage=STORAGE[kind], root=root, path=path, vae=root / "vae" / "ae.safetensors")
    finally:
        for leftover in [*root.glob("diffusion_models/*"), *root.glob("unet/*")]:
            leftover.unlink()


@pytest.fixture(scope="module")
def server():
    with probe.ForkServer([CHILD]) as forks:
        yield forks


def kept_bytes(path: Path, storage: str, compute: torch.dtype) -> int:
    """What the transformer and VAE of `path` should keep, worked out from the header: 2-D weights (the Linear
    layers) in fp8 when the file has them in fp8 or fp8 storage is asked for, GGUF blocks as they are, the rest
    in the compute dtype (the VAE in vae_dtype)."""
    index = weights.read_index(path, "flux_transformer")
    total = 0
    for key, shape in index.shapes.items():
        if key.endswith(weights.SCALE_SUFFIXES):
            continue  # a scale stays beside its weight as one number, not a tensor
        numel, matrix = math.prod(shape), len(shape) == 2 and key.endswith(".weight")
        if index.is_gguf and index.dtypes[key] not in ("F32", "F16"):
            total += index.nbytes[key]
        elif matrix and (storage == "fp8" or index.dtypes[key].startswith("F8_")):
            total += numel
        else:
            total += numel * compute.itemsize
    return total


def vae_bytes(path: Path, compute: torch.dtype) -> int:
    index = weights.read_index(path, "vae")
    return sum(math.prod(s) for s in index.shapes.values()) * loading.vae_dtype(compute).itemsize


def check(result: dict, expected_kept: int, what: str) -> None:
    figures = {k: v for k, v in result.items() if k != "error"}
    print(f"\n{what}: " + ", ".join(f"{k}={v / GIB:.3f} GiB" if isinstance(v, int) and v > 2**20 else f"{k}={v}"
                                   for k, v in figures.items()))
    assert "error" not in result, f"{what} failed under a cap of {FACTOR} x the kept bytes:\n{result['error']}"
    assert result["kept"] == expected_kept, result
    assert result["peak_anon_above_baseline"] <= 1.1 * result["kept"] + GIB  # issue 16's CPU target


def test_engine_loads_one_copy_under_a_private_memory_cap(server, mid_file):
    path, kind, storage = mid_file["path"], mid_file["kind"], mid_file["storage"]
    vae = path if kind == "checkpoint" else mid_file["vae"]
    expected = kept_bytes(path, storage, torch.bfloat16) + vae_bytes(vae, torch.bfloat16)
    result = server.run(CHILD, "engine_load", transformer=str(path), vae=str(vae), storage=storage,
                        keep_bytes=expected, factor=FACTOR)
    check(result, expected, f"engine {kind} -> {storage}")
    if kind != "gguf":
        assert "torch.float8_e4m3fn" in result["transformer_dtypes"]


def test_loader_node_in_comfyui_loads_one_copy_under_a_private_memory_cap(server, mid_file):
    path, kind, storage = mid_file["path"], mid_file["kind"], mid_file["storage"]
    weight_dtype = "fp8" if storage == "fp8" else "default"  # the node's widget value for that storage
    expected = kept_bytes(path, storage, torch.float32) + vae_bytes(mid_file["vae"], torch.float32)  # CPU: fp32
    result = server.run(CHILD, "node_load", models_root=str(mid_file["root"]), transformer=path.name,
                        vae="ae.safetensors", weight_dtype=weight_dtype, keep_bytes=expected, factor=FACTOR)
    check(result, expected, f"node {kind} weight_dtype={weight_dtype}")


DEVICE_CAP = GIB // 2  # a quarter of the bf16 file: only a few tensors may be in RAM on their way


def test_weights_bound_for_another_device_pass_through_ram_a_tensor_at_a_time(server, mid_file):
    """Issue 16's GPU target (at most 2 GiB of private RAM above the baseline, whatever the file's size), checked
    without a GPU: loaded onto the meta device, which stores nothing, every byte of private RAM the load takes is
    in flight. On a GPU box the same child function runs with device="cuda"."""
    path, kind, storage = mid_file["path"], mid_file["kind"], mid_file["storage"]
    result = server.run(CHILD, "device_load", transformer=str(path), storage=storage, device="meta",
                        cap_bytes=DEVICE_CAP)
    figures = {k: v for k, v in result.items() if k != "error"}
    print(f"\n{kind} -> {storage} on meta: {figures}")
    assert "error" not in result, f"{kind} took more than {DEVICE_CAP / GIB} GiB of RAM on its way:\n{result['error']}"
    assert result["devices"] == ["meta"] and result["peak_anon_above_baseline"] < DEVICE_CAP
