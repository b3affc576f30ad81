"""The "Redux variation (remote)" node: its contract, a run against the fake fal queue with stand-in ComfyUI
hooks (progress bar, interrupt), and the example workflows."""

from __future__ import annotations

import json
import math
import sys
import types
from pathlib import Path

import pytest
import torch

from fakes.helpers import FAL_KEY, fal_settings, params, remote
from packloader import pack, submodule

pytest_plugins = ["fakes.fixtures"]  # fal_fake, wavespeed_fake, custom_fake

node_module = submodule("nodes.remote")
convert = submodule("nodes.convert")
Node = node_module.FluxReduxRemoteVariation
ROOT = Path(__file__).resolve().parent.parent
WIDGET_ORDER = ["provider", "model", "base_url", "image_size", "width", "height", "num_inference_steps",
                "guidance_scale", "seed", "random_seed", "num_images", "enable_safety_checker", "output_format",
                "acceleration", "sync_mode", "max_concurrency"]


@pytest.fixture
def comfy(monkeypatch):
    """Minimal stand-ins for comfy.utils.ProgressBar and comfy.model_management's interrupt."""
    state = types.SimpleNamespace(interrupt_at=None, interrupted=False, updates=[], totals=[])

    class InterruptProcessingException(Exception):
        pass

    class ProgressBar:
        def __init__(self, total):
            state.totals.append(total)

        def update_absolute(self, value, total=None, preview=None):
            state.updates.append(value)
            if state.interrupt_at is not None and value >= state.interrupt_at:
                state.interrupted = True  # the user presses "cancel" now

    def throw_exception_if_processing_interrupted():
        if state.interrupted:
            state.interrupted = False
            raise InterruptProcessingException()

    package, utils, management = (types.ModuleType(name) for name in
                                  ("comfy", "comfy.utils", "comfy.model_management"))
    utils.ProgressBar = ProgressBar
    management.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted
    management.InterruptProcessingException = InterruptProcessingException
    package.utils, package.model_management = utils, management
    for name, module in (("comfy", package), ("comfy.utils", utils), ("comfy.model_management", management)):
        monkeypatch.setitem(sys.modules, name, module)
    state.exception = InterruptProcessingException
    return state


@pytest.fixture
def run_node(fal_fake, tmp_path, monkeypatch):
    monkeypatch.setattr(node_module, "client_settings",
                        lambda max_concurrency: fal_settings(tmp_path, fal_fake, max_concurrency=max_concurrency))

    def run(image, **overrides):
        inputs = {name: options.get("default") for name, (kind, options) in Node.INPUT_TYPES()["required"].items()
                  if name != "image"}
        inputs.update(image_size="square", seed=42, **overrides)
        return Node().generate(image=image, **inputs)

    return run


def batch(*colors) -> torch.Tensor:
    return torch.stack([torch.tensor(color, dtype=torch.float32).view(1, 1, 3).expand(24, 24, 3) / 255
                        for color in colors])


def test_contract_and_registration():
    required = Node.INPUT_TYPES()["required"]
    assert list(required) == ["image", *WIDGET_ORDER]
    assert all(options.get("tooltip") for _, options in required.values())
    assert Node.RETURN_TYPES == ("IMAGE", "STRING") and Node.CATEGORY == "FLUX Redux/remote" and Node.DESCRIPTION
    assert pack.NODE_CLASS_MAPPINGS["FluxReduxRemoteVariation"] is Node
    assert pack.NODE_DISPLAY_NAME_MAPPINGS["FluxReduxRemoteVariation"] == "Redux variation (remote)"


def test_ranges_come_from_the_shared_specs():
    required = Node.INPUT_TYPES()["required"]
    for name, spec in (("width", params.WIDTH), ("height", params.HEIGHT), ("num_images", params.NUM_IMAGES),
                       ("num_inference_steps", params.STEPS_LIMITS), ("guidance_scale", params.GUIDANCE),
                       ("seed", params.SEED)):
        options = required[name][1]
        assert (options["min"], options["max"]) == (spec.minimum, spec.maximum), name
    assert required["seed"][1]["control_after_generate"] is True and required["seed"][1]["max"] == 2**64 - 1
    assert tuple(required["image_size"][0]) == params.IMAGE_SIZE_CHOICES
    assert tuple(required["model"][0]) == tuple(params.VARIANTS)
    assert tuple(required["acceleration"][0]) == params.ACCELERATIONS


