"""Every file in example_workflows/ against the node definitions, then converted to the API format and executed
in-process with the tiny models (remote nodes are validated and converted, not run)."""

import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image
from packloader import ROOT, pack, submodule

import graph_runner as gr
import tiny_models

params = submodule("pipelines.params")
bridge = submodule("nodes.comfy_bridge")
local = submodule("nodes.local")
restyle = submodule("nodes.restyle")

WORKFLOWS = sorted((ROOT / "example_workflows").glob("*.json"))
LOCAL_WORKFLOWS = ["Redux image variation (FLUX dev).json", "Redux image variation (FLUX schnell).json", "Redux blend of two references.json",
                   "Redux batch of 4 at a custom size.json"]
RESTYLE_WORKFLOWS = ["Redux restyle with a text prompt.json", "Redux style transfer onto a photo (img2img).json", "Redux masked reference (paint the part to keep).json"]
COMFY_SAMPLER_WORKFLOWS = ["Redux restyle with the ComfyUI sampler and a LoRA.json",  # ComfyUI's own model + KSampler
                           "Redux with ComfyUI Load CLIP Vision.json"]  # ComfyUI's own CLIP vision + style model
COMFY_BUILTINS_USED = {"LoadImage", "SaveImage", "PreviewImage", "PreviewAny", "Note", "MarkdownNote",
                       "DualCLIPLoader", "CLIPTextEncode", *gr.SAMPLING_NODES}
LOCAL_TYPES = {**local.NODE_CLASS_MAPPINGS, **restyle.NODE_CLASS_MAPPINGS}
REMOTE_TYPES = frozenset(t for t in pack.NODE_CLASS_MAPPINGS if t not in LOCAL_TYPES)
GENERATE_TYPES = ("FluxReduxGenerate", "FluxReduxGenerateImg2Img")


CLASSES = {**pack.NODE_CLASS_MAPPINGS, **gr.BUILTINS}


@pytest.fixture(scope="module", autouse=True)
def comfy_folders(models, tmp_path_factory):
    """ComfyUI's input/ (with its example.png) and output/, the tiny models as models/ and tiny text encoders
    as models/text_encoders (for the DualCLIPLoader stand-in)."""
    inputs, outputs = tmp_path_factory.mktemp("input"), tmp_path_factory.mktemp("output")
    pixels = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(inputs / "example.png")
    text_encoders = tiny_models.write_text_encoders(tmp_path_factory.mktemp("text"))["clip_file"].parent
    saved = bridge.MODELS_ROOT, gr.INPUT_DIR, gr.OUTPUT_DIR, gr.TEXT_ENCODERS_DIR, gr.MODEL_FILES
    bridge.MODELS_ROOT, gr.INPUT_DIR, gr.OUTPUT_DIR = models["root"], inputs, outputs
    gr.TEXT_ENCODERS_DIR = text_encoders
    gr.MODEL_FILES = {"diffusion_models": ["flux1-dev.safetensors"], "loras": ["your_flux_lora.safetensors"],
                      "vae": ["ae.safetensors"], "clip_vision": ["sigclip_vision_patch14_384.safetensors"],
                      "style_models": ["flux1-redux-dev.safetensors"]}
    yield
    bridge.MODELS_ROOT, gr.INPUT_DIR, gr.OUTPUT_DIR, gr.TEXT_ENCODERS_DIR, gr.MODEL_FILES = saved


def load(name):
    return json.loads((ROOT / "example_workflows" / name).read_text())


def generate_nodes(api):
    return {k: v for k, v in api.items() if v["class_type"] in GENERATE_TYPES}


def shrink(api, steps=2):
    """The same graph, cheaper: at most `steps` steps and sizes scaled so the short side is 256."""
    api = copy.deepcopy(api)
    for node in generate_nodes(api).values():
        inputs = node["inputs"]
        w, h = params.SIZE_PRESETS.get(inputs["image_size"], (inputs["width"], inputs["height"]))
        scale = 256 / min(w, h)
        inputs.update(image_size="custom", width=round(w * scale / 16) * 16, height=round(h * scale / 16) * 16,
                      num_inference_steps=min(inputs["num_inference_steps"], steps))
    return api


