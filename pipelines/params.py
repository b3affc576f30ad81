"""Parameter specs: the one place that defines names, ranges and defaults.

The local engine, the ComfyUI nodes, the CLI and the remote client all read these specs, so a range is
changed here and nowhere else. The values follow the hosted FLUX.1 Redux APIs (fal seed specs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SIZE_PRESETS: dict[str, tuple[int, int]] = {  # name -> (width, height), fal's exact pixel sizes
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}
CUSTOM_SIZE = "custom"
IMAGE_SIZE_CHOICES: tuple[str, ...] = (*SIZE_PRESETS, CUSTOM_SIZE)
DEFAULT_IMAGE_SIZE = "square_hd"
FAL_DEFAULT_IMAGE_SIZE = "landscape_4_3"  # what fal's Redux API uses when a request omits image_size
SIZE_MULTIPLE = 16  # FLUX packs 2x2 latents of an 8x VAE: both sides must divide by 16

OUTPUT_FORMATS: tuple[str, ...] = ("jpeg", "png")
ACCELERATIONS: tuple[str, ...] = ("none", "regular", "high")
FAL_DEFAULT_OUTPUT_FORMAT, FAL_DEFAULT_ACCELERATION = "jpeg", "none"
# The seed documents also list "default" among the output_format / acceleration values: the API's own default.
DEFAULT_CHOICE = "default"
CROP_MODES: tuple[str, ...] = ("center", "squash", "pad")

# Model-loading choices (read by the loader nodes, the CLI and pipelines.loading).
VARIANT_CHOICES: tuple[str, ...] = ("auto", "dev", "schnell")  # auto: from the weights (guidance_in present = dev)
DTYPE_CHOICES: tuple[str, ...] = ("auto", "bf16", "fp16", "fp32")  # auto: bf16 on CUDA, fp32 on CPU
# Transformer weight storage (pipelines/storage.py): default keeps the file's own precision (an fp8 file stays fp8,
# a bf16 file bf16 under fp32, computed in dtype layer by layer); fp8 stores every Linear weight in float8; compute stores all in dtype.
WEIGHT_STORAGE_CHOICES: tuple[str, ...] = ("default", "fp8", "compute")
# auto: decided from the files' sizes and the free VRAM (pipelines/placement.py); group: blocks streamed in
OFFLOAD_CHOICES: tuple[str, ...] = ("auto", "none", "model", "group", "sequential")
VAE_TILING_CHOICES: tuple[str, ...] = ("auto", "on", "off")  # auto: on above VAE_TILING_AUTO_PIXELS
VAE_TILING_AUTO_PIXELS = 2048 * 2048


class ParameterError(ValueError):
    """A parameter is outside what the model or provider accepts. The message names it, the value and the rule."""

    def __init__(self, name: str, value: Any, rule: str):
        self.name, self.value, self.rule = name, value, rule
        super().__init__(f"{name}={value!r} is not allowed: {rule}")


@dataclass(frozen=True)
class NumberSpec:
    """A numeric parameter: inclusive range, default, UI step, and a one-line help text."""

    name: str
    minimum: float
    maximum: float
    default: Any
    step: float = 1
    integer: bool = True
    help: str = ""

    def describe(self) -> str:
        return f"{self.minimum}–{self.maximum}, default {self.default}"

    def validate(self, value: Any, context: str = "") -> Any:
        where = f" for {context}" if context else ""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            kind = "an integer" if self.integer else "a number"
            raise ParameterError(self.name, value, f"expected {kind} in {self.minimum}–{self.maximum}{where}")
        if self.integer and isinstance(value, float) and not value.is_integer():
            raise ParameterError(self.name, value, f"expected a whole number in {self.minimum}–{self.maximum}{where}")
        if not self.minimum <= value <= self.maximum:
            raise ParameterError(self.name, value, f"allowed range is {self.minimum}–{self.maximum}{where}")
        return int(value) if self.integer else float(value)


@dataclass(frozen=True)
class VariantSpec:
    """What a FLUX.1 variant accepts. Schnell is guidance-distilled: it has no guidance input."""

    name: str
    steps: NumberSpec
    guidance: NumberSpec | None


VARIANTS: dict[str, VariantSpec] = {
    "dev": VariantSpec(
        "dev",
        NumberSpec("num_inference_steps", 1, 50, 28, help="denoising steps"),
        NumberSpec("guidance_scale", 1.0, 20.0, 3.5, step=0.1, integer=False,
                   help="distilled guidance: higher follows the conditioning more closely"),
    ),
    "schnell": VariantSpec("schnell", NumberSpec("num_inference_steps", 1, 50, 4, help="denoising steps"), None),
}
VARIANT_DEFAULT_STEPS = 0  # a steps value meaning "the variant's default" (28 dev, 4 schnell), for widgets
STEPS_LIMITS = NumberSpec("num_inference_steps", VARIANT_DEFAULT_STEPS, max(v.steps.maximum for v in VARIANTS.values()),
                          VARIANT_DEFAULT_STEPS, help="denoising steps; 0 = the variant's default (28 dev, 4 schnell)")
# What each hosted API accepts, where it is narrower than the local rule above (fal's schnell endpoint: 1-12 steps).
_FAL_SCHNELL_STEPS = NumberSpec("num_inference_steps", 1, 12, 4, help="fal's FLUX.1 schnell Redux: 1-12 steps")
PROVIDER_STEPS: dict[tuple[str, str], NumberSpec] = {
    ("fal", "schnell"): _FAL_SCHNELL_STEPS,
    ("custom", "schnell"): _FAL_SCHNELL_STEPS,  # custom services expose fal's API
}


def provider_steps(provider: str, variant: str) -> NumberSpec:
    """The steps a provider's endpoint for `variant` accepts (the local range where it sets none of its own)."""
    return PROVIDER_STEPS.get((provider, variant), variant_spec(variant).steps)
