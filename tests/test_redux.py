"""Redux conditioning: same maths as diffusers' FluxPriorReduxPipeline, every image format, crops, weights."""

import numpy as np
import pytest
import torch
from PIL import Image
from packloader import submodule

import tiny_models as tm

redux = submodule("pipelines.redux")
models_mod = submodule("pipelines.models")


@pytest.fixture(scope="module")
def encoder(models):
    spec = models_mod.ReduxEncoderSpec(str(models["files"]["redux"]), str(models["files"]["siglip"]))
    return models_mod.load_redux_encoder(spec, submodule("pipelines.cache").ModelCache())


def _photo(w, h, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def wide_setup(models, tmp_path_factory):
    """A Redux projector with FLUX's real 4096-wide output, so diffusers' pipeline (which hard-codes 4096/768)
    can run on the same weights."""
    from diffusers import FluxPriorReduxPipeline

    projector = tm.make_redux(seed=7, txt_width=4096)
    path = tm.write_safetensors(tmp_path_factory.mktemp("wide") / "redux.safetensors",
                                tm._contiguous(projector.state_dict()))
    spec = models_mod.ReduxEncoderSpec(str(path), str(models["files"]["siglip"]))
    ours = models_mod.load_redux_encoder(spec, submodule("pipelines.cache").ModelCache())
    theirs = FluxPriorReduxPipeline(image_encoder=models["sources"]["siglip"],
                                    feature_extractor=pil_processor(models["sources"]["processor"]),
                                    image_embedder=projector)
    return ours, theirs


def pil_processor(processor):
    """The same SigLIP preprocessing settings with PIL resizing: what diffusers' Redux pipeline runs with
    transformers 4, and with transformers 5 when torchvision is absent (its default class then switches to the
    torchvision backend, see test_torchvision_processor_differs_by_resampling_only)."""
    try:
        from transformers import SiglipImageProcessorPil as pil_class
    except ImportError:  # transformers 4: SiglipImageProcessor is the PIL one
        return processor
    return pil_class(**{k: getattr(processor, k) for k in ("size", "resample", "image_mean", "image_std")})


TOLERANCE = dict(rtol=1e-5, atol=1e-5)  # float32 on CPU; differences come only from summation order


def test_single_image_matches_flux_prior_redux_pipeline(wide_setup):
    ours, theirs = wide_setup
    image = _photo(200, 150)
    expected = theirs(image=image)
    embeds, pooled = redux.encode(ours, image, crop="squash").prompt_embeds(4096, 768)
    assert embeds.shape == (1, 512 + tm.SIGLIP_TOKENS, 4096) and pooled.shape == (1, 768)
    torch.testing.assert_close(embeds, expected.prompt_embeds, **TOLERANCE)
    torch.testing.assert_close(pooled, expected.pooled_prompt_embeds, **TOLERANCE)


def test_weighted_images_match_flux_prior_redux_pipeline(wide_setup):
    ours, theirs = wide_setup
    images, weights = [_photo(64, 64, 1), _photo(90, 40, 2)], [0.7, 0.3]
    expected = theirs(image=images, prompt_embeds_scale=weights, pooled_prompt_embeds_scale=weights)
    embeds, _ = redux.encode(ours, images, weights=weights, crop="squash").prompt_embeds(4096, 768)
    torch.testing.assert_close(embeds, expected.prompt_embeds, **TOLERANCE)


def test_pixels_are_pils_whatever_is_installed(models):
    """The pack resizes with PIL itself, so the SigLIP input is bit-identical to transformers' PIL processor and
    does not depend on torchvision."""
    image = _photo(200, 150)
    processor = pil_processor(models["sources"]["processor"])
    expected = processor(images=[image], return_tensors="pt")["pixel_values"]
    size = tm.SIGLIP["image_size"]
    ours = (redux.square_pixels([image], size) - 0.5) / 0.5
    torch.testing.assert_close(ours.permute(0, 3, 1, 2), expected, rtol=0, atol=1e-6)


def test_torchvision_processor_differs_by_resampling_only(models):
    """transformers 5's default SiglipImageProcessor resizes with torchvision when it is installed (as in every
    ComfyUI environment): its input differs from PIL's by at most a few 8-bit levels, so the pack does not use it."""
    pytest.importorskip("torchvision")
    from transformers import SiglipImageProcessor

    image = _photo(200, 150)
    size = tm.SIGLIP["image_size"]
    theirs = SiglipImageProcessor(size={"height": size, "width": size}, resample=3, image_mean=[0.5] * 3,
                                  image_std=[0.5] * 3)(images=[image], return_tensors="pt")["pixel_values"]
    ours = ((redux.square_pixels([image], size) - 0.5) / 0.5).permute(0, 3, 1, 2)
    levels = ((ours - theirs).abs() * 255 / 2).max().item()  # normalised by std 0.5: 2/255 per 8-bit level
    assert 0 < levels <= 8, levels


def test_text_part_is_zero_and_tokens_follow(encoder):
    embeds, pooled = redux.encode(encoder, _photo(40, 40)).prompt_embeds(tm.JOINT_WIDTH, tm.POOLED_WIDTH)
    assert torch.count_nonzero(embeds[:, :512]) == 0 and torch.count_nonzero(pooled) == 0
    assert torch.count_nonzero(embeds[:, 512:]) > 0


@pytest.mark.parametrize("make", [
    lambda: _photo(50, 30).convert("RGBA"),
    lambda: _photo(50, 30).convert("L"),
    lambda: Image.fromarray(np.full((30, 50), 40000, dtype=np.uint16)),  # 16-bit grey, PIL mode I;16
    lambda: np.random.default_rng(0).integers(0, 65536, (30, 50, 3), dtype=np.uint16),
    lambda: np.random.default_rng(0).random((30, 50, 3)).astype(np.float32),
    lambda: torch.rand(30, 50, 3),
    lambda: torch.rand(3, 30, 50),
    lambda: np.asarray(_photo(50, 30)),
])
def test_every_input_format_encodes(encoder, make):
    cond = redux.encode(encoder, make())
    assert cond.image_tokens.shape == (1, tm.SIGLIP_TOKENS, tm.JOINT_WIDTH)
    assert torch.isfinite(cond.image_tokens).all()


def test_16bit_and_8bit_versions_of_one_image_agree(encoder):
    eight = np.asarray(_photo(48, 48))
    sixteen = eight.astype(np.uint16) * 257
    a, b = redux.encode(encoder, eight), redux.encode(encoder, sixteen)
    torch.testing.assert_close(a.image_tokens, b.image_tokens)


def test_transparent_pixels_are_composited_on_white():
    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    assert redux.to_pil_rgb(rgba).getpixel((0, 0)) == (255, 255, 255)


def test_batch_tensor_is_several_images(encoder):
    batch = torch.rand(3, 40, 40, 3)  # ComfyUI IMAGE batch
    cond = redux.encode(encoder, batch, weights=[1, 0, 0])
    torch.testing.assert_close(cond.image_tokens, redux.encode(encoder, batch[0]).image_tokens)


def test_zero_weight_equals_absent(encoder):
    a, b = _photo(40, 40, 1), _photo(40, 40, 2)
    both = redux.encode(encoder, [a, b], weights=[0.8, 0.0])
    alone = redux.encode(encoder, a, weights=[0.8])
    torch.testing.assert_close(both.image_tokens, alone.image_tokens)


def test_crop_modes(encoder):
    wide = _photo(120, 40)
    center, squash = redux.encode(encoder, wide, crop="center"), redux.encode(encoder, wide, crop="squash")
    assert not torch.allclose(center.image_tokens, squash.image_tokens)
    left, top = 40, 0  # center crop of a 120x40 image is its middle 40x40 square
    cropped = wide.crop((left, top, left + 40, top + 40))
    torch.testing.assert_close(center.image_tokens, redux.encode(encoder, cropped, crop="squash").image_tokens)


def test_combine_is_a_weighted_sum(encoder):
    a, b = redux.encode(encoder, _photo(40, 40, 1)), redux.encode(encoder, _photo(40, 40, 2))
    mixed = redux.ReduxConditioning.combine([(a, 0.25), (b, 0.75)])
    torch.testing.assert_close(mixed.image_tokens, 0.25 * a.image_tokens + 0.75 * b.image_tokens)


def test_errors(encoder):
    with pytest.raises(ValueError, match="2 reference images but 1 weights"):
        redux.encode(encoder, [_photo(8, 8), _photo(8, 8)], weights=[1.0])
    with pytest.raises(submodule("pipelines.params").ParameterError, match=r"weight=-1"):
        redux.encode(encoder, _photo(8, 8), weights=[-1])
    with pytest.raises(ValueError, match="32 wide but this transformer's text stream is 4096 wide"):
        redux.encode(encoder, _photo(8, 8)).prompt_embeds(4096, 768)
    with pytest.raises(submodule("pipelines.params").ParameterError, match="crop='fit'"):
        redux.encode(encoder, _photo(8, 8), crop="fit")
    with pytest.raises(TypeError, match="expected a PIL image"):
        redux.encode(encoder, "photo.png")
