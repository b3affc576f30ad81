"""Every workflow's loaders carry download links the way ComfyUI's own templates do: `properties.models`, a list
of {name, url, directory}, which the front end offers to download into models/<directory> when a file is
missing. Checked: each loader file widget has an entry with its file name and the ComfyUI folder the node
really lists, every URL is https and ends in that file name, and the README's table lists every workflow."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import pytest
from packloader import ROOT, pack, submodule

import graph_runner as gr

bridge = submodule("nodes.comfy_bridge")

WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
# node type -> {file widget: the ComfyUI models/ folder it lists}; DualCLIPLoader is ComfyUI's own (text_encoders)
LOADER_FILE_WIDGETS = {
    "FluxReduxLoadEncoder": {"redux_model": "style_models", "clip_vision": "clip_vision"},
    "FluxReduxLoadModel": {"transformer": "diffusion_models", "vae": "vae"},
    "DualCLIPLoader": {"clip_name1": "text_encoders", "clip_name2": "text_encoders"},
}
WEIGHT_SUFFIXES = (".safetensors", ".sft", ".gguf")
# ComfyUI's front end (MissingModelsWarning) downloads only from these sources and only files with these suffixes
DOWNLOAD_SOURCES = ("https://huggingface.co/", "https://civitai.com/")
DOWNLOAD_SUFFIXES = (".safetensors", ".sft")
CLASSES = {**pack.NODE_CLASS_MAPPINGS, **gr.BUILTINS}


def nodes_of(path):
    return json.loads(path.read_text())["nodes"]


def widget_values(node) -> dict:
    """{widget name: value} of a saved node (control/upload companions left out)."""
    slots = gr.widget_slots(CLASSES[node["type"]])
    return {name: value for (name, role), value in zip(slots, node["widgets_values"]) if role == "value"}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_loader_file_has_a_download_link(path):
    for node in nodes_of(path):
        if node["type"] not in LOADER_FILE_WIDGETS:
            assert "models" not in node.get("properties", {}), f"{node['type']} is no loader"
            continue
        links = node["properties"]["models"]
        values = widget_values(node)
        wanted = [(values[widget], folder) for widget, folder in LOADER_FILE_WIDGETS[node["type"]].items()]
        assert [(link["name"], link["directory"]) for link in links] == wanted, node["type"]


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_link_is_https_from_a_source_the_front_end_downloads(path):
    ui = json.loads(path.read_text())
    links = [link for node in ui["nodes"] for link in node.get("properties", {}).get("models", [])]
    for link in links + ui.get("models", []):
        url = urlsplit(link["url"])
        assert set(link) == {"name", "url", "directory"}
        assert url.scheme == "https" and url.netloc, link["url"]
        assert link["url"].startswith(DOWNLOAD_SOURCES) and link["name"].endswith(DOWNLOAD_SUFFIXES), link
        assert url.path.rsplit("/", 1)[-1] == link["name"], link["url"]


def test_remote_only_workflows_carry_no_links():
    for path in WORKFLOWS:
        if not any(node["type"] in LOADER_FILE_WIDGETS for node in nodes_of(path)):
            assert all("models" not in node.get("properties", {}) for node in nodes_of(path)), path.name


def test_every_weight_file_widget_belongs_to_a_known_loader():
    """A new loader type in a workflow must be added to LOADER_FILE_WIDGETS (and get links)."""
    for path in WORKFLOWS:
        for node in nodes_of(path):
            if node["type"] in ("Note", "MarkdownNote"):
                continue
            for name, value in widget_values(node).items():
                if isinstance(value, str) and value.lower().endswith(WEIGHT_SUFFIXES):
                    assert name in LOADER_FILE_WIDGETS.get(node["type"], {}), f"{path.name}: {node['type']}.{name}"


@pytest.mark.parametrize("node_type", ["FluxReduxLoadEncoder", "FluxReduxLoadModel"])
def test_link_folders_are_the_folders_the_loaders_list(node_type, tmp_path, monkeypatch):
    """A probe file in each claimed folder shows up in that widget's choices, and in no other widget's."""
    monkeypatch.setattr(bridge, "MODELS_ROOT", tmp_path)
    for widget, folder in LOADER_FILE_WIDGETS[node_type].items():
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        (tmp_path / folder / f"probe-{widget}.safetensors").write_bytes(b"")
    inputs = pack.NODE_CLASS_MAPPINGS[node_type].INPUT_TYPES()["required"]
    for widget in LOADER_FILE_WIDGETS[node_type]:
        assert [c for c in inputs[widget][0] if c.startswith("probe-")] == [f"probe-{widget}.safetensors"]


def test_readme_lists_every_workflow():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Workflows"):]
    for path in WORKFLOWS:
        assert f"`{path.name}`" in table, path.name
