"""End-to-end generation with tiny models: sizes, batches, determinism, seeds, progress, abort, memory modes."""

import numpy as np
import pytest
import torch
from PIL import Image
from packloader import submodule

params = submodule("pipelines.params")
models_mod = submodule("pipelines.models")
sampling = submodule("pipelines.sampling")
redux = submodule("pipelines.redux")
loading = submodule("pipelines.loading")
ModelCache = submodule("pipelines.cache").ModelCache


@pytest.fixture(scope="module")
def cache():
    return ModelCache()


def flux(models, variant="dev", cache=None, **options):
    spec = models_mod.FluxModelSpec(str(models["files"][variant]), str(models["files"]["vae"]),
                                    options=loading.LoadOptions(**options))
    return models_mod.load_flux_model(spec, cache if cache is not None else ModelCache())


@pytest.fixture(scope="module")
def cond(models, cache):
    spec = models_mod.ReduxEncoderSpec(str(models["files"]["redux"]), str(models["files"]["siglip"]))
    encoder = models_mod.load_redux_encoder(spec, cache)
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    return redux.encode(encoder, photo)


def run(model, cond, variant="dev", size=(256, 256), **kwargs):
    kwargs.setdefault("num_inference_steps", 2)
    kwargs.setdefault("seed", 7)
    gen = params.validate_generation(variant, "custom", size[0], size[1], **kwargs)
    return sampling.generate(model, cond, gen)