def saved_since(count):
    return gr.SaveImage.saved[count:]


# -- static checks ------------------------------------------------------------------------------------------------

def test_the_local_workflows_exist():
    assert set(LOCAL_WORKFLOWS + RESTYLE_WORKFLOWS + COMFY_SAMPLER_WORKFLOWS) <= {p.name for p in WORKFLOWS}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_matches_node_definitions(path):
    ui = json.loads(path.read_text())
    assert {"last_node_id", "last_link_id", "nodes", "links", "version"} <= set(ui)
    assert gr.validate_workflow(ui, CLASSES) == []
    types = {n["type"] for n in ui["nodes"]}
    assert types <= set(pack.NODE_CLASS_MAPPINGS) | COMFY_BUILTINS_USED
    notes = [n["widgets_values"][0] for n in ui["nodes"] if n["type"] in ("Note", "MarkdownNote")]
    assert notes, "each workflow has a Note saying which model files go where"
    if path.name in LOCAL_WORKFLOWS + RESTYLE_WORKFLOWS + COMFY_SAMPLER_WORKFLOWS:
        for folder in ("style_models/", "clip_vision/", "vae/", "diffusion_models/"):
            assert any(folder in note for note in notes), folder
    if "DualCLIPLoader" in types:
        assert any("text_encoders/t5xxl" in note and "text_encoders/clip_l" in note for note in notes)
    api = gr.to_api(ui, CLASSES)
    assert all(n["class_type"] not in ("Note", "MarkdownNote") for n in api.values())
    assert any(n["class_type"] in ("SaveImage", "PreviewImage") for n in api.values())


def test_basic_variation_is_six_nodes():
    ui = load("Redux image variation (FLUX dev).json")
    working = [n["type"] for n in ui["nodes"] if n["type"] not in ("Note", "MarkdownNote")]
    assert len(working) <= 6 and {"LoadImage", "SaveImage", "FluxReduxGenerate"} <= set(working)


def test_local_workflow_settings():
    def generate(name):
        return next(iter(generate_nodes(gr.to_api(load(name), CLASSES)).values()))["inputs"]

    assert generate("Redux image variation (FLUX dev).json")["num_inference_steps"] == 28
    assert generate("Redux image variation (FLUX schnell).json")["num_inference_steps"] == 4
    batch = generate("Redux batch of 4 at a custom size.json")
    assert (batch["num_images"], batch["image_size"]) == (4, "custom")
    combine = [n for n in gr.to_api(load("Redux blend of two references.json"), CLASSES).values()
               if n["class_type"] == "FluxReduxCombine"][0]["inputs"]
    assert isinstance(combine["conditioning_2"], list) and combine["weight_1"] != combine["weight_2"]
    assert combine["blend"] == "sum"


@pytest.mark.parametrize("mutate, problem", [
    (lambda ui, g: g["widgets_values"].pop(6), "widget values"),  # the seed's control value missing
    (lambda ui, g: g["widgets_values"].__setitem__(3, 99), "num_inference_steps=99 outside"),
    (lambda ui, g: g["widgets_values"].__setitem__(6, "sometimes"), "control 'sometimes'"),
    (lambda ui, g: g["widgets_values"].__setitem__(0, "square_xl"), "image_size='square_xl' not in"),
    (lambda ui, g: ui["links"][-1].__setitem__(5, "LATENT"), "link says LATENT"),
    (lambda ui, g: g.__setitem__("type", "FluxReduxGenerateV2"), "unknown node type"),
    (lambda ui, g: g["inputs"][0].__setitem__("link", None), "required input model is not connected"),
])
def test_validator_catches_broken_workflows(mutate, problem):
    ui = load("Redux image variation (FLUX dev).json")
    generate = next(n for n in ui["nodes"] if n["type"] == "FluxReduxGenerate")
    assert generate["widgets_values"][6] == "fixed"
    mutate(ui, generate)
    assert any(problem in p for p in gr.validate_workflow(ui, CLASSES)), gr.validate_workflow(ui, CLASSES)


