"""The node contract (as ComfyUI reads it), the local nodes' behaviour, and the ComfyUI hooks (with fakes)."""

import json
import math
import sys
import types

import numpy as np
import pytest
import torch
from fakes.node_inputs import load_encoder, load_model
from packloader import PACK_NAME, pack, submodule

params = submodule("pipelines.params")
CACHE = submodule("pipelines.cache").CACHE
WeightsError = submodule("pipelines.weights").WeightsError
bridge = submodule("nodes.comfy_bridge")
local = submodule("nodes.local")
loaders = submodule("nodes.local_loaders")

NODES = pack.NODE_CLASS_MAPPINGS
LOCAL = local.NODE_CLASS_MAPPINGS
GENERATE_PARAMS = ("image_size", "width", "height", "num_inference_steps", "guidance_scale", "seed", "num_images")
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}
COMFY_TYPES = {"IMAGE", "MASK", "CONDITIONING", "CLIP_VISION", "STYLE_MODEL"}  # ComfyUI's own types the pack takes


@pytest.fixture(scope="module", autouse=True)
def models_root(models):
    """Outside ComfyUI the loaders list this folder (ComfyUI's models/ layout)."""
    saved, bridge.MODELS_ROOT = bridge.MODELS_ROOT, models["root"]
    yield models["root"]
    bridge.MODELS_ROOT = saved


def photo(seed=0, h=48, w=64):
    return torch.from_numpy(np.random.default_rng(seed).random((1, h, w, 3), dtype=np.float32))


@pytest.fixture(scope="module")
def cond():
    return local.FluxReduxEncode().encode(photo(), "center", redux_encoder=load_encoder())[0]


def run_generate(model, cond, **kw):
    args = dict(image_size="custom", width=256, height=256, num_inference_steps=2, guidance_scale=3.5, seed=7,
                num_images=1) | kw
    images, info = local.FluxReduxGenerate().generate(model, cond, **args)
    return images, json.loads(info)


# -- the contract ComfyUI reads -------------------------------------------------------------------------------------

def test_pack_loads_like_comfyui_without_comfyui():
    assert not PACK_NAME.isidentifier() and sys.modules[PACK_NAME] is pack
    assert "comfy" not in sys.modules and "folder_paths" not in sys.modules
    assert bridge.comfy_module("folder_paths") is None
    assert set(LOCAL) == {"FluxReduxLoadEncoder", "FluxReduxLoadModel", "FluxReduxEncode", "FluxReduxCombine",
                          "FluxReduxGenerate", "FluxReduxUnload"}
    assert set(LOCAL) <= set(NODES)
    assert set(pack.NODE_DISPLAY_NAME_MAPPINGS) == set(NODES)


@pytest.mark.parametrize("name", sorted(LOCAL))
def test_node_contract(name):
    cls = NODES[name]
    spec = cls.INPUT_TYPES()
    assert set(spec) <= {"required", "optional", "hidden"}
    assert isinstance(cls.RETURN_TYPES, tuple) and len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES)
    assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES)
    assert callable(getattr(cls, cls.FUNCTION))
    assert cls.CATEGORY == "FLUX Redux/local" and len(cls.DESCRIPTION) > 40
    assert pack.NODE_DISPLAY_NAME_MAPPINGS[name].endswith("(FLUX Redux)")
    for section in ("required", "optional"):
        for input_name, entry in spec.get(section, {}).items():
            kind, options = entry[0], entry[1]
            assert options.get("tooltip"), f"{name}.{input_name} has no tooltip"
            if isinstance(kind, (list, tuple)):
                assert "default" not in options or options["default"] in kind
            elif kind in ("INT", "FLOAT"):
                assert options["min"] <= options["default"] <= options["max"], f"{name}.{input_name}"
                assert isinstance(options["default"], int if kind == "INT" else float)
            elif kind not in WIDGET_TYPES:
                assert kind.isupper() and kind in COMFY_TYPES | {t for c in NODES.values() for t in c.RETURN_TYPES}
    arguments = set(spec.get("required", {})) | set(spec.get("optional", {}))
    code = getattr(cls, cls.FUNCTION).__code__
    assert set(code.co_varnames[1:code.co_argcount]) <= arguments  # every parameter is an input


def test_custom_types_connect():
    returns = {t for name in LOCAL for t in NODES[name].RETURN_TYPES}
    assert {"REDUX_ENCODER", "FLUX_REDUX_MODEL", "REDUX_CONDITIONING"} <= returns
    assert NODES["FluxReduxGenerate"].RETURN_TYPES == ("IMAGE", "STRING")


