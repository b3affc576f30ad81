"""LoRAs: tiny LoRA files in each key format users have, applied at generate time without reloading the model."""

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from packloader import submodule

params = submodule("pipelines.params")
models_mod = submodule("pipelines.models")
sampling = submodule("pipelines.sampling")
redux = submodule("pipelines.redux")
lora = submodule("pipelines.lora")
WeightsError = submodule("pipelines.weights").WeightsError
ModelCache = submodule("pipelines.cache").ModelCache

RANK, INNER = 4, 128  # the tiny transformer: one 128-wide head
# BFL layer -> (out, in) features in the tiny transformer; kohya and ComfyUI files use these names
BFL_LAYERS = {"double_blocks.0.img_attn.qkv": (3 * INNER, INNER), "double_blocks.0.img_attn.proj": (INNER, INNER),
              "single_blocks.0.linear2": (INNER, 5 * INNER)}
# diffusers layer -> in features (out is INNER for all three)
DIFFUSERS_LAYERS = {"transformer_blocks.0.attn.to_q": INNER, "transformer_blocks.0.attn.to_v": INNER,
                    "single_transformer_blocks.0.proj_out": 5 * INNER}


def _random(gen, *shape):
    return torch.randn(*shape, generator=gen) * 0.3


def peft_lora(seed=0) -> dict:
    """diffusers/PEFT keys: transformer.<module>.lora_A/lora_B.weight."""
    gen, state = torch.Generator().manual_seed(seed), {}
    for name, fin in DIFFUSERS_LAYERS.items():
        state[f"transformer.{name}.lora_A.weight"] = _random(gen, RANK, fin)
        state[f"transformer.{name}.lora_B.weight"] = _random(gen, INNER, RANK)
    return state


def kohya_style_lora(prefix: str, dotted: bool, seed=1) -> dict:
    """kohya/sd-scripts (lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight) or ComfyUI
    (diffusion_model.double_blocks.0.img_attn.qkv.lora_down.weight), with alpha."""
    gen, state = torch.Generator().manual_seed(seed), {}
    for layer, (fout, fin) in BFL_LAYERS.items():
        key = prefix + (layer if dotted else layer.replace(".", "_"))
        state[f"{key}.lora_down.weight"] = _random(gen, RANK, fin)
        state[f"{key}.lora_up.weight"] = _random(gen, fout, RANK)
        state[f"{key}.alpha"] = torch.tensor(float(RANK))
    return state


FORMATS = {"peft": peft_lora, "kohya": lambda: kohya_style_lora("lora_unet_", dotted=False),
           "comfy": lambda: kohya_style_lora("diffusion_model.", dotted=True)}


@pytest.fixture(scope="module")
def lora_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    files = {}
    for name, make in FORMATS.items():
        files[name] = folder / f"{name}.safetensors"
        save_file(make(), str(files[name]))
    return files


@pytest.fixture(scope="module")
def cache():
    return ModelCache()


@pytest.fixture(scope="module")
def cond(models):
    spec = models_mod.ReduxEncoderSpec(str(models["files"]["redux"]), str(models["files"]["siglip"]))
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    return redux.encode(models_mod.load_redux_encoder(spec, ModelCache()), photo)


def flux(models, cache, *loras):
    spec = models_mod.FluxModelSpec(str(models["files"]["dev"]), str(models["files"]["vae"]),
                                    loras=tuple(lora.LoraSpec(str(p), s) for p, s in loras))
    return models_mod.load_flux_model(spec, cache)


def run(model, cond):
    gen = params.validate_generation("dev", "custom", 256, 256, num_inference_steps=2, seed=7)
    return sampling.generate(model, cond, gen).images


@pytest.fixture(scope="module")
def plain(models, cache, cond):
    return run(flux(models, cache), cond)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_lora_changes_output_and_unload_restores_it(models, cache, cond, plain, lora_files, fmt):
    loads = cache.loads
    with_lora = run(flux(models, cache, (lora_files[fmt], 1.0)), cond)
    assert (with_lora - plain).abs().max() > 1e-3, f"{fmt} LoRA had no effect"
    zero = run(flux(models, cache, (lora_files[fmt], 0.0)), cond)
    assert torch.equal(zero, plain), "strength 0 must equal no LoRA"
    restored = run(flux(models, cache), cond)
    assert torch.equal(restored, plain), "removing the LoRA must restore the original output exactly"
    assert cache.loads == loads == 1, "a LoRA change must not reload the base model"


def test_strength_scales_and_stacks(models, cache, cond, plain, lora_files):
    half = run(flux(models, cache, (lora_files["peft"], 0.5)), cond)
    full = run(flux(models, cache, (lora_files["peft"], 1.0)), cond)
    assert not torch.equal(half, full) and not torch.equal(half, plain)
    stacked = run(flux(models, cache, (lora_files["peft"], 1.0), (lora_files["kohya"], 1.0)), cond)
    assert not torch.equal(stacked, full)
    same_file_twice = run(flux(models, cache, (lora_files["peft"], 0.5), (lora_files["peft"], 0.5)), cond)
    assert torch.allclose(same_file_twice, full, atol=1e-6), "the same file twice adds its strengths"
    model = flux(models, cache)
    run(model, cond)
    assert lora.loaded_adapters(model.pipe) == [], "no adapters may stay loaded without LoRAs"


def test_metadata_names_loras(models, cache, cond, lora_files):
    model = flux(models, cache, (lora_files["comfy"], 0.7))
    gen = params.validate_generation("dev", "custom", 256, 256, num_inference_steps=1, seed=1)
    meta = sampling.generate(model, cond, gen).metadata
    assert meta["loras"] == [[str(lora_files["comfy"]), 0.7]]
    run(flux(models, cache), cond)  # leave the shared model plain


