"""Tracebacks instead of one line: every expected error is one line naming the input, the file and what is
expected, exit status 2; --debug adds the traceback."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from fakes.cli_runs import FAST, cli, no_loading, noise_png, run_cli, weights_args  # noqa: F401
from packloader import submodule

weights = submodule("pipelines.weights")
loading = submodule("pipelines.loading")


@pytest.fixture
def image(tmp_path):
    return noise_png(tmp_path / "ref.png")


def one_line_error(done, *words):
    assert done.code == 2, done.err
    assert len(done.error_lines) == 1, done.err
    assert "Traceback" not in done.err
    for word in words:
        assert word in done.error_lines[0], done.error_lines[0]


def with_slot(models, slot, path):
    args = weights_args(models)
    args[args.index(f"--{slot}") + 1] = path
    return args


def test_weight_file_without_read_permission(models, image, tmp_path, monkeypatch, no_loading):
    locked = tmp_path / "ae.safetensors"
    locked.write_bytes(models["files"]["vae"].read_bytes())
    os.chmod(locked, 0)
    if os.geteuid() == 0:  # root reads anything: answer the access check the way it is for other users
        real = weights.os.access
        monkeypatch.setattr(weights.os, "access", lambda p, mode: False if str(p) == str(locked) else real(p, mode))
    done = run_cli("variation", image, *with_slot(models, "vae", locked), "--out", tmp_path / "o")
    one_line_error(done, str(locked), "permission denied", "the FLUX autoencoder")
    assert "truncated" not in done.err


def test_diffusers_folder_of_the_wrong_kind(models, image, tmp_path, no_loading):
    wrong = models["folders"]["redux_repo"] / "image_encoder"
    done = run_cli("variation", image, *with_slot(models, "transformer", wrong), "--out", tmp_path / "o")
    one_line_error(done, str(wrong), "holds SiglipVisionModel", "expects a FLUX.1 transformer")
    with pytest.raises(weights.WeightsError, match="holds SiglipVisionModel"):  # the engine loader says the same
        loading.load_transformer(wrong, loading.torch.float32)


def test_folder_that_is_no_diffusers_folder(models, image, tmp_path, no_loading):
    done = run_cli("variation", image, *with_slot(models, "vae", tmp_path), "--out", tmp_path / "o")
    one_line_error(done, f"--vae {tmp_path}: not a diffusers folder (no config.json")


@pytest.mark.parametrize("drop", ["proj_out.weight", "transformer_blocks.1.attn.to_q.weight"])
def test_transformer_missing_a_tensor_names_it(models, image, tmp_path, no_loading, drop):
    state = load_file(str(models["files"]["dev"]))
    state.update({k.replace("transformer_blocks.0.", "transformer_blocks.1."): v.clone()
                  for k, v in state.items() if k.startswith("transformer_blocks.0.")})  # two blocks
    del state[drop]
    broken = tmp_path / "flux1-dev.safetensors"
    save_file(state, str(broken))
    done = run_cli("variation", image, *with_slot(models, "transformer", broken), "--out", tmp_path / "o")
    one_line_error(done, str(broken), f"lacks 1 tensor(s) (first: {drop})")


def test_truncated_weight_file(models, image, tmp_path, no_loading):
    cut = tmp_path / "flux1-redux-dev.safetensors"
    cut.write_bytes(models["files"]["redux"].read_bytes()[:100])
    done = run_cli("variation", image, *with_slot(models, "redux", cut), "--out", tmp_path / "o")
    one_line_error(done, str(cut), "not a readable safetensors file", "expected the Redux projector")


def test_reference_weight_out_of_range_keeps_the_range_in_argparse(image, tmp_path):
    done = run_cli("variation", "--ref", f"{image}:20", "--out", tmp_path / "o")
    assert done.code == 2
    assert f"{image}:20: weight=20.0 is not allowed: allowed range is 0.0–10.0" in done.err


def test_unexpected_error_is_one_line_with_a_hint_and_debug_shows_the_traceback(models, image, tmp_path,
                                                                                 monkeypatch):
    def broken(*args, **kwargs):
        raise KeyError("surprise")

    monkeypatch.setattr(cli, "load_flux_model", broken)
    done = run_cli("variation", image, *weights_args(models), *FAST, "--out", tmp_path / "o")
    assert done.code == 3 and "Traceback" not in done.err
    assert done.error_lines == ["error: unexpected KeyError: 'surprise' (a bug? rerun with --debug for the "
                                "traceback and report it)"]
    debug = run_cli("variation", image, *weights_args(models), *FAST, "--out", tmp_path / "o", "--debug")
    assert debug.code == 3 and "Traceback (most recent call last)" in debug.err and "KeyError" in debug.err


def test_expected_error_with_debug_shows_the_traceback(models, image, tmp_path, no_loading):
    done = run_cli("variation", image, *weights_args(models), "--device", "tpu", "--debug", "--out", tmp_path / "o")
    assert done.code == 2 and "Traceback (most recent call last)" in done.err
    assert done.error_lines == ["error: device='tpu' is not allowed: expected auto, cpu, cuda, cuda:N or mps"]


def test_out_of_memory_is_expected_and_actionable(models, image, tmp_path, monkeypatch):
    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")

    monkeypatch.setattr(cli, "generate", oom)
    done = run_cli("variation", image, *weights_args(models), *FAST, "--out", tmp_path / "o")
    assert done.code == 2
    assert done.error_lines == ["error: out of memory (CUDA out of memory. Tried to allocate 2 GiB); try --offload, "
                                "--weight-storage fp8, fewer --num-images or a smaller size"]


def test_engine_loader_names_the_missing_tensor_too(models, tmp_path):
    state = load_file(str(models["files"]["dev"]))
    del state["norm_out.linear.weight"]
    broken = tmp_path / "flux1-dev.safetensors"
    save_file(state, str(broken))
    with pytest.raises(weights.WeightsError, match=r"lacks 1 tensor\(s\) \(first: norm_out.linear.weight\)"):
        loading.load_transformer(broken, torch.float32)


def test_quantisation_extras_on_some_blocks_only_are_not_missing_tensors(models, tmp_path):
    state = load_file(str(models["files"]["dev"]))
    state.update({k.replace("transformer_blocks.0.", "transformer_blocks.1."): v.clone()
                  for k, v in state.items() if k.startswith("transformer_blocks.0.")})
    state["transformer_blocks.1.attn.to_q.scale_weight"] = torch.ones(1)  # one layer quantised, not the other
    path = tmp_path / "flux1-dev.safetensors"
    save_file(state, str(path))
    weights.check_transformer_complete(weights.read_index(path, "flux_transformer"))