def test_generate_inputs_are_the_seed_api_names_and_ranges():
    required = NODES["FluxReduxGenerate"].INPUT_TYPES()["required"]
    assert tuple(required)[2:] == GENERATE_PARAMS
    assert list(required["image_size"][0]) == [*params.SIZE_PRESETS, "custom"]
    for name, spec in (("width", params.WIDTH), ("height", params.HEIGHT), ("num_inference_steps", params.STEPS_LIMITS),
                       ("guidance_scale", params.GUIDANCE), ("num_images", params.NUM_IMAGES)):
        options = required[name][1]
        assert (options["min"], options["max"], options["default"]) == (spec.minimum, spec.maximum, spec.default)
    seed = required["seed"][1]
    assert (seed["min"], seed["max"], seed["control_after_generate"]) == (0, 0xFFFFFFFFFFFFFFFF, True)
    assert required["num_inference_steps"][1]["default"] == 0  # the variant's default
    remote = NODES.get("FluxReduxRemoteVariation")
    if remote is not None:  # the remote node swaps in: same names, same widget kinds
        remote_inputs = remote.INPUT_TYPES()["required"]
        for name in GENERATE_PARAMS:
            assert remote_inputs[name][0] == required[name][0], name


# -- loaders --------------------------------------------------------------------------------------------------------

def test_loader_lists_files_and_diffusers_folders():
    model_inputs = NODES["FluxReduxLoadModel"].INPUT_TYPES()["required"]
    assert model_inputs["transformer"][0] == ["flux1-dev.safetensors", "flux1-schnell.safetensors",
                                              "diffusers/FLUX.1-dev"]  # diffusion_models + unet + diffusers
    assert model_inputs["vae"][0] == ["ae.safetensors", "diffusers/FLUX.1-dev"]
    assert model_inputs["weight_dtype"][0] == ("default", "bf16", "fp16", "fp32", "fp8")
    encoder_inputs = NODES["FluxReduxLoadEncoder"].INPUT_TYPES()["required"]
    assert encoder_inputs["redux_model"][0] == ["flux1-redux-dev.safetensors", "diffusers/FLUX.1-Redux-dev"]
    assert encoder_inputs["clip_vision"][0] == ["sigclip_vision_patch14_384.safetensors",
                                                "diffusers/FLUX.1-Redux-dev"]


def test_models_root_from_environment(models, monkeypatch):
    monkeypatch.setattr(bridge, "MODELS_ROOT", None)
    monkeypatch.delenv(bridge.MODELS_ROOT_ENV, raising=False)
    assert bridge.list_files("vae") == []
    monkeypatch.setenv(bridge.MODELS_ROOT_ENV, str(models["root"]))
    assert bridge.list_files("vae") == ["ae.safetensors"]


def test_loaders_return_light_specs_and_options(models):
    spec = load_model("flux1-schnell.safetensors", weight_dtype="fp8", offload="model", variant="schnell")
    assert spec.transformer == str(models["files"]["schnell"]) and spec.variant == "schnell"
    assert (spec.options.dtype, spec.options.weight_storage, spec.options.offload) == ("auto", "fp8", "model")
    assert spec.options.device == "cpu" and hash(spec)
    assert load_model(weight_dtype="bf16").options.dtype == "bf16"
    encoder = load_encoder(redux_model="diffusers/FLUX.1-Redux-dev", clip_vision="diffusers/FLUX.1-Redux-dev")
    assert encoder.redux == encoder.siglip == str(models["folders"]["redux_repo"])
    assert load_model(device="auto").options.device == "auto"  # outside ComfyUI: the engine decides


def test_loader_reports_wrong_file_and_missing_file(models, tmp_path, monkeypatch):
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "ae.safetensors").symlink_to(models["files"]["dev"])  # a transformer in the VAE slot
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "flux1-dev.safetensors").symlink_to(models["files"]["dev"])
    monkeypatch.setattr(bridge, "MODELS_ROOT", tmp_path)
    with pytest.raises(WeightsError, match="this slot expects the FLUX autoencoder"):
        load_model()
    monkeypatch.setattr(bridge, "MODELS_ROOT", models["root"])
    with pytest.raises(FileNotFoundError, match="'nope.safetensors' not found in the vae folder"):
        load_model(vae="nope.safetensors")


