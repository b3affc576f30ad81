"""Every workflow's loaders carry download links the way ComfyUI's own templates do: `properties.models`, a list
of {name, url, directory}, which the front end offers to download into models/<directory> when a file is
missing. Checked: each loader file widget has an entry with its file name and the ComfyUI folder the node
really lists, every URL is https from a source the front end downloads from and ends in that file name, and
the README's table lists every workflow."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import pytest
from packloader import ROOT, pack, submodule

import graph_runner as gr
import workflow_links as wl

bridge = submodule("nodes.comfy_bridge")

WORKFLOWS = sorted((ROOT / "example_workflows").glob("*.json"))
WEIGHT_SUFFIXES = (".safetensors", ".sft", ".gguf")
# ComfyUI's front end (MissingModelsWarning) downloads only from these sources and only files with these suffixes
DOWNLOAD_SOURCES = ("https://huggingface.co/", "https://civitai.com/")
DOWNLOAD_SUFFIXES = (".safetensors", ".sft")


def nodes_of(path):
    return json.loads(path.read_text())["nodes"]


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_loader_file_has_a_download_link(path):
    for node in nodes_of(path):
        links = node.get("properties", {}).get("models", [])
        wanted = [(name, folder) for name, folder in wl.file_widgets(node) if folder not in wl.USER_CHOSEN_FOLDERS]
        assert [(link["name"], link["directory"]) for link in links] == wanted, f"{node['type']} {node['id']}"
        assert links == wl.wanted_links(node), "run: python tests/workflow_links.py"


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
    remote_only = [p for p in WORKFLOWS if not any(wl.file_widgets(node) for node in nodes_of(p))]
    assert {"Redux variation on fal without a GPU (FLUX dev).json", "Redux variation on fal without a GPU (FLUX schnell).json"} <= {p.name for p in remote_only}
    for path in remote_only:
        assert all("models" not in node.get("properties", {}) for node in nodes_of(path)), path.name


def test_every_weight_file_in_a_workflow_is_a_known_loaders_file_widget():
    """A new loader type in a workflow must be added to workflow_links.LOADER_FILES (and get its links)."""
    for path in WORKFLOWS:
        for node in nodes_of(path):
            known = range(len(wl.file_widgets(node)))
            for index, value in enumerate(node.get("widgets_values") or []):
                if isinstance(value, str) and value.lower().endswith(WEIGHT_SUFFIXES):
                    assert index in known, f"{path.name}: {node['type']} widget {index} = {value}"


@pytest.mark.parametrize("node_type", ["FluxReduxLoadEncoder", "FluxReduxLoadModel"])
def test_link_folders_are_the_folders_the_pack_loaders_list(node_type, tmp_path, monkeypatch):
    """The pack's loaders: the first widgets are the file widgets, and a probe file in each claimed folder shows
    up in that widget's choices only."""
    monkeypatch.setattr(bridge, "MODELS_ROOT", tmp_path)
    folders = wl.LOADER_FILES[node_type]
    widgets = [name for name, role in gr.widget_slots(pack.NODE_CLASS_MAPPINGS[node_type])][:len(folders)]
    for widget, folder in zip(widgets, folders):
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        (tmp_path / folder / f"probe-{widget}.safetensors").write_bytes(b"")
    inputs = pack.NODE_CLASS_MAPPINGS[node_type].INPUT_TYPES()["required"]
    for widget in widgets:
        assert [c for c in inputs[widget][0] if c.startswith("probe-")] == [f"probe-{widget}.safetensors"]


def test_comfyuis_own_loaders_get_links_and_a_users_lora_none():
    unet = {"id": 1, "type": "UNETLoader", "widgets_values": ["flux1-schnell.safetensors", "default"]}
    assert [link["directory"] for link in wl.wanted_links(unet)] == ["diffusion_models"]
    lora = {"id": 2, "type": "LoraLoaderModelOnly", "widgets_values": ["your_flux_lora.safetensors", 1.0]}
    assert wl.wanted_links(lora) == []
    unknown = {"id": 3, "type": "UNETLoader", "widgets_values": ["flux1-krea-dev.safetensors", "default"]}
    with pytest.raises(KeyError, match="diffusion_models/flux1-krea-dev.safetensors, which has no public"):
        wl.wanted_links(unknown)


def test_readme_lists_every_workflow():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Workflows"):]
    for path in WORKFLOWS:
        assert f"`{path.name}`" in table, path.name
