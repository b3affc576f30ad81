"""Every loading path, variant detection, and the errors for wrong, broken or pickle files."""

import pytest
import torch
from packloader import submodule

import tiny_models as tm

loading = submodule("pipelines.loading")
weights = submodule("pipelines.weights")
models_mod = submodule("pipelines.models")
ModelCache = submodule("pipelines.cache").ModelCache
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


@pytest.mark.parametrize("narrow", [torch.float16, torch.float8_e4m3fn])
def test_narrow_siglip_file_computed_in_fp32_encodes_like_its_upcast(tmp_path, models, narrow):
    """Matrices kept narrow and cast layer by layer, except the pooling head's attention output projection, which
    nn.MultiheadAttention reads without calling it (kept in the compute dtype): the same features as the file's
    values upcast to fp32 at load."""
    state = tm._contiguous(tm.siglip_state_comfy(models["sources"]["siglip"]))
    stored = {k: v.to(narrow) if v.ndim == 2 or narrow == torch.float16 else v for k, v in state.items()}
    path = tm.write_safetensors(tmp_path / "narrow" / "siglip.safetensors", stored)
    wide = tm.write_safetensors(tmp_path / "wide" / "siglip.safetensors", {k: v.float() for k, v in stored.items()})
    model, _ = loading.load_siglip(path, F32)
    reference, _ = loading.load_siglip(wide, F32)
    modules = dict(model.named_modules())  # transformers 5 and 4.x name the tower differently
    fc1 = next(m for n, m in modules.items() if n.endswith("layers.0.mlp.fc1"))
    out_proj = next(m for n, m in modules.items() if n.endswith("head.attention.out_proj"))
    assert fc1.weight.dtype == narrow and out_proj.weight.dtype == F32
    pixels = torch.randn(2, 3, model.config.image_size, model.config.image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(pixel_values=pixels).pooler_output, reference(pixel_values=pixels).pooler_output)


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


# -- weight storage: the file's own precision by default -------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_fp8(models, tmp_path_factory):
    state = {k: v.to(torch.float8_e4m3fn) if v.ndim == 2 else v
             for k, v in tm._contiguous(models["sources"]["dev"].state_dict()).items()}
    return tm.write_safetensors(tmp_path_factory.mktemp("fp8") / "flux1-dev-fp8.safetensors", state)


def tiny_output(model):
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        return model(hidden_states=torch.randn(1, 16, 16, generator=gen),
                     encoder_hidden_states=torch.randn(1, 5, 32, generator=gen),
                     pooled_projections=torch.randn(1, 32, generator=gen), timestep=torch.tensor([0.5]),
                     img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(5, 3), guidance=torch.tensor([3.5])).sample


def linear_dtypes(model):
    return {m.weight.dtype for m in model.modules() if type(m) is torch.nn.Linear}


def test_fp8_file_stays_fp8_and_computes_like_diffusers(tiny_fp8):
    model, _ = loading.load_transformer(tiny_fp8, F32)
    assert linear_dtypes(model) == {torch.float8_e4m3fn} and model.dtype == F32
    assert {p.dtype for n, p in model.named_parameters() if not n.endswith(".weight")} == {F32}
    reference = diffusers_single_file(tiny_fp8, F32)
    assert torch.equal(tiny_output(model), tiny_output(reference))


def test_bf16_file_computed_in_fp32_keeps_its_linear_weights_bf16_and_computes_like_diffusers(models, tmp_path):
    """The CPU computes in fp32: a bf16 file's Linear weights stay bf16 (half the bytes) and are cast layer by
    layer, giving exactly what diffusers' fp32 model of the same file gives; other tensors are fp32."""
    state = {k: v.to(torch.bfloat16) for k, v in tm._contiguous(models["sources"]["dev"].state_dict()).items()}
    path = tm.write_safetensors(tmp_path / "flux1-dev-bf16.safetensors", state)
    model, _ = loading.load_transformer(path, F32)
    assert linear_dtypes(model) == {torch.bfloat16} and model.dtype == F32
    assert {p.dtype for n, p in model.named_parameters() if not n.endswith(".weight")} == {F32}
    wide, _ = loading.load_transformer(path, F32, "compute")
    assert linear_dtypes(wide) == {F32}
    reference = diffusers_single_file(path, F32)
    assert torch.equal(tiny_output(model), tiny_output(reference))
    assert torch.equal(tiny_output(wide), tiny_output(reference))
    half, _ = loading.load_transformer(path, torch.float16)  # as wide as bf16: cast at load, as diffusers does
    assert linear_dtypes(half) == {torch.float16}


