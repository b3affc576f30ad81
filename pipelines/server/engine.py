"""What a worker runs a job with: the pack's engine (load once, keep loaded, encode + generate).

Any object with `run(inputs, picture, should_abort, log) -> EngineOutput` can stand in (serve --engine
module:factory); the load benchmark uses that to measure the server without a model. An engine stops a
cancelled job by raising any exception once should_abort() has returned True.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from PIL import Image

from .. import params

from .validation import JobInputs


@dataclass
class EngineOutput:
    images: list[Image.Image]
    seed: int
    inference_s: float


class ReduxEngine:
    """FLUX.1 Redux from a ComfyUI models folder on one device; models load on the first job that needs
    them and stay in the pack's model cache for every later job."""

    def __init__(self, models_dir: Path, device: str = "auto", dtype: str = "auto", weight_storage: str = "default",
                 offload: str = params.OFFLOAD_CHOICES[0]):
        from ..loading import LoadOptions

        self.models_dir = Path(models_dir)
        self.options = LoadOptions(device=device, dtype=dtype, weight_storage=weight_storage, offload=offload)

    def _models(self, variant: str):
        from ..models import FluxModelSpec, ReduxEncoderSpec, load_flux_model, load_redux_encoder
        from ..weights import find_weights

        found = find_weights(self.models_dir, variant)
        flux = load_flux_model(FluxModelSpec(str(found.transformer), str(found.vae), variant, self.options))
        encoder = load_redux_encoder(ReduxEncoderSpec(str(found.redux), str(found.siglip), self.options))
        return flux, encoder

    def run(self, inputs: JobInputs, picture: Image.Image, should_abort: Callable[[], bool],
            log: Callable[[str], None]) -> EngineOutput:
        from ..redux import encode
        from ..sampling import generate

        flux, encoder = self._models(inputs.generation.variant)
        conditioning = encode(encoder, [picture])
        result = generate(flux, conditioning, inputs.generation, should_abort=should_abort,  # GenerationAborted
                          on_step=lambda step, total, _latents: log(f"step {step}/{total}"))
        return EngineOutput(result.pil_images(), result.seed, result.metadata["timings"]["total_s"])


def load_factory(spec: str) -> Callable:
    """"module:callable" -> the callable (serve --engine)."""
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(f"--engine {spec!r}: expected module:callable, e.g. benchmarks.server_standin:StandIn")
    return getattr(importlib.import_module(module), name)
