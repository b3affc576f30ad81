"""ComfyUI node "Redux variation (remote)": the same variation as the local node, run on a hosted API.

Parameter names and ranges come from pipelines/params.py, like the local generate node's, so a graph switches
local <-> remote by swapping one node. API keys come from environment variables or the git-ignored key file
(see pipelines/remote/keys.py), never from a widget, so they never reach workflow JSON or PNG metadata.
ComfyUI is imported lazily, so the pack imports (and tests run) without it.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import torch
from PIL import Image

from ..pipelines.params import (ACCELERATIONS, DEFAULT_IMAGE_SIZE, GUIDANCE, HEIGHT, IMAGE_SIZE_CHOICES, NUM_IMAGES,
                                SEED, STEPS_LIMITS, VARIANTS, WAVESPEED_OUTPUT_FORMATS, WIDTH, CUSTOM_SIZE,
                                NumberSpec)
from ..pipelines.remote import (KEY_FILE_NAME, KEY_SOURCES, MAX_CONCURRENCY, PROGRESS_STATES, PROVIDER_NAMES,
                                ClientSettings, ProgressEvent, RemoteCancelledError, RemoteRequest,
                                run_remote_variation)

log = logging.getLogger(__name__)

KEY_HELP = ", ".join(f"{name}: {source.describe()}" for name, source in KEY_SOURCES.items())


def _number(spec: NumberSpec, tooltip: str, **extra) -> dict:
    default = spec.default if spec.default is not None else spec.minimum
    return {"default": default, "min": spec.minimum, "max": spec.maximum, "step": spec.step,
            "tooltip": tooltip, **extra}


class FluxReduxRemoteVariation:
    """Image variation with FLUX.1 Redux on fal, WaveSpeed or a fal-compatible aggregator."""

    CATEGORY = "FLUX Redux/remote"
    FUNCTION = "generate"
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("images", "info")
    OUTPUT_TOOLTIPS = ("All output images, input order kept (each input gives num_images images).",
                       "JSON: provider, request ids, seed used, has_nsfw flags and timings per input image.")
    DESCRIPTION = ("FLUX.1 Redux image variation on a hosted API (no local GPU needed). Each input image is a "
                   f"separate paid job. Keys come from environment variables ({KEY_HELP}) or from "
                   f"{KEY_FILE_NAME} in this pack's folder, never from a widget. Interrupting cancels queued jobs.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "Image(s) to vary. Every image in the batch is sent as its own job."}),
            "provider": (PROVIDER_NAMES, {"default": "fal", "tooltip": (
                "fal: fal.ai (key FAL_KEY). wavespeed: WaveSpeed (WAVESPEED_API_KEY, dev only). custom: a service "
                "exposing fal's paths under base_url with Bearer auth (REDUX_CUSTOM_API_KEY).")}),
            "model": (tuple(VARIANTS), {"default": "dev", "tooltip": (
                "FLUX.1 dev (guidance, up to 50 steps) or schnell (up to 12 steps, no guidance; not on WaveSpeed).")}),
            "base_url": ("STRING", {"default": "", "tooltip": (
                "custom provider only: base URL that serves fal's paths, e.g. https://api.example.com/fal. "
                "https required except for localhost. Ignored for fal and wavespeed.")}),
            "image_size": (IMAGE_SIZE_CHOICES, {"default": DEFAULT_IMAGE_SIZE, "tooltip": (
                "Output size preset, or 'custom' to use width and height.")}),
            "width": ("INT", _number(WIDTH, "Output width when image_size is custom; multiple of 16 "
                                            "(WaveSpeed: 256-1536).")),
            "height": ("INT", _number(HEIGHT, "Output height when image_size is custom; multiple of 16 "
                                              "(WaveSpeed: 256-1536).")),
            "num_inference_steps": ("INT", _number(STEPS_LIMITS, (
                "Denoising steps: dev 1-50 (28 usual), schnell 1-12 (4 usual; higher values are clamped to 12)."))),
            "guidance_scale": ("FLOAT", _number(GUIDANCE, "Distilled guidance (dev only; ignored for schnell).",
                                                round=0.01)),
            "seed": ("INT", _number(SEED, "Seed for reproducible results (WaveSpeed accepts up to 2147483647). "
                                          "Ignored when random_seed is on.", control_after_generate=True)),
            "random_seed": ("BOOLEAN", {"default": False, "tooltip": (
                "Let the provider pick the seed (sent as null / -1); the seed used is reported in info when the "
                "provider returns it. The node then re-runs on every queue.")}),
            "num_images": ("INT", _number(NUM_IMAGES, "Images generated per input image, in one job.")),
            "enable_safety_checker": ("BOOLEAN", {"default": True, "tooltip": (
                "Ask the provider to run its NSFW checker; flagged images are reported in info (has_nsfw).")}),
            "output_format": (WAVESPEED_OUTPUT_FORMATS, {"default": "png", "tooltip": (
                "Format the provider encodes: png is lossless, jpeg is smaller; webp is WaveSpeed only.")}),
            "acceleration": (ACCELERATIONS, {"default": "none", "tooltip": (
                "fal speed-up level (may change the result slightly). Ignored for WaveSpeed.")}),
            "sync_mode": ("BOOLEAN", {"default": False, "tooltip": (
                "One request returns the images inline (fal.run / WaveSpeed enable_sync_mode): less polling, "
                "but a running request cannot be cancelled on interrupt.")}),
            "max_concurrency": ("INT", _number(MAX_CONCURRENCY, "How many input images run as parallel jobs.")),
        }}

    @classmethod
    def IS_CHANGED(cls, random_seed=False, **kwargs):
        return float("nan") if random_seed else ""  # NaN never equals itself: a provider-picked seed re-runs

    def generate(self, image, provider, model, base_url, image_size, width, height, num_inference_steps,
                 guidance_scale, seed, random_seed, num_images, enable_safety_checker, output_format,
                 acceleration, sync_mode, max_concurrency):
        request, warnings = build_request(
            provider=provider, model=model, base_url=base_url, image_size=image_size, width=width, height=height,
            num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, seed=seed,
            random_seed=random_seed, num_images=num_images, enable_safety_checker=enable_safety_checker,
            output_format=output_format, acceleration=acceleration, sync_mode=sync_mode)
        pictures = image_batch_to_pils(image)
        progress = _ProgressRelay(len(pictures))
        try:
            results = run_remote_variation(pictures, request, settings=client_settings(max_concurrency),
                                           on_progress=progress.update, should_abort=_interrupt_check())
        except RemoteCancelledError:
            _raise_comfy_interrupt()
            raise
        outputs = [picture for result in results for picture in result.images]
        info = {"provider": request.provider, "model": request.model, "warnings": warnings,
                "seeds": [result.seed for result in results], "jobs": [result.info() for result in results]}
        return pils_to_image_batch(outputs), json.dumps(info, indent=2)


def client_settings(max_concurrency: int) -> ClientSettings:
    """Client behaviour for node runs (tests replace this to point at local fakes)."""
    return ClientSettings(max_concurrency=max_concurrency)


def build_request(*, provider, model, base_url, image_size, width, height, num_inference_steps, guidance_scale,
                  seed, random_seed, num_images, enable_safety_checker, output_format, acceleration, sync_mode):
    """Map widget values to a RemoteRequest, plus warnings for info. Widgets that do not apply to the chosen
    provider/model are left out, and schnell steps above its limit are clamped, with the same rules and
    wording as the local generate node (so swapping the two nodes behaves the same)."""
    warnings = []
    spec = VARIANTS.get(model)
    if spec is not None and spec.guidance is None:
        guidance_scale = None  # the widget always carries a value; schnell has no guidance input
        warnings.append(f"guidance_scale ignored: FLUX.1 {model} has no guidance input")
    if model == "schnell" and isinstance(num_inference_steps, int) and num_inference_steps > spec.steps.maximum:
        warnings.append(f"num_inference_steps {num_inference_steps} clamped to {spec.steps.maximum}, the most "
                        f"FLUX.1 schnell takes (4 is its usual setting)")
        num_inference_steps = spec.steps.maximum
    if provider == "wavespeed":
        acceleration = None
        warnings.append("acceleration ignored: WaveSpeed has no acceleration setting")
    if provider != "custom":
        if base_url.strip():
            warnings.append("base_url ignored: only the custom provider uses it")
        base_url = None
    if image_size != CUSTOM_SIZE:
        width = height = None
    if random_seed:
        seed = None
        warnings.append("seed ignored: random_seed is on, the provider picks the seed")
    for warning in warnings:
        log.warning("Redux variation (remote): %s", warning)
    return RemoteRequest(provider=provider, model=model, image_size=image_size, width=width, height=height,
                         num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, seed=seed,
                         num_images=num_images, enable_safety_checker=enable_safety_checker,
                         output_format=output_format, acceleration=acceleration, sync_mode=sync_mode,
                         base_url=base_url), warnings


# -- IMAGE tensor <-> PIL (to merge with the local nodes' converter) ----------------------------------------------
def image_batch_to_pils(images: torch.Tensor) -> list[Image.Image]:
    """ComfyUI IMAGE (float [B,H,W,C] in 0..1) -> RGB PIL images."""
    if images.ndim == 3:
        images = images.unsqueeze(0)
    array = (images[..., :3].detach().cpu().float().clamp(0, 1).numpy() * 255.0).round().astype(np.uint8)
    return [Image.fromarray(frame) for frame in array]


def pils_to_image_batch(pictures: list[Image.Image]) -> torch.Tensor:
    """RGB PIL images -> ComfyUI IMAGE. Sizes should match (same request); a stray one is resized to the first."""
    size = pictures[0].size
    arrays = []
    for picture in pictures:
        if picture.size != size:
            log.warning("remote output of %s resized to %s to fit the batch", picture.size, size)
            picture = picture.resize(size, Image.LANCZOS)
        arrays.append(np.asarray(picture.convert("RGB"), dtype=np.float32) / 255.0)
    return torch.from_numpy(np.stack(arrays))


# -- ComfyUI hooks, optional ------------------------------------------------------------------------------------
class _ProgressRelay:
    """Shows job states on ComfyUI's progress bar: each job moves through PROGRESS_STATES."""

    def __init__(self, jobs: int):
        self.steps = len(PROGRESS_STATES) - 1
        self.total = jobs * self.steps
        self.reached = [0] * jobs
        try:
            import comfy.utils
            self.bar = comfy.utils.ProgressBar(self.total)
        except ImportError:
            self.bar = None

    def update(self, event: ProgressEvent) -> None:
        self.reached[event.index] = max(self.reached[event.index], PROGRESS_STATES.index(event.state))
        if self.bar is not None:
            self.bar.update_absolute(sum(self.reached), self.total)


def _interrupt_check():
    """A should_abort that raises ComfyUI's own InterruptProcessingException, or None without ComfyUI."""
    try:
        import comfy.model_management as model_management
    except ImportError:
        return None

    def check() -> bool:
        model_management.throw_exception_if_processing_interrupted()
        return False

    return check


def _raise_comfy_interrupt() -> None:
    try:
        import comfy.model_management as model_management
    except ImportError:
        return
    model_management.throw_exception_if_processing_interrupted()


NODE_CLASS_MAPPINGS = {"FluxReduxRemoteVariation": FluxReduxRemoteVariation}
NODE_DISPLAY_NAME_MAPPINGS = {"FluxReduxRemoteVariation": "Redux variation (remote)"}
