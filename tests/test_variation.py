"""The "Redux Variation" node: one node, four backends. local on the tiny models, fal / wavespeed / custom
against the fakes; the same widgets and outputs for each; what a backend lacks reported before any work; and
its workflow run in-process with each backend."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import torch
from PIL import Image

import graph_runner as gr
from fakes.helpers import CUSTOM_KEY, FAL_KEY, WAVESPEED_KEY, settings
from packloader import ROOT, pack, submodule

pytest_plugins = ["fakes.fixtures"]  # fal_fake, wavespeed_fake, custom_fake

params = submodule("pipelines.params")
remote_errors = submodule("pipelines.remote.errors")
CACHE = submodule("pipelines.cache").CACHE
bridge = submodule("nodes.comfy_bridge")
local = submodule("nodes.local")
loaders = submodule("nodes.local_loaders")
remote_node = submodule("nodes.remote")
variation = submodule("nodes.variation")
Node = variation.FluxReduxVariation

WORKFLOW = "Redux variation on any backend (local or hosted).json"
HOSTED = ("fal", "wavespeed", "custom")
SHARED_WIDGETS = ("model", "image_size", "width", "height", "num_inference_steps", "guidance_scale", "seed",
                  "num_images", "enable_safety_checker", "output_format", "acceleration", "sync_mode", "base_url",
                  "max_concurrency")
INFO_KEYS = {"backend", "model", "seeds", "warnings", "jobs"}
CLASSES = {**pack.NODE_CLASS_MAPPINGS, **gr.BUILTINS}


@pytest.fixture(scope="module", autouse=True)
def comfy_folders(models, tmp_path_factory):
    """The tiny models as ComfyUI's models/, an input/ with example.png, an output/."""
    inputs, outputs = tmp_path_factory.mktemp("input"), tmp_path_factory.mktemp("output")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(
        inputs / "example.png")
    saved = bridge.MODELS_ROOT, gr.INPUT_DIR, gr.OUTPUT_DIR
    bridge.MODELS_ROOT, gr.INPUT_DIR, gr.OUTPUT_DIR = models["root"], inputs, outputs
    yield
    bridge.MODELS_ROOT, gr.INPUT_DIR, gr.OUTPUT_DIR = saved


@pytest.fixture
def hosted(fal_fake, wavespeed_fake, custom_fake, tmp_path, monkeypatch):
    """Every provider pointed at its fake, with keys in a private environment (none in os.environ)."""
    keys = {"FAL_KEY": FAL_KEY, "WAVESPEED_API_KEY": WAVESPEED_KEY, "REDUX_CUSTOM_API_KEY": CUSTOM_KEY}
    endpoints = {"fal_queue": fal_fake.queue_url, "fal_run": fal_fake.run.url, "wavespeed": wavespeed_fake.url}
    state = {"environ": keys}
    monkeypatch.setattr(remote_node, "client_settings", lambda max_concurrency: settings(
        tmp_path, environ=state["environ"], endpoints=endpoints, max_concurrency=max_concurrency))
    fakes = {"fal": fal_fake, "wavespeed": wavespeed_fake, "custom": custom_fake}
    return types.SimpleNamespace(fakes=fakes, state=state, base_url=custom_fake.queue_url)


def load_encoder():
    return loaders.FluxReduxLoadEncoder().load("flux1-redux-dev.safetensors", "sigclip_vision_patch14_384.safetensors",
                                               "cpu", "auto")[0]


def load_model(transformer="flux1-dev.safetensors"):
    return loaders.FluxReduxLoadModel().load(transformer, "ae.safetensors", "auto", "default", "none", "auto",
                                             "cpu")[0]


def photo(seed=0, count=1):
    return torch.from_numpy(np.random.default_rng(seed).random((count, 40, 56, 3), dtype=np.float32))


def widgets(**changes):
    """The node's widget defaults, at a small size and few steps."""
    values = {name: entry[1].get("default") for name, entry in Node.INPUT_TYPES()["required"].items()
              if name not in ("image", "backend")}
    values.update(image_size="custom", width=256, height=256, num_inference_steps=2, seed=7)
    return values | changes