def test_api_format_of_the_basic_graph():
    api = gr.to_api(load("Redux image variation (FLUX dev).json"), CLASSES)
    gen_id, gen = next(iter(generate_nodes(api).items()))
    assert set(gen["inputs"]) == {"model", "conditioning", "image_size", "width", "height", "num_inference_steps",
                                  "guidance_scale", "seed", "num_images"}
    assert "fixed" not in gen["inputs"].values() and gen["inputs"]["seed"] == 42
    source, slot = gen["inputs"]["model"]
    assert api[source]["class_type"] == "FluxReduxLoadModel" and slot == 0
    save = next(n for n in api.values() if n["class_type"] == "SaveImage")
    assert save["inputs"]["images"] == [gen_id, 0]


# -- execution ----------------------------------------------------------------------------------------------------

def test_schnell_workflow_runs_unchanged():
    """Run as shipped: square_hd 1024x1024, 4 steps (the tiny model keeps it a few seconds on a CPU)."""
    before = len(gr.SaveImage.saved)
    results = gr.execute(gr.to_api(load("Redux image variation (FLUX schnell).json"), CLASSES), CLASSES)
    gen_id = next(iter(generate_nodes(gr.to_api(load("Redux image variation (FLUX schnell).json"), CLASSES))))
    images, info = results[gen_id]
    assert images.shape == (1, 1024, 1024, 3)
    info = json.loads(info)
    assert (info["variant"], info["num_inference_steps"], info["seed"]) == ("schnell", 4, 42)
    files = saved_since(before)
    assert len(files) == 1 and Image.open(files[0]).size == (1024, 1024)
    assert files[0].name.startswith("flux_redux_schnell_")


@pytest.mark.parametrize("name, count", [("Redux image variation (FLUX dev).json", 1), ("Redux blend of two references.json", 1),
                                         ("Redux batch of 4 at a custom size.json", 4)])
def test_workflow_runs_and_saves(name, count):
    api = shrink(gr.to_api(load(name), CLASSES))
    (gen_id, gen), = generate_nodes(api).items()
    width, height = gen["inputs"]["width"], gen["inputs"]["height"]
    before = len(gr.SaveImage.saved)
    results = gr.execute(api, CLASSES)
    images, info = results[gen_id]
    assert images.shape == (count, height, width, 3)
    assert json.loads(info)["num_images"] == count
    files = saved_since(before)
    assert len(files) == count and all(Image.open(f).size == (width, height) for f in files)
    previews = [r for k, r in results.items() if api[k]["class_type"] == "PreviewAny"]
    assert all(json.loads(p["text"][0])["seed"] == gen["inputs"]["seed"] for p in previews)


def test_batch_workflow_keeps_its_aspect():
    api = gr.to_api(load("Redux batch of 4 at a custom size.json"), CLASSES)
    inputs = next(iter(generate_nodes(api).values()))["inputs"]
    small = next(iter(generate_nodes(shrink(api)).values()))["inputs"]
    assert inputs["width"] / inputs["height"] == pytest.approx(small["width"] / small["height"], rel=0.05)


def test_same_seed_same_images_other_seed_differs():
    api = shrink(gr.to_api(load("Redux image variation (FLUX dev).json"), CLASSES), steps=1)
    gen_id = next(iter(generate_nodes(api)))
    first = gr.execute(api, CLASSES)[gen_id][0]
    assert torch.equal(first, gr.execute(copy.deepcopy(api), CLASSES)[gen_id][0])
    api[gen_id]["inputs"]["seed"] += 1
    assert not torch.allclose(first, gr.execute(api, CLASSES)[gen_id][0])


def test_blend_weights_change_the_result():
    api = shrink(gr.to_api(load("Redux blend of two references.json"), CLASSES), steps=1)
    gen_id = next(iter(generate_nodes(api)))
    combine_id = next(k for k, v in api.items() if v["class_type"] == "FluxReduxCombine")
    load_ids = [k for k, v in api.items() if v["class_type"] == "LoadImage"]
    Image.new("RGB", (80, 60), (250, 20, 20)).save(gr.INPUT_DIR / "red.png")
    api[load_ids[1]]["inputs"]["image"] = "red.png"
    first = gr.execute(api, CLASSES)[gen_id][0]
    api[combine_id]["inputs"]["weight_2"] = 3.0
    assert not torch.allclose(first, gr.execute(api, CLASSES)[gen_id][0])