@pytest.mark.parametrize("choice, expected", [("flux1-dev.safetensors", "dev"), ("flux1-schnell.safetensors", "schnell"),
                                              ("diffusers/FLUX.1-dev", "dev")])
def test_variant_known_before_loading(choice, expected):
    loads = CACHE.loads
    assert loaders.model_variant(load_model(choice)) == expected
    assert loaders.model_variant(load_model(choice, variant="schnell")) == "schnell"
    assert CACHE.loads == loads


# -- encode, combine ------------------------------------------------------------------------------------------------

def test_encode_batch_and_combine(cond):
    encoder = load_encoder()
    a, b = photo(1), photo(2)
    one_a = local.FluxReduxEncode().encode(a, "center", redux_encoder=encoder)[0]
    one_b = local.FluxReduxEncode().encode(b, "squash", redux_encoder=encoder)[0]
    batch = local.FluxReduxEncode().encode(torch.cat([a, a]), "center", redux_encoder=encoder)[0]
    torch.testing.assert_close(batch.image_tokens, one_a.image_tokens)  # a batch is averaged: weight 1/N each
    blended = local.FluxReduxCombine().combine(one_a, 1.0, conditioning_2=one_b, weight_2=0.5, weight_3=9.0)[0]
    torch.testing.assert_close(blended.image_tokens, one_a.image_tokens + 0.5 * one_b.image_tokens)
    assert local.FluxReduxCombine().combine(one_a, 2.0)[0].weights == (2.0,)


def test_encode_rejects_non_image():
    with pytest.raises(ValueError, match="ComfyUI IMAGE"):
        local.FluxReduxEncode().encode(torch.zeros(2, 3), "center", redux_encoder=load_encoder())


# -- generate -------------------------------------------------------------------------------------------------------

def test_generate_shapes_info_and_determinism(cond):
    model = load_model()
    images, info = run_generate(model, cond, num_images=2, width=256, height=320, seed=11)
    assert images.shape == (2, 320, 256, 3) and images.dtype == torch.float32
    assert 0 <= images.min() and images.max() <= 1
    assert (info["seed"], info["width"], info["height"], info["num_inference_steps"]) == (11, 256, 320, 2)
    assert info["variant"] == "dev" and info["guidance_scale"] == 3.5 and info["warnings"] == []
    assert info["timings"]["total_s"] > 0
    again, _ = run_generate(model, cond, num_images=2, width=256, height=320, seed=11)
    assert torch.equal(images, again)
    other, _ = run_generate(model, cond, num_images=2, width=256, height=320, seed=12)
    assert not torch.allclose(images, other)


def test_preset_size_ignores_width_and_height(cond, monkeypatch):
    monkeypatch.setitem(params.SIZE_PRESETS, "square", (256, 256))  # keep the test fast; same code path
    images, info = run_generate(load_model(), cond, image_size="square", width=4000, height=333, num_inference_steps=1)
    assert images.shape == (1, 256, 256, 3) and (info["width"], info["height"]) == (256, 256)


def test_steps_0_is_the_variants_default_and_schnell_has_no_local_cap(cond, caplog):
    with caplog.at_level("WARNING"):
        _, info = run_generate(load_model("flux1-schnell.safetensors"), cond, num_inference_steps=0, guidance_scale=7.0)
    assert info["variant"] == "schnell" and info["num_inference_steps"] == 4 and info["guidance_scale"] is None
    assert info["warnings"] == ["guidance_scale ignored: FLUX.1 schnell has no guidance input"]
    assert "guidance_scale ignored" in caplog.text
    _, info = run_generate(load_model("flux1-schnell.safetensors"), cond, num_inference_steps=14)
    assert info["num_inference_steps"] == 14  # 12 is fal's limit, not the model's
    _, info = run_generate(load_model(), cond, num_inference_steps=0, image_size="custom", width=256, height=256)
    assert info["num_inference_steps"] == 28


def test_variant_from_loader_overrides_weights(cond):
    _, info = run_generate(load_model(variant="schnell"), cond, num_inference_steps=3)
    assert info["variant"] == "schnell" and info["guidance_scale"] is None


