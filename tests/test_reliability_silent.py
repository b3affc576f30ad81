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
