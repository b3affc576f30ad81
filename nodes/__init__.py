"""ComfyUI adapters. Each module declares its nodes; the work happens in ..pipelines."""

from . import conditioning, local, lora, remote, restyle, variation

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}
for _module in (local, restyle, conditioning, remote, variation, lora):
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)