def run(image, backend, **changes):
    inputs = widgets(**changes)
    images, info = Node().generate(image, backend, **inputs)
    return images, json.loads(info)


# -- contract ---------------------------------------------------------------------------------------------------------

def test_contract_and_registration():
    spec = Node.INPUT_TYPES()
    assert list(spec["required"]) == ["image", "backend", *SHARED_WIDGETS]
    assert list(spec["optional"]) == ["flux_model", "redux_encoder"]
    assert {name: (kind, options["lazy"]) for name, (kind, options) in spec["optional"].items()} == {
        "flux_model": ("FLUX_REDUX_MODEL", True), "redux_encoder": ("REDUX_ENCODER", True)}
    assert all(entry[1].get("tooltip") for section in spec.values() for entry in section.values())
    assert tuple(spec["required"]["backend"][0]) == ("local", "fal", "wavespeed", "custom")
    assert spec["required"]["seed"][1]["control_after_generate"] is True
    assert Node.RETURN_TYPES == ("IMAGE", "STRING") and Node.RETURN_NAMES == ("images", "info")
    assert pack.NODE_CLASS_MAPPINGS["FluxReduxVariation"] is Node
    assert pack.NODE_DISPLAY_NAME_MAPPINGS["FluxReduxVariation"] == "Redux Variation (FLUX Redux)"
    code = Node.generate.__code__
    assert set(code.co_varnames[1:code.co_argcount]) == set(spec["required"]) | set(spec["optional"])


def test_widgets_are_the_other_nodes_widgets():
    """Same kinds, ranges and defaults as the remote node, and as Redux Generate for the generation widgets."""
    mine = Node.INPUT_TYPES()["required"]
    hosted = remote_node.FluxReduxRemoteVariation.INPUT_TYPES()["required"]
    generate = local.FluxReduxGenerate.INPUT_TYPES()["required"]
    strip = lambda entry: (entry[0], {k: v for k, v in entry[1].items() if k != "tooltip"})  # noqa: E731
    for name in SHARED_WIDGETS:
        assert strip(mine[name]) == strip(hosted[name]), name
    for name in variation.GENERATION_WIDGETS:
        assert strip(mine[name]) == strip(generate[name]), name


@pytest.mark.parametrize("backend, inputs, wanted", [
    ("local", {"flux_model": None, "redux_encoder": None}, ["flux_model", "redux_encoder"]),
    ("local", {"flux_model": None}, ["flux_model"]),  # redux_encoder not connected: never named
    ("local", {"flux_model": "evaluated", "redux_encoder": None}, ["redux_encoder"]),
    ("fal", {"flux_model": None, "redux_encoder": None}, []),
    ("custom", {}, []),
])
def test_lazy_model_inputs_are_asked_for_by_local_only(backend, inputs, wanted):
    assert Node().check_lazy_status(backend=backend, **widgets(), **inputs) == wanted


# -- local ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("connected, named", [((), "flux_model (connect Load FLUX Model (FLUX Redux)) and "
                                                   "redux_encoder (connect Load Redux Encoder (FLUX Redux))"),
                                              (("flux_model",), "needs redux_encoder (connect Load Redux Encoder"),
                                              (("redux_encoder",), "needs flux_model (connect Load FLUX Model")])
def test_local_names_the_missing_model_inputs_before_any_work(connected, named):
    inputs = {"flux_model": load_model() if "flux_model" in connected else None,
              "redux_encoder": load_encoder() if "redux_encoder" in connected else None}
    CACHE.unload()
    with pytest.raises(variation.MissingBackendInputError, match="backend local needs") as error:
        run(photo(), "local", **inputs)
    assert named in str(error.value) and "fal, wavespeed or custom" in str(error.value)
    assert len(CACHE) == 0


@pytest.mark.parametrize("changes, message", [
    (dict(model="schnell"), "model='schnell' is not allowed: the connected FLUX model is FLUX.1 dev"),
    (dict(width=1000), "width=1000 is not allowed: must be a multiple of 16"),
    (dict(num_images=5), "num_images=5 is not allowed"),
])
def test_local_checks_every_value_before_loading_anything(changes, message):
    CACHE.unload()
    with pytest.raises(params.ParameterError, match=message):
        run(photo(), "local", flux_model=load_model(), redux_encoder=load_encoder(), **changes)
    assert len(CACHE) == 0


