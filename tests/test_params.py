"""Parameter specs and validation: every range, default and error message."""

import pytest
from packloader import submodule

params = submodule("pipelines.params")
validate = params.validate_generation


def test_presets_are_fals_exact_sizes():
    assert params.SIZE_PRESETS == {
        "square_hd": (1024, 1024), "square": (512, 512), "portrait_4_3": (768, 1024),
        "portrait_16_9": (576, 1024), "landscape_4_3": (1024, 768), "landscape_16_9": (1024, 576)}
    for name, size in params.SIZE_PRESETS.items():
        assert params.resolve_size(name) == size
        assert all(side % 16 == 0 for side in size)


def test_variant_defaults():
    dev, schnell = validate("dev"), validate("schnell")
    assert (dev.num_inference_steps, dev.guidance_scale, dev.num_images, dev.seed) == (28, 3.5, 1, None)
    assert (schnell.num_inference_steps, schnell.guidance_scale) == (4, None)
    assert (dev.width, dev.height) == (1024, 1024)


def test_custom_size_accepted_and_never_rounded():
    assert params.resolve_size("custom", 1280, 720) == (1280, 720)
    with pytest.raises(params.ParameterError, match=r"width=1000 .*multiple of 16 \(nearest: 992 or 1008\)"):
        params.resolve_size("custom", 1000, 720)
    with pytest.raises(params.ParameterError, match=r"height=721"):
        params.resolve_size("custom", 1024, 721)


@pytest.mark.parametrize("kwargs, name, fragment", [
    (dict(variant="dev", num_inference_steps=-1), "num_inference_steps", "1–50"),
    (dict(variant="dev", num_inference_steps=51), "num_inference_steps", "1–50"),
    (dict(variant="schnell", num_inference_steps=51), "num_inference_steps", "1–50 for schnell"),
    (dict(variant="dev", num_inference_steps=2.5), "num_inference_steps", "whole number"),
    (dict(variant="dev", guidance_scale=0.5), "guidance_scale", "1.0–20.0"),
    (dict(variant="dev", guidance_scale=20.5), "guidance_scale", "1.0–20.0"),
    (dict(variant="schnell", guidance_scale=3.5), "guidance_scale", "takes no guidance"),
    (dict(num_images=0), "num_images", "1–4"),
    (dict(num_images=5), "num_images", "1–4"),
    (dict(seed=-1), "seed", "0–18446744073709551615"),
    (dict(seed=2**64), "seed", "0–18446744073709551615"),
    (dict(seed=True), "seed", "integer"),
    (dict(variant="pro"), "variant", "dev, schnell"),
    (dict(image_size="huge"), "image_size", "square_hd"),
    (dict(image_size="custom"), "image_size", "both width and height"),
    (dict(image_size="custom", width=128, height=512), "width", "256–4096"),
    (dict(image_size="custom", width=512, height=8192), "height", "256–4096"),
    (dict(image_size="custom", width="512", height=512), "width", "integer"),
])
def test_every_bad_value_names_parameter_and_rule(kwargs, name, fragment):
    with pytest.raises(params.ParameterError) as info:
        validate(**kwargs)
    assert info.value.name == name
    assert str(info.value).startswith(f"{name}=")
    assert fragment in str(info.value)


def test_bounds_are_inclusive():
    assert validate("dev", num_inference_steps=1, guidance_scale=1, num_images=4, seed=0).num_inference_steps == 1
    assert validate("dev", num_inference_steps=50, guidance_scale=20, seed=2**64 - 1).guidance_scale == 20.0
    assert validate("schnell", num_inference_steps=12).num_inference_steps == 12


def test_choices_are_checked():
    with pytest.raises(params.ParameterError, match="crop='stretch'.*center, squash"):
        params.check_choice("crop", "stretch", params.CROP_MODES)


def test_steps_0_is_the_variants_default_and_providers_keep_their_limits():
    assert params.validate_generation("dev", num_inference_steps=0).num_inference_steps == 28
    assert params.validate_generation("schnell", num_inference_steps=0).num_inference_steps == 4
    assert params.validate_generation("schnell", num_inference_steps=28).num_inference_steps == 28  # no local cap
    assert (params.STEPS_LIMITS.minimum, params.STEPS_LIMITS.default) == (0, 0)
    assert params.provider_steps("fal", "schnell").maximum == 12 and params.provider_steps("fal", "dev").maximum == 50
    with pytest.raises(params.ParameterError, match="num_inference_steps=13 .*1–12 for fal's FLUX.1 schnell"):
        params.provider_steps("fal", "schnell").validate(13, "fal's FLUX.1 schnell endpoint")
