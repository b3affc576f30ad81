"""Redux → Conditioning (StyleModelApply's rules with the pack's tokens) and ComfyUI's CLIP_VISION + STYLE_MODEL as
the encoder of the encode nodes. ComfyUI is not installed here: its loaders' objects are test doubles over the same
tiny weights (their real counterparts ran in real ComfyUI, see README)."""

import math

import numpy as np
import pytest
import torch
from packloader import pack, submodule

conditioning = submodule("nodes.conditioning")
local = submodule("nodes.local")
restyle = submodule("nodes.restyle")
loaders = submodule("nodes.local_loaders")
bridge = submodule("nodes.comfy_bridge")
redux = submodule("pipelines.redux")
params = submodule("pipelines.params")
NODE = conditioning.FluxReduxToConditioning


@pytest.fixture(scope="module", autouse=True)
def models_root(models):
    saved, bridge.MODELS_ROOT = bridge.MODELS_ROOT, models["root"]
    yield models["root"]
    bridge.MODELS_ROOT = saved


@pytest.fixture(scope="module")
def encoder_spec():
    return loaders.FluxReduxLoadEncoder().load("flux1-redux-dev.safetensors", "sigclip_vision_patch14_384.safetensors",
                                               "cpu", "auto")[0]


def photo(seed=0, h=48, w=64, batch=1):
    return torch.from_numpy(np.random.default_rng(seed).random((batch, h, w, 3), dtype=np.float32))


@pytest.fixture(scope="module")
def cond(encoder_spec):
    return local.FluxReduxEncode().encode(photo(), "center", redux_encoder=encoder_spec)[0]


def text(batch=1, tokens=5, width=32, mask=None):
    keys = {"pooled_output": torch.randn(batch, 768), "guidance": 3.5}
    if mask is not None:
        keys["attention_mask"] = mask
    return [[torch.randn(batch, tokens, width), keys]]


def apply(cond, strength=1.0, strength_type="multiply", conditioning=None):
    return NODE().apply(cond, strength, strength_type, conditioning=conditioning)[0]


def test_registered_with_stylemodelapplys_widgets():
    assert pack.NODE_CLASS_MAPPINGS["FluxReduxToConditioning"] is NODE
    assert pack.NODE_DISPLAY_NAME_MAPPINGS["FluxReduxToConditioning"].startswith("Redux → Conditioning")
    required = NODE.INPUT_TYPES()["required"]
    assert required["strength_type"][0] == ("multiply", "attn_bias")
    assert (required["strength"][1]["min"], required["strength"][1]["max"], required["strength"][1]["step"]) == (0, 10, 0.001)
    assert NODE.RETURN_TYPES == ("CONDITIONING",)


def test_multiply_appends_scaled_tokens_to_every_entry(cond):
    prompt = text(batch=2) + text()
    out = apply(cond, 0.5, "multiply", prompt)
    for (embeds, keys), (old, old_keys) in zip(out, prompt):
        assert embeds.shape == (old.shape[0], 5 + cond.token_count, 32)
        torch.testing.assert_close(embeds[:, :5], old)
        torch.testing.assert_close(embeds[:, 5:], (0.5 * cond.image_tokens).expand(old.shape[0], -1, -1))
        assert keys is not old_keys and keys["pooled_output"] is old_keys["pooled_output"]
        assert "attention_mask" not in keys  # multiply never adds a mask


def test_attn_bias_leaves_tokens_and_biases_attention_to_them(cond):
    n, prompt = cond.token_count, text()
    (embeds, keys), = apply(cond, 0.25, "attn_bias", prompt)
    torch.testing.assert_close(embeds[:, 5:], cond.image_tokens)
    mask = keys["attention_mask"]
    total = 5 + n + 1  # text + Redux + one reference-image slot (attention_mask_img_shape (1, 1))
    assert mask.shape == (1, total, total) and mask.dtype == torch.float16 and keys["attention_mask_img_shape"] == (1, 1)
    bias = torch.tensor(math.log(0.25), dtype=torch.float16)
    assert (mask[:, :5, 5:5 + n] == bias).all() and (mask[:, 5 + n:, 5:5 + n] == bias).all()
    assert (mask[:, 5:5 + n, :] == 0).all() and (mask[:, :, :5] == 0).all() and (mask[:, :, 5 + n:] == 0).all()
    (_, off), = apply(cond, 1.0, "attn_bias", prompt)
    assert "attention_mask" not in off  # strength 1 is no bias
    (_, ignored), = apply(cond, 0.0, "attn_bias", prompt)
    assert torch.isinf(ignored["attention_mask"][:, :5, 5:5 + n]).all()  # strength 0 ignores the tokens


