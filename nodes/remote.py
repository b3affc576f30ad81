"""ComfyUI node "Redux variation (remote)": the same variation as the local node, run on a hosted API.

Parameter names and ranges come from pipelines/params.py, like the local generate node's, so a graph switches
local <-> remote by swapping one node. API keys come from environment variables or the git-ignored key file
(see pipelines/remote/keys.py), never from a widget, so they never reach workflow JSON or PNG metadata.
ComfyUI is reached only through comfy_bridge, so the pack imports (and tests run) without it.
"""

from __future__ import annotations

import json
import logging

from ..pipelines.params import (ACCELERATIONS, DEFAULT_IMAGE_SIZE, GUIDANCE, HEIGHT, IMAGE_SIZE_CHOICES,
                                MAX_CONCURRENCY, NUM_IMAGES, SEED, STEPS_LIMITS, VARIANTS, WAVESPEED_OUTPUT_FORMATS,
                                WIDTH, CUSTOM_SIZE)
from ..pipelines.remote import (KEY_FILE_NAME, KEY_SOURCES, PROGRESS_STATES, PROVIDER_NAMES, ClientSettings,
                                ProgressEvent, RemoteCancelledError, RemoteRequest, run_remote_variation)
from . import comfy_bridge as bridge
from .convert import image_batch_to_pils, pils_to_image_batch
from .widgets import GENERATE_RETURN_NAMES, GENERATE_RETURN_TYPES, apply_variant_rules, number_widget

log = logging.getLogger(__name__)

KEY_HELP = ", ".join(f"{name}: {source.describe()}" for name, source in KEY_SOURCES.items())


class FluxReduxRemoteVariation:
    """Image variation with FLUX.1 Redux on fal, WaveSpeed or a fal-compatible aggregator."""

    CATEGORY = "FLUX Redux/remote"
    FUNCTION = "generate"
    RETURN_TYPES, RETURN_NAMES = GENERATE_RETURN_TYPES, GENERATE_RETURN_NAMES
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
                "FLUX.1 dev (guidance, up to 50 steps) or schnell (no guidance; fal takes 1-12 steps; not on "
                "WaveSpeed).")}),
            "base_url": ("STRING", {"default": "", "tooltip": (
                "custom provider only: base URL that serves fal's paths, e.g. https://api.example.com/fal. "
                "https required except for localhost. Ignored for fal and wavespeed.")}),
            "image_size": (IMAGE_SIZE_CHOICES, {"default": DEFAULT_IMAGE_SIZE, "tooltip": (
                "Output size preset, or 'custom' to use width and height.")}),
            "width": ("INT", number_widget(WIDTH, "Output width when image_size is custom; multiple of 16 "
                                                  "(WaveSpeed: 256-1536).")),
            "height": ("INT", number_widget(HEIGHT, "Output height when image_size is custom; multiple of 16 "
                                                    "(WaveSpeed: 256-1536).")),
            "num_inference_steps": ("INT", number_widget(STEPS_LIMITS, (
                "Denoising steps: 0 = the model's default (28 dev, 4 schnell); fal's schnell takes 1-12."))),
            "guidance_scale": ("FLOAT", number_widget(GUIDANCE, "Distilled guidance (dev only; ignored for "
                                                                "schnell).", round=0.01)),
            "seed": ("INT", number_widget(SEED, "Seed for reproducible results (WaveSpeed accepts up to "
                                                "2147483647). Ignored when random_seed is on.",
                                          control_after_generate=True)),
            "random_seed": ("BOOLEAN", {"default": False, "tooltip": (
                "Let the provider pick the seed (sent as null / -1); the seed used is reported in info when the "
                "provider returns it. The node then re-runs on every queue.")}),
            "num_images": ("INT", number_widget(NUM_IMAGES, "Images generated per input image, in one job.")),
            "enable_safety_checker": ("BOOLEAN", {"default": True, "tooltip": (
                "Ask the provider to run its NSFW checker; flagged images are reported in info (has_nsfw).")}),
            "output_format": (WAVESPEED_OUTPUT_FORMATS, {"default": "png", "tooltip": (
                "Format the provider encodes: png is lossless, jpeg is smaller; webp is WaveSpeed only.")}),
            "acceleration": (ACCELERATIONS, {"default": "none", "tooltip": (
                "fal speed-up level (may change the result slightly). Ignored for WaveSpeed.")}),
            "sync_mode": ("BOOLEAN", {"default": False, "tooltip": (
                "One request returns the images inline (fal.run / WaveSpeed enable_sync_mode): less polling, "
                "but a running request cannot be cancelled on interrupt.")}),
            "max_concurrency": ("INT", number_widget(MAX_CONCURRENCY,
                                                     "How many input images run as parallel jobs.")),
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
        images, info = run_request(image, request, warnings, max_concurrency)
        return images, json.dumps(info, indent=2)


def run_request(image, request: RemoteRequest, warnings: list[str], max_concurrency: int):
    """(ComfyUI IMAGE, info dict) for a built request: one job per input image, with ComfyUI's progress bar
    and Cancel. Shared by this node and the Redux Variation node."""
    pictures = image_batch_to_pils(image)
    progress = _ProgressRelay(len(pictures))
    try:
        results = run_remote_variation(pictures, request, settings=client_settings(max_concurrency),
                                       on_progress=progress.update, should_abort=bridge.interrupt_requested)
    except RemoteCancelledError:
        bridge.check_interrupt()  # raise ComfyUI's own exception when the user cancelled
        raise
    outputs = [picture for result in results for picture in result.images]
    info = {"provider": request.provider, "model": request.model, "warnings": warnings,
            "seeds": [result.seed for result in results], "jobs": [result.info() for result in results]}
    return pils_to_image_batch(outputs), info


def client_settings(max_concurrency: int) -> ClientSettings:
    """Client behaviour for node runs (tests replace this to point at local fakes)."""
    return ClientSettings(max_concurrency=max_concurrency)


def build_request(*, provider, model, base_url, image_size, width, height, num_inference_steps, guidance_scale,
                  seed, random_seed, num_images, enable_safety_checker, output_format, acceleration, sync_mode):
    """Map widget values to a RemoteRequest, plus warnings for info. Widgets that do not apply to the chosen
    provider/model are left out, with the same rules and wording as the local generate node (so swapping the two
    nodes behaves the same); the client checks each provider's own limits (fal's schnell: 1-12 steps)."""
    num_inference_steps, guidance_scale, warnings = apply_variant_rules(model, num_inference_steps, guidance_scale)
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


class _ProgressRelay:
    """Job states on ComfyUI's progress bar: each job moves through PROGRESS_STATES."""

    def __init__(self, jobs: int):
        self.reached = [0] * jobs
        self.total = jobs * (len(PROGRESS_STATES) - 1)
        self.progress = bridge.Progress(self.total)

    def update(self, event: ProgressEvent) -> None:
        self.reached[event.index] = max(self.reached[event.index], PROGRESS_STATES.index(event.state))
        self.progress.update(sum(self.reached), self.total)


NODE_CLASS_MAPPINGS = {"FluxReduxRemoteVariation": FluxReduxRemoteVariation}
NODE_DISPLAY_NAME_MAPPINGS = {"FluxReduxRemoteVariation": "Redux variation (remote)"}