GUIDANCE = VARIANTS["dev"].guidance
NUM_IMAGES = NumberSpec("num_images", 1, 4, 1, help="images generated in one batched call")
SEED = NumberSpec("seed", 0, 2**64 - 1, None, help="random seed; empty/None picks one and reports it")
WIDTH = NumberSpec("width", 256, 4096, 1024, step=SIZE_MULTIPLE, help="custom width in pixels, a multiple of 16")
HEIGHT = NumberSpec("height", 256, 4096, 1024, step=SIZE_MULTIPLE, help="custom height in pixels, a multiple of 16")
# fal's ImageSize takes any whole number up to 14142 per side; the API server rounds each side to the nearest
# multiple of 16 (at least 16) and makes images up to SERVER_MAX_PIXELS, reporting the real size in the result.
FAL_MAX_SIDE = 14142
FAL_WIDTH, FAL_HEIGHT = (NumberSpec(side, 1, FAL_MAX_SIDE, 1024, help=f"custom {side}: any whole number up to "
                                    f"{FAL_MAX_SIDE}; rounded to the nearest multiple of {SIZE_MULTIPLE}")
                         for side in ("width", "height"))
SERVER_MAX_PIXELS = NumberSpec("max_output_pixels", SIZE_MULTIPLE ** 2, FAL_MAX_SIDE ** 2, 4096 * 4096,
                               help="largest image (width x height, after rounding) the API server makes")
REFERENCE_WEIGHT = NumberSpec("weight", 0.0, 10.0, 1.0, step=0.05, integer=False,
                              help="how much this reference contributes to the blend")

# Restyle controls (Redux strength, prompt mixing, img2img).
DOWNSAMPLE_FACTOR = NumberSpec("downsample_factor", 1.0, 9.0, 1.0, step=0.5, integer=False,
                               help="shrink the 27x27 Redux token grid by this factor (3 -> 9x9 = 81 tokens); "
                                    "fewer image tokens let the prompt speak")
DOWNSAMPLE_MODES: tuple[str, ...] = ("area", "bilinear", "bicubic", "nearest")
BLEND_MODES: tuple[str, ...] = ("sum", "concat")  # sum: diffusers' weighted sum; concat: ComfyUI's chaining
AUTOCROP_MARGIN = NumberSpec("autocrop_margin", 0, 4096, 32, help="pixels kept around the mask's bounding box")
PROMPT_SCALE = NumberSpec("prompt_scale", 0.0, 10.0, 1.0, step=0.05, integer=False,
                          help="multiplies the text prompt's T5 tokens")
POOLED_SCALE = NumberSpec("pooled_scale", 0.0, 10.0, 1.0, step=0.05, integer=False,
                          help="multiplies the prompt's pooled CLIP vector")
DENOISE = NumberSpec("denoise", 0.01, 1.0, 0.75, step=0.01, integer=False,
                     help="img2img strength: 1.0 ignores the init image, low values stay close to it")

