"""Load LoRA (FLUX Redux): add a LoRA to a FLUX model spec, chainable like ComfyUI's LoraLoaderModelOnly.

The output is the same light spec with one more (file, strength) entry. The base model stays cached as it
is: the engine applies the LoRAs when Redux Generate runs, so changing a LoRA or its strength never reloads
the model (see pipelines/lora.py).
"""

from __future__ import annotations

import dataclasses

from ..pipelines import checks, params
from ..pipelines.lora import LoraSpec, read_lora
from ..pipelines.models import FluxModelSpec
from . import comfy_bridge as bridge
from .local_loaders import CATEGORY
from .widgets import number_widget


class FluxReduxLoadLora:
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("FLUX_REDUX_MODEL",)
    RETURN_NAMES = ("flux_model",)
    OUTPUT_TOOLTIPS = ("The same FLUX model with this LoRA added; chain more Load LoRA nodes to stack LoRAs.",)
    DESCRIPTION = ("Add a FLUX.1 LoRA from models/loras (kohya/sd-scripts, ComfyUI or diffusers/PEFT .safetensors) "
                   "with a strength. Chain several to stack them. The base model is not reloaded when a LoRA or "
                   "its strength changes; with speed 'compile' one LoRA at a time swaps in without recompiling.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "flux_model": ("FLUX_REDUX_MODEL", {"tooltip": "From Load FLUX Model or another Load LoRA."}),
            "lora_name": (bridge.list_files("loras"), {"tooltip": "A FLUX.1 LoRA file in models/loras."}),
            "strength": ("FLOAT", number_widget(params.LORA_STRENGTH, params.LORA_STRENGTH.help)),
        }}

    def load(self, flux_model: FluxModelSpec, lora_name, strength):
        checks.file_choice(lora_name, "lora_name", "loras")
        path = bridge.resolve_model("loras", "lora", lora_name)
        spec = LoraSpec(path, params.LORA_STRENGTH.validate(strength))
        read_lora(path)  # a bad file (pickle, truncated, another model's LoRA) is reported at this node
        return (dataclasses.replace(flux_model, loras=(*flux_model.loras, spec)),)


NODE_CLASS_MAPPINGS = {"FluxReduxLoadLora": FluxReduxLoadLora}
NODE_DISPLAY_NAME_MAPPINGS = {"FluxReduxLoadLora": "Load LoRA (FLUX Redux)"}
