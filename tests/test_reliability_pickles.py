"""Pickles: .bin/.pt/.ckpt weights are refused in every loader, in diffusers folders as well as single files
(unpickling can run arbitrary code)."""

from __future__ import annotations

import shutil

import pytest
import torch

from fakes.cli_runs import no_loading, noise_png, run_cli, weights_args  # noqa: F401
from packloader import submodule

loading = submodule("pipelines.loading")
text = submodule("pipelines.text")
weights = submodule("pipelines.weights")

FOLDER_LOADERS = {  # loader, the repo folder in the tiny models, its component subfolder
    "transformer": (lambda p: loading.load_transformer(p, torch.float32), "flux_dev", "transformer"),
    "vae": (lambda p: loading.load_vae(p, torch.float32), "flux_dev", "vae"),
    "siglip": (lambda p: loading.load_siglip(p, torch.float32), "redux_repo", "image_encoder"),
    "redux": (lambda p: loading.load_redux_projector(p, torch.float32), "redux_repo", "image_embedder"),
}


def with_pickle(models, tmp_path, repo: str, sub: str, name: str = "diffusion_pytorch_model.bin"):
    copy = tmp_path / repo
    shutil.copytree(models["folders"][repo], copy)
    (copy / sub / name).write_bytes(b"\x80\x04 pickle payload")
    return copy


@pytest.mark.parametrize("slot", list(FOLDER_LOADERS))
def test_every_folder_loader_refuses_pickles(models, tmp_path, slot):
    load, repo, sub = FOLDER_LOADERS[slot]
    folder = with_pickle(models, tmp_path, repo, sub)
    with pytest.raises(weights.WeightsError, match=r"holds pickle weights \(diffusion_pytorch_model.bin\)"):
        load(folder)


def test_text_encoder_folder_with_a_pickle_is_refused(tmp_path):
    import tiny_models
    folder = tiny_models.write_text_encoders(tmp_path)["folder"]
    (folder / "text_encoder_2" / "pytorch_model.bin").write_bytes(b"\x80\x04")
    spec = text.TextEncoderSpec(str(folder), str(folder))
    with pytest.raises(weights.WeightsError, match=r"text_encoder_2: holds pickle weights \(pytorch_model.bin\)"):
        text.load_text_encoders(spec, text.ModelCache())


def test_folder_with_only_pickles_is_refused_even_without_safetensors(models, tmp_path):
    folder = with_pickle(models, tmp_path, "flux_dev", "vae")
    for weights_file in (folder / "vae").glob("*.safetensors"):
        weights_file.unlink()
    with pytest.raises(weights.WeightsError, match="holds pickle weights"):
        loading.load_vae(folder, torch.float32)


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".pth", ".bin", ".pkl"])
def test_single_pickle_files_are_refused(tmp_path, suffix):
    path = tmp_path / f"flux1-dev{suffix}"
    path.write_bytes(b"\x80\x04")
    with pytest.raises(weights.WeightsError, match="pickle checkpoints"):
        weights.read_index(path, "flux_transformer")


def test_cli_refuses_a_pickle_folder_before_loading(models, tmp_path, no_loading):
    folder = with_pickle(models, tmp_path, "flux_dev", "transformer")
    args = weights_args(models)
    args[args.index("--transformer") + 1] = folder
    done = run_cli("variation", noise_png(tmp_path / "r.png"), *args, "--out", tmp_path / "o")
    assert done.code == 2 and len(done.error_lines) == 1
    assert f"{folder / 'transformer'}: holds pickle weights" in done.err and not no_loading