def test_local_is_redux_encode_then_redux_generate():
    """The local backend reuses the local nodes: the same images as Encode (center) + Generate."""
    model, encoder, image = load_model(), load_encoder(), photo(3)
    images, info = run(image, "local", flux_model=model, redux_encoder=encoder, num_images=2)
    (cond,) = local.FluxReduxEncode().encode(image=image, crop="center", redux_encoder=encoder)
    expected, expected_info = local.FluxReduxGenerate().generate(model, cond, "custom", 256, 256, 2, 3.5, 7, 2)
    assert torch.equal(images, expected)
    assert set(info) == INFO_KEYS and (info["backend"], info["model"], info["seeds"]) == ("local", "dev", [7])
    untimed = lambda job: {k: v for k, v in job.items() if k != "timings"}  # noqa: E731
    assert [untimed(job) for job in info["jobs"]] == [untimed(json.loads(expected_info))]


def test_local_runs_one_job_per_input_image_like_the_hosted_backends():
    model, encoder, pair = load_model(), load_encoder(), photo(5, count=2)
    images, info = run(pair, "local", flux_model=model, redux_encoder=encoder, num_inference_steps=1)
    assert images.shape == (2, 256, 256, 3)
    second, _ = run(pair[1:], "local", flux_model=model, redux_encoder=encoder, num_inference_steps=1)
    assert torch.equal(images[1:], second)  # the second reference's image, as if it ran on its own
    assert not torch.equal(images[:1], images[1:])
    assert info["seeds"] == [7, 7] and len(info["jobs"]) == 2


def test_local_applies_redux_generates_variant_rules():
    model = load_model("flux1-schnell.safetensors")
    _, info = run(photo(), "local", model="schnell", flux_model=model, redux_encoder=load_encoder(),
                  num_inference_steps=1)
    assert info["model"] == "schnell" and info["jobs"][0]["guidance_scale"] is None
    assert any(w.startswith("guidance_scale ignored") for w in info["warnings"])


# -- hosted -----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", HOSTED)
def test_hosted_backends_take_the_same_widgets_and_give_the_same_outputs(backend, hosted):
    fake = hosted.fakes[backend]
    changes = {"base_url": hosted.base_url} if backend == "custom" else {}
    images, info = run(photo(1, count=2), backend, num_images=2, seed=11, **changes)
    assert images.shape == (4, 256, 256, 3) and images.dtype == torch.float32
    assert set(info) == INFO_KEYS and (info["backend"], info["model"]) == (backend, "dev")
    assert len(info["jobs"]) == 2 and len(fake.hits_on("submit")) == 2
    body = fake.hits_on("submit")[0].json()
    assert body["num_images"] == 2 and body["seed"] == 11 and body["num_inference_steps"] == 2
    assert all(key not in json.dumps(info) for key in (FAL_KEY, WAVESPEED_KEY, CUSTOM_KEY))


@pytest.mark.parametrize("backend, variable", [("fal", "FAL_KEY"), ("wavespeed", "WAVESPEED_API_KEY"),
                                               ("custom", "REDUX_CUSTOM_API_KEY")])
def test_hosted_names_the_missing_key_before_any_request(backend, variable, hosted):
    hosted.state["environ"] = {}
    changes = {"base_url": hosted.base_url} if backend == "custom" else {}
    with pytest.raises(remote_errors.MissingKeyError, match=variable):
        run(photo(), backend, **changes)
    assert hosted.fakes[backend].hits == []


def test_hosted_ignores_the_model_inputs(hosted):
    class Untouchable:
        def __getattr__(self, name):
            raise AssertionError(f"a hosted backend used the model input ({name})")

    images, info = run(photo(), "fal", flux_model=Untouchable(), redux_encoder=Untouchable())
    assert images.shape == (1, 256, 256, 3) and info["backend"] == "fal"


# -- the workflow -----------------------------------------------------------------------------------------------------