@pytest.mark.parametrize("changes, message", [
    (dict(num_inference_steps=51), "num_inference_steps=51"),
    (dict(width=1000), "multiple of 16"),
    (dict(height=128), "height=128"),
    (dict(guidance_scale=25.0), "guidance_scale=25.0"),
    (dict(num_images=5), "num_images=5"),
    (dict(image_size="huge"), "image_size='huge'"),
])
def test_invalid_parameters_fail_before_any_model_work(cond, changes, message):
    settings = dict(image_size="custom", width=256, height=256, num_inference_steps=2, guidance_scale=3.5, seed=1,
                    num_images=1) | changes
    required = NODES["FluxReduxGenerate"].INPUT_TYPES()["required"]
    size_args = {k: settings[k] for k in ("image_size", "width", "height")}
    verdict = local.FluxReduxGenerate.VALIDATE_INPUTS(**size_args)  # ComfyUI runs this when the prompt is queued
    ranges_reject = any(not required[k][1]["min"] <= v <= required[k][1]["max"]  # ComfyUI's own check
                        for k, v in changes.items() if k not in size_args)
    assert (isinstance(verdict, str) and message in verdict) != ranges_reject  # exactly one of the two rejects
    loads = CACHE.loads
    model = load_model("flux1-schnell.safetensors", variant="dev")  # not cached yet under this spec
    with pytest.raises(params.ParameterError, match=message.split("=")[0]):
        local.FluxReduxGenerate().generate(model, cond, **settings)
    assert CACHE.loads == loads


def test_validate_inputs_accepts_linked_and_valid_values():
    validate = local.FluxReduxGenerate.VALIDATE_INPUTS
    assert validate() is True and validate("custom", None, 300) is True  # linked inputs arrive as None
    assert validate("square_hd", 1000, 7) is True  # width and height are ignored for a preset
    assert validate("custom", 4096, 256) is True and "height=4112" in validate("custom", 256, 4112)


# -- ComfyUI hooks, with fake comfy modules ---------------------------------------------------------------------------

class Interrupted(Exception):
    pass


@pytest.fixture
def fake_comfy(monkeypatch, models):
    """Minimal comfy.utils / comfy.model_management / comfy.model_patcher / folder_paths with the members the
    pack uses (ComfyUI itself is not installed here; the real ones are exercised in real ComfyUI, see README)."""
    state = types.SimpleNamespace(bars=[], interrupt_after=None, checks=0, loads=[], loaded=[], freed=[])

    class ProgressBar:
        def __init__(self, total):
            self.total, self.calls = total, []
            state.bars.append(self)

        def update_absolute(self, value, total=None, preview=None):
            self.calls.append((value, total, preview))

    def throw_exception_if_processing_interrupted():
        state.checks += 1
        if state.interrupt_after is not None and state.checks > state.interrupt_after:
            raise Interrupted

    class ModelPatcher:  # the public constructor and the two sizes the pack reads
        def __init__(self, model, load_device, offload_device, size=0):
            self.model, self.load_device, self.offload_device, self.size = model, load_device, offload_device, size
            self.loaded = 0
            model.device = offload_device  # as ComfyUI's does: fails on a diffusers model's read-only property

        def model_size(self):
            return self.size

        def loaded_size(self):
            return self.loaded

        def detach(self, unpatch_all=True):
            self.model.to(self.offload_device)
            self.loaded = 0

    def load_models_gpu(models, memory_required=0, force_full_load=False):
        for patcher in models:
            state.loads.append((patcher, memory_required, force_full_load))
            patcher.model.to(patcher.load_device)
            patcher.loaded = patcher.size
            state.loaded[:] = [p for p in state.loaded if p is not patcher] + [patcher]

    def unload_all_models():  # what POST /free does to every loaded patcher
        for patcher in state.loaded:
            patcher.detach()
        state.loaded.clear()

    mm = types.SimpleNamespace(
        get_torch_device=lambda: torch.device("cpu"), unet_offload_device=lambda: torch.device("cpu"),
        load_models_gpu=load_models_gpu, unload_all_models=unload_all_models,
        free_memory=lambda memory, device: state.freed.append((memory, device)),
        throw_exception_if_processing_interrupted=throw_exception_if_processing_interrupted)
    root = models["root"]
    dirs = {k: [str(root / d) for d in v] for k, v in bridge.FALLBACK_FOLDERS.items()}
    fp = types.SimpleNamespace(
        get_folder_paths=lambda name: dirs[name],
        get_filename_list=lambda name: sorted(p.name for d in dirs[name] for p in __import__("pathlib").Path(d).glob("*")
                                              if p.is_file()),
        get_full_path=lambda name, f: next((f"{d}/{f}" for d in dirs[name]
                                            if __import__("os").path.isfile(f"{d}/{f}")), None))
    comfy = types.ModuleType("comfy")
    comfy.utils, comfy.model_management = types.SimpleNamespace(ProgressBar=ProgressBar), mm
    comfy.model_patcher = types.SimpleNamespace(ModelPatcher=ModelPatcher)
    for name, module in (("comfy", comfy), ("comfy.utils", comfy.utils), ("comfy.model_management", mm),
                         ("comfy.model_patcher", comfy.model_patcher), ("folder_paths", fp)):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(bridge, "MODELS_ROOT", None)
    return state


