"""FLUX.1 Redux image variation for ComfyUI: local engine (pipelines/) and nodes (nodes/).

ComfyUI imports this file as a package whose name is the folder name (not an identifier), so every import
inside the pack is relative.
"""

if __package__:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
else:  # imported as a lone file (pytest does this for a folder whose name is not an identifier): no nodes
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

WEB_DIRECTORY = None
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