def test_batch_runs_as_jobs_in_order_with_progress_and_info(run_node, fal_fake, comfy):
    images, info_text = run_node(batch((250, 0, 0), (0, 0, 250)), num_images=2)
    assert images.dtype == torch.float32 and tuple(images.shape) == (4, 512, 512, 3)
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    assert images[0, 0, 0, 0] > 0.9 and images[2, 0, 0, 2] > 0.9  # input order kept: red first, then blue
    info = json.loads(info_text)
    assert info["provider"] == "fal" and info["seeds"] == [42, 42] and info["warnings"] == []
    assert sorted(job["request_id"] for job in info["jobs"]) == sorted(fal_fake.jobs)
    assert all(job["has_nsfw"] == [False, False] for job in info["jobs"])
    assert comfy.totals == [8] and comfy.updates[-1] == 8  # 2 jobs x 4 steps, all done
    assert FAL_KEY not in info_text


def test_random_seed_sends_null_and_always_reruns(run_node, fal_fake):
    _, info_text = run_node(batch((1, 2, 3)), random_seed=True)
    assert "seed" not in fal_fake.hits_on("submit")[0].json()
    assert isinstance(json.loads(info_text)["seeds"][0], int)
    assert math.isnan(Node.IS_CHANGED(random_seed=True)) and Node.IS_CHANGED(random_seed=False) == ""


def test_schnell_leaves_guidance_out_and_fal_steps_are_checked_before_network(run_node, fal_fake):
    _, info_text = run_node(batch((1, 2, 3)), model="schnell", num_inference_steps=0)
    body = fal_fake.hits_on("submit")[0].json()
    assert "guidance_scale" not in body and body["num_inference_steps"] == 4  # 0 = the model's default
    assert json.loads(info_text)["warnings"][0].startswith("guidance_scale ignored")
    hits = len(fal_fake.hits)
    with pytest.raises(params.ParameterError, match="num_inference_steps=28 .*1–12 for fal's FLUX.1 schnell"):
        run_node(batch((1, 2, 3)), model="schnell", num_inference_steps=28)
    assert len(fal_fake.hits) == hits


def test_wavespeed_schnell_fails_before_network(run_node, fal_fake):
    with pytest.raises(params.ParameterError, match="schnell"):
        run_node(batch((1, 2, 3)), provider="wavespeed", model="schnell")
    assert fal_fake.hits == []


def test_interrupt_cancels_the_queued_job_and_raises_comfys_exception(run_node, fal_fake, comfy):
    fal_fake.default_plan = (1000, 0)
    comfy.interrupt_at = 1  # as soon as the job is queued
    with pytest.raises(comfy.exception):
        run_node(batch((1, 2, 3)))
    assert fal_fake.cancels == list(fal_fake.jobs) and len(fal_fake.jobs) == 1


def test_tensor_pil_round_trip():
    tensor = torch.rand(2, 5, 7, 3)
    pictures = convert.image_batch_to_pils(tensor)
    assert [picture.size for picture in pictures] == [(7, 5)] * 2
    back = convert.pils_to_image_batch(pictures)
    assert back.shape == tensor.shape and torch.allclose(back, tensor, atol=1 / 255)


@pytest.mark.parametrize("name, model", [("Redux variation on fal without a GPU (FLUX dev).json", "dev"), ("Redux variation on fal without a GPU (FLUX schnell).json", "schnell")])
def test_example_workflows(name, model):
    workflow = json.loads((ROOT / "example_workflows" / name).read_text())
    nodes = {node["id"]: node for node in workflow["nodes"]}
    assert [nodes[i]["type"] for i in sorted(nodes)] == ["LoadImage", "FluxReduxRemoteVariation", "SaveImage", "Note"]
    assert workflow["version"] == 0.4 and workflow["last_node_id"] == max(nodes)
    assert workflow["links"] == [[1, 1, 0, 2, 0, "IMAGE"], [2, 2, 0, 3, 0, "IMAGE"]]
    assert "FAL_KEY" in nodes[4]["widgets_values"][0]
    values = list(nodes[2]["widgets_values"])
    required = Node.INPUT_TYPES()["required"]
    widgets = dict(zip(WIDGET_ORDER, values[:9] + values[10:], strict=True))  # values[9]: control_after_generate
    assert len(values) == len(WIDGET_ORDER) + 1 and values[9] in ("fixed", "randomize")
    for key, value in widgets.items():
        kind, options = required[key]
        if isinstance(kind, (tuple, list)):
            assert value in kind, key
        elif kind in ("INT", "FLOAT"):
            assert options["min"] <= value <= options["max"], key
    assert widgets["provider"] == "fal" and widgets["model"] == model
    request, _ = node_module.build_request(**{k: v for k, v in widgets.items() if k != "max_concurrency"})
    remote.make_provider(request).build_payload(request)  # the saved values pass validation
