"""Honest memory: a byte-bounded LRU cache, and release() that really lets the weights go."""

import gc
import weakref

import pytest
import torch
from packloader import submodule

models_mod = submodule("pipelines.models")
loading = submodule("pipelines.loading")
sampling = submodule("pipelines.sampling")
redux = submodule("pipelines.redux")
params = submodule("pipelines.params")
ModelCache = submodule("pipelines.cache").ModelCache


def flux_spec(models, slot="dev", **options):
    return models_mod.FluxModelSpec(str(models["files"][slot]), str(models["files"]["vae"]),
                                    options=loading.LoadOptions(device="cpu", **options))


def test_memory_bytes_counts_every_weight(models):
    flux = models_mod.load_flux_model(flux_spec(models), ModelCache())
    sources = models["sources"]
    expected = sum(t.numel() * 4 for m in (sources["dev"], sources["vae"]) for t in m.state_dict().values())
    assert flux.memory_bytes() == expected
    assert set(flux.modules()) == {"transformer", "vae"}
    assert (flux.latent_channels, flux.vae_scale_factor) == (4, 8)
    fp8 = models_mod.load_flux_model(flux_spec(models, weight_storage="fp8"), ModelCache())
    assert fp8.memory_bytes() < expected  # transformer weights stored in one byte each
    encoder = models_mod.load_redux_encoder(models_mod.ReduxEncoderSpec(
        str(models["files"]["redux"]), str(models["files"]["siglip"])), ModelCache())
    assert set(encoder.modules()) == {"vision", "projector"}
    assert encoder.memory_bytes() == sum(t.numel() * t.element_size() for m in (sources["siglip"], sources["redux"])
                                         for t in (*m.parameters(), *m.buffers()))  # non-persistent buffers too


def test_an_fp8_file_keeps_its_fp8_bytes_unless_a_wider_storage_is_asked(models, tmp_path):
    """The file's own precision is the default: an fp8 file costs one byte a Linear weight, as in the file."""
    import tiny_models as tm

    source = tm._contiguous(models["sources"]["dev"].state_dict())
    path = tm.write_safetensors(tmp_path / "flux1-dev-fp8.safetensors",
                                {k: v.to(torch.float8_e4m3fn) if v.ndim == 2 else v for k, v in source.items()})
    spec = lambda **o: models_mod.FluxModelSpec(str(path), str(models["files"]["vae"]),  # noqa: E731
                                                options=loading.LoadOptions(device="cpu", **o))
    vae = sum(t.numel() * 4 for t in models["sources"]["vae"].state_dict().values())
    matrices = sum(v.numel() for v in source.values() if v.ndim == 2)
    others = sum(v.numel() for v in source.values() if v.ndim != 2)
    kept = models_mod.load_flux_model(spec(), ModelCache())
    assert kept.memory_bytes() == matrices + 4 * others + vae
    assert kept.placement.weight_storage == "default" and kept.compute_dtype == torch.float32
    wide = models_mod.load_flux_model(spec(weight_storage="compute"), ModelCache())
    assert wide.memory_bytes() == 4 * (matrices + others) + vae


def test_cache_evicts_least_recently_used_over_its_byte_budget(models):
    one = models_mod.load_flux_model(flux_spec(models), ModelCache()).memory_bytes()
    cache = ModelCache(max_bytes=int(2.5 * one))
    dev = models_mod.load_flux_model(flux_spec(models), cache)
    schnell = models_mod.load_flux_model(flux_spec(models, "schnell"), cache)
    assert models_mod.load_flux_model(flux_spec(models), cache) is dev  # a hit: dev is now the most recent
    bf16 = models_mod.load_flux_model(flux_spec(models, dtype="bf16"), cache)  # half the bytes: still fits
    assert len(cache) == 3 and cache.bytes <= cache.max_bytes
    fp32_again = models_mod.load_flux_model(flux_spec(models, "schnell", weight_storage="fp8"), cache)
    assert schnell.pipe is None  # least recently used: evicted and released
    assert dev.pipe is not None and bf16.pipe is not None and fp32_again.pipe is not None
    assert cache.bytes <= cache.max_bytes and cache.loads == 4


def test_a_model_larger_than_the_budget_still_loads_alone(models):
    cache = ModelCache(max_bytes=1)
    first = models_mod.load_flux_model(flux_spec(models), cache)
    second = models_mod.load_flux_model(flux_spec(models, "schnell"), cache)
    assert len(cache) == 1 and first.pipe is None and second.pipe is not None


def test_cache_key_ignores_run_time_switches_only(models):
    cache = ModelCache()
    base = models_mod.load_flux_model(flux_spec(models, vae_tiling="off"), cache)
    assert models_mod.load_flux_model(flux_spec(models, vae_tiling="on"), cache) is base
    for options in ({"dtype": "bf16"}, {"weight_storage": "fp8"}, {"offload": "none"}):
        assert models_mod.load_flux_model(flux_spec(models, **options), cache) is not base
    assert cache.loads == 4


def test_release_frees_the_img2img_pipeline_too(models):
    """Weights are gone after unload even though the caller still holds the model object it used."""
    cache = ModelCache()
    flux = models_mod.load_flux_model(flux_spec(models), cache)
    encoder = models_mod.load_redux_encoder(models_mod.ReduxEncoderSpec(
        str(models["files"]["redux"]), str(models["files"]["siglip"])), cache)
    cond = redux.encode(encoder, torch.rand(32, 32, 3))
    gen = params.validate_generation("dev", "custom", 256, 256, num_inference_steps=2, seed=1)
    sampling.generate(flux, cond, gen, init_image=torch.rand(64, 64, 3), denoise=0.5)
    alive = [weakref.ref(m) for m in (*flux.modules().values(), *encoder.modules().values())]
    alive.append(weakref.ref(flux.img2img_pipe()))
    cache.unload()
    gc.collect()
    assert [ref() for ref in alive] == [None] * len(alive)
    assert flux.memory_bytes() == 0 and encoder.memory_bytes() == 0
    with pytest.raises(RuntimeError, match="was unloaded"):
        sampling.generate(flux, cond, gen)