def _bad_files(tmp_path, lora_files, models):
    pickle = tmp_path / "style.ckpt"
    torch.save(peft_lora(), pickle)
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(lora_files["peft"].read_bytes()[:300])
    sdxl = tmp_path / "sdxl.safetensors"  # a kohya LoRA for an SDXL UNet
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 320),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(320, 4)}, str(sdxl))
    too_wide = tmp_path / "full-flux.safetensors"  # a LoRA made for full-size FLUX (3072 wide)
    save_file({"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 3072),
               "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(3072, 4)}, str(too_wide))
    return {"pickle": pickle, "truncated": truncated, "wrong model": sdxl, "not this transformer": too_wide,
            "a model, not a LoRA": models["files"]["vae"], "missing": tmp_path / "nope.safetensors"}


def test_bad_lora_files_give_one_line_errors_naming_the_file(models, cache, cond, plain, lora_files, tmp_path):
    for why, path in _bad_files(tmp_path, lora_files, models).items():
        with pytest.raises(WeightsError) as info:
            run(flux(models, cache, (path, 1.0)), cond)
        message = str(info.value)
        assert str(path) in message and "\n" not in message, (why, message)
    assert torch.equal(run(flux(models, cache), cond), plain), "a failed LoRA must not leave the model changed"


def test_lora_spec_and_cli_argument_validation(lora_files):
    with pytest.raises(params.ParameterError, match="strength"):
        lora.LoraSpec("x.safetensors", 11.0)
    assert lora.parse_lora_arg(f"{lora_files['peft']}:0.8") == lora.LoraSpec(str(lora_files["peft"]), 0.8)
    assert lora.parse_lora_arg(str(lora_files["peft"])).strength == 1.0
    with pytest.raises(params.ParameterError, match="FILE:STRENGTH"):
        lora.parse_lora_arg("missing.safetensors:strong")


def test_cli_lora_speed_and_cache_flags(models, lora_files, tmp_path):
    from test_cli import cli

    image = tmp_path / "ref.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "out"
    done = cli("variation", image, "--models-dir", models["root"], "--model", "dev", "--size", "custom", "--width",
               256, "--height", 256, "--steps", 1, "--seed", 3, "--out", out, "--lora", f"{lora_files['peft']}:0.8",
               "--lora", lora_files["comfy"], "--speed", "fp8", "--cache-threshold", 0.08)
    assert done.returncode == 0, done.stderr
    with Image.open(next(out.iterdir())) as png:
        meta = __import__("json").loads(png.text["flux_redux"])
    assert meta["loras"] == [[str(lora_files["peft"]), 0.8], [str(lora_files["comfy"]), 1.0]]
    assert meta["cache_threshold"] == 0.08 and "fp8" in meta["speed_skipped"]
    for flags, expected in ((["--lora", tmp_path / "gone.safetensors:0.5"], "gone.safetensors: LoRA file not found"),
                            (["--speed", "turbo"], "speed='turbo' is not allowed"),
                            (["--cache-threshold", 2], "cache_threshold=2.0 is not allowed")):
        failed = cli("variation", image, "--models-dir", models["root"], "--out", out, *flags)
        assert failed.returncode == 2 and expected in failed.stderr, failed.stderr
        assert len(failed.stderr.strip().splitlines()) == 1, failed.stderr


def test_load_lora_node_chains_without_reloading(models, cache, cond, lora_files, monkeypatch):
    import shutil

    from packloader import pack

    bridge, loaders = submodule("nodes.comfy_bridge"), submodule("nodes.local_loaders")
    (models["root"] / "loras").mkdir(exist_ok=True)
    for path in lora_files.values():
        shutil.copy(path, models["root"] / "loras" / path.name)
    monkeypatch.setattr(bridge, "MODELS_ROOT", models["root"])
    node = pack.NODE_CLASS_MAPPINGS["FluxReduxLoadLora"]
    assert pack.NODE_DISPLAY_NAME_MAPPINGS["FluxReduxLoadLora"] == "Load LoRA (FLUX Redux)"
    inputs = node.INPUT_TYPES()["required"]
    assert "peft.safetensors" in inputs["lora_name"][0] and inputs["strength"][1]["default"] == 1.0
    base = loaders.FluxReduxLoadModel().load("flux1-dev.safetensors", "ae.safetensors", "auto", "default", "none",
                                             "auto", "cpu", speed="none", cache_threshold=0.0)[0]
    one = node().load(base, "peft.safetensors", 0.5)[0]
    two = node().load(one, "kohya.safetensors", 1.0)[0]
    assert [(s.path, s.strength) for s in two.loras] == [(str(models["root"] / "loras" / "peft.safetensors"), 0.5),
                                                         (str(models["root"] / "loras" / "kohya.safetensors"), 1.0)]
    assert base.cache_key() == two.cache_key(), "LoRAs are not part of the base model's cache key"
    with pytest.raises(params.ParameterError, match="strength"):
        node().load(base, "peft.safetensors", 12.0)
    (models["root"] / "loras" / "cut.safetensors").write_bytes(lora_files["peft"].read_bytes()[:200])
    with pytest.raises(WeightsError, match="cut.safetensors"):
        node().load(base, "cut.safetensors", 1.0)
    node_plain = run(models_mod.load_flux_model(base, cache), cond)
    loads = cache.loads
    stacked = run(models_mod.load_flux_model(two, cache), cond)
    assert not torch.equal(stacked, node_plain) and cache.loads == loads
    assert torch.equal(run(models_mod.load_flux_model(base, cache), cond), node_plain)