def test_in_comfyui_lists_and_devices_come_from_comfy(fake_comfy, models):
    assert bridge.default_device() == "cpu"
    assert load_model(device="auto").options.device == "cpu"  # ComfyUI's device, e.g. under --cpu
    assert NODES["FluxReduxLoadModel"].INPUT_TYPES()["required"]["transformer"][0][-1] == "diffusers/FLUX.1-dev"
    assert load_model("flux1-schnell.safetensors").transformer == str(models["files"]["schnell"])


def test_progress_bar_and_interrupt_between_steps(fake_comfy, cond):
    model = load_model()
    run_generate(model, cond, num_inference_steps=3)
    assert [c[:2] for c in fake_comfy.bars[-1].calls] == [(1, 3), (2, 3), (3, 3)]
    fake_comfy.checks, fake_comfy.interrupt_after = 0, 2  # 1 check before sampling, then one per step
    with pytest.raises(Interrupted):
        run_generate(model, cond, num_inference_steps=5)
    assert [c[0] for c in fake_comfy.bars[-1].calls] == [1, 2]


def test_preview_unpacks_flux_latents(monkeypatch):
    seen = []

    class Previewer:
        def decode_latent_to_preview_image(self, fmt, x0):
            seen.append((fmt, tuple(x0.shape)))
            return ("JPEG", "image", 512)

    flux_format = types.SimpleNamespace(latent_channels=4)
    monkeypatch.setitem(sys.modules, "latent_preview", types.SimpleNamespace(get_previewer=lambda d, f: Previewer()))
    monkeypatch.setitem(sys.modules, "comfy.latent_formats", types.SimpleNamespace(Flux=lambda: flux_format))
    monkeypatch.setitem(sys.modules, "comfy", types.ModuleType("comfy"))
    preview = bridge.make_previewer(torch.device("cpu"), 4, 8, 256, 320)
    packed = torch.arange(2 * 16 * 20 * 16, dtype=torch.float32).reshape(2, 16 * 20, 16)  # [B, h/2*w/2, C*4]
    assert preview(packed) == ("JPEG", "image", 512) and seen == [("JPEG", (1, 4, 32, 40))]
    assert bridge.make_previewer(torch.device("cpu"), 16, 8, 256, 320) is None  # not FLUX's channel count


def test_models_are_placed_by_comfyuis_memory_manager(fake_comfy, cond):
    model = load_model()
    run_generate(model, cond, num_inference_steps=1, num_images=2)
    local.FluxReduxEncode().encode(photo(), "center", redux_encoder=load_encoder())
    (flux_patcher, working, full), (encoder_patcher, _, _) = [load for load in fake_comfy.loads]
    flux = local.load_flux(model, params.validate_generation("dev", "square", num_images=1))
    assert flux_patcher.model.parts["transformer"] is flux.modules()["transformer"]  # the engine's own modules
    assert flux_patcher.model_size() == flux.memory_bytes() > 0 and full
    assert working == 2 * 256 * 256 / 1e6 * local.GIB_PER_MEGAPIXEL // 1  # room for two 256x256 images
    assert set(encoder_patcher.model.parts) == {"vision", "projector"}
    loads = CACHE.loads
    run_generate(model, cond, num_inference_steps=1)
    assert fake_comfy.loads[-1][0] is flux_patcher and CACHE.loads == loads  # placed again before every use
    sys.modules["comfy.model_management"].unload_all_models()  # POST /free: weights back to the offload device
    assert flux_patcher.loaded_size() == 0 and model.cache_key() in CACHE  # still cached in RAM: no disk read
    run_generate(model, cond, num_inference_steps=1)
    assert flux_patcher.loaded_size() == flux.memory_bytes() and CACHE.loads == loads


def test_offload_hooks_place_the_model_and_comfyui_only_makes_room(fake_comfy, cond):
    model = load_model(offload="model", device="cpu")
    run_generate(model, cond, num_inference_steps=1)
    assert fake_comfy.loads == [] and fake_comfy.freed == []  # on the CPU there is no VRAM to free


