"""Generation: diffusers' FluxPipeline run from Redux embeddings, with seeds, progress and abort."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from PIL import Image

from . import checks, params, speed
from .models import FluxModel
from .redux import ReduxConditioning

# Seeds we pick ourselves stay below 2**53 so they survive JSON and ComfyUI's JavaScript widgets exactly.
RANDOM_SEED_LIMIT = 2**53


class GenerationAborted(RuntimeError):
    """Raised between denoising steps when the caller asked to stop."""


@dataclass
class GenerationResult:
    images: torch.Tensor  # [num_images, height, width, 3] float32 in 0..1, on the CPU (ComfyUI's IMAGE layout)
    metadata: dict = field(default_factory=dict)

    @property
    def seed(self) -> int:
        return self.metadata["seed"]

    def pil_images(self) -> list[Image.Image]:
        from .references import to_uint8

        return [Image.fromarray(to_uint8(a)) for a in self.images.numpy()]


StepCallback = Callable[[int, int, torch.Tensor], None]  # (step done, total steps, latents)


def pick_seed(seed: int | None) -> int:
    return random.SystemRandom().randrange(RANDOM_SEED_LIMIT) if seed is None else seed


def _check_variant(model: FluxModel, gen: params.GenerationParams) -> None:
    if gen.variant != model.variant:
        raise params.ParameterError("variant", gen.variant,
                                    f"the loaded model is FLUX.1 {model.variant}; validate the parameters "
                                    f"for {model.variant}")


def generate(model: FluxModel, conditioning: ReduxConditioning, gen: params.GenerationParams, *,
             init_image=None, denoise: float = 1.0, on_step: StepCallback | None = None,
             should_abort: Callable[[], bool] | None = None, show_progress: bool = False,
             vae_tiling: str | None = None) -> GenerationResult:
    """Run one batched call for gen.num_images images. Same inputs and seed give the same images.

    init_image starts from that picture instead of pure noise (img2img, resized to the output size);
    denoise is how much of it is redrawn: 1.0 ignores it, low values stay close to it, and diffusers then
    runs only round(steps * denoise) of the steps.
    on_step runs after each denoising step (it may raise to abort, as ComfyUI's interrupt does);
    should_abort is polled at the same point and raises GenerationAborted when true.
    vae_tiling (auto/on/off) decodes in tiles; None takes the model's load options' default.
    """
    _check_variant(model, gen)
    if model.pipe is None:
        raise RuntimeError(f"{model!r} was unloaded; load it again")
    checks.redux_conditioning(conditioning, "conditioning")  # None, a list, NaN tokens, every weight 0
    pipe = model.pipe
    extra = {}
    if init_image is not None:
        from .references import to_pil_rgb

        denoise = params.DENOISE.validate(denoise)
        extra = {"image": to_pil_rgb(init_image).resize((gen.width, gen.height), Image.LANCZOS),
                 "strength": denoise}
        pipe = model.img2img_pipe()
    steps = gen.num_inference_steps
    steps_run = steps - int(max(steps - steps * denoise, 0)) if extra else steps  # diffusers' own rule
    config = pipe.transformer.config
    prompt_embeds, pooled = conditioning.prompt_embeds(config.joint_attention_dim, config.pooled_projection_dim)
    seed = pick_seed(gen.seed)
    # CPU noise: the same noise on any device; the images match on one device and dtype
    generator = torch.Generator("cpu").manual_seed(seed)
    tiling = params.check_choice("vae_tiling", model.spec.options.vae_tiling if vae_tiling is None else vae_tiling,
                                 params.VAE_TILING_CHOICES)
    if tiling == "on" or (tiling == "auto" and gen.width * gen.height > params.VAE_TILING_AUTO_PIXELS):
        pipe.vae.enable_tiling()
    else:
        pipe.vae.disable_tiling()

    def step_end(_pipe, step, _timestep, tensors):
        if on_step is not None:
            on_step(step + 1, steps_run, tensors["latents"])
        if should_abort is not None and should_abort():
            raise GenerationAborted(f"stopped after step {step + 1} of {steps_run}")
        return tensors

    speed.before_generate(model, gen.width, gen.height)  # LoRAs, First Block Cache, compile sizes
    pipe.set_progress_bar_config(disable=not show_progress, leave=False)
    kwargs = {} if gen.guidance_scale is None else {"guidance_scale": gen.guidance_scale}
    started = time.perf_counter()
    with torch.inference_mode(), speed.WarmupTimer(model.speed_state):
        device, dtype = model.execution_device, model.compute_dtype  # now, not at load: modules may have moved
        output = pipe(prompt_embeds=prompt_embeds.to(device, dtype), pooled_prompt_embeds=pooled.to(device, dtype),
                      height=gen.height, width=gen.width, num_inference_steps=gen.num_inference_steps,
                      num_images_per_prompt=gen.num_images, generator=generator, output_type="pt",
                      callback_on_step_end=step_end, **kwargs, **extra)
    elapsed = time.perf_counter() - started
    images = output.images.float().cpu().permute(0, 2, 3, 1).contiguous()
    if extra:
        metadata_extra = {"img2img": True, "denoise": denoise, "steps_run": steps_run}
    else:
        metadata_extra = {}
    metadata = dict(gen.as_dict(), **metadata_extra, **speed.report(model), seed=seed, model=model.variant,
                    placement=model.placement.describe(), vae_tiling=tiling,
                    timings={"total_s": round(elapsed, 3), "per_image_s": round(elapsed / gen.num_images, 3)})
    return GenerationResult(images, metadata)
