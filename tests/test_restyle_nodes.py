"""The restyle nodes (Redux Encode Advanced, Redux + Prompt, Redux Generate img2img) and Combine's blend."""

import json

import numpy as np
import pytest
import torch
from packloader import pack, submodule

import graph_runner as gr
import tiny_models as tm

params = submodule("pipelines.params")
redux = submodule("pipelines.redux")
bridge = submodule("nodes.comfy_bridge")
local = submodule("nodes.local")
loaders = submodule("nodes.local_loaders")
restyle = submodule("nodes.restyle")

RESTYLE = restyle.NODE_CLASS_MAPPINGS
GRID = tm.SIGLIP["image_size"] // tm.SIGLIP["patch_size"]  # 4x4 tokens for the tiny SigLIP (27x27 for FLUX)
DEFAULTS = dict(crop="center", strength=1.0, downsample_factor=1.0, downsample_mode="area", autocrop=False,
                autocrop_margin=32)


@pytest.fixture(scope="module", autouse=True)
def models_root(models):
    saved, bridge.MODELS_ROOT = bridge.MODELS_ROOT, models["root"]
    yield
    bridge.MODELS_ROOT = saved


@pytest.fixture(scope="module")
def encoder():
    return loaders.FluxReduxLoadEncoder().load("flux1-redux-dev.safetensors", "sigclip_vision_patch14_384.safetensors",
                                               "cpu", "auto")[0]


@pytest.fixture(scope="module")
def flux():
    return loaders.FluxReduxLoadModel().load("flux1-dev.safetensors", "ae.safetensors", "auto", "default", "none",
                                             "auto", "cpu")[0]


@pytest.fixture
def no_model_work(monkeypatch):
    """Fails the test if a node loads a model: invalid input must be reported before that."""
    def refuse(*_):
        raise AssertionError("a model was loaded before the inputs were validated")
    monkeypatch.setattr(local, "load_redux_encoder", refuse)
    monkeypatch.setattr(local, "load_flux_model", refuse)


def photo(seed=0, h=48, w=64, batch=1):
    return torch.from_numpy(np.random.default_rng(seed).random((batch, h, w, 3), dtype=np.float32))


def advanced(encoder, image, **kw):
    return restyle.FluxReduxEncodeAdvanced().encode(image=image, redux_encoder=encoder, **(DEFAULTS | kw))[0]


def prompt_node(cond, prompt, prompt_scale=1.0, pooled_scale=1.0):
    return restyle.FluxReduxPrompt().apply(cond, prompt_scale, pooled_scale, prompt=prompt)[0]


# -- the contract ComfyUI reads -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(RESTYLE))
def test_node_contract(name):
    cls = RESTYLE[name]
    spec = cls.INPUT_TYPES()
    assert cls.CATEGORY == "FLUX Redux/restyle" and len(cls.DESCRIPTION) > 80
    assert pack.NODE_CLASS_MAPPINGS[name] is cls and pack.NODE_DISPLAY_NAME_MAPPINGS[name].endswith("(FLUX Redux)")
    assert len(cls.RETURN_NAMES) == len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES)
    for section in ("required", "optional"):
        for input_name, (kind, options) in spec.get(section, {}).items():
            assert options.get("tooltip", "").endswith("."), f"{name}.{input_name} needs a one-sentence tooltip"
            if isinstance(kind, (list, tuple)):
                assert options["default"] in kind
            elif kind in ("INT", "FLOAT"):
                assert options["min"] <= options["default"] <= options["max"], f"{name}.{input_name}"
                assert isinstance(options["default"], int if kind == "INT" else float)
            elif kind == "BOOLEAN":
                assert isinstance(options["default"], bool)
    code = getattr(cls, cls.FUNCTION).__code__
    inputs = set(spec["required"]) | set(spec.get("optional", {}))
    assert set(code.co_varnames[1:code.co_argcount]) == inputs  # every parameter is an input and vice versa


def test_img2img_node_shares_the_generate_widgets():
    generate = dict(gr.widget_slots(local.FluxReduxGenerate))
    slots = gr.widget_slots(restyle.FluxReduxGenerateImg2Img)
    assert slots == gr.widget_slots(local.FluxReduxGenerate) + [("denoise", "value")]
    required = restyle.FluxReduxGenerateImg2Img.INPUT_TYPES()["required"]
    for name in set(generate) - {"image_size"}:
        assert required[name] == local.FluxReduxGenerate.INPUT_TYPES()["required"][name]
    assert required["image_size"][0] == ("match_init_image", *params.IMAGE_SIZE_CHOICES)
    validate = restyle.FluxReduxGenerateImg2Img.VALIDATE_INPUTS
    assert validate("match_init_image", 1000, 7) is True and "multiple of 16" in validate("custom", 1000, 256)


