"""Misleading messages: what is missing is what the message names, for every variant choice."""

from __future__ import annotations

import shutil

import pytest

from fakes.cli_runs import no_loading, noise_png, run_cli  # noqa: F401
from packloader import submodule

weights = submodule("pipelines.weights")


def partial_models(models, tmp_path, *drop):
    root = tmp_path / "models"
    shutil.copytree(models["root"], root, ignore=shutil.ignore_patterns("diffusers", *drop))
    return root


def test_auto_without_a_transformer_lists_dev_and_schnell_places(models, tmp_path, no_loading):
    root = partial_models(models, tmp_path, "diffusion_models", "unet")
    done = run_cli("variation", noise_png(tmp_path / "r.png"), "--models-dir", root, "--out", tmp_path / "o")
    assert done.code == 2 and not no_loading
    assert "missing FLUX.1 dev or schnell weights for: transformer." in done.err
    for place in ("diffusion_models/flux1-dev.safetensors", "unet/flux1-schnell.safetensors",
                  "diffusers/FLUX.1-dev/transformer/", "diffusers/FLUX.1-schnell/transformer/"):
        assert place in done.err


@pytest.mark.parametrize("model", ["auto", "dev"])
def test_dev_transformer_without_vae_names_the_vae(models, tmp_path, no_loading, model):
    root = partial_models(models, tmp_path, "vae")
    done = run_cli("variation", noise_png(tmp_path / "r.png"), "--models-dir", root, "--model", model,
                   "--out", tmp_path / "o")
    assert done.code == 2
    assert "weights for: vae." in done.err and "transformer" not in done.error_lines[0]


def test_no_models_dir_names_the_missing_options(tmp_path, models, no_loading):
    done = run_cli("variation", noise_png(tmp_path / "r.png"), "--transformer", models["files"]["dev"],
                   "--out", tmp_path / "o")
    assert done.error_lines == ["error: no weights given for vae, redux, siglip: pass --models-dir ComfyUI/models, "
                                "or --vae FILE --redux FILE --siglip FILE"]


def test_find_weights_searches_only_the_slots_asked(tmp_path):
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "ae.safetensors").write_bytes(b"x")
    found = weights.find_weights(tmp_path, "dev", ("vae",))
    assert found.vae == tmp_path / "vae" / "ae.safetensors" and found.as_dict() == {"vae": str(found.vae)}
