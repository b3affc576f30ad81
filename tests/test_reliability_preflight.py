"""Checks before the expensive part: with --model auto too, every mistake that arguments and file headers
reveal is reported before any model loads."""

from __future__ import annotations

import shutil

import pytest

from fakes.cli_runs import FAST, no_loading, noise_png, run_cli, weights_args  # noqa: F401
from packloader import submodule

checks = submodule("pipelines.cli_checks")


@pytest.fixture
def image(tmp_path):
    return noise_png(tmp_path / "ref.png")


def auto_schnell(models):
    files = models["files"]
    return ["--transformer", files["schnell"], "--vae", files["vae"], "--redux", files["redux"], "--siglip",
            files["siglip"]]


CASES = {  # name -> (extra arguments, expected words)
    "steps beyond schnell": (["--steps", "51"], "num_inference_steps=51 is not allowed: allowed range is 1–50 for schnell"),
    "guidance with schnell": (["--guidance", "3"], "FLUX.1 schnell takes no guidance"),
    "seed too large": (["--seed", str(2**64)], "seed=18446744073709551616 is not allowed"),
    "odd custom width": (["--size", "custom", "--width", "260", "--height", "256"], "must be a multiple of 16"),
    "custom without height": (["--size", "custom", "--width", "256"], "custom needs both width and height"),
    "unknown device": (["--device", "tpu"], "device='tpu' is not allowed: expected auto, cpu, cuda, cuda:N or mps"),
    "cuda without cuda": (["--device", "cuda"], "device='cuda' is not allowed: CUDA is not available here"),
    "autocrop without a mask": (["--autocrop-margin", "8"], "autocrop_margin=8 is not allowed: it crops each "
                                                            "reference to its mask"),
    "empty prompt": (["--prompt", "  "], "prompt='  ' is not allowed"),
    "too many images": (["--num-images", "9"], "num_images=9 is not allowed: allowed range is 1–4"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_argument_mistakes_with_model_auto_fail_before_loading(models, image, tmp_path, no_loading, case):
    if case == "cuda without cuda" and checks_cuda():
        pytest.fail("this check assumes a machine without CUDA")
    extra, words = CASES[case]
    done = run_cli("variation", image, *auto_schnell(models), "--out", tmp_path / "out", *extra)
    assert done.code == 2, done.err
    assert len(done.error_lines) == 1 and words in done.error_lines[0]
    assert not no_loading and not (tmp_path / "out").exists()


def checks_cuda() -> bool:
    import torch
    return torch.cuda.is_available()


def test_wrong_file_in_a_slot_fails_before_loading(models, image, tmp_path, no_loading):
    files = models["files"]
    done = run_cli("variation", image, "--transformer", files["dev"], "--vae", files["vae"], "--redux",
                   files["siglip"], "--siglip", files["siglip"], "--out", tmp_path / "out")
    assert done.code == 2 and not no_loading
    assert done.error_lines == [f"error: {files['siglip']}: this file holds a SigLIP vision tower "
                                "(sigclip_vision_patch14_384.safetensors: vision_model.* keys), but this slot "
                                "expects the Redux projector (flux1-redux-dev.safetensors: redux_up / redux_down keys)."]


@pytest.mark.parametrize("kind", ["a file", "inside a file"])
def test_unusable_out_fails_before_loading(models, image, tmp_path, no_loading, kind):
    blocker = tmp_path / "taken"
    blocker.write_text("a file")
    out = blocker if kind == "a file" else blocker / "sub"
    done = run_cli("variation", image, *weights_args(models), "--out", out)
    assert done.code == 2 and len(done.error_lines) == 1 and f"--out {out}: " in done.err
    assert not no_loading


def test_read_only_out_fails_before_loading(models, image, tmp_path, no_loading, monkeypatch):
    out = tmp_path / "ro"
    out.mkdir(mode=0o555)
    real = checks.tempfile.TemporaryFile

    def denied(*args, dir=None, **kwargs):  # root ignores mode bits: fail the way other users see it
        if dir == out:
            raise PermissionError(13, "Permission denied")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(checks.tempfile, "TemporaryFile", denied)
    done = run_cli("variation", image, *weights_args(models), "--out", out)
    assert done.code == 2 and done.error_lines == [f"error: --out {out}: cannot write there (Permission denied); "
                                                   "choose another folder"]
    assert not no_loading


def test_missing_text_encoders_fail_before_loading(models, image, tmp_path, no_loading):
    done = run_cli("variation", image, *weights_args(models), "--models-dir", models["root"], "--prompt", "a cat",
                   "--out", tmp_path / "out")
    assert done.code == 2 and "a prompt needs FLUX's text encoders" in done.err and not no_loading


def test_explicit_slot_wins_over_models_dir(models, tmp_path):
    """A models folder without a transformer is fine when --transformer names one (issue 8)."""
    root = tmp_path / "models"
    shutil.copytree(models["root"], root, ignore=shutil.ignore_patterns("diffusion_models", "unet", "diffusers"))
    sources = checks.resolve_sources({"transformer": models["files"]["schnell"]}, root, "auto")
    assert sources["transformer"] == models["files"]["schnell"]
    assert sources["vae"] == root / "vae" / "ae.safetensors"
    explicit = {slot: models["files"][name] for slot, name in
                (("transformer", "dev"), ("vae", "vae"), ("redux", "redux"), ("siglip", "siglip"))}
    assert checks.resolve_sources(explicit, tmp_path / "absent", "dev") == explicit  # folder never searched


def test_explicit_slot_with_models_dir_runs(models, image, tmp_path):
    root = tmp_path / "models"
    shutil.copytree(models["root"], root, ignore=shutil.ignore_patterns("diffusion_models", "unet", "diffusers"))
    done = run_cli("variation", image, "--models-dir", root, "--transformer", models["files"]["schnell"], *FAST,
                   "--out", tmp_path / "out")
    assert done.code == 0, done.err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["ref_seed5_0.png"]


def test_prompt_encoders_are_unloaded_before_flux_loads(models, image, tmp_path, monkeypatch):
    """T5-XXL + CLIP-L (about 10 GB at real size) leave the cache once the prompt is encoded (issue 8)."""
    import tiny_models
    from fakes.cli_runs import cli

    text = tiny_models.write_text_encoders(tmp_path / "text")
    cache = submodule("pipelines.cache").CACHE
    cached_at_flux_load = []
    real = cli.load_flux_model

    def record(spec, *args, **kwargs):
        cached_at_flux_load.append([key[0] for key in cache._items])
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(cli, "load_flux_model", record)
    done = run_cli("variation", image, *weights_args(models), *FAST, "--prompt", "a cat", "--text-encoders",
                   text["folder"], "--out", tmp_path / "out")
    assert done.code == 0, done.err
    assert cached_at_flux_load and "text" not in cached_at_flux_load[0]


def test_files_of_different_models_are_told_apart_from_their_headers(models, image, tmp_path, no_loading):
    import tiny_models
    wide = tiny_models.write_safetensors(tmp_path / "flux1-redux-dev.safetensors", tiny_models._contiguous(
        tiny_models.make_redux(txt_width=48).state_dict()))
    files = models["files"]
    done = run_cli("variation", image, "--transformer", files["dev"], "--vae", files["vae"], "--redux", wide,
                   "--siglip", files["siglip"], "--out", tmp_path / "out")
    assert done.code == 2 and not no_loading
    assert done.error_lines == [f"error: {wide} makes 48-wide tokens but {files['dev']} takes 32-wide text tokens: "
                                "they belong to different models"]