# WaveSpeed's flux-redux-dev has its own limits; they live here with the rest.
WAVESPEED_SIDE = NumberSpec("size", 256, 1536, 1024, step=SIZE_MULTIPLE, help="WaveSpeed side length W or H")
WAVESPEED_SEED = NumberSpec("seed", -1, 2**31 - 1, -1, help="WaveSpeed seed; -1 = random")
WAVESPEED_OUTPUT_FORMATS: tuple[str, ...] = ("jpeg", "png", "webp")
WAVESPEED_WIDTH, WAVESPEED_HEIGHT = (  # WAVESPEED_SIDE's range, named as the widgets so errors name them
    NumberSpec(side, WAVESPEED_SIDE.minimum, WAVESPEED_SIDE.maximum, WAVESPEED_SIDE.default, step=WAVESPEED_SIDE.step,
               help=f"WaveSpeed custom {side} in pixels, a multiple of 16") for side in ("width", "height"))

# The API server's own numbers (python -m pipelines serve).
START_TIMEOUT = NumberSpec("start_timeout", 1, 86400, None, integer=False,
                           help="fal's X-Fal-Request-Timeout header: seconds a request may wait before it starts")
FAL_PRIORITIES: tuple[str, ...] = ("normal", "low")  # fal's X-Fal-Queue-Priority values
SERVED_PRIORITIES: tuple[str, ...] = ("normal",)  # one queue in arrival order: positions never go up
SERVER_PORT = NumberSpec("port", 1, 65535, 8184, help="TCP port the API server listens on")
MAX_JOBS_PER_KEY = NumberSpec("max_jobs_per_key", 1, 1_000_000, 8, help="unfinished requests one key may have")
MAX_SYNC_WAITS_PER_KEY = NumberSpec("max_sync_waits_per_key", 1, 1_000_000, 8,
                                    help="sync requests (fal /sync, WaveSpeed enable_sync_mode) one key may have waiting")

# Remote-only knob: how many input images run as parallel jobs (WaveSpeed's lowest tier allows 3 tasks).
MAX_CONCURRENCY = NumberSpec("max_concurrency", 1, 8, 2, help="input images sent as parallel jobs")


# Speed modes (pipelines.speed): "+"-joined tokens, e.g. "compile+fp8+best-attention"; "none" = plain diffusers.
SPEED_MODES: tuple[str, ...] = ("compile", "fp8")  # regional torch.compile; torchao fp8 compute (CUDA cc >= 8.9)
ATTENTION_MODES: tuple[str, ...] = ("flash", "fa3", "sage", "best-attention")  # at most one; default native SDPA
SPEED_NONE = "none"
SPEED_PRESETS: tuple[str, ...] = (SPEED_NONE, "compile", "fp8", "compile+fp8", "compile+fp8+best-attention",
                                  "compile+best-attention", "best-attention")  # the widget's choices
CACHE_THRESHOLD = NumberSpec("cache_threshold", 0.0, 1.0, 0.0, step=0.01, integer=False,
                             help="First Block Cache: 0 = off; 0.08 suggested (~1.5x on 28 steps); lossy, "
                                  "higher skips more steps' blocks")
LORA_STRENGTH = NumberSpec("strength", -10.0, 10.0, 1.0, step=0.05, integer=False,
                           help="LoRA strength: 0 = off, 1 = as trained, negative inverts it")


def parse_speed(speed: str) -> tuple[str, ...]:
    """Validate a speed setting and return its tokens in a fixed order ("none" -> ())."""
    if not isinstance(speed, str):
        raise ParameterError("speed", speed, f"expected {SPEED_NONE} or modes joined by + ({', '.join(SPEED_MODES + ATTENTION_MODES)})")
    tokens = [t.strip() for t in speed.lower().split("+") if t.strip()]
    if tokens in ([], [SPEED_NONE]):
        return ()
    allowed = SPEED_MODES + ATTENTION_MODES
    for token in tokens:
        if token not in allowed:
            raise ParameterError("speed", speed, f"unknown mode {token!r}; combine {', '.join(allowed)} with +")
    if sum(t in ATTENTION_MODES for t in set(tokens)) > 1:
        raise ParameterError("speed", speed, f"pick at most one attention mode of {', '.join(ATTENTION_MODES)}")
    return tuple(t for t in allowed if t in tokens)