def workflow_api(backend="local", **changes):
    """The shipped workflow in API format with `backend` (plus `changes`) on the variation node, made cheap."""
    api = gr.to_api(json.loads((ROOT / "example_workflows" / WORKFLOW).read_text()), CLASSES)
    node_id = next(k for k, v in api.items() if v["class_type"] == "FluxReduxVariation")
    api[node_id]["inputs"].update(backend=backend, image_size="custom", width=256, height=256,
                                  num_inference_steps=2, **changes)
    return api, node_id


def loader_ids(api):
    return {k for k, v in api.items() if v["class_type"] in ("FluxReduxLoadEncoder", "FluxReduxLoadModel")}


def test_workflow_as_shipped():
    ui = json.loads((ROOT / "example_workflows" / WORKFLOW).read_text())
    assert gr.validate_workflow(ui, CLASSES) == []
    api = gr.to_api(ui, CLASSES)
    node = next(v for v in api.values() if v["class_type"] == "FluxReduxVariation")["inputs"]
    assert (node["backend"], node["model"], node["image_size"], node["num_inference_steps"]) == (
        "local", "dev", "square_hd", 28)
    assert all(isinstance(node[name], list) for name in ("image", "flux_model", "redux_encoder"))


def test_workflow_runs_locally():
    api, node_id = workflow_api()
    before = len(gr.SaveImage.saved)
    results = gr.execute(api, CLASSES)
    assert loader_ids(api) <= set(results)
    images, info = results[node_id]
    assert images.shape == (1, 256, 256, 3) and json.loads(info)["backend"] == "local"
    assert len(gr.SaveImage.saved) == before + 1


@pytest.mark.parametrize("backend", HOSTED)
def test_workflow_runs_hosted_on_a_machine_without_model_files(backend, hosted, monkeypatch, tmp_path):
    """Only the backend changes (custom also needs its base_url); the loaders are never run, so their files may
    be missing: the prompt still validates (the loaders check files when they run)."""
    monkeypatch.setattr(bridge, "MODELS_ROOT", tmp_path / "empty_models")
    changes = {"base_url": hosted.base_url} if backend == "custom" else {}
    api, node_id = workflow_api(backend, **changes)
    results = gr.execute(api, CLASSES)
    assert not loader_ids(api) & set(results)
    images, info = results[node_id]
    assert images.shape == (1, 256, 256, 3)
    info = json.loads(info)
    assert set(info) == INFO_KEYS and info["backend"] == backend
    preview = next(r for k, r in results.items() if api[k]["class_type"] == "PreviewAny")
    assert json.loads(preview["text"][0])["jobs"][0]["request_id"]


def test_workflow_locally_without_the_files_names_the_folder(monkeypatch, tmp_path):
    monkeypatch.setattr(bridge, "MODELS_ROOT", tmp_path / "empty_models")
    api, _ = workflow_api("local")
    with pytest.raises(FileNotFoundError, match=r"not found in the (style_models|diffusion_models) folder"):
        gr.execute(api, CLASSES)


def test_workflow_without_loaders_on_local_says_what_to_connect():
    api, _ = workflow_api("local")
    for node_id in loader_ids(api):
        del api[node_id]
    for node in api.values():
        node["inputs"] = {k: v for k, v in node["inputs"].items() if not (isinstance(v, list) and v[0] not in api)}
    with pytest.raises(variation.MissingBackendInputError, match="connect Load FLUX Model"):
        gr.execute(api, CLASSES)


@pytest.mark.parametrize("changes, verdict", [
    (dict(image_size="custom", width=1000, height=512), "width=1000 is not allowed: must be a multiple of 16"),
    (dict(image_size="square", width=1000, height=512), True),  # width and height count for custom only
])
def test_sizes_are_checked_when_the_prompt_is_queued(changes, verdict):
    api, node_id = workflow_api("fal")
    api[node_id]["inputs"].update(changes)
    result = Node.VALIDATE_INPUTS(**{k: api[node_id]["inputs"][k] for k in ("image_size", "width", "height")})
    assert result is True if verdict is True else verdict in result
    if verdict is not True:
        with pytest.raises(gr.PromptError, match=verdict):
            gr.execute(api, CLASSES)
