"""The files users run FLUX from besides plain safetensors: GGUF, ComfyUI all-in-one checkpoints, scaled fp8,
and transformer files under any name, found by their headers."""

import logging
from pathlib import Path

import pytest
import torch
from packloader import submodule

import tiny_models as tm

loading = submodule("pipelines.loading")
weights = submodule("pipelines.weights")
models_mod = submodule("pipelines.models")
sampling = submodule("pipelines.sampling")
redux = submodule("pipelines.redux")
params = submodule("pipelines.params")
text = submodule("pipelines.text")
storage = submodule("pipelines.storage")
ModelCache = submodule("pipelines.cache").ModelCache
F32 = torch.float32


def transformer_output(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = dict(hidden_states=torch.randn(1, 16, 16, generator=gen),
             encoder_hidden_states=torch.randn(1, 5, 32, generator=gen),
             pooled_projections=torch.randn(1, 32, generator=gen), timestep=torch.tensor([0.5]),
             img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(5, 3), guidance=torch.tensor([3.5]))
    with torch.no_grad():
        return model(**x).sample


@pytest.fixture(scope="module")
def gguf_source():
    return tm.make_transformer(True, seed=12, heads=2)  # 256 wide: rows fill whole 256-value K-quant blocks


@pytest.mark.parametrize("qtype", tm.GGUF_QUANTS)
def test_gguf_transformer_matches_its_dequantized_weights(tmp_path, gguf_source, qtype):
    path = tmp_path / f"flux1-dev-{qtype}.gguf"
    held = tm.write_gguf(path, tm._contiguous(gguf_source.state_dict()), qtype)
    model, variant = loading.load_transformer(path, F32)
    assert variant == "dev"
    ff_out = model.transformer_blocks[0].ff.net[2].weight  # [256, 1024]: quantized in every type
    assert type(ff_out).__name__ == "GGUFParameter" and ff_out.dtype == torch.uint8  # stays quantized
    reference = tm.make_transformer(True, heads=2)
    reference.load_state_dict(held)
    expected = transformer_output(reference)
    torch.testing.assert_close(transformer_output(model), expected, rtol=1e-3, atol=1e-3 * expected.abs().max().item())
    footprint = weights.transformer_footprint(path)
    assert footprint.quantized and footprint.file_bytes < footprint.params * 4
    assert footprint.params == sum(p.numel() for p in gguf_source.parameters())


def in_file_mapping(path, address: int) -> bool:
    """Whether `address` lies in one of this process's mappings of the file `path`."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == str(path):
            low, high = (int(x, 16) for x in fields[0].split("-"))
            if low <= address < high:
                return True
    return False


@pytest.mark.parametrize("keep_mapped", [False, True], ids=["copied", "mapped"])
def test_gguf_blocks_for_the_cpu_can_stay_in_the_files_mapping(tmp_path, gguf_source, keep_mapped):
    """For a model that computes on the CPU the GGUF blocks stay in the file's read-only mapping (page cache, as
    ComfyUI-GGUF leaves them), else they are copied out; the same output either way."""
    path = tmp_path / "flux1-dev-Q8_0.gguf"
    tm.write_gguf(path, tm._contiguous(gguf_source.state_dict()), "Q8_0")
    model, _ = loading.load_transformer(path, F32, keep_mapped=keep_mapped)
    weight = model.transformer_blocks[0].ff.net[2].weight
    assert type(weight).__name__ == "GGUFParameter"
    assert in_file_mapping(path, weight.data_ptr()) == keep_mapped
    copied, _ = loading.load_transformer(path, F32)
    assert not in_file_mapping(path, copied.transformer_blocks[0].ff.net[2].weight.data_ptr())
    torch.testing.assert_close(transformer_output(model), transformer_output(copied), rtol=0, atol=0)


def test_gguf_model_generates_and_reports_its_quantized_size(tmp_path, models, gguf_source, caplog):
    path = tmp_path / "unet" / "my-flux-q8.gguf"
    tm.write_gguf(path, tm._contiguous(gguf_source.state_dict()), "Q8_0")
    spec = models_mod.FluxModelSpec(str(path), str(models["files"]["vae"]),
                                    options=loading.LoadOptions(device="cpu", weight_storage="fp8"))
    with caplog.at_level(logging.WARNING):
        flux = models_mod.load_flux_model(spec, ModelCache())
    assert "weight_storage=fp8 ignored" in caplog.text and flux.placement.weight_storage == "default"
    plain_bytes = sum(p.numel() * 4 for p in gguf_source.parameters())
    assert flux.memory_bytes() < plain_bytes and models_mod.kept_bytes(spec) == flux.memory_bytes()
    block = flux.modules()["transformer"].transformer_blocks[0].ff.net[2].weight
    assert in_file_mapping(path, block.data_ptr())  # computed on the CPU: left in the file's mapping
    encoder = models_mod.load_redux_encoder(models_mod.ReduxEncoderSpec(str(models["files"]["redux"]),
                                                                        str(models["files"]["siglip"])), ModelCache())
    gen = params.validate_generation("dev", "custom", 256, 256, num_inference_steps=2, seed=1)
    images = sampling.generate(flux, redux.encode(encoder, torch.rand(32, 32, 3)), gen).images
    assert images.shape == (1, 256, 256, 3) and torch.isfinite(images).all()


def test_all_in_one_checkpoint_loads_transformer_and_vae(tmp_path, models):
    src = models["sources"]
    text_state = {f"clip_l.transformer.{k}": v for k, v in tm.make_clip_text().state_dict().items()}
    path = tm.write_checkpoint(tmp_path / "checkpoints" / "flux1-dev-aio.safetensors",
                               tm._contiguous(src["dev"].state_dict()), tm.vae_state_ldm(src["vae"]), text_state)
    spec = models_mod.FluxModelSpec(str(path), str(path), options=loading.LoadOptions(device="cpu"))
    flux = models_mod.load_flux_model(spec, ModelCache())
    for loaded, source in ((flux.pipe.transformer, src["dev"]), (flux.pipe.vae, src["vae"])):
        for key, value in source.state_dict().items():
            torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0, msg=key)
    assert weights.transformer_footprint(path).params == sum(p.numel() for p in src["dev"].parameters())


def computed_weights(model) -> dict:
    """Every weight as the model computes with it: fp8 Linear weights cast and scaled by their hooks."""
    state = dict(model.state_dict())
    for name, module in storage.castable_linears(model).items():
        state[f"{name}.weight"] = storage.computed_weight(module)
    return state


@pytest.fixture(scope="module")
def scaled_file(tmp_path_factory, models):
    stored, meant = tm.scaled_fp8_state(tm._contiguous(models["sources"]["dev"].state_dict()))
    return tm.write_safetensors(tmp_path_factory.mktemp("scaled") / "flux1-dev-fp8-scaled.safetensors", stored), \
        stored, meant


def test_scaled_fp8_transformer_keeps_fp8_weights_and_computes_with_their_scales(scaled_file):
    """As ComfyUI keeps them: the fp8 values as stored, their scale multiplied in as each layer computes; the
    model gives exactly what the same weights dequantized at load (`compute` storage) give."""
    path, stored, meant = scaled_file
    kept, _ = loading.load_transformer(path, F32)
    wide, _ = loading.load_transformer(path, F32, "compute")
    weight = "transformer_blocks.0.ff.net.2.weight"
    assert kept.state_dict()[weight].dtype == torch.float8_e4m3fn
    assert torch.equal(kept.state_dict()[weight].view(torch.uint8), stored[weight].view(torch.uint8))
    assert wide.state_dict()[weight].dtype == F32
    for name, model in (("kept", computed_weights(kept)), ("dequantized", wide.state_dict())):
        for key, value in meant.items():
            torch.testing.assert_close(model[key], value, rtol=0, atol=0, msg=f"{name} {key}")
    # the scales matter: without them the weights would be the raw fp8 values, hundreds of times larger
    assert computed_weights(kept)[weight].abs().max() < stored[weight].float().abs().max() / 10
    assert torch.equal(transformer_output(kept), transformer_output(wide))


def test_scaled_fp8_kept_fp8_costs_one_byte_a_weight_in_placement(scaled_file):
    path, stored, _ = scaled_file
    footprint = weights.transformer_footprint(path)
    matrices = sum(v.numel() for k, v in stored.items() if k.endswith(".weight") and v.ndim == 2)
    assert footprint.fp8_params == matrices > 0


def test_scaled_fp8_with_a_scale_per_row_is_dequantized_at_load(tmp_path, models):
    """A layout whose scales cannot stay one number per layer: the weights are dequantized when read."""
    state = tm._contiguous(models["sources"]["dev"].state_dict())
    stored, meant = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}, {}
    for name, value in state.items():
        if name.endswith(".weight") and value.ndim == 2:
            scale = value.float().abs().amax(dim=1).clamp(min=1e-8) / 448.0
            stored[name] = (value.float() / scale[:, None]).to(torch.float8_e4m3fn)
            stored[name[:-6] + "scale_weight"] = scale
            meant[name] = stored[name].float() * scale[:, None]
        else:
            stored[name] = meant[name] = value
    path = tm.write_safetensors(tmp_path / "flux1-dev-fp8-rowscaled.safetensors", stored)
    model, _ = loading.load_transformer(path, F32)
    for key, value in meant.items():
        assert model.state_dict()[key].dtype == F32, key
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0, msg=key)
    fp8, _ = loading.load_transformer(path, F32, "fp8")
    weight = "transformer_blocks.0.ff.net.2.weight"
    assert fp8.state_dict()[weight].dtype == torch.float8_e4m3fn
    assert torch.equal(computed_weights(fp8)[weight], meant[weight].to(torch.float8_e4m3fn).float())


def test_scaled_fp8_text_encoders_keep_their_scales(tmp_path):
    files = tm.write_text_encoders(tmp_path)
    clip_stored, clip_meant = tm.scaled_fp8_state(tm._contiguous(
        {k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in files["clip"].state_dict().items()}))
    t5_stored, t5_meant = tm.scaled_fp8_state(tm._contiguous(
        {k: v for k, v in files["t5"].state_dict().items() if k != "encoder.embed_tokens.weight"}))
    clip_path = tm.write_safetensors(tmp_path / "text_encoders" / "clip_l_scaled.safetensors", clip_stored)
    t5_path = tm.write_safetensors(tmp_path / "text_encoders" / "t5xxl_fp8_e4m3fn_scaled.safetensors", t5_stored)
    encoders = text.load_text_encoders(text.TextEncoderSpec(str(clip_path), str(t5_path), str(files["folder"]),
                                                            loading.LoadOptions(device="cpu")), ModelCache())
    clip, t5 = computed_weights(encoders.pipe.text_encoder), computed_weights(encoders.pipe.text_encoder_2)
    t5_attention = encoders.pipe.text_encoder_2.encoder.block[0].layer[0].SelfAttention.q.weight
    assert t5_attention.dtype == torch.float8_e4m3fn  # kept as stored, its scale beside it
    for key, value in clip_meant.items():  # transformers 5 drops the text_model. prefix, 4.x keeps it
        loaded = clip[key] if key in clip else clip[key.removeprefix("text_model.")]
        torch.testing.assert_close(loaded, value, rtol=0, atol=0, msg=key)
    for key, value in t5_meant.items():
        torch.testing.assert_close(t5[key], value, rtol=0, atol=0, msg=key)


def test_plain_fp8_text_encoders_stay_fp8_and_encode_like_their_upcast(tmp_path):
    """t5xxl_fp8_e4m3fn.safetensors as users have it: fp8 matrices kept fp8 (T5's `wo` in fp32, as transformers
    keeps it), computed layer by layer; the prompt encodes exactly as with the same weights upcast to fp32."""
    files = tm.write_text_encoders(tmp_path)
    narrow = lambda state: {k: v.to(torch.float8_e4m3fn) if v.ndim == 2 else v for k, v in state.items()}  # noqa: E731
    clip_state = {k if k.startswith("text_model.") else f"text_model.{k}": v
                  for k, v in tm._contiguous(files["clip"].state_dict()).items()}
    t5_state = {k: v for k, v in tm._contiguous(files["t5"].state_dict()).items() if k != "encoder.embed_tokens.weight"}
    paths = {}
    for name, state in (("clip", clip_state), ("t5", t5_state)):
        paths[name] = tm.write_safetensors(tmp_path / "fp8" / f"{name}.safetensors", narrow(state))
        paths[f"{name}_wide"] = tm.write_safetensors(tmp_path / "wide" / f"{name}.safetensors",
                                                     {k: v.float() for k, v in narrow(state).items()})
    options = loading.LoadOptions(device="cpu")
    fp8 = text.load_text_encoders(text.TextEncoderSpec(str(paths["clip"]), str(paths["t5"]), str(files["folder"]),
                                                       options), ModelCache())
    wide = text.load_text_encoders(text.TextEncoderSpec(str(paths["clip_wide"]), str(paths["t5_wide"]),
                                                        str(files["folder"]), options), ModelCache())
    t5 = fp8.pipe.text_encoder_2
    assert t5.encoder.block[0].layer[0].SelfAttention.q.weight.dtype == torch.float8_e4m3fn
    assert t5.encoder.block[0].layer[1].DenseReluDense.wo.weight.dtype == F32
    a, b = text.encode_prompt(fp8, "a photo of a cat"), text.encode_prompt(wide, "a photo of a cat")
    assert torch.equal(a.embeds, b.embeds) and torch.equal(a.pooled, b.pooled)


def test_other_scaled_layouts_are_refused_naming_the_file(tmp_path, models):
    state = tm._contiguous(models["sources"]["dev"].state_dict())
    state["transformer_blocks.0.ff.net.2.weight_scale"] = torch.ones(())
    path = tm.write_safetensors(tmp_path / "flux1-dev-mixed.safetensors", state)
    with pytest.raises(weights.WeightsError, match=r"flux1-dev-mixed\.safetensors: quantized with scales this "
                                                   r"pack cannot apply \(e\.g\. transformer_blocks\.0\.ff"):
        loading.load_transformer(path, F32)
    stored, _ = tm.scaled_fp8_state(state := tm._contiguous(models["sources"]["dev"].state_dict()))
    stored["orphan.scale_weight"] = torch.ones(())
    orphan = tm.write_safetensors(tmp_path / "flux1-dev-odd.safetensors", stored)
    with pytest.raises(weights.WeightsError, match=r"flux1-dev-odd\.safetensors: orphan\.scale_weight matches no"):
        loading.load_transformer(orphan, F32)


def test_truncated_gguf_is_reported(tmp_path, gguf_source):
    path = tmp_path / "flux.gguf"
    tm.write_gguf(path, tm._contiguous(gguf_source.state_dict()), "Q8_0")
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(weights.WeightsError, match=r"flux\.gguf: not a readable GGUF file"):
        loading.load_transformer(path, F32)


# -- finding transformers by header -------------------------------------------------------------------------

def models_dir_with(tmp_path, models, files: dict):
    root = tmp_path / "models"
    for rel, source in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(source.read_bytes())
    for rel in ("vae/ae.safetensors", "style_models/flux1-redux-dev.safetensors",
                "clip_vision/sigclip_vision_patch14_384.safetensors"):
        if rel not in files:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes((models["root"] / rel).read_bytes())
    return root


def test_any_file_name_is_found_by_its_header(tmp_path, models):
    root = models_dir_with(tmp_path, models, {"diffusion_models/my-favourite.safetensors": models["files"]["dev"],
                                              "unet/fast.sft": models["files"]["schnell"],
                                              "diffusion_models/notes.safetensors": models["files"]["vae"]})
    assert weights.find_weights(root, "dev").transformer == root / "diffusion_models" / "my-favourite.safetensors"
    assert weights.find_weights(root, "schnell").transformer == root / "unet" / "fast.sft"


def test_several_candidates_are_listed_and_one_is_used(tmp_path, models, caplog):
    root = models_dir_with(tmp_path, models, {"diffusion_models/a-dev.safetensors": models["files"]["dev"],
                                              "unet/b-dev.safetensors": models["files"]["dev"]})
    with caplog.at_level(logging.WARNING):
        found = weights.find_weights(root, "dev")
    assert found.transformer == root / "diffusion_models" / "a-dev.safetensors"
    assert "several FLUX.1 dev transformers" in caplog.text and "unet/b-dev.safetensors" in caplog.text


def test_checkpoint_and_gguf_are_found_and_a_checkpoint_brings_its_vae(tmp_path, models, gguf_source):
    src = models["sources"]
    ckpt = tm.write_checkpoint(tmp_path / "aio.safetensors", tm._contiguous(src["dev"].state_dict()),
                               tm.vae_state_ldm(src["vae"]))
    root = models_dir_with(tmp_path, models, {"checkpoints/flux-aio.safetensors": ckpt,
                                              "vae/ae.safetensors": ckpt})  # a VAE slot file replaced below
    (root / "vae" / "ae.safetensors").unlink()
    found = weights.find_weights(root, "dev")
    assert found.transformer == found.vae == root / "checkpoints" / "flux-aio.safetensors"
    tm.write_gguf(root / "unet" / "flux1-schnell-Q4_0.gguf", tm._contiguous(
        tm.make_transformer(False, heads=2).state_dict()), "Q4_0")
    assert weights.find_weights(root, "schnell", slots=("transformer", "redux", "siglip")).transformer == root / "unet" / "flux1-schnell-Q4_0.gguf"


def test_explicit_slots_are_not_looked_for(tmp_path):
    root = tmp_path / "models"
    root.mkdir()
    found = weights.find_weights(root, "dev", slots=())
    assert found.as_dict() == {}


@pytest.mark.slow
def test_city96_style_gguf_with_bfl_names(tmp_path):
    """city96's files keep BFL names; diffusers converts them (width 3072, 1 double + 1 single block here).
    The fused qkv / linear1 weights are split while quantized; only those are quantized, to keep this fast, and
    the rest is F16, to keep the file at 1 GB."""
    state = tm.bfl_transformer_state(guidance=True)
    fused = ("double_blocks.0.img_attn.qkv.weight", "single_blocks.0.linear1.weight")
    path = tmp_path / "flux1-dev-Q8_0.gguf"
    held = tm.write_gguf(path, state, "Q8_0", quantize=lambda name: name in fused, plain="float16")
    plain = tm.write_safetensors(tmp_path / "flux1-dev.safetensors",
                                 {k: v.to(torch.bfloat16).contiguous() for k, v in held.items()})
    model, variant = loading.load_transformer(path, torch.bfloat16)
    reference, _ = loading.load_transformer(plain, torch.bfloat16)
    assert variant == "dev" and type(model.transformer_blocks[0].attn.to_q.weight).__name__ == "GGUFParameter"
    gen = torch.Generator().manual_seed(0)
    x = dict(hidden_states=torch.randn(1, 4, 16, generator=gen).bfloat16(),
             encoder_hidden_states=torch.randn(1, 3, 32, generator=gen).bfloat16(),
             pooled_projections=torch.randn(1, 32, generator=gen).bfloat16(), timestep=torch.tensor([0.5]),
             img_ids=torch.zeros(4, 3), txt_ids=torch.zeros(3, 3), guidance=torch.tensor([3.5]))
    with torch.no_grad():
        out, expected = model(**x).sample.float(), reference(**x).sample.float()
    torch.testing.assert_close(out, expected, rtol=2e-2, atol=2e-2 * expected.abs().max().item())


def test_loader_node_offers_gguf_files(tmp_path, monkeypatch, gguf_source):
    bridge = submodule("nodes.comfy_bridge")
    path = tmp_path / "models" / "unet" / "flux1-dev-Q8_0.gguf"
    tm.write_gguf(path, tm._contiguous(gguf_source.state_dict()), "Q8_0")
    monkeypatch.setattr(bridge, "MODELS_ROOT", tmp_path / "models")
    assert "flux1-dev-Q8_0.gguf" in bridge.model_choices("diffusion_models", "transformer")
    assert bridge.resolve_model("diffusion_models", "transformer", "flux1-dev-Q8_0.gguf").endswith(".gguf")


def test_cli_runs_a_gguf_transformer(tmp_path, models, gguf_source):
    """The CLI's pre-load checks read GGUF headers too (no safetensors value sampling on a GGUF file)."""
    from fakes.cli_runs import FAST, run_cli

    path = tmp_path / "unet" / "my-flux-q8.gguf"
    tm.write_gguf(path, tm._contiguous(gguf_source.state_dict()), "Q8_0")
    ref = tmp_path / "ref.png"
    from PIL import Image
    Image.new("RGB", (40, 30), (200, 80, 10)).save(ref)
    files = models["files"]
    outcome = run_cli("variation", ref, "--transformer", path, "--vae", files["vae"], "--redux", files["redux"],
                      "--siglip", files["siglip"], "--out", tmp_path / "out", *FAST)
    assert outcome.code == 0, outcome.err
    assert len(list((tmp_path / "out").glob("*.png"))) == 1


