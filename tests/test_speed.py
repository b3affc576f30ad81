"""Speed modes on tiny models on the CPU: each gives the plain path's image within a stated tolerance (or,
for the lossy cache, exactly the plain image at threshold 0), and GPU-only modes are skipped with a reason."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from packloader import submodule

from test_lora import peft_lora

params = submodule("pipelines.params")
models_mod = submodule("pipelines.models")
loading = submodule("pipelines.loading")
sampling = submodule("pipelines.sampling")
redux = submodule("pipelines.redux")
speed = submodule("pipelines.speed")
lora = submodule("pipelines.lora")
ModelCache = submodule("pipelines.cache").ModelCache

COMPILE_ATOL = 1e-4  # inductor reorders float32 sums: measured max difference 1.4e-6 on 0..1 pixels
FUSED_ATOL = 1e-5  # one matmul instead of three: float32 rounding only


@pytest.fixture(scope="module")
def cond(models):
    spec = models_mod.ReduxEncoderSpec(str(models["files"]["redux"]), str(models["files"]["siglip"]))
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    return redux.encode(models_mod.load_redux_encoder(spec, ModelCache()), photo)


def flux(models, cache, speed_modes="none", cache_threshold=0.0, loras=()):
    spec = models_mod.FluxModelSpec(str(models["files"]["dev"]), str(models["files"]["vae"]),
                                    options=loading.LoadOptions(speed=speed_modes), cache_threshold=cache_threshold,
                                    loras=tuple(loras))
    return models_mod.load_flux_model(spec, cache)


def run(model, cond, size=256, steps=2):
    gen = params.validate_generation("dev", "custom", size, size, num_inference_steps=steps, seed=7)
    return sampling.generate(model, cond, gen)


@pytest.fixture(scope="module")
def cache():
    return ModelCache()


@pytest.fixture(scope="module")
def plain(models, cache, cond):
    return run(flux(models, cache), cond, steps=4).images


def test_speed_setting_is_validated_and_canonical():
    assert params.parse_speed("none") == () and params.parse_speed("fp8+compile") == ("compile", "fp8")
    assert loading.LoadOptions(speed="fp8+compile") == loading.LoadOptions(speed="compile+fp8")
    assert loading.LoadOptions(speed="").speed == "none"
    for bad, why in (("turbo", "unknown mode"), ("flash+sage", "at most one attention"), (3, "expected")):
        with pytest.raises(params.ParameterError, match=why) as info:
            loading.LoadOptions(speed=bad)
        assert str(info.value).startswith("speed=")
    for preset in params.SPEED_PRESETS:
        params.parse_speed(preset)
    with pytest.raises(params.ParameterError, match="cache_threshold"):
        spec = models_mod.FluxModelSpec("missing.safetensors", "missing-vae.safetensors", cache_threshold=1.5)
        models_mod.load_flux_model(spec, ModelCache())  # rejected before any file is touched


def test_gpu_only_modes_are_skipped_on_cpu_with_a_reason(models, cache, cond, plain):
    model = flux(models, cache, "fp8+best-attention")
    result = run(model, cond, steps=4)
    skipped = result.metadata["speed_skipped"]
    assert "compute capability >= 8.9" in skipped["fp8"] and "cpu" in skipped["fp8"]
    assert "needs a CUDA GPU" in skipped["best-attention"] and "native SDPA kept" in skipped["best-attention"]
    assert result.metadata["speed"] == "none"
    assert torch.equal(result.images, plain), "skipped modes must leave the plain path untouched"
    for mode in ("flash", "fa3", "sage"):
        chosen, reason = speed.pick_attention(mode, torch.device("cpu"))
        assert chosen is None and "CUDA" in reason


def test_cache_threshold_zero_is_identical_and_cache_is_applied_without_reloading(models, cache, cond, plain):
    loads = cache.loads
    model = flux(models, cache, cache_threshold=0.0)
    assert torch.equal(run(model, cond, steps=4).images, plain)
    assert not model.pipe.transformer.is_cache_enabled, "threshold 0 must not register any hook"
    lossy = run(flux(models, cache, cache_threshold=1.0), cond, steps=4)  # skips nearly every block
    assert model.pipe.transformer.is_cache_enabled and lossy.metadata["cache_threshold"] == 1.0
    assert not torch.equal(lossy.images, plain), "a high threshold must skip blocks (lossy)"
    again = run(flux(models, cache, cache_threshold=1.0), cond, steps=4)
    assert torch.equal(again.images, lossy.images), "the cache state is reset between calls"
    back = flux(models, cache, cache_threshold=0.0)
    assert torch.equal(run(back, cond, steps=4).images, plain)
    assert not back.pipe.transformer.is_cache_enabled
    assert cache.loads == loads, "changing the cache threshold must not reload the model"


def test_fused_qkv_gives_the_same_image(models, cond, plain):
    model = flux(models, ModelCache())
    speed.fuse_qkv(model.pipe.transformer)
    fused = run(model, cond, steps=4).images
    assert model.pipe.transformer.transformer_blocks[0].attn.fused_projections
    assert (fused - plain).abs().max() < FUSED_ATOL


@pytest.mark.slow
def test_compile_matches_eager_and_hot_swaps_loras_without_recompiling(models, cond, tmp_path, caplog):
    """One compiled model (compiling costs ~15-40 s on 2 cores): warm-up reported, the eager image within
    COMPILE_ATOL, no new graphs for a new seed, a LoRA swap or strength change, one log line for a new size."""
    from torch._dynamo.utils import counters

    files = {}
    for name, seed in (("a", 0), ("b", 5)):  # same layers, different weights: hot-swappable
        files[name] = tmp_path / f"{name}.safetensors"
        save_file(peft_lora(seed), str(files[name]))
    eager_cache = ModelCache()

    def eager(*loras):
        return run(flux(models, eager_cache, loras=loras), cond).images

    compiled_cache = ModelCache()

    def compiled(*loras, size=256):
        return run(flux(models, compiled_cache, "compile", loras=loras), cond, size=size)

    first = compiled()
    assert first.metadata["speed"] == "compile" and first.metadata["compile_warmup_s"] > 0
    assert (first.images - eager()).abs().max() < COMPILE_ATOL
    a1, a_half, b1 = (lora.LoraSpec(str(files["a"]), 1.0), lora.LoraSpec(str(files["a"]), 0.5),
                      lora.LoraSpec(str(files["b"]), 1.0))
    with_a = compiled(a1).images  # first LoRA: loads into the hot-swap slot (compiles once more)
    assert (with_a - eager(a1)).abs().max() < COMPILE_ATOL and (with_a - first.images).abs().max() > 1e-3
    graphs = counters["stats"]["unique_graphs"]
    for loras in ((a_half,), (b1,), ()):
        images = compiled(*loras).images
        assert (images - eager(*loras)).abs().max() < COMPILE_ATOL, loras
    assert counters["stats"]["unique_graphs"] == graphs, "hot-swapping LoRAs or strengths must not recompile"
    assert compiled_cache.loads == 1
    with caplog.at_level(logging.INFO, logger=speed.log.name):
        compiled(size=320)
    assert "new size 320x320" in caplog.text
