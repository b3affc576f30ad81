"""What the local and remote generate nodes share about their widgets, so swapping one for the other behaves
the same: widget options from the engine's parameter specs, and the rules for values a widget always carries."""

from __future__ import annotations

from typing import Any

from ..pipelines.params import VARIANTS, NumberSpec


# The outputs both generate nodes have, so one replaces the other in a graph without relinking.
GENERATE_RETURN_TYPES, GENERATE_RETURN_NAMES = ("IMAGE", "STRING"), ("images", "info")


def number_widget(spec: NumberSpec, tooltip: str, **extra) -> dict:
    """ComfyUI INT/FLOAT options from a spec (range, default, step); `extra` adds e.g. round, control_after_generate."""
    default = spec.minimum if spec.default is None else spec.default
    return {"default": default, "min": spec.minimum, "max": spec.maximum, "step": spec.step, "tooltip": tooltip,
            **extra}


def apply_variant_rules(variant: str, steps: Any, guidance: Any) -> tuple[Any, Any, list[str]]:
    """(steps, guidance, warnings) for `variant`. The guidance widget always carries a value: a variant without
    a guidance input (schnell) gets None, with a warning. Steps pass unchanged (0 = the variant's default)."""
    spec = VARIANTS.get(variant)
    if spec is None or spec.guidance is not None:
        return steps, guidance, []
    return steps, None, [f"guidance_scale ignored: FLUX.1 {variant} has no guidance input"]