def test_auto_placement_keeps_a_gguf_that_fits_whole_even_with_fp8_asked():
    placement = submodule("pipelines.placement")
    decided = placement.decide(placement.Footprint(12 * 10**9, 7 * 10**9, quantized=True), 2 * 10**8, 80 * 10**9,
                               2, "fp8")
    assert (decided.offload, decided.weight_storage) == ("none", "default")


def test_a_lora_on_an_fp8_file_kept_fp8_computes_in_the_compute_dtype(tmp_path, models):
    """fp8 files stay fp8 by default; a LoRA on them is held and computed in the compute dtype (peft would
    otherwise cast it to the base layer's fp8)."""
    from safetensors.torch import save_file

    lora = submodule("pipelines.lora")
    source = tm._contiguous(models["sources"]["dev"].state_dict())
    path = tm.write_safetensors(tmp_path / "flux1-dev-fp8.safetensors",
                                {k: v.to(torch.float8_e4m3fn) if v.ndim == 2 else v for k, v in source.items()})
    gen = torch.Generator().manual_seed(0)
    save_file({"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.randn(4, 128, generator=gen),
               "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.randn(128, 4, generator=gen)},
              str(tmp_path / "lora.safetensors"))
    cache = ModelCache()
    encoder = models_mod.load_redux_encoder(models_mod.ReduxEncoderSpec(str(models["files"]["redux"]),
                                                                        str(models["files"]["siglip"])), cache)
    cond = redux.encode(encoder, torch.rand(32, 32, 3))
    run = params.validate_generation("dev", "custom", 256, 256, num_inference_steps=1, seed=1)

    def flux(*loras):
        spec = models_mod.FluxModelSpec(str(path), str(models["files"]["vae"]), options=loading.LoadOptions(
            device="cpu"), loras=tuple(lora.LoraSpec(str(tmp_path / "lora.safetensors"), s) for s in loras))
        return models_mod.load_flux_model(spec, cache)

    plain = sampling.generate(flux(), cond, run).images
    loads = cache.loads
    with_lora = flux(1.0)
    images = sampling.generate(with_lora, cond, run).images
    to_q = with_lora.pipe.transformer.transformer_blocks[0].attn.to_q
    assert to_q.base_layer.weight.dtype == torch.float8_e4m3fn
    assert {p.dtype for n, p in to_q.named_parameters() if "lora_" in n} == {F32}
    assert (images - plain).abs().max() > 1e-3
    assert torch.equal(sampling.generate(flux(), cond, run).images, plain) and cache.loads == loads


@pytest.mark.parametrize("storage", ["default", "fp8"])
def test_kept_bytes_from_headers_is_what_the_loaded_model_holds(models, storage):
    """ComfyUI's nodes build a model straight on the GPU only when kept_bytes (read from headers, before any load)
    fits there: it must be what the model really holds once loaded, transformer and VAE."""
    spec = models_mod.FluxModelSpec(str(models["files"]["dev"]), str(models["files"]["vae"]),
                                    options=loading.LoadOptions(device="cpu", weight_storage=storage))
    flux = models_mod.load_flux_model(spec, ModelCache())
    assert models_mod.kept_bytes(spec) == flux.memory_bytes()