def test_compute_storage_equals_diffusers_and_fp8_storage_casts_a_wide_file(models, tiny_fp8):
    wide, _ = loading.load_transformer(tiny_fp8, F32, "compute")
    _same_params(wide, diffusers_single_file(tiny_fp8, F32))
    assert linear_dtypes(wide) == {F32}
    narrow, _ = loading.load_transformer(models["files"]["dev"], F32, "fp8")
    assert linear_dtypes(narrow) == {torch.float8_e4m3fn}
    source = models["sources"]["dev"].state_dict()
    for name, value in narrow.state_dict().items():
        expected = source[name].to(value.dtype)
        assert torch.equal(value.float(), expected.float()), name
    plain, _ = loading.load_transformer(models["files"]["dev"], F32)  # default: an fp32 file stays fp32
    assert linear_dtypes(plain) == {F32}


def test_fp8_storage_of_a_diffusers_folder(models):
    model, _ = loading.load_transformer(models["folders"]["flux_dev"], F32, "fp8")
    assert linear_dtypes(model) == {torch.float8_e4m3fn} and model.dtype == F32
    reference = models["sources"]["dev"]
    for name, value in model.state_dict().items():
        assert torch.equal(value.float(), reference.state_dict()[name].to(value.dtype).float()), name


def test_vae_streamed_from_ldm_names_equals_diffusers_from_single_file(models):
    from diffusers import AutoencoderKL

    path = models["files"]["vae"]
    overrides = loading._vae_overrides(weights.read_index(path, "vae"))
    reference = AutoencoderKL.from_single_file(str(path), config=str(loading.CONFIG_DIR / "vae"),
                                               local_files_only=True, torch_dtype=F32, **overrides)
    _same_params(loading.load_vae(path, F32), reference)


def test_t5_tied_embeddings_are_one_tensor(tmp_path):
    text = submodule("pipelines.text")
    files = tm.write_text_encoders(tmp_path)
    encoders = text.load_text_encoders(text.TextEncoderSpec(str(files["clip_file"]), str(files["t5_file"]),
                                                            str(files["folder"]), loading.LoadOptions(device="cpu")),
                                       ModelCache())
    t5 = encoders.pipe.text_encoder_2
    assert t5.encoder.embed_tokens.weight.data_ptr() == t5.shared.weight.data_ptr()
    torch.testing.assert_close(t5.shared.weight, files["t5"].shared.weight, rtol=0, atol=0)


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


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float8_e4m3fn])  # copied as stored / cast
def test_a_file_cut_short_after_its_header_was_read_is_an_error_not_a_crash(tmp_path, dtype):
    """A download still being written, or cut while the loader runs: the header promises more bytes than the
    file has. Reading past the end of a memory mapping would kill the process (SIGBUS)."""
    streaming = submodule("pipelines.streaming")
    path = tm.write_safetensors(tmp_path / "cut.safetensors", {"decoder.up.0.w": torch.randn(64, 32).bfloat16()})
    index = weights.read_index(path, "vae")
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size - 1024)
    with streaming.WeightFile(index) as source, pytest.raises(WeightsError, match="cut.safetensors: ends inside"):
        source.read(streaming.Piece((("decoder.up.0.w", 0, 64),)), dtype)


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


