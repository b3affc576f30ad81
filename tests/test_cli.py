"""The headless CLI, run as users run it: `python -m pipelines variation ...` in the pack folder."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def cli(*args, cwd=ROOT):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH="")
    return subprocess.run([sys.executable, "-m", "pipelines", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("refs")
    rng = np.random.default_rng(0)
    for name, size in (("a.png", (80, 60)), ("b.jpg", (50, 70))):
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_folder_batch_restyle_with_metadata(models, inputs, tmp_path):
    out = tmp_path / "out"
    done = cli("variation", inputs, "--models-dir", models["root"], "--model", "dev", "--size", "custom",
               "--width", 256, "--height", 320, "--steps", 2, "--guidance", 4.0, "--seed", 42, "--num-images", 2,
               "--out", out)
    assert done.returncode == 0, done.stderr
    files = sorted(p.name for p in out.iterdir())
    assert files == ["a_seed42_0.png", "a_seed42_1.png", "b_seed42_0.png", "b_seed42_1.png"]
    with Image.open(out / "a_seed42_1.png") as image:
        assert image.size == (256, 320)
        meta = json.loads(image.text["flux_redux"])
    assert (meta["seed"], meta["num_inference_steps"], meta["guidance_scale"], meta["variant"]) == (42, 2, 4.0, "dev")
    assert meta["reference"].endswith("a.png")


def test_auto_variant_and_random_seed(models, inputs, tmp_path):
    done = cli("variation", inputs / "a.png", "--transformer", models["files"]["schnell"], "--vae",
               models["files"]["vae"], "--redux", models["files"]["redux"], "--siglip", models["files"]["siglip"],
               "--size", "custom", "--width", 256, "--height", 256, "--out", tmp_path)
    assert done.returncode == 0, done.stderr
    [png] = tmp_path.glob("a_seed*_0.png")
    with Image.open(png) as image:
        meta = json.loads(image.text["flux_redux"])
    assert meta["variant"] == "schnell" and meta["num_inference_steps"] == 4 and meta["guidance_scale"] is None
    assert png.name == f"a_seed{meta['seed']}_0.png"


def test_missing_weights_lists_where_it_looked(inputs, tmp_path):
    (tmp_path / "models").mkdir()
    done = cli("variation", inputs, "--models-dir", tmp_path / "models", "--model", "dev")
    assert done.returncode == 2
    assert "missing FLUX.1 dev weights" in done.stderr and "style_models/flux1-redux-dev.safetensors" in done.stderr


def test_bad_parameter_fails_before_loading(models, inputs):
    done = cli("variation", inputs, "--models-dir", models["root"], "--model", "schnell", "--steps", 51)
    assert done.returncode == 2
    assert "num_inference_steps=51 is not allowed: allowed range is 1–50 for schnell" in done.stderr


def test_help_documents_ranges():
    text = cli("variation", "--help").stdout
    for fragment in ("dev 1–50, default 28", "schnell 1–50", "1.0–20.0, default 3.5", "(1–4)", "square_hd",
                     "landscape_16_9", "256–4096, a multiple of 16"):
        assert fragment in text


def test_restyle_flags_refs_mask_downsample_prompt_img2img(models, inputs, tmp_path):
    import tiny_models as tm
    text = tm.write_text_encoders(tmp_path / "text")
    mask = tmp_path / "mask.png"
    Image.new("L", (50, 70), 255).save(mask)
    out = tmp_path / "out"
    done = cli(
        "variation", "--ref", f"{inputs / 'a.png'}:0.7", "--ref", f"{inputs / 'b.jpg'}:0.3:{mask}",
        "--models-dir", models["root"], "--model", "dev", "--size", "custom", "--width", 256, "--height", 256,
        "--steps", 2, "--seed", 9, "--downsample", 2, "--blend", "concat", "--crop", "pad",
        "--prompt", "oil painting of a cat", "--text-encoders", text["folder"], "--prompt-scale", 0.5,
        "--init-image", inputs / "a.png", "--denoise", 0.5, "--out", out)
    assert done.returncode == 0, done.stderr
    [png] = out.glob("blend_seed9_0.png")
    with Image.open(png) as image:
        meta = json.loads(image.text["flux_redux"])
    assert meta["refs"][0][1] == 0.7 and meta["refs"][1][2] == str(mask)
    assert (meta["prompt"], meta["downsample"], meta["blend"], meta["steps_run"]) == ("oil painting of a cat", 2.0,
                                                                                      "concat", 1)


def test_ref_parsing_and_restyle_errors(models, inputs):
    from packloader import submodule
    parse = submodule("pipelines.cli_restyle").parse_ref
    assert parse("C:/refs/a.png:0.25").weight == 0.25 and parse("a.png").weight == 1.0
    assert str(parse("a.png:2:m.png").mask) == "m.png"
    done = cli("variation", inputs / "a.png", "--models-dir", models["root"], "--downsample", 12)
    assert done.returncode == 2 and "downsample_factor=12.0 is not allowed: allowed range is 1.0–9.0" in done.stderr
    done = cli("variation", inputs / "a.png", "--models-dir", models["root"], "--prompt", "cat")
    assert done.returncode == 2 and "text encoders and their tokenizers" in done.stderr
    done = cli("variation", "--models-dir", models["root"])
    assert done.returncode == 2 and "no reference image" in done.stderr
