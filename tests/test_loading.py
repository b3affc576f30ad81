"""Every loading path, variant detection, and the errors for wrong, broken or pickle files."""

import pytest
import torch
from packloader import submodule

import tiny_models as tm

loading = submodule("pipelines.loading")
weights = submodule("pipelines.weights")
models_mod = submodule("pipelines.models")
WeightsError = weights.WeightsError
F32 = torch.float32


def _same_params(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for k in sa:
        torch.testing.assert_close(sa[k].float(), sb[k].float(), rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("slot, variant", [("dev", "dev"), ("schnell", "schnell")])
def test_transformer_single_file_and_variant_detection(models, slot, variant):
    model, detected = loading.load_transformer(models["files"][slot], F32)
    assert detected == variant
    _same_params(model, models["sources"][slot])


@pytest.mark.parametrize("which", ["repo", "component"])
def test_transformer_and_vae_from_diffusers_folders(models, which):
    root = models["folders"]["flux_dev"]
    t_src, v_src = (root, root) if which == "repo" else (root / "transformer", root / "vae")
    model, detected = loading.load_transformer(t_src, F32)
    assert detected == "dev"
    _same_params(model, models["sources"]["dev"])
    _same_params(loading.load_vae(v_src, F32), models["sources"]["vae"])


def test_vae_from_ldm_single_file_decodes_like_source(models):
    vae = loading.load_vae(models["files"]["vae"], F32)
    _same_params(vae, models["sources"]["vae"])
    latents = torch.randn(1, tm.LATENT_CHANNELS, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(vae.decode(latents).sample, models["sources"]["vae"].decode(latents).sample)
    assert vae.config.scaling_factor == pytest.approx(0.3611) and vae.config.shift_factor == pytest.approx(0.1159)


def test_siglip_comfy_file_with_prefix_and_folder(models):
    from_file, processor = loading.load_siglip(models["files"]["siglip"], F32)
    from_folder, _ = loading.load_siglip(models["folders"]["redux_repo"], F32)
    src = models["sources"]["siglip"]
    _same_params(from_file, src)
    _same_params(from_folder, src)
    assert processor.size == {"height": tm.SIGLIP["image_size"], "width": tm.SIGLIP["image_size"]}


def test_siglip_file_without_head_loads(models, tmp_path):
    state = {k: v for k, v in tm.siglip_state_comfy(models["sources"]["siglip"]).items() if ".head." not in k}
    path = tm.write_safetensors(tmp_path / "headless.safetensors", state)
    model, _ = loading.load_siglip(path, F32)
    assert not model.config.vision_use_head


def test_redux_projector_file_and_folder(models):
    for source in (models["files"]["redux"], models["folders"]["redux_repo"]):
        _same_params(loading.load_redux_projector(source, F32), models["sources"]["redux"])


@pytest.mark.parametrize("requested", ["auto", "dev", "schnell"])
def test_variant_override_keeps_architecture(models, requested, fresh_cache):
    spec = models_mod.FluxModelSpec(str(models["files"]["dev"]), str(models["files"]["vae"]), variant=requested)
    flux = models_mod.load_flux_model(spec, fresh_cache)
    assert flux.variant == ("dev" if requested == "auto" else requested)
    assert flux.pipe.transformer.config.guidance_embeds  # the weights decide the architecture
    assert flux.pipe.scheduler.config.use_dynamic_shifting == (flux.variant == "dev")


# -- wrong, broken and refused files --------------------------------------------------------------------------

@pytest.mark.parametrize("loader, slot, expected", [
    (lambda p: loading.load_transformer(p, F32), "vae", "FLUX.1 transformer"),
    (lambda p: loading.load_vae(p, F32), "dev", "FLUX autoencoder"),
    (lambda p: loading.load_siglip(p, F32), "redux", "SigLIP vision tower"),
    (lambda p: loading.load_redux_projector(p, F32), "siglip", "Redux projector"),
])
def test_wrong_file_in_slot_names_file_and_expectation(models, loader, slot, expected):
    path = models["files"][slot]
    with pytest.raises(WeightsError) as info:
        loader(path)
    assert str(path) in str(info.value) and expected in str(info.value) and "this slot expects" in str(info.value)


def test_truncated_file_is_reported(models, tmp_path):
    data = models["files"]["vae"].read_bytes()
    cut = tmp_path / "ae.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=r"ae\.safetensors: not a readable safetensors file .* may be truncated"):
        loading.load_vae(cut, F32)


def test_garbage_file_is_reported(tmp_path):
    bad = tmp_path / "flux1-dev.safetensors"
    bad.write_bytes(b"<html>404 not found</html>" * 10)
    with pytest.raises(WeightsError, match=r"flux1-dev\.safetensors: not a readable safetensors file"):
        loading.load_transformer(bad, F32)


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".pth", ".bin"])
def test_pickle_checkpoints_are_refused_without_unpickling(tmp_path, suffix):
    path = tmp_path / f"flux1-dev{suffix}"
    path.write_bytes(b"\x80\x04not really a pickle")  # never opened: refused by name
    with pytest.raises(WeightsError, match="pickle checkpoints .* not loaded"):
        loading.load_transformer(path, F32)


def test_missing_file_and_non_diffusers_folder(tmp_path):
    with pytest.raises(WeightsError, match=r"nope\.safetensors: file not found \(expected the FLUX autoencoder"):
        loading.load_vae(tmp_path / "nope.safetensors", F32)
    with pytest.raises(WeightsError, match=r"not a diffusers folder for the FLUX transformer \(no config\.json"):
        loading.load_transformer(tmp_path, F32)


def test_mismatched_redux_and_siglip_widths(models, tmp_path, fresh_cache):
    other = tm.write_safetensors(tmp_path / "redux.safetensors",
                                 tm._contiguous(tm.make_redux(redux_dim=48).state_dict()))
    spec = models_mod.ReduxEncoderSpec(str(other), str(models["files"]["siglip"]))
    with pytest.raises(ValueError, match="takes 48-wide SigLIP features .* produces 64"):
        models_mod.load_redux_encoder(spec, fresh_cache)


# -- finding files in a ComfyUI models folder -----------------------------------------------------------------

def test_find_weights_prefers_comfy_single_files(models):
    found = weights.find_weights(models["root"], "schnell")
    assert found.transformer == models["files"]["schnell"]  # found in models/unet
    assert (found.vae, found.redux, found.siglip) == (models["files"]["vae"], models["files"]["redux"],
                                                       models["files"]["siglip"])


def test_find_weights_falls_back_to_diffusers_folders(models, tmp_path):
    import shutil
    root = tmp_path / "models"
    shutil.copytree(models["folders"]["flux_dev"], root / "diffusers" / "FLUX.1-dev")
    shutil.copytree(models["folders"]["redux_repo"], root / "diffusers" / "FLUX.1-Redux-dev")
    found = weights.find_weights(root, "dev")
    assert found.transformer == root / "diffusers" / "FLUX.1-dev" / "transformer"
    assert found.siglip == root / "diffusers" / "FLUX.1-Redux-dev" / "image_encoder"


def test_find_weights_lists_every_place_looked(tmp_path):
    (tmp_path / "models").mkdir()
    with pytest.raises(WeightsError) as info:
        weights.find_weights(tmp_path / "models", "dev")
    text = str(info.value)
    assert "missing FLUX.1 dev weights for: transformer, vae, redux, siglip" in text
    for expected in ("diffusion_models/flux1-dev.safetensors", "unet/flux1-dev.safetensors", "vae/ae.safetensors",
                     "style_models/flux1-redux-dev.safetensors",
                     "clip_vision/sigclip_vision_patch14_384.safetensors", "diffusers/FLUX.1-dev/transformer/"):
        assert expected in text


# -- BFL-named full-width transformer files (diffusers' converter needs width 3072) -----------------------------

@pytest.fixture(scope="module")
def bfl_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bfl")
    state = tm.bfl_transformer_state(guidance=True)
    files = {
        "plain": tm.write_safetensors(root / "flux1-dev.safetensors", state),
        "prefixed": tm.write_safetensors(root / "flux1-dev-comfy.safetensors",
                                         {f"model.diffusion_model.{k}": v for k, v in state.items()}),
        "fp8": tm.write_safetensors(root / "flux1-dev-fp8.safetensors",
                                    {k: v.to(torch.float8_e4m3fn) if v.ndim == 2 else v for k, v in state.items()}),
        "schnell": tm.write_safetensors(root / "flux1-schnell.safetensors",
                                        tm.bfl_transformer_state(guidance=False)),
    }
    return files, state


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["plain", "prefixed", "fp8", "schnell"])
def test_bfl_transformer_files(bfl_files, kind):
    files, state = bfl_files
    model, variant = loading.load_transformer(files[kind], torch.bfloat16)
    assert variant == ("schnell" if kind == "schnell" else "dev")
    cfg = model.config
    assert (cfg.num_layers, cfg.num_single_layers, cfg.in_channels, cfg.joint_attention_dim) == (1, 1, 16, 32)
    assert cfg.num_attention_heads * cfg.attention_head_dim == 3072
    assert not any(p.is_meta for p in model.parameters())
    expected = state["img_in.weight"]
    if kind == "fp8":
        expected = expected.to(torch.float8_e4m3fn).to(torch.bfloat16)
    if kind != "schnell":
        torch.testing.assert_close(model.x_embedder.weight, expected, rtol=0, atol=0)
    tokens, text = 4, 3
    with torch.no_grad():
        out = model(hidden_states=torch.randn(1, tokens, 16, dtype=torch.bfloat16),
                    encoder_hidden_states=torch.randn(1, text, 32, dtype=torch.bfloat16),
                    pooled_projections=torch.randn(1, 32, dtype=torch.bfloat16),
                    timestep=torch.tensor([0.5]), img_ids=torch.zeros(tokens, 3), txt_ids=torch.zeros(text, 3),
                    guidance=torch.tensor([3.5]) if variant == "dev" else None).sample
    assert out.shape == (1, tokens, 16) and torch.isfinite(out).all()
