"""ComfyUI node "Redux Variation": one node for local and hosted FLUX.1 Redux, chosen by its `backend` widget.

A shared workflow then runs on any machine: `local` runs the engine on the connected FLUX model and Redux
encoder (through the local nodes' own functions), `fal` / `wavespeed` / `custom` run the remote client (through
the remote node's own functions). Every backend takes the same widgets and gives the same outputs: one
variation job per input image with num_images images each, and an info JSON {backend, model, seeds, warnings,
jobs}. The model inputs are lazy, so with a hosted backend the loaders connected to them never run.
"""

from __future__ import annotations

import json
from dataclasses import asdict, astuple, dataclass

import torch

from ..pipelines import params
from ..pipelines.models import FluxModelSpec, ReduxEncoderSpec
from ..pipelines.remote import PROVIDER_NAMES
from . import local, remote
from .convert import images_from_comfy
from .local_loaders import model_variant

BACKENDS: tuple[str, ...] = ("local", *PROVIDER_NAMES)
LOCAL_CROP = "center"  # how the local backend fits a reference to SigLIP's square (ComfyUI's default)
MODEL_INPUTS = {"flux_model": "Load FLUX Model (FLUX Redux)", "redux_encoder": "Load Redux Encoder (FLUX Redux)"}
GENERATION_WIDGETS = ("image_size", "width", "height", "num_inference_steps", "guidance_scale", "seed", "num_images")
REMOTE_WIDGETS = ("enable_safety_checker", "output_format", "acceleration", "sync_mode", "base_url",
                  "max_concurrency")


class MissingBackendInputError(ValueError):
    """The chosen backend lacks something it needs (a model input for local); the message says what to connect."""


@dataclass(frozen=True)
class Generation:
    """The generation widgets, in Redux Generate's order (local.run_generation takes them as a tuple)."""

    image_size: str
    width: int
    height: int
    num_inference_steps: int
    guidance_scale: float
    seed: int
    num_images: int


@dataclass(frozen=True)
class Hosting:
    """The widgets only the hosted backends use."""

    enable_safety_checker: bool
    output_format: str
    acceleration: str
    sync_mode: bool
    base_url: str
    max_concurrency: int


def _override_tooltip(entry: tuple, tooltip: str) -> tuple:
    kind, options = entry
    return kind, {**options, "tooltip": tooltip}


class FluxReduxVariation:
    CATEGORY = "FLUX Redux"
    FUNCTION = "generate"
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("images", "info")
    OUTPUT_TOOLTIPS = ("All output images, input order kept (each input image gives num_images images).",
                       "JSON: backend, model, seed per input image, warnings, and each job's details.")
    DESCRIPTION = ("FLUX.1 Redux image variation on the backend you choose: local (your GPU; connect Load FLUX "
                   "Model and Load Redux Encoder) or a hosted API (fal, wavespeed, custom; no model files, a key "
                   "in the environment or redux_api_keys.json). Switching the backend changes nothing else: same "
                   "widgets, same outputs. Each input image is one job. What the chosen backend lacks is reported "
                   "before any work starts.")

    @classmethod
    def INPUT_TYPES(cls):
        hosted = remote.FluxReduxRemoteVariation.INPUT_TYPES()["required"]
        widgets = {name: hosted[name] for name in (*GENERATION_WIDGETS, *REMOTE_WIDGETS)}
        widgets["seed"] = _override_tooltip(hosted["seed"], (
            "Seed of the noise; the same seed gives the same images (WaveSpeed accepts up to 2147483647). Set "
            "control to 'randomize' for a new variation on every queue."))
        for name in REMOTE_WIDGETS:
            entry = widgets[name]
            widgets[name] = _override_tooltip(entry, f"{entry[1]['tooltip']} Hosted backends only.")
        return {"required": {
            "image": ("IMAGE", {"tooltip": "Image(s) to vary; each image of the batch is its own job."}),
            "backend": (BACKENDS, {"default": "local", "tooltip": (
                "local: the connected FLUX model and Redux encoder on this machine. fal: fal.ai (key FAL_KEY). "
                "wavespeed: WaveSpeed (WAVESPEED_API_KEY, dev only). custom: a service with fal's paths under "
                "base_url (REDUX_CUSTOM_API_KEY).")}),
            "model": _override_tooltip(hosted["model"], (
                "FLUX.1 dev (guidance, up to 50 steps) or schnell (up to 12 steps, no guidance; not on WaveSpeed). "
                "local: must be the connected FLUX model's variant.")),
            **widgets,
        }, "optional": {
            "flux_model": ("FLUX_REDUX_MODEL", {"lazy": True, "tooltip": (
                "From Load FLUX Model; needed by the local backend only (a hosted backend never loads it).")}),
            "redux_encoder": ("REDUX_ENCODER", {"lazy": True, "tooltip": (
                "From Load Redux Encoder; needed by the local backend only.")}),
        }}

    # at queue time, before any node runs: Redux Generate's size rules (a custom side divides by 16)
    VALIDATE_INPUTS = classmethod(local.FluxReduxGenerate.VALIDATE_INPUTS.__func__)

    def check_lazy_status(self, backend, **inputs):
        """ComfyUI asks which lazy inputs to evaluate: the model inputs for local, none for a hosted backend.
        Only connected inputs (present, not yet evaluated: None) may be named."""
        if backend != "local":
            return []
        return [name for name in MODEL_INPUTS if name in inputs and inputs[name] is None]

    def generate(self, image, backend, model, image_size, width, height, num_inference_steps, guidance_scale,
                 seed, num_images, enable_safety_checker, output_format, acceleration, sync_mode, base_url,
                 max_concurrency, flux_model=None, redux_encoder=None):
        generation = Generation(image_size, width, height, num_inference_steps, guidance_scale, seed, num_images)
        hosting = Hosting(enable_safety_checker, output_format, acceleration, sync_mode, base_url, max_concurrency)
        images, info = run_variation(image, backend, model, generation, hosting, flux_model, redux_encoder)
        return images, json.dumps(info, indent=2)