def variant_spec(variant: str) -> VariantSpec:
    if variant not in VARIANTS:
        raise ParameterError("variant", variant, f"expected one of {', '.join(VARIANTS)}")
    return VARIANTS[variant]


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ParameterError(name, value, f"expected one of {', '.join(choices)}")
    return value


def check_choice_or_default(name: str, value: Any, choices: tuple[str, ...], default: str) -> str:
    """check_choice that also takes DEFAULT_CHOICE ("default"), meaning `default`."""
    if value == DEFAULT_CHOICE:
        return default
    if value not in choices:
        raise ParameterError(name, value, f"expected one of {', '.join((*choices, DEFAULT_CHOICE))}")
    return value


def round_side(value: int) -> int:
    """A custom side rounded to the nearest multiple of SIZE_MULTIPLE (halves up), at least SIZE_MULTIPLE."""
    return max(SIZE_MULTIPLE, (value + SIZE_MULTIPLE // 2) // SIZE_MULTIPLE * SIZE_MULTIPLE)


def check_pixels(width: int, height: int, max_pixels: int, name: str = "image_size") -> tuple[int, int]:
    if width * height > max_pixels:
        raise ParameterError(name, f"{width}x{height}", f"{width * height} pixels is more than this server's limit "
                                                        f"of {max_pixels} pixels per image (serve --max-output-pixels)")
    return width, height


def resolve_size(image_size: str, width: int | None = None, height: int | None = None,
                 width_spec: NumberSpec = WIDTH, height_spec: NumberSpec = HEIGHT) -> tuple[int, int]:
    """Return (width, height) for a preset name, or for `custom` with explicit width and height.

    Custom sides must be multiples of 16; they are never rounded silently.
    """
    if image_size in SIZE_PRESETS:
        return SIZE_PRESETS[image_size]
    if image_size != CUSTOM_SIZE:
        raise ParameterError("image_size", image_size, f"expected one of {', '.join(IMAGE_SIZE_CHOICES)}")
    if width is None or height is None:
        raise ParameterError("image_size", image_size, "custom needs both width and height")
    sides = []
    for spec, value in ((width_spec, width), (height_spec, height)):
        value = spec.validate(value, "a custom image_size")
        if value % SIZE_MULTIPLE:
            lower = value - value % SIZE_MULTIPLE
            raise ParameterError(spec.name, value, f"must be a multiple of {SIZE_MULTIPLE} "
                                                   f"(nearest: {lower} or {lower + SIZE_MULTIPLE})")
        sides.append(value)
    return sides[0], sides[1]


@dataclass(frozen=True)
class GenerationParams:
    """Validated generation settings. `seed` None means: pick a random one at run time and report it."""

    variant: str
    width: int
    height: int
    num_inference_steps: int
    guidance_scale: float | None
    seed: int | None
    num_images: int

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def validate_generation(variant: str = "dev", image_size: str = DEFAULT_IMAGE_SIZE, width: int | None = None,
                        height: int | None = None, num_inference_steps: int | None = None,
                        guidance_scale: float | None = None, seed: int | None = None,
                        num_images: int = 1, size: tuple[int, int] | None = None) -> GenerationParams:
    """Validate everything up front (before any model work); None (and steps 0) picks the variant's default.

    A guidance_scale given for schnell is an error: schnell has no guidance input, and silently dropping a
    value the user set would hide a mistake. Callers that always carry a guidance value (a node widget)
    pass None for schnell. `size` is a (width, height) the caller already checked (the API server's rounded
    custom sizes, which reach past the local 256-4096 range) and replaces image_size/width/height.
    """
    spec = variant_spec(variant)
    w, h = size if size is not None else resolve_size(image_size, width, height)
    default = num_inference_steps is None or num_inference_steps == VARIANT_DEFAULT_STEPS
    steps = spec.steps.default if default else spec.steps.validate(num_inference_steps, variant)
    if spec.guidance is None:
        if guidance_scale is not None:
            raise ParameterError("guidance_scale", guidance_scale,
                                 f"FLUX.1 {variant} takes no guidance; leave it empty")
        guidance = None
    else:
        guidance = spec.guidance.default if guidance_scale is None else spec.guidance.validate(guidance_scale, variant)
    if seed is not None:
        seed = SEED.validate(seed)
    return GenerationParams(variant, w, h, steps, guidance, seed, NUM_IMAGES.validate(num_images))