def test_combine_blend_is_the_last_widget_so_older_graphs_still_load():
    assert gr.widget_slots(local.FluxReduxCombine)[-1] == ("blend", "value")
    choices, options = local.FluxReduxCombine.INPUT_TYPES()["optional"]["blend"]
    assert choices == params.BLEND_MODES == ("sum", "concat") and options["default"] == "sum"


# -- Redux Encode Advanced ------------------------------------------------------------------------------------------

def test_defaults_equal_redux_encode_and_controls_act(encoder):
    image = photo()
    plain = local.FluxReduxEncode().encode(image, "center", redux_encoder=encoder)[0]
    torch.testing.assert_close(advanced(encoder, image).image_tokens, plain.image_tokens)
    torch.testing.assert_close(advanced(encoder, image, strength=0.5).image_tokens, 0.5 * plain.image_tokens)
    assert advanced(encoder, image, downsample_factor=2.0, downsample_mode="bicubic").token_count == (GRID // 2) ** 2
    assert advanced(encoder, photo(h=32, w=64), crop="pad").token_count == GRID * GRID // 2  # bar rows dropped


def test_mask_of_ones_equals_no_mask(encoder):
    image = photo(batch=2)
    for crop in ("center", "pad"):
        plain = advanced(encoder, image, crop=crop)
        for mask in (torch.ones(1, 48, 64), torch.ones(2, 24, 32)):  # one for all, or one each (any size)
            torch.testing.assert_close(advanced(encoder, image, crop=crop, mask=mask).image_tokens,
                                       plain.image_tokens)


def test_mask_and_autocrop_keep_fewer_tokens(encoder):
    mask = torch.zeros(1, 48, 64)
    mask[:, :, :32] = 1.0  # left half
    assert advanced(encoder, photo(), crop="squash", mask=mask).token_count == GRID * GRID // 2
    assert advanced(encoder, photo(), mask=mask, autocrop=True, autocrop_margin=0).token_count == GRID * GRID


@pytest.mark.parametrize("kw, message", [
    (dict(autocrop=True), "autocrop needs a mask: connect a MASK"),
    (dict(mask=torch.stack([torch.ones(48, 64), torch.zeros(48, 64)])), "mask 2 is empty .* while others are painted"),
    (dict(mask=torch.ones(3, 48, 64)), "2 reference image.* but 3 masks"),
    (dict(mask=torch.ones(3, 4)[None, None]), "expected a ComfyUI MASK"),
    (dict(downsample_factor=12.0), "downsample_factor=12.0 is not allowed"),
    (dict(strength=-1.0), "strength=-1.0 is not allowed"),
    (dict(crop="fit"), "crop='fit'"),
])
def test_invalid_encode_inputs_fail_before_loading(encoder, no_model_work, kw, message):
    with pytest.raises(ValueError, match=message):
        advanced(encoder, photo(batch=2), **kw)


def test_unpainted_mask_uses_the_whole_reference_with_a_warning(encoder, caplog):
    """LoadImage gives an empty 64x64 MASK when nothing was painted: the reference counts whole, autocrop is
    skipped, and the log says so (the masked-reference template runs as shipped)."""
    whole = advanced(encoder, photo())
    with caplog.at_level("WARNING"):
        unpainted = advanced(encoder, photo(), mask=torch.zeros(1, 64, 64), autocrop=True, autocrop_margin=0)
    assert unpainted.token_count == whole.token_count == GRID * GRID
    assert torch.equal(unpainted.image_tokens, whole.image_tokens)
    assert "mask is empty (nothing painted" in caplog.text and "autocrop is skipped" in caplog.text


def test_mask_leaving_no_token_is_explained(encoder):
    speck = torch.zeros(1, 48, 64)
    speck[0, 0, 0] = 1.0  # not empty, but covers no token's area
    with pytest.raises(ValueError, match="masks leave no Redux token"):
        advanced(encoder, photo(), mask=speck)


# -- Combine: blend ---------------------------------------------------------------------------------------------------

def test_combine_sum_needs_equal_token_counts_concat_does_not(encoder):
    full, small = advanced(encoder, photo(1)), advanced(encoder, photo(2), downsample_factor=2.0)
    combine = local.FluxReduxCombine().combine
    with pytest.raises(ValueError, match="different token counts .* use blend=concat"):
        combine(full, 1.0, conditioning_2=small, weight_2=1.0)
    joined = combine(full, 1.0, "concat", conditioning_2=small, weight_2=0.5)[0]
    torch.testing.assert_close(joined.image_tokens, torch.cat([full.image_tokens, 0.5 * small.image_tokens], 1))
    with pytest.raises(ValueError, match="blend='mix'"):
        combine(full, 1.0, "mix")


# -- Redux + Prompt ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("with_pooled", [True, False])
def test_comfy_conditioning_with_and_without_pooled_output(encoder, with_pooled):
    cond = advanced(encoder, photo())
    tokens = torch.randn(2, 256, tm.JOINT_WIDTH, dtype=torch.float16)  # a batch, half precision: first one used
    extras = {"pooled_output": torch.randn(2, tm.POOLED_WIDTH), "guidance": 3.5} if with_pooled else {}
    mixed = prompt_node(cond, [[tokens, extras]], prompt_scale=0.5, pooled_scale=2.0)
    assert cond.text is None and mixed.image_tokens is cond.image_tokens  # the input is left unchanged
    embeds, pooled = mixed.prompt_embeds(tm.JOINT_WIDTH, tm.POOLED_WIDTH)
    assert embeds.shape == (1, 256 + GRID * GRID, tm.JOINT_WIDTH)
    torch.testing.assert_close(embeds[:, :256], tokens[:1].float() * 0.5)
    torch.testing.assert_close(embeds[:, 256:], cond.image_tokens)
    if with_pooled:
        torch.testing.assert_close(pooled, extras["pooled_output"][:1] * 2.0)
    else:
        assert torch.count_nonzero(pooled) == 0
    assert prompt_node(cond, None) is cond  # unconnected: passes through


@pytest.mark.parametrize("prompt, message", [
    ([[torch.randn(1, 77, 768), {"pooled_output": torch.randn(1, 768)}]], "prompt CONDITIONING is 768 wide but the "
                                                                          "Redux tokens are 32 wide.*type flux"),
    ([], "expected ComfyUI CONDITIONING"),
    ([[torch.randn(77, 32), {}]], r"must be \[batch, tokens, width\]"),
])
def test_wrong_conditioning_is_explained(encoder, prompt, message):
    with pytest.raises(ValueError, match=message):
        prompt_node(advanced(encoder, photo()), prompt)
    with pytest.raises(params.ParameterError, match="prompt_scale=11"):
        prompt_node(advanced(encoder, photo()), [[torch.randn(1, 5, 32), {}]], prompt_scale=11)


# -- Redux Generate img2img -------------------------------------------------------------------------------------------

def img2img(model, cond, init, **kw):
    args = dict(image_size="custom", width=256, height=256, num_inference_steps=4, guidance_scale=3.5, seed=3,
                num_images=1, init_image=init, denoise=0.5) | kw
    images, info = restyle.FluxReduxGenerateImg2Img().generate(model, cond, **args)
    return images, json.loads(info)


def test_img2img_through_the_node(encoder, flux, monkeypatch):
    cond = prompt_node(advanced(encoder, photo(), downsample_factor=2.0),
                       [[torch.randn(1, 256, tm.JOINT_WIDTH), {"pooled_output": torch.randn(1, tm.POOLED_WIDTH)}]])
    init = photo(5, h=96, w=128)
    images, info = img2img(flux, cond, init)
    assert images.shape == (1, 256, 256, 3)
    assert (info["img2img"], info["denoise"], info["steps_run"], info["seed"]) == (True, 0.5, 2, 3)
    monkeypatch.setattr(restyle, "MATCH_PIXELS", 384 * 288)  # about 1 MP as shipped; same code path
    images, info = img2img(flux, cond, init, image_size="match_init_image", denoise=1.0, num_inference_steps=1)
    assert images.shape == (1, 288, 384, 3) and (info["width"], info["height"], info["steps_run"]) == (384, 288, 1)
    megapixel = 1024 * 1024
    assert restyle.match_size(128, 96, megapixel) == (1184, 880)  # 4:3 at about 1 MP, multiples of 16
    assert restyle.match_size(4000, 200, megapixel) == (4096, 256)  # clamped to the size limits


@pytest.mark.parametrize("kw, message", [
    (dict(denoise=0.0), "denoise=0.0 is not allowed"),
    (dict(init_image=photo(batch=2)), "batch of 2 images"),
    (dict(image_size="custom", width=1000), "multiple of 16"),
    (dict(image_size="huge"), "image_size='huge'"),
])
def test_invalid_img2img_inputs_fail_before_loading(encoder, flux, no_model_work, kw, message):
    with pytest.raises(ValueError, match=message):
        img2img(flux, redux.ReduxConditioning(torch.zeros(1, GRID * GRID, tm.JOINT_WIDTH), (1.0,)), photo(), **kw)