@pytest.mark.parametrize("changes, message", [(dict(image_size="custom", width=1000), "multiple of 16"),
                                              (dict(num_inference_steps=51), "num_inference_steps=51 outside"),
                                              (dict(seed=-1), "seed=-1 outside")])
def test_prompt_validation_rejects_bad_values_before_running(changes, message):
    api = gr.to_api(load("Redux image variation (FLUX dev).json"), CLASSES)
    next(iter(generate_nodes(api).values()))["inputs"].update(changes)
    loads = submodule("pipelines.cache").CACHE.loads
    with pytest.raises(gr.PromptError, match=message):
        gr.execute(api, CLASSES)
    assert submodule("pipelines.cache").CACHE.loads == loads


@pytest.mark.parametrize("path", [p for p in WORKFLOWS
                                  if p.name not in LOCAL_WORKFLOWS + RESTYLE_WORKFLOWS + COMFY_SAMPLER_WORKFLOWS],
                         ids=lambda p: p.name)
def test_other_workflows_run_up_to_remote_nodes(path):
    """Remote workflows: everything but the remote node (and what depends on it) runs; no network."""
    api = gr.to_api(json.loads(path.read_text()), CLASSES)
    remote = [k for k, v in api.items() if v["class_type"] in REMOTE_TYPES]
    assert remote
    results = gr.execute(api, CLASSES, skip_types=REMOTE_TYPES)
    assert not set(remote) & set(results)


# -- restyle workflows ------------------------------------------------------------------------------------------------

def node_of(api, kind):
    return next((k, v) for k, v in api.items() if v["class_type"] == kind)


def run_graph(api):
    before = len(gr.SaveImage.saved)
    return gr.execute(api, CLASSES), saved_since(before)


def test_restyle_with_prompt_workflow_runs():
    """DualCLIPLoader + CLIPTextEncode (stand-ins with the tiny T5 and CLIP-L) feed Redux + Prompt."""
    api = shrink(gr.to_api(load("Redux restyle with a text prompt.json"), CLASSES))
    (_, gen), = generate_nodes(api).items()
    prompt_id, prompt = node_of(api, "FluxReduxPrompt")
    assert api[prompt["inputs"]["prompt"][0]]["class_type"] == "CLIPTextEncode"
    results, files = run_graph(api)
    cond = results[prompt_id][0]
    assert cond.text.embeds.shape == (1, gr.T5_MIN_TOKENS, tiny_models.JOINT_WIDTH)
    assert cond.text.pooled.shape == (1, tiny_models.POOLED_WIDTH)
    assert cond.token_count == 1  # the tiny 4x4 grid downsampled by 3 (27x27 -> 9x9 for FLUX)
    size = (gen["inputs"]["width"], gen["inputs"]["height"])
    assert len(files) == 1 and Image.open(files[0]).size == size


def test_style_transfer_workflow_keeps_the_photo_aspect(monkeypatch):
    monkeypatch.setattr(restyle, "MATCH_PIXELS", 384 * 288)  # about 1 MP as shipped; same code path
    api = gr.to_api(load("Redux style transfer onto a photo (img2img).json"), CLASSES)
    (gen_id, gen), = generate_nodes(api).items()
    assert (gen["inputs"]["image_size"], gen["inputs"]["denoise"]) == ("match_init_image", 0.75)
    gen["inputs"]["num_inference_steps"] = 4
    results, files = run_graph(api)
    images, info = results[gen_id]
    assert images.shape == (1, 288, 384, 3)  # example.png is 128x96: its 4:3 aspect is kept
    info = json.loads(info)
    assert (info["img2img"], info["denoise"], info["steps_run"]) == (True, 0.75, 3)
    assert len(files) == 1


