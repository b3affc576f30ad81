"""Download links on the loader nodes of example_workflows/, as ComfyUI's own templates carry them.

A loader's `properties.models` is a list of {name, url, directory}; when a workflow opens, ComfyUI's front end
offers to download each listed file that models/<directory> lacks. The public files and their URLs are the
ones ComfyUI's templates use (package comfyui-workflow-templates-media-image, flux_redux_model_example.json,
flux_schnell_full_text_to_image.json, restyle templates for the text encoders).

    python tests/workflow_links.py    # add or refresh the links in every workflow (after adding a workflow)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

WORKFLOWS_DIR = Path(__file__).resolve().parent.parent / "example_workflows"

PUBLIC_FILES = {  # file name -> (url, ComfyUI models/ folder)
    "flux1-redux-dev.safetensors": (
        "https://huggingface.co/Comfy-Org/Flux1-Redux-Dev/resolve/main/flux1-redux-dev.safetensors", "style_models"),
    "sigclip_vision_patch14_384.safetensors": (
        "https://huggingface.co/Comfy-Org/sigclip_vision_384/resolve/main/sigclip_vision_patch14_384.safetensors"
        "?download=true", "clip_vision"),
    "flux1-dev.safetensors": (
        "https://huggingface.co/Comfy-Org/flux1-dev/resolve/main/flux1-dev.safetensors", "diffusion_models"),
    "flux1-schnell.safetensors": (
        "https://huggingface.co/Comfy-Org/flux1-schnell/resolve/main/flux1-schnell.safetensors", "diffusion_models"),
    "ae.safetensors": (
        "https://huggingface.co/Comfy-Org/Lumina_Image_2.0_Repackaged/resolve/main/split_files/vae/ae.safetensors",
        "vae"),
    "t5xxl_fp16.safetensors": (
        "https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/t5xxl_fp16.safetensors",
        "text_encoders"),
    "clip_l.safetensors": (
        "https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/clip_l.safetensors", "text_encoders"),
}

# loader node type -> the folders of its first widget values (its file widgets, in order)
LOADER_FILES = {
    "FluxReduxLoadEncoder": ("style_models", "clip_vision"),
    "FluxReduxLoadModel": ("diffusion_models", "vae"),
    "DualCLIPLoader": ("text_encoders", "text_encoders"),
    "UNETLoader": ("diffusion_models",),
    "VAELoader": ("vae",),
    "CLIPVisionLoader": ("clip_vision",),
    "StyleModelLoader": ("style_models",),
    "LoraLoaderModelOnly": ("loras",),
}
USER_CHOSEN_FOLDERS = {"loras"}  # the user's own file (any FLUX LoRA): there is no one public download


def file_widgets(node: dict) -> list[tuple[str, str]]:
    """[(file name, folder)] of a loader node's file widgets; [] for other nodes."""
    folders = LOADER_FILES.get(node["type"], ())
    return list(zip(node.get("widgets_values", [])[:len(folders)], folders))


def wanted_links(node: dict) -> list[dict]:
    """The `properties.models` a node should carry: one entry per public file it loads."""
    links = []
    for name, folder in file_widgets(node):
        if folder in USER_CHOSEN_FOLDERS:
            continue
        if name not in PUBLIC_FILES or PUBLIC_FILES[name][1] != folder:
            raise KeyError(f"{node['type']} loads {folder}/{name}, which has no public download link here: "
                           "add it to PUBLIC_FILES in tests/workflow_links.py")
        links.append({"name": name, "url": PUBLIC_FILES[name][0], "directory": folder})
    return links


def add_links(path: Path) -> bool:
    """Write the wanted links into one workflow file; True when it changed."""
    ui = json.loads(path.read_text())
    for node in ui["nodes"]:
        links = wanted_links(node)
        if links:
            node.setdefault("properties", {})["models"] = links
    text = json.dumps(ui, indent=2, ensure_ascii=False) + "\n"
    changed = text != path.read_text()
    if changed:
        path.write_text(text)
    return changed


if __name__ == "__main__":
    changed = [p.name for p in sorted(WORKFLOWS_DIR.glob("*.json")) if add_links(p)]
    print("updated:", ", ".join(changed) or "nothing")
    sys.exit(0)
