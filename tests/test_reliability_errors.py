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


# -- node inputs a hand-edited or API workflow can carry (issue 18, class 4) -----------------------------------
# Each reaches the engine's checks (pipelines/checks.py) and comes back as one line naming the node's input.

from fakes.node_inputs import load_encoder, load_model, models_root, photo  # noqa: E402,F401

local = submodule("nodes.local")
loaders = submodule("nodes.local_loaders")
restyle = submodule("nodes.restyle")
conditioning_nodes = submodule("nodes.conditioning")
variation = submodule("nodes.variation")
lora_node = submodule("nodes.lora")


def one_line(exc: BaseException, *words):
    text = str(exc)
    assert "\n" not in text and not isinstance(exc, (TypeError, AttributeError, ZeroDivisionError, RuntimeError))
    for word in words:
        assert word in text, text


BAD_DEVICES = ["cuda", "cuda:7", "tpu", "", "meta", "CPU", "cuda:-1", None, 0]


@pytest.mark.parametrize("loader", [load_encoder, load_model], ids=["Load Redux Encoder", "Load FLUX Model"])
@pytest.mark.parametrize("device", BAD_DEVICES, ids=repr)
def test_loader_device_widget_is_checked_like_the_cli(models_root, loader, device):
    if torch.cuda.is_available():
        pytest.fail("these cases assume a machine without CUDA")
    with pytest.raises(ValueError) as info:
        loader(device=device)
    one_line(info.value, f"device={device!r} is not allowed")
    if device in ("cuda", "cuda:7"):
        assert "CUDA is not available here" in str(info.value) and "use device cpu or auto" in str(info.value)
    else:
        assert "expected auto, cpu, cuda, cuda:N or mps" in str(info.value)


@pytest.mark.parametrize("loader, widget, value", [
    (load_model, "transformer", None), (load_model, "transformer", 5), (load_model, "vae", ""),
    (load_model, "vae", ["ae.safetensors"]), (load_encoder, "redux_model", None), (load_encoder, "clip_vision", 3.5),
], ids=lambda v: repr(v) if not callable(v) else v.__name__)
def test_loader_file_widget_of_the_wrong_type_names_the_widget(models_root, loader, widget, value):
    with pytest.raises(ValueError) as info:
        loader(**{widget: value})
    one_line(info.value, f"{widget}: got ", "expected a file name from the list of models/")


@pytest.mark.parametrize("value", [None, 7])
def test_lora_file_widget_of_the_wrong_type_names_the_widget(models_root, value):
    with pytest.raises(ValueError) as info:
        lora_node.FluxReduxLoadLora().load(load_model(), value, 1.0)
    one_line(info.value, "lora_name: got ", "models/loras")


BAD_IMAGES = {
    "empty batch": (torch.zeros(0, 64, 64, 3), "image: the batch is empty (0 images)"),
    "0x0 image": (torch.zeros(1, 0, 0, 3), "image: the image has no pixels (0x0)"),
    "zero width": (torch.zeros(1, 64, 0, 3), "image: the image has no pixels (0x64)"),
    "NaN pixels": (torch.full((1, 8, 8, 3), float("nan")), "image: 192 of its 192 values are NaN or infinite"),
    "inf pixel": (photo().index_put_((torch.tensor(0),), torch.tensor(float("inf"))), "are NaN or infinite"),
    "None": (None, "image: got nothing (None)"),
    "a list": ([photo()], "image: got a list of 1 item(s)"),
    "2 channels": (torch.zeros(1, 8, 8, 2), "image: got a float32 tensor of shape [1, 8, 8, 2]"),
}


@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_encode_image_input_is_checked_before_any_encoder_loads(case):
    image, words = BAD_IMAGES[case]
    with pytest.raises(ValueError) as info:
        local.FluxReduxEncode().encode(image, "center")  # no encoder connected: the image is checked first
    one_line(info.value, words, "expected a ComfyUI IMAGE")


