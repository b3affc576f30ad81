"""Silently wrong: EXIF orientation, image arrays of every dtype, NaN and integer weights, NaN output, and
options that do nothing in context all either work right or say so."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from fakes.cli_runs import FAST, cli_restyle, no_loading, noise_png, run_cli, weights_args  # noqa: F401
from packloader import submodule

references = submodule("pipelines.references")
weights = submodule("pipelines.weights")


def sideways_jpeg(path, size=(40, 20)):
    """A landscape picture stored the way phones do: pixels portrait, EXIF orientation 6 (rotate 90°)."""
    image = Image.new("RGB", size, (200, 30, 30))
    image.paste((30, 30, 200), (0, 0, size[0] // 2, size[1]))  # left half blue
    exif = image.getexif()
    exif[references.EXIF_ORIENTATION] = 6
    image.save(path, exif=exif)
    return path


def test_exif_orientation_is_applied_for_references_masks_and_init_image(tmp_path):
    photo = sideways_jpeg(tmp_path / "phone.jpg")
    with Image.open(photo) as raw:
        assert raw.size == (40, 20)
        assert references.to_pil_rgb(raw).size == (20, 40)  # engine API: PIL image straight from a file
    assert cli_restyle.open_image(photo).size == (20, 40)  # --ref, --mask and positional inputs
    args = SimpleNamespace(init_image=photo)
    upright = cli_restyle.init_image(args)
    assert upright.size == (20, 40) and upright.getpixel((10, 2))[2] > 150  # blue ends up on top
    mask = references.to_mask(Image.open(photo), (20, 40))
    assert mask.shape == (40, 20)


@pytest.mark.parametrize("make, expected", [
    (lambda: torch.full((8, 8, 3), 100, dtype=torch.uint8), 100),  # was binarised to 255
    (lambda: torch.full((3, 8, 8), 100, dtype=torch.uint8), 100),
    (lambda: np.full((8, 8, 3), 100.0, dtype=np.float32), 100),  # 0-255 floats, were clipped to 255
    (lambda: np.full((8, 8, 3), 100, dtype=np.int64), 100),
    (lambda: torch.full((8, 8, 3), 0.5, dtype=torch.bfloat16), 128),
    (lambda: np.full((8, 8), 30000, dtype=np.uint16), 117),
    (lambda: np.ones((8, 8), dtype=bool), 255),
    (lambda: torch.full((8, 8, 3), 1.3), 255),  # a 0..1 image that overshoots (VAE) is clipped, not rescaled
])
def test_image_arrays_of_every_dtype(make, expected):
    assert references.to_pil_rgb(make()).getpixel((0, 0)) == (expected,) * 3


@pytest.mark.parametrize("bad, words", [
    (np.full((4, 4, 3), np.nan, dtype=np.float32), "NaN or infinite"),
    (np.full((4, 4, 3), 1000.0), "must be in 0..1 (or 0..255), got 1e+03..1e+03"),
    (np.full((4, 4, 3), -2.0), "must be in 0..1"),
    (np.full((4, 4, 3), -5, dtype=np.int32), "integer values must be 0..255"),
])
def test_images_that_fit_no_convention_are_refused(bad, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        references.to_pil_rgb(bad)


def test_uint8_masks_keep_their_grey_levels():
    assert references.to_mask(np.full((4, 4), 128, dtype=np.uint8), (4, 4))[0, 0] == pytest.approx(128 / 255)
    assert references.to_mask(torch.full((1, 4, 4), 64, dtype=torch.uint8), (4, 4))[0, 0] == pytest.approx(64 / 255)


def test_nan_weights_are_refused_before_loading(models, tmp_path, no_loading):
    state = load_file(str(models["files"]["redux"]))
    state = {k: torch.full_like(v, float("nan")) for k, v in state.items()}
    broken = tmp_path / "flux1-redux-dev.safetensors"
    save_file(state, str(broken))
    args = weights_args(models)
    args[args.index("--redux") + 1] = broken
    done = run_cli("variation", noise_png(tmp_path / "r.png"), *args, "--out", tmp_path / "o")
    assert done.code == 2 and len(done.error_lines) == 1
    assert f"{broken}: tensor redux_" in done.err and "holds NaN or infinite values" in done.err


def test_integer_typed_weights_are_refused(models, tmp_path):
    state = load_file(str(models["files"]["vae"]))
    key = next(iter(state))
    state[key] = state[key].to(torch.int8)
    broken = tmp_path / "ae.safetensors"
    save_file(state, str(broken))
    with pytest.raises(weights.WeightsError, match=f"1 weight tensor\\(s\\) are integer-typed \\({key} is I8\\)"):
        weights.read_index(broken, "vae")


def test_nan_output_is_an_error_not_a_black_image(models, tmp_path):
    """NaN deep inside a tensor passes the sampled check, but the images it makes are refused."""
    state = load_file(str(models["files"]["dev"]))
    state["proj_out.weight"][-1] = float("nan")  # the sample reads the first row only
    broken = tmp_path / "flux1-dev.safetensors"
    save_file(state, str(broken))
    args = weights_args(models)
    args[args.index("--transformer") + 1] = broken
    done = run_cli("variation", noise_png(tmp_path / "r.png"), *args, *FAST, "--out", tmp_path / "o")
    assert done.code == 2
    assert "the model produced NaN pixels" in done.err and not list((tmp_path / "o").glob("*.png"))


def test_options_that_do_nothing_are_named(models, tmp_path, caplog, no_loading):
    caplog.set_level(logging.WARNING, logger="flux-redux")
    done = run_cli("variation", "--ref", noise_png(tmp_path / "r.png"), *weights_args(models), "--width", 512,
                   "--denoise", 0.5, "--mask", tmp_path / "r.png", "--prompt-scale", 2, "--downsample-mode",
                   "bicubic", "--device", "tpu")
    assert done.code == 2  # the device error comes after the warnings, still before loading
    warnings = [r.getMessage() for r in caplog.records if r.name == "flux-redux"]
    assert warnings == [
        "warning: --width/--height do nothing with --size square_hd (1024x1024); use --size custom",
        "warning: --denoise does nothing without --init-image",
        "warning: --prompt-scale does nothing without --prompt",
        "warning: --downsample-mode does nothing without --downsample above 1",
        "warning: --mask does nothing without positional input images (--ref takes IMG:WEIGHT:MASK)",
    ]


# -- silently doing nothing (issue 18, class 6) -----------------------------------------------------------------
# Every reference at weight 0 gave images that ignore every reference (and PNG metadata that still named it);
# NaN tokens in a CONDITIONING or a prompt passed through; a 0x0 image was encoded by the node.

import json  # noqa: E402

from fakes.node_inputs import load_encoder, load_model, models_root, photo  # noqa: E402,F401

local = submodule("nodes.local")
restyle = submodule("nodes.restyle")
conditioning_nodes = submodule("nodes.conditioning")
redux = submodule("pipelines.redux")
references_mod = submodule("pipelines.references")


@pytest.mark.parametrize("refs", [["r.png:0"], ["r.png:0", "s.png:0.0"], ["r.png:0:m.png"]])
def test_cli_refuses_references_that_all_weigh_nothing(models, tmp_path, no_loading, refs):
    for name in ("r.png", "s.png", "m.png"):
        noise_png(tmp_path / name)
    args = [a for ref in refs for a in ("--ref", str(tmp_path / ref.split(":")[0]) + ":" + ref.split(":", 1)[1])]
    args = [a.replace(":m.png", f":{tmp_path / 'm.png'}") for a in args]
    done = run_cli("variation", *args, *weights_args(models), "--out", tmp_path / "o")
    assert done.code == 2 and len(done.error_lines) == 1, done.err
    assert "every --ref has weight 0, so the images would ignore every reference" in done.error_lines[0]
    assert "0.0–10.0" in done.error_lines[0] and not no_loading


def test_cli_leaves_a_weight_0_reference_out_of_the_metadata_and_says_so(models, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="flux-redux")
    used, unused = noise_png(tmp_path / "used.png"), noise_png(tmp_path / "unused.png", seed=4)
    done = run_cli("variation", "--ref", f"{used}:1", "--ref", f"{unused}:0", *weights_args(models), *FAST,
                   "--out", tmp_path / "o")
    assert done.code == 0, done.err
    (png,) = (tmp_path / "o").iterdir()
    with Image.open(png) as image:
        meta = json.loads(image.text["flux_redux"])
    assert meta["refs"] == [[str(used), 1.0, None]]
    assert any(f"--ref {unused}:0 has weight 0" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("weights", [(0.0,), (0.0, 0.0), (0.0, 0.0, 0.0, 0.0)])
def test_combine_with_every_weight_0_is_refused(engine, weights):
    tokens = engine.ReduxConditioning(torch.ones(1, 4, 32), (1.0,))
    more = {k: v for n, w in enumerate(weights[1:], 2) for k, v in ((f"conditioning_{n}", tokens), (f"weight_{n}", w))}
    with pytest.raises(ValueError) as info:
        local.FluxReduxCombine().combine(tokens, weights[0], **more)
    message = str(info.value)
    assert message.startswith("weight_1=0") and "every reference weight is 0" in message
    assert all(f"weight_{n}=0" in message for n in range(1, len(weights) + 1))


def test_combine_with_one_weight_above_0_runs(engine):
    tokens = engine.ReduxConditioning(torch.ones(1, 4, 32), (1.0,))
    out = local.FluxReduxCombine().combine(tokens, 0.0, conditioning_2=tokens, weight_2=0.5)[0]
    assert out.weights == (0.5,) and torch.equal(out.image_tokens, torch.full((1, 4, 32), 0.5))


def zero_strength(engine):
    """What Redux Encode Advanced with strength 0 gives: tokens that count for nothing."""
    return engine.ReduxConditioning(torch.zeros(1, 729, 32), (0.0,))


def test_generate_refuses_a_conditioning_whose_references_all_weigh_0(models_root, engine, monkeypatch):
    monkeypatch.setattr(local, "load_flux", lambda *a: pytest.fail("loaded before the check"))
    with pytest.raises(ValueError, match="conditioning: every reference in it has weight 0"):
        local.FluxReduxGenerate().generate(load_model(), zero_strength(engine), "square", 512, 512, 1, 3.5, 0, 1)


def test_redux_to_conditioning_refuses_it_too(engine):
    with pytest.raises(ValueError, match="redux_conditioning: every reference in it has weight 0"):
        conditioning_nodes.FluxReduxToConditioning().apply(zero_strength(engine), 1.0, "multiply")


def test_the_engine_generate_refuses_it_for_api_callers(engine):
    with pytest.raises(ValueError, match="conditioning: every reference in it has weight 0"):
        engine.generate(SimpleNamespace(variant="dev", pipe=object()), zero_strength(engine),
                        engine.validate_generation("dev", "square"))


def flux_text(width=32, fill=0.1, pooled=None):
    return [[torch.full((1, 8, width), fill), {"pooled_output": torch.zeros(1, 768) if pooled is None else pooled}]]


@pytest.mark.parametrize("case, text, words", [
    ("NaN token", flux_text(fill=float("nan")), "conditioning: 256 of its 256 values are NaN or infinite"),
    ("inf token", flux_text(fill=float("inf")), "are NaN or infinite"),
    ("NaN pooled", flux_text(pooled=torch.full((1, 768), float("nan"))), "conditioning pooled_output: 768 of its"),
    ("pooled not a tensor", flux_text(pooled=[0.0] * 768), "conditioning: its pooled_output is a list of 768"),
    ("entry without dict", [[torch.zeros(1, 8, 32), "pooled"]], "each CONDITIONING entry is [tensor, dict]"),
])
def test_redux_to_conditioning_refuses_a_broken_prompt_conditioning(engine, case, text, words):
    good = engine.ReduxConditioning(torch.ones(1, 4, 32), (1.0,))
    with pytest.raises(ValueError) as info:
        conditioning_nodes.FluxReduxToConditioning().apply(good, 1.0, "multiply", conditioning=text)
    assert words in str(info.value)


@pytest.mark.parametrize("fill", [float("nan"), float("-inf")])
def test_redux_plus_prompt_refuses_nan_tokens_in_the_prompt(engine, fill):
    good = engine.ReduxConditioning(torch.ones(1, 4, 32), (1.0,))
    with pytest.raises(ValueError, match="prompt: 256 of its 256 values are NaN or infinite"):
        restyle.FluxReduxPrompt().apply(good, 1.0, 1.0, prompt=flux_text(fill=fill))


def test_nan_redux_tokens_are_refused_before_generating(models_root, engine, monkeypatch):
    monkeypatch.setattr(local, "load_flux", lambda *a: pytest.fail("loaded before the check"))
    broken = engine.ReduxConditioning(torch.full((1, 729, 32), float("nan")), (1.0,))
    with pytest.raises(ValueError, match="conditioning: 23328 of its 23328 values are NaN or infinite"):
        local.FluxReduxGenerate().generate(load_model(), broken, "square", 512, 512, 1, 3.5, 0, 1)


@pytest.mark.parametrize("size", [(0, 0), (0, 16), (16, 0)])
def test_a_0x0_reference_is_refused_by_the_engine_like_the_cli(size):
    with pytest.raises(ValueError, match=f"a reference image has no pixels \\({size[0]}x{size[1]}\\)"):
        references_mod.prepare(Image.new("RGB", size))


def test_a_0x0_mask_is_refused_by_the_engine():
    with pytest.raises(ValueError, match="a mask has no pixels \\(0x0\\)"):
        references_mod.prepare(Image.new("RGB", (8, 8)), mask=np.zeros((0, 0), dtype=np.float32))


@pytest.mark.parametrize("image", [torch.zeros(1, 0, 0, 3), torch.zeros(1, 0, 64, 3)])
def test_a_0x0_image_is_refused_by_the_encode_node_like_the_cli(models_root, image):
    with pytest.raises(ValueError, match="image: the image has no pixels"):
        local.FluxReduxEncode().encode(image, "center", redux_encoder=load_encoder())