# -- backend dispatch ------------------------------------------------------------------------------------------

def run_variation(image, backend: str, model: str, generation: Generation, hosting: Hosting,
                  flux_model: FluxModelSpec | None = None, redux_encoder: ReduxEncoderSpec | None = None):
    """(ComfyUI IMAGE, info dict) from the chosen backend; what it lacks is reported before any work."""
    params.check_choice("backend", backend, BACKENDS)
    params.check_choice("model", model, tuple(params.VARIANTS))
    if backend == "local":
        return run_local(image, model, generation, flux_model, redux_encoder)
    return run_hosted(image, backend, model, generation, hosting)


def check_local_inputs(flux_model, redux_encoder) -> None:
    missing = [f"{name} (connect {loader})" for name, loader in MODEL_INPUTS.items()
               if {"flux_model": flux_model, "redux_encoder": redux_encoder}[name] is None]
    if missing:
        raise MissingBackendInputError(
            f"backend local needs {' and '.join(missing)}; or choose backend fal, wavespeed or custom to run "
            "on a hosted API without model files")


def run_local(image, model: str, generation: Generation, flux_model, redux_encoder):
    """One local job per input image: Redux Encode, then Redux Generate's run, each reference on its own."""
    check_local_inputs(flux_model, redux_encoder)
    variant = model_variant(flux_model)  # a header read, no weights
    if variant != model:
        raise params.ParameterError("model", model, f"the connected FLUX model is FLUX.1 {variant}: set model to "
                                                    f"{variant}, or connect a FLUX.1 {model} model")
    settings = astuple(generation)
    local.plan_generation(variant, *settings)  # every value checked before the encoder loads
    jobs, outputs = [], []
    for frame in images_from_comfy(image):
        encoded = local.FluxReduxEncode().encode(image=frame[None], crop=LOCAL_CROP, redux_encoder=redux_encoder)
        images, info = local.run_generation(flux_model, encoded[0], settings)
        outputs.append(images)
        jobs.append(json.loads(info))
    return torch.cat(outputs), {"backend": "local", "model": variant, "seeds": [job["seed"] for job in jobs],
                                "warnings": jobs[0]["warnings"], "jobs": jobs}


def run_hosted(image, backend: str, model: str, generation: Generation, hosting: Hosting):
    """The remote node's request building and run, with the provider named by `backend`."""
    request_widgets = {k: v for k, v in asdict(hosting).items() if k != "max_concurrency"}
    request, warnings = remote.build_request(provider=backend, model=model, random_seed=False,
                                             **asdict(generation), **request_widgets)
    images, info = remote.run_request(image, request, warnings, hosting.max_concurrency)
    return images, {"backend": backend, "model": info["model"], "seeds": info["seeds"],
                    "warnings": info["warnings"], "jobs": info["jobs"]}


NODE_CLASS_MAPPINGS = {"FluxReduxVariation": FluxReduxVariation}
NODE_DISPLAY_NAME_MAPPINGS = {"FluxReduxVariation": "Redux Variation (FLUX Redux)"}