def test_an_earlier_mask_is_kept_and_enlarged_as_chained_apply_does(cond):
    n = cond.token_count
    old = torch.zeros(1, 5 + 4, 5 + 4, dtype=torch.bool)  # boolean: True = attend
    old[:, :5, :5] = True
    old[:, 5:, :] = True
    first = text(mask=old)
    first[0][1]["attention_mask_img_shape"] = (2, 2)
    (embeds, keys), = apply(cond, 2.0, "multiply", first)  # multiply still enlarges an existing mask
    mask = keys["attention_mask"]
    assert mask.shape == (1, 5 + n + 4, 5 + n + 4) and keys["attention_mask_img_shape"] == (2, 2)
    assert torch.isinf(mask[:, :5, 5 + n:]).all()  # the old "text does not see the image" block, moved
    assert (mask[:, 5 + n:, :5] == 0).all() and (mask[:, 5:5 + n, :] == 0).all()
    (again, keys2), = apply(cond, 0.5, "attn_bias", [[embeds, keys]])  # chaining appends a second token set
    assert again.shape[1] == 5 + 2 * n and keys2["attention_mask"].shape[-1] == 5 + 2 * n + 4


def test_without_conditioning_makes_fluxs_empty_one(cond):
    (embeds, keys), = apply(cond)
    assert embeds.shape == (1, redux.TEXT_TOKENS + cond.token_count, 32)
    assert torch.count_nonzero(embeds[:, :redux.TEXT_TOKENS]) == 0 and keys["pooled_output"].shape == (1, 768)
    torch.testing.assert_close(embeds[:, redux.TEXT_TOKENS:], cond.image_tokens)


@pytest.mark.parametrize("bad, message", [
    (text(width=4096), "is 4096 wide but the Redux tokens are 32 wide"),
    ("a prompt", "expected ComfyUI CONDITIONING"),
])
def test_wrong_conditioning_is_explained(cond, bad, message):
    with pytest.raises(ValueError, match=message):
        apply(cond, conditioning=bad)


def test_bad_strength_names_the_input(cond):
    with pytest.raises(params.ParameterError, match="strength=11"):
        apply(cond, 11.0)
    with pytest.raises(params.ParameterError, match="strength_type='add'"):
        apply(cond, 1.0, "add")


# -- ComfyUI's CLIP_VISION + STYLE_MODEL in the encode nodes -----------------------------------------------------------

class ClipVisionOutput(dict):
    __getattr__ = dict.__getitem__


class ClipVision:
    """Test double of comfy.clip_vision.ClipVisionModel over the tiny SigLIP: encode_image(IMAGE, crop) with
    ComfyUI's preprocessing for an image already at its size (8-bit rounding, normalisation)."""

    def __init__(self, siglip):
        self.siglip, self.image_size, self.calls = siglip, siglip.config.image_size, []

    def encode_image(self, image, crop=True):
        self.calls.append((tuple(image.shape), crop))
        assert image.shape[1:3] == (self.image_size, self.image_size)  # the pack resized already
        pixels = (torch.clip(255.0 * image, 0, 255).round() / 255.0 - 0.5) / 0.5
        return ClipVisionOutput(last_hidden_state=self.siglip(pixel_values=pixels.movedim(-1, 1)).last_hidden_state)


class StyleModel:
    def __init__(self, projector):
        self.projector = projector

    def get_cond(self, output):
        return self.projector(output.last_hidden_state).image_embeds


@pytest.fixture(scope="module")
def comfy_encoder(models):
    return ClipVision(models["sources"]["siglip"]), StyleModel(models["sources"]["redux"])


def test_comfyuis_clip_vision_and_style_model_give_the_packs_tokens(cond, comfy_encoder):
    clip_vision, style_model = comfy_encoder
    theirs = local.FluxReduxEncode().encode(photo(), "center", clip_vision=clip_vision, style_model=style_model)[0]
    torch.testing.assert_close(theirs.image_tokens, cond.image_tokens, rtol=1e-5, atol=1e-5)
    assert clip_vision.calls == [((1, 32, 32, 3), False)]
    advanced = restyle.FluxReduxEncodeAdvanced().encode(
        photo(), "center", 1.0, 3.0, "area", False, 32, clip_vision=clip_vision, style_model=style_model)[0]
    assert advanced.token_count == 1  # 4x4 grid / 3, rounded: the restyle controls apply to ComfyUI's tokens too


def test_encoder_inputs_must_be_complete(comfy_encoder):
    clip_vision, _ = comfy_encoder
    with pytest.raises(ValueError, match="connect both clip_vision .* and style_model"):
        local.FluxReduxEncode().encode(photo(), "center", clip_vision=clip_vision)
    with pytest.raises(ValueError, match="no encoder: connect redux_encoder"):
        local.FluxReduxEncode().encode(photo(), "center")


def test_a_batch_is_averaged_and_reports_progress(encoder_spec, monkeypatch):
    updates = []
    monkeypatch.setattr(bridge, "Progress", lambda total: type("P", (), {"update": lambda self, d, t: updates.append((d, t))})())
    batch = photo(batch=4)
    averaged = local.FluxReduxEncode().encode(batch, "center", redux_encoder=encoder_spec)[0]
    singles = [local.FluxReduxEncode().encode(batch[i:i + 1], "center", redux_encoder=encoder_spec)[0].image_tokens
               for i in range(4)]
    torch.testing.assert_close(averaged.image_tokens, sum(singles) / 4)
    assert updates[:4] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    strong = restyle.FluxReduxEncodeAdvanced().encode(batch, "center", 2.0, 1.0, "area", False, 32,
                                                      redux_encoder=encoder_spec)[0]
    torch.testing.assert_close(strong.image_tokens, 2 * averaged.image_tokens)