def test_masked_reference_workflow_uses_the_painted_mask():
    rgba = np.random.default_rng(1).integers(0, 256, (96, 128, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    rgba[16:80, 8:72, 3] = 0  # painted in the Mask Editor: transparent, so LoadImage's MASK is 1 there
    Image.fromarray(rgba, "RGBA").save(gr.INPUT_DIR / "painted.png")
    api = shrink(gr.to_api(load("Redux masked reference (paint the part to keep).json"), CLASSES))
    load_id, loader = node_of(api, "LoadImage")
    encode_id, encode = node_of(api, "FluxReduxEncodeAdvanced")
    assert encode["inputs"]["mask"] == [load_id, 1] and encode["inputs"]["autocrop"] is True
    shipped, shipped_files = run_graph(api)  # as shipped: nothing painted, so the whole reference counts
    whole = shipped[encode_id][0].token_count
    assert len(shipped_files) == 1 and whole > 0
    loader["inputs"]["image"] = "painted.png"
    results, files = run_graph(api)
    assert 0 < results[encode_id][0].token_count < whole and len(files) == 1  # the painted part only


def test_comfy_sampler_workflow_feeds_ksampler_the_packs_tokens():
    """UNETLoader + LoraLoaderModelOnly + KSampler are ComfyUI's (declared here, run in real ComfyUI: see README);
    everything up to them runs: the pack's encode and Redux → Conditioning with FLUX's empty text conditioning."""
    ui = load("Redux restyle with the ComfyUI sampler and a LoRA.json")
    api = gr.to_api(ui, CLASSES)
    sampler_id, sampler = node_of(api, "KSampler")
    assert api[sampler["inputs"]["model"][0]]["class_type"] == "UNETLoader"  # the LoRA ships bypassed
    assert "LoraLoaderModelOnly" not in {n["class_type"] for n in api.values()}
    next(n for n in ui["nodes"] if n["type"] == "LoraLoaderModelOnly")["mode"] = 0  # Ctrl+B: enabled
    enabled = gr.to_api(ui, CLASSES)
    model_source = enabled[enabled[sampler_id]["inputs"]["model"][0]]
    assert model_source["class_type"] == "LoraLoaderModelOnly"
    assert enabled[model_source["inputs"]["model"][0]]["class_type"] == "UNETLoader"
    guidance = api[sampler["inputs"]["positive"][0]]
    assert guidance["class_type"] == "FluxGuidance" and sampler["inputs"]["cfg"] == 1.0
    cond_id, _ = node_of(api, "FluxReduxToConditioning")
    assert guidance["inputs"]["conditioning"] == [cond_id, 0]
    results = gr.execute(api, CLASSES, skip_types=frozenset(gr.SAMPLING_NODES))
    (embeds, keys), = results[cond_id][0]
    assert embeds.shape == (1, 512 + 1, tiny_models.JOINT_WIDTH)  # empty text + the 4x4 grid downsampled by 3
    assert torch.count_nonzero(embeds[:, :512]) == 0 and keys["pooled_output"].shape == (1, 768)
    assert sampler_id not in results


def test_comfy_clip_vision_workflow_feeds_redux_encode():
    """Load CLIP Vision + Load Style Model (ComfyUI's; declared here, run in real ComfyUI: see README) into Redux
    Encode instead of Load Redux Encoder; the rest is the basic variation graph with steps 0 (variant default)."""
    api = gr.to_api(load("Redux with ComfyUI Load CLIP Vision.json"), CLASSES)
    _, encode = node_of(api, "FluxReduxEncode")
    assert "redux_encoder" not in encode["inputs"]
    assert {api[encode["inputs"][k][0]]["class_type"] for k in ("clip_vision", "style_model")} == {
        "CLIPVisionLoader", "StyleModelLoader"}
    (_, gen), = generate_nodes(api).items()
    assert gen["inputs"]["num_inference_steps"] == 0
    results = gr.execute(api, CLASSES, skip_types=frozenset(gr.SAMPLING_NODES))
    assert not any(api[k]["class_type"] == "FluxReduxGenerate" for k in results)  # downstream of ComfyUI's loaders