@pytest.mark.parametrize("case", ["empty batch", "0x0 image", "NaN pixels"])
def test_encode_advanced_and_variation_check_their_image_too(case):
    image, words = BAD_IMAGES[case]
    with pytest.raises(ValueError) as info:
        restyle.FluxReduxEncodeAdvanced().encode(image, "center", 1.0, 1.0, "area", False, 32)
    one_line(info.value, words)
    generation = variation.Generation("square", 512, 512, 1, 3.5, 0, 1)
    hosting = variation.Hosting(False, "png", "none", False, "", 1)
    with pytest.raises(ValueError) as info:
        variation.run_hosted(image, "fal", "dev", generation, hosting)  # before any key or request
    one_line(info.value, words)


@pytest.mark.parametrize("init, words", [
    (torch.zeros(0, 64, 64, 3), "init_image: the batch is empty"),
    (torch.zeros(1, 0, 64, 3), "init_image: the image has no pixels (64x0)"),
    ("photo.png", "init_image: got the text 'photo.png'"),
])
def test_img2img_init_image_is_named(models_root, init, words):
    with pytest.raises(ValueError) as info:
        restyle.FluxReduxGenerateImg2Img().generate(load_model(), None, "match_init_image", 512, 512, 1, 3.5, 0, 1,
                                                    init, 0.5)
    one_line(info.value, words)


BAD_MASKS = {
    "zero width": (torch.ones(1, 48, 0), "mask: the mask has no pixels (0x48)"),
    "0x0": (torch.ones(0, 0), "mask: the mask has no pixels (0x0)"),
    "empty batch": (torch.ones(0, 48, 64), "mask: the batch is empty (0 masks)"),
    "NaN": (torch.full((1, 48, 64), float("nan")), "mask: 3072 of its 3072 values are NaN or infinite"),
    "a number": (1.0, "mask: got the float 1.0"),
}


@pytest.mark.parametrize("case", list(BAD_MASKS))
def test_mask_input_is_checked_before_any_encoder_loads(case):
    mask, words = BAD_MASKS[case]
    with pytest.raises(ValueError) as info:
        restyle.FluxReduxEncodeAdvanced().encode(photo(), "center", 1.0, 1.0, "area", False, 32, mask=mask)
    one_line(info.value, words, "expected a ComfyUI MASK")


NOT_REDUX = {"None": None, "a list": [[torch.zeros(1, 4, 32), {}]], "a string": "conditioning", "a tensor":
             torch.zeros(1, 729, 32), "a dict": {"image_tokens": torch.zeros(1, 729, 32)}}


@pytest.mark.parametrize("case", list(NOT_REDUX))
def test_generate_refuses_what_is_no_redux_conditioning_before_loading(models_root, case, monkeypatch):
    monkeypatch.setattr(local, "load_flux", lambda *a: pytest.fail("the model was loaded before the check"))
    with pytest.raises(ValueError) as info:
        local.FluxReduxGenerate().generate(load_model(), NOT_REDUX[case], "square", 512, 512, 1, 3.5, 0, 1)
    one_line(info.value, "conditioning: got ", "expected a REDUX_CONDITIONING")


@pytest.mark.parametrize("node, call", [
    ("Redux -> Conditioning", lambda bad: conditioning_nodes.FluxReduxToConditioning().apply(bad, 1.0, "multiply")),
    ("Redux + Prompt", lambda bad: restyle.FluxReduxPrompt().apply(bad, 1.0, 1.0)),
    ("Redux Combine 1", lambda bad: local.FluxReduxCombine().combine(bad, 1.0)),
])
@pytest.mark.parametrize("case", ["None", "a list"])
def test_other_nodes_refuse_what_is_no_redux_conditioning(node, call, case):
    with pytest.raises(ValueError) as info:
        call(NOT_REDUX[case])
    one_line(info.value, "expected a REDUX_CONDITIONING")
    assert str(info.value).startswith(("redux_conditioning: ", "conditioning: ", "conditioning_1: "))


def test_combine_names_the_bad_input_among_several(engine):
    good = engine.ReduxConditioning(torch.ones(1, 4, 32), (1.0,))
    with pytest.raises(ValueError) as info:
        local.FluxReduxCombine().combine(good, 1.0, conditioning_3=["not", "redux"], weight_3=0.5)
    one_line(info.value, "conditioning_3: got a list of 2 item(s)")