def test_bf16_redux_files_encode_in_fp32_like_their_upcast(models, tmp_path):
    """flux1-redux-dev and SigLIP as bf16 files on the CPU (fp32): their matrices stay bf16 and the encoder still
    feeds each model its compute dtype, giving the tokens of the same files upcast to fp32 at load."""
    files = {"redux": tm._contiguous(models["sources"]["redux"].state_dict()),
             "siglip": tm._contiguous(tm.siglip_state_comfy(models["sources"]["siglip"]))}
    paths = {}
    for name, state in files.items():
        narrow = {k: v.to(torch.bfloat16) for k, v in state.items()}
        paths[name] = tm.write_safetensors(tmp_path / "bf16" / f"{name}.safetensors", narrow)
        paths[f"{name}_wide"] = tm.write_safetensors(tmp_path / "wide" / f"{name}.safetensors",
                                                     {k: v.float() for k, v in narrow.items()})
    options = loading.LoadOptions(device="cpu")
    bf16 = models_mod.load_redux_encoder(models_mod.ReduxEncoderSpec(str(paths["redux"]), str(paths["siglip"]),
                                                                     options), ModelCache())
    wide = models_mod.load_redux_encoder(models_mod.ReduxEncoderSpec(str(paths["redux_wide"]),
                                                                     str(paths["siglip_wide"]), options), ModelCache())
    assert torch.bfloat16 in {p.dtype for p in bf16.projector.parameters()}
    pixels = torch.rand(1, bf16.image_size, bf16.image_size, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(bf16.embed(pixels), wide.embed(pixels))


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


def bfl_output(model, variant="dev"):
    tokens, text = 4, 3
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        return model(hidden_states=torch.randn(1, tokens, 16, generator=gen).bfloat16(),
                     encoder_hidden_states=torch.randn(1, text, 32, generator=gen).bfloat16(),
                     pooled_projections=torch.randn(1, 32, generator=gen).bfloat16(),
                     timestep=torch.tensor([0.5]), img_ids=torch.zeros(tokens, 3), txt_ids=torch.zeros(text, 3),
                     guidance=torch.tensor([3.5]) if variant == "dev" else None).sample


def diffusers_single_file(path, dtype):
    """diffusers' own from_single_file with the engine's config overrides: the reference the streamed load must
    match (it holds the whole file in memory, so it is only used on small files)."""
    from diffusers import FluxTransformer2DModel

    overrides = loading._transformer_overrides(weights.read_index(path, "flux_transformer"))
    return FluxTransformer2DModel.from_single_file(str(path), config=str(loading.CONFIG_DIR / "transformer"),
                                                   local_files_only=True, torch_dtype=dtype, **overrides).eval()


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
    if kind == "fp8":  # the file's own precision is kept: fp8 weights, bf16 biases, computed in bf16
        expected = expected.to(torch.float8_e4m3fn)
        assert model.x_embedder.bias.dtype == torch.bfloat16 and model.dtype == torch.bfloat16
    if kind != "schnell":
        torch.testing.assert_close(model.x_embedder.weight, expected, rtol=0, atol=0)
    out = bfl_output(model, variant)
    assert out.shape == (1, 4, 16) and torch.isfinite(out).all()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["prefixed", "fp8"])
def test_bfl_streamed_in_compute_dtype_equals_diffusers_from_single_file(bfl_files, kind):
    """Key conversion (fused qkv split, scale/shift swap) and dtype, tensor for tensor, against diffusers."""
    files, _ = bfl_files
    model, _ = loading.load_transformer(files[kind], torch.bfloat16, "compute")
    _same_params(model, diffusers_single_file(files[kind], torch.bfloat16))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


@pytest.mark.slow
def test_fp8_file_kept_fp8_computes_like_diffusers_in_bf16(bfl_files):
    """fp8 -> bf16 is exact, so the fp8-stored model (cast layer by layer) gives diffusers' bf16 model's output
    bit for bit, in about half the memory."""
    files, _ = bfl_files
    model, _ = loading.load_transformer(files["fp8"], torch.bfloat16)
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear]
    assert linears and all(m.weight.dtype == torch.float8_e4m3fn for m in linears)
    reference = diffusers_single_file(files["fp8"], torch.bfloat16)
    assert torch.equal(bfl_output(model), bfl_output(reference))
    assert models_mod.modules_bytes([model]) < 0.55 * models_mod.modules_bytes([reference])


@pytest.mark.slow
def test_bf16_file_with_fp8_storage_is_cast_tensor_by_tensor(bfl_files):
    files, state = bfl_files
    model, _ = loading.load_transformer(files["plain"], torch.bfloat16, "fp8")
    assert all(m.weight.dtype == torch.float8_e4m3fn for m in model.modules() if type(m) is torch.nn.Linear)
    assert torch.equal(model.x_embedder.weight.view(torch.uint8), state["img_in.weight"].to(torch.float8_e4m3fn)
                       .view(torch.uint8))
    reference = diffusers_single_file(files["plain"], torch.bfloat16)
    for module in reference.modules():  # the same weights rounded through fp8, computed in bf16
        if type(module) is torch.nn.Linear:
            module.weight.data = module.weight.data.to(torch.float8_e4m3fn).to(torch.bfloat16)
    assert torch.equal(bfl_output(model), bfl_output(reference))
