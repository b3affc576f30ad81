"""Model cache (hit, new options, unload) and the offline guarantee."""

import os
import socket

import pytest
import torch
from packloader import submodule

import conftest

models_mod = submodule("pipelines.models")
loading = submodule("pipelines.loading")
sampling = submodule("pipelines.sampling")
redux = submodule("pipelines.redux")
params = submodule("pipelines.params")


def spec(models, **options):
    return models_mod.FluxModelSpec(str(models["files"]["dev"]), str(models["files"]["vae"]),
                                    options=loading.LoadOptions(**options))


def test_second_load_is_a_cache_hit(models, fresh_cache):
    first = models_mod.load_flux_model(spec(models), fresh_cache)
    second = models_mod.load_flux_model(spec(models), fresh_cache)
    assert first is second and fresh_cache.loads == 1


def test_other_options_or_replaced_file_load_again(models, fresh_cache, tmp_path):
    models_mod.load_flux_model(spec(models), fresh_cache)
    models_mod.load_flux_model(spec(models, dtype="bf16"), fresh_cache)
    assert fresh_cache.loads == 2 and len(fresh_cache) == 2
    copy = tmp_path / "vae.safetensors"
    copy.write_bytes(models["files"]["vae"].read_bytes())
    replaced = models_mod.FluxModelSpec(str(models["files"]["dev"]), str(copy))
    models_mod.load_flux_model(replaced, fresh_cache)
    os.utime(copy, ns=(1, 1))  # a changed file (new mtime) is a new key
    models_mod.load_flux_model(replaced, fresh_cache)
    assert fresh_cache.loads == 4


def test_unload_releases_and_next_load_rebuilds(models, fresh_cache):
    model = models_mod.load_flux_model(spec(models), fresh_cache)
    assert fresh_cache.unload() == 1 and len(fresh_cache) == 0
    assert model.pipe is None  # modules dropped even if a caller still holds the object
    with pytest.raises(RuntimeError, match="was unloaded; load it again"):
        sampling.generate(model, None, params.validate_generation("dev", "square"))
    assert models_mod.load_flux_model(spec(models), fresh_cache) is not model and fresh_cache.loads == 2
    assert fresh_cache.unload(("no", "such", "key")) == 0


def test_unload_frees_the_memory(models, fresh_cache):
    import gc
    import weakref
    model = models_mod.load_flux_model(spec(models), fresh_cache)
    transformer = weakref.ref(model.pipe.transformer)
    del model
    fresh_cache.unload()
    gc.collect()
    assert transformer() is None


def test_hub_is_off_and_guard_blocks_outside_connections():
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    with pytest.raises(OSError, match="network guard"):
        socket.create_connection(("203.0.113.1", 443), timeout=1)
    with pytest.raises(OSError, match="network guard"):
        socket.getaddrinfo("huggingface.co", 443)


def test_a_hub_lookup_fails_fast_instead_of_downloading(tmp_path, models):
    """What the engine avoids: diffusers guessing a hub config for a single file. Offline it must fail,
    not connect; the engine's own path (local config) succeeds on the same file."""
    from diffusers import AutoencoderKL
    before = len(conftest.BLOCKED_CONNECTIONS)
    with pytest.raises(Exception):
        AutoencoderKL.from_single_file(str(models["files"]["vae"]))
    assert len(conftest.BLOCKED_CONNECTIONS) == before  # offline mode: not even a connection attempt
    assert loading.load_vae(models["files"]["vae"], torch.float32) is not None


def test_whole_flow_makes_no_connection(models, fresh_cache):
    before = len(conftest.BLOCKED_CONNECTIONS)
    enc = models_mod.load_redux_encoder(models_mod.ReduxEncoderSpec(
        str(models["folders"]["redux_repo"]), str(models["files"]["siglip"])), fresh_cache)
    flux = models_mod.load_flux_model(models_mod.FluxModelSpec(str(models["folders"]["flux_dev"]),
                                                               str(models["files"]["vae"])), fresh_cache)
    result = sampling.generate(flux, redux.encode(enc, torch.rand(40, 40, 3)),
                               params.validate_generation("dev", "custom", 256, 256, num_inference_steps=1, seed=1))
    assert result.images.shape == (1, 256, 256, 3)
    assert conftest.BLOCKED_CONNECTIONS[before:] == []