# every preset's aspect ratio, scaled down by 4 (presets themselves are checked exactly in test_params)
SCALED_PRESETS = {name: (w // 4, h // 4) for name, (w, h) in params.SIZE_PRESETS.items()
                  if (w // 4) % 16 == 0 and (h // 4) % 16 == 0 and min(w, h) // 4 >= 256}
SCALED_PRESETS.update({"portrait_16_9/2": (288, 512), "landscape_16_9/2": (512, 288),
                       "portrait_4_3/3": (256, 336), "landscape_4_3/3": (336, 256)})


@pytest.mark.parametrize("name", sorted(SCALED_PRESETS))
def test_sizes(models, cache, cond, name):
    w, h = SCALED_PRESETS[name]
    result = run(flux(models, cache=cache), cond, size=(w, h))
    assert result.images.shape == (1, h, w, 3)
    assert result.images.dtype == torch.float32 and 0 <= result.images.min() and result.images.max() <= 1
    assert (result.metadata["width"], result.metadata["height"]) == (w, h)


def test_square_preset_full_size(models, cache, cond):
    gen = params.validate_generation("dev", "square", num_inference_steps=1, seed=1)
    assert sampling.generate(flux(models, cache=cache), cond, gen).images.shape == (1, 512, 512, 3)


@pytest.mark.parametrize("count", [1, 2, 4])
def test_num_images_in_one_batch(models, cache, cond, count):
    calls = []
    result = sampling.generate(flux(models, cache=cache), cond,
                               params.validate_generation("dev", "custom", 256, 256, num_inference_steps=2,
                                                          seed=3, num_images=count),
                               on_step=lambda step, total, latents: calls.append(latents.shape[0]))
    assert result.images.shape[0] == count and len(result.pil_images()) == count
    assert calls == [count, count]  # one batched denoising loop, not one per image
    if count > 1:
        assert not torch.equal(result.images[0], result.images[1])


def test_same_seed_same_images_other_seed_differs(models, cache, cond):
    model = flux(models, cache=cache)
    a, b = run(model, cond, seed=123, num_images=2), run(model, cond, seed=123, num_images=2)
    assert torch.equal(a.images, b.images)
    assert not torch.allclose(a.images, run(model, cond, seed=124, num_images=2).images)


def test_random_seed_is_reported_and_reproduces(models, cache, cond):
    model = flux(models, cache=cache)
    first = run(model, cond, seed=None)
    assert 0 <= first.seed < 2**53 and first.metadata["seed"] == first.seed
    assert torch.equal(run(model, cond, seed=first.seed).images, first.images)


def test_schnell(models, cache, cond):
    model = flux(models, "schnell", cache=cache)
    assert model.variant == "schnell"
    result = run(model, cond, "schnell", num_inference_steps=4)
    assert result.metadata["guidance_scale"] is None and result.images.shape == (1, 256, 256, 3)


def test_guidance_changes_dev_output(models, cache, cond):
    model = flux(models, cache=cache)
    assert not torch.allclose(run(model, cond, guidance_scale=1.0).images, run(model, cond, guidance_scale=9.0).images)


def test_params_for_other_variant_are_refused(models, cache, cond):
    with pytest.raises(params.ParameterError, match="the loaded model is FLUX.1 schnell"):
        run(flux(models, "schnell", cache=cache), cond, "dev")


def test_step_callback_and_abort(models, cache, cond):
    model = flux(models, cache=cache)
    seen = []
    run(model, cond, num_inference_steps=3, seed=1)  # warm
    with pytest.raises(sampling.GenerationAborted, match="after step 2 of 5"):
        sampling.generate(model, cond, params.validate_generation("dev", "custom", 256, 256,
                                                                  num_inference_steps=5, seed=1),
                          on_step=lambda step, total, latents: seen.append((step, total)),
                          should_abort=lambda: len(seen) >= 2)
    assert seen == [(1, 5), (2, 5)]


def test_exception_from_step_callback_propagates(models, cache, cond):
    class Interrupted(Exception):
        pass

    def interrupt(step, total, latents):
        raise Interrupted

    with pytest.raises(Interrupted):
        sampling.generate(flux(models, cache=cache), cond,
                          params.validate_generation("dev", "custom", 256, 256, num_inference_steps=3, seed=1),
                          on_step=interrupt)


def test_fp8_weight_storage_stays_close(models, cond):
    plain = run(flux(models), cond, seed=5).images
    fp8_model = flux(models, weight_storage="fp8")
    assert fp8_model.pipe.transformer.transformer_blocks[0].ff.net[2].weight.dtype == torch.float8_e4m3fn
    fp8 = run(fp8_model, cond, seed=5).images
    assert (fp8 - plain).abs().mean() < 0.05  # float8 weights: small drift, same picture


def test_bf16_compute(models, cond):
    model = flux(models, dtype="bf16")
    assert model.pipe.transformer.dtype == torch.bfloat16
    assert run(model, cond).images.dtype == torch.float32


def test_vae_tiling_switches_on(models, cond):
    model = flux(models, vae_tiling="on")
    run(model, cond)
    assert model.pipe.vae.use_tiling
    model = flux(models, vae_tiling="auto")
    run(model, cond)
    assert not model.pipe.vae.use_tiling  # auto: only above 2048x2048


def test_vae_tiling_is_a_run_time_switch_not_a_second_model(models, cond):
    cache = ModelCache()
    tiled, plain = flux(models, cache=cache, vae_tiling="on"), flux(models, cache=cache, vae_tiling="off")
    assert tiled is plain and cache.loads == 1  # tiling changes no weights: one cached model
    gen = params.validate_generation("dev", "custom", 256, 256, num_inference_steps=1, seed=2)
    result = sampling.generate(plain, cond, gen, vae_tiling="on")
    assert plain.pipe.vae.use_tiling and result.metadata["vae_tiling"] == "on"
    sampling.generate(plain, cond, gen, vae_tiling="off")
    assert not plain.pipe.vae.use_tiling
    with pytest.raises(params.ParameterError, match="vae_tiling='sometimes'"):
        sampling.generate(plain, cond, gen, vae_tiling="sometimes")


@pytest.mark.parametrize("mode", ["model", "group", "sequential"])
def test_offload_is_ignored_on_cpu_with_a_warning(models, cond, mode, caplog):
    base = run(flux(models), cond).images
    with caplog.at_level("WARNING"):
        model = flux(models, offload=mode, device="cpu")
    assert f"offload={mode} ignored" in caplog.text
    torch.testing.assert_close(run(model, cond).images, base)