def test_auto_placement_is_managed_by_comfyui(fake_comfy, cond):
    run_generate(load_model(offload="auto"), cond, num_inference_steps=1)  # the loader's default
    local.FluxReduxEncode().encode(photo(), "center", redux_encoder=load_encoder())
    assert [set(load[0].model.parts) for load in fake_comfy.loads] == [{"transformer", "vae"}, {"vision", "projector"}]


@pytest.mark.parametrize("total_gb, expected", [(80, "none"), (0.001, "sequential")])
def test_auto_placement_in_comfyui_is_decided_on_what_comfyui_can_free(fake_comfy, monkeypatch, total_gb, expected):
    """ComfyUI unloads other models to make room, so the budget is the card less ComfyUI's reserve."""
    memory = submodule("nodes.comfy_memory")
    mm = sys.modules["comfy.model_management"]
    monkeypatch.setattr(mm, "get_total_memory", lambda device: int(total_gb * 1e9), raising=False)
    monkeypatch.setattr(mm, "minimum_inference_memory", lambda: 0, raising=False)
    monkeypatch.setattr(memory, "load_device", lambda options: torch.device("cuda", 0))
    options = memory.resolve_auto(load_model(offload="auto"))
    assert options.offload == expected and options.placement_reason.startswith("auto in ComfyUI: ")
    assert memory.resolve_auto(load_encoder()).offload == "none"  # the encoder is always ComfyUI's to place


def test_one_patcher_per_cached_model_whatever_the_per_call_settings(fake_comfy, cond):
    model = load_model(cache_threshold=0.05)  # per-call settings give a light view of the cached model
    run_generate(model, cond, num_inference_steps=1)
    run_generate(model, cond, num_inference_steps=1)
    assert len({id(load[0]) for load in fake_comfy.loads}) == 1


def test_models_wait_on_the_offload_device_but_keep_their_compute_device(fake_comfy):
    memory, LoadOptions = submodule("nodes.comfy_memory"), submodule("pipelines.loading").LoadOptions
    built = memory.build_placement(LoadOptions(device="cuda", offload="none"))
    assert built.torch_device().type == "cuda" and built.torch_build_device().type == "cpu"  # speed modes see cuda
    assert built != memory.build_placement(LoadOptions(device="cpu", offload="none"))  # distinct cache keys


@pytest.mark.parametrize("free_gb, vram_state, expected", [(30, "NORMAL_VRAM", "cuda"), (10, "NORMAL_VRAM", "cpu"),
                                                           (30, "NO_VRAM", "cpu")])
def test_models_that_fit_are_built_on_the_gpu_itself(fake_comfy, monkeypatch, free_gb, vram_state, expected):
    """A model built in RAM is a private copy of all its weights there; built on the GPU, RAM holds none."""
    memory, LoadOptions = submodule("nodes.comfy_memory"), submodule("pipelines.loading").LoadOptions
    mm = sys.modules["comfy.model_management"]
    states = types.SimpleNamespace(NO_VRAM="NO_VRAM", NORMAL_VRAM="NORMAL_VRAM")
    for name, value in (("get_free_memory", lambda device: free_gb * 2**30), ("minimum_inference_memory", lambda: 2**30),
                        ("VRAMState", states), ("vram_state", vram_state)):
        monkeypatch.setattr(mm, name, value, raising=False)
    monkeypatch.setattr(memory, "load_device", lambda options: torch.device("cuda", 0))
    built = memory.build_placement(LoadOptions(device="cuda", offload="none"), lambda: 12 * 2**30)
    assert built.torch_build_device().type == expected
    assert built == memory.build_placement(LoadOptions(device="cuda", offload="none"))  # one cache entry either way


def test_unload_node_frees_everything(fake_comfy, cond):
    import gc
    import weakref

    run_generate(load_model(), cond, num_inference_steps=1)
    patcher = weakref.ref(fake_comfy.loads[-1][0])
    fake_comfy.loads.clear()
    fake_comfy.loaded.clear()  # ComfyUI holds weak references only
    assert len(CACHE) >= 1
    images = torch.zeros(1, 8, 8, 3)
    unload = NODES["FluxReduxUnload"]
    assert unload.OUTPUT_NODE and math.isnan(unload.IS_CHANGED(images=images))
    assert unload().unload(images)[0] is images
    gc.collect()
    assert len(CACHE) == 0 and patcher() is None  # the patcher died with the cached model
