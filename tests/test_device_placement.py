"""Device correctness without a GPU: the `meta` device plays the accelerator.

A loaded model is placed the way the engine places it on CUDA (all modules on the device, or diffusers'
model / group / sequential offload hooks whose execution device it is), with `meta` as that device. Forward
pre-hooks on each component record the device and dtype of every tensor handed to it and stop the run before
any arithmetic. Whatever the engine leaves on the CPU shows up as `cpu` there: on a GPU that is a device
mismatch at the first step. Loading on the CPU and moving the modules afterwards also stands for ComfyUI's
memory manager moving them after load, so the engine must read the device at call time.
"""

import types

import numpy as np
import pytest
import torch
from PIL import Image
from packloader import submodule

import tiny_models as tm

models_mod = submodule("pipelines.models")
loading = submodule("pipelines.loading")
sampling = submodule("pipelines.sampling")
redux = submodule("pipelines.redux")
params = submodule("pipelines.params")
text = submodule("pipelines.text")
ModelCache = submodule("pipelines.cache").ModelCache

META = torch.device("meta")
COMPUTE = torch.bfloat16  # what CUDA computes in; the CPU default (fp32) would hide dtype slips
FLOAT_INPUTS = ("hidden_states", "encoder_hidden_states", "pooled_projections", "pixel_values", "sample", "z")


class ProbeStop(Exception):
    """Raised by a probe to end the run before any arithmetic on meta tensors."""


@pytest.fixture
def meta_accelerator(monkeypatch):
    """diffusers asks torch for the device's backend module (torch.cuda, ...) to empty its cache; `meta` has
    none, so a stand-in module with a no-op empty_cache is registered for the test's duration."""
    backend = types.ModuleType("torch.meta")
    backend.empty_cache = lambda: None
    monkeypatch.setattr(torch, "meta", backend, raising=False)
    torch.get_device_module.cache_clear()
    yield META
    torch.get_device_module.cache_clear()


class Probe:
    """Forward pre-hooks recording (component, input name, device, dtype) of every tensor argument."""

    def __init__(self):
        self.seen: list[tuple[str, str, str, torch.dtype]] = []

    def attach(self, module: torch.nn.Module, name: str, stop: bool) -> None:
        def hook(_module, args, kwargs):
            tensors = list(enumerate(args)) + list(kwargs.items())
            self.seen += [(name, str(key), value.device.type, value.dtype) for key, value in tensors
                          if isinstance(value, torch.Tensor)]
            if stop:
                raise ProbeStop(name)
        module.register_forward_pre_hook(hook, with_kwargs=True)

    def off_device(self):
        return [entry for entry in self.seen if entry[2] != META.type]

    def wrong_dtype(self):
        return [entry for entry in self.seen if entry[1] in FLOAT_INPUTS and entry[3] != COMPUTE]

    def components(self):
        return {entry[0] for entry in self.seen}


def load_flux(models, storage):
    spec = models_mod.FluxModelSpec(str(models["files"]["dev"]), str(models["files"]["vae"]),
                                    options=loading.LoadOptions(device="cpu", dtype="bf16", weight_storage=storage))
    return models_mod.load_flux_model(spec, ModelCache())


@pytest.fixture(scope="module")
def encoder(models):
    spec = models_mod.ReduxEncoderSpec(str(models["files"]["redux"]), str(models["files"]["siglip"]),
                                       loading.LoadOptions(device="cpu"))
    return models_mod.load_redux_encoder(spec, ModelCache())


def photo(seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def conditionings(encoder):
    single = redux.encode(encoder, photo(0))
    prompt = redux.TextConditioning(torch.randn(1, 7, tm.JOINT_WIDTH), torch.randn(1, tm.POOLED_WIDTH))
    return {"one reference": single,
            "text prompt": single.with_prompt(prompt, prompt_scale=0.5),
            "three references": redux.encode(encoder, [photo(1), photo(2), photo(3)], weights=[1.0, 0.5, 0.25])}


@pytest.mark.parametrize("conditioning, img2img", [("one reference", False), ("one reference", True),
                                                    ("text prompt", True), ("three references", False)])
@pytest.mark.parametrize("storage", ["default", "fp8"])
@pytest.mark.parametrize("placement", ["none", "model", "group", "sequential"])
def test_every_tensor_reaches_the_execution_device(models, conditionings, meta_accelerator, placement, storage,
                                                    conditioning, img2img):
    flux = load_flux(models, storage)
    models_mod.place_pipeline(flux.pipe, placement, meta_accelerator)
    assert flux.execution_device.type == META.type
    probe = Probe()
    # Group offload onloads with `param.data = ...`, which meta tensors refuse: there the img2img run stops at
    # the VAE (the transformer's inputs are the same code as in txt2img, checked by the txt2img cases).
    vae_stops = placement == "group"
    probe.attach(flux.pipe.vae.encoder, "vae.encoder", stop=vae_stops)
    probe.attach(flux.pipe.transformer, "transformer", stop=True)
    gen = params.validate_generation("dev", "custom", 256, 256, num_inference_steps=2, seed=1)
    extra = {"init_image": photo(4), "denoise": 0.6} if img2img else {}
    with pytest.raises(ProbeStop):
        sampling.generate(flux, conditionings[conditioning], gen, **extra)
    expected = {"transformer"} if not img2img else {"vae.encoder"} if vae_stops else {"vae.encoder", "transformer"}
    assert probe.components() == expected
    assert probe.off_device() == []
    assert probe.wrong_dtype() == []


def test_redux_encoder_follows_its_modules(encoder, models):
    """Loaded on the CPU, then moved (as ComfyUI's memory manager may): pixels follow the modules."""
    spec = models_mod.ReduxEncoderSpec(str(models["files"]["redux"]), str(models["files"]["siglip"]),
                                       loading.LoadOptions(device="cpu", dtype="bf16"))
    moved = models_mod.load_redux_encoder(spec, ModelCache())
    moved.vision.to(META)
    moved.projector.to(META)
    probe = Probe()
    probe.attach(moved.vision, "siglip", stop=True)
    with pytest.raises(ProbeStop):
        redux.encode(moved, [photo(5), photo(6)])
    assert probe.off_device() == [] and probe.wrong_dtype() == []


@pytest.fixture(scope="module")
def text_files(tmp_path_factory):
    return tm.write_text_encoders(tmp_path_factory.mktemp("text"))


def test_text_encoders_follow_their_modules(text_files):
    """diffusers 0.42 moves the token ids to the encoders itself; this guards the engine's side of it."""
    folder = str(text_files["folder"])
    spec = text.TextEncoderSpec(folder, folder, options=loading.LoadOptions(device="cpu"))
    encoders = text.load_text_encoders(spec, ModelCache())
    encoders.pipe.to(META)
    probe = Probe()
    probe.attach(encoders.pipe.text_encoder, "clip", stop=True)
    with pytest.raises(ProbeStop):
        text.encode_prompt(encoders, "a photo of a cat")
    assert probe.seen and probe.off_device() == []
