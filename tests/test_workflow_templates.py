"""What a user meets first in ComfyUI's template browser (Workflow -> Browse Templates), and that every shipped
workflow runs as shipped.

The front end (1.35.9 in ComfyUI 0.8.0, 1.49.6 in 0.33.0, both read) lists a pack's templates by the stems of
custom_nodes/<pack>/example_workflows/*.json (ComfyUI's preferred folder name; the others only log a hint),
shows the stem as the card's title and loads /api/workflow_templates/<pack>/<stem>.jpg as its thumbnail. So a
readable title is a readable file name and a thumbnail is a same-stem .jpg beside it. The same is checked against
a running ComfyUI by tests/run_in_comfyui.py (GET /workflow_templates and the thumbnail URLs)."""

from __future__ import annotations

import copy
import json
import re

import numpy as np
import pytest
from packloader import ROOT, pack
from PIL import Image

import graph_runner as gr
import workflow_links as wl
import workflow_thumbnails as wt

FOLDER = ROOT / "example_workflows"
WORKFLOWS = sorted(FOLDER.glob("*.json"))
OTHER_TEMPLATE_FOLDERS = ("workflows", "workflow", "examples", "example")  # also scanned by ComfyUI
CLASSES = {**pack.NODE_CLASS_MAPPINGS, **gr.BUILTINS}
SAMPLER_WORKFLOW = "Redux restyle with the ComfyUI sampler and a LoRA.json"
TITLE = re.compile(r"^[A-Z][A-Za-z0-9 ()+,'-]*[A-Za-z0-9)]$")  # words, no snake_case; safe in a URL path


def test_templates_live_in_the_folder_comfyui_prefers_and_only_there():
    assert len(WORKFLOWS) >= 12
    for name in OTHER_TEMPLATE_FOLDERS:  # a second folder would list every template twice
        assert not (ROOT / name).exists(), name


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_each_title_is_readable(path):
    stem = path.stem
    assert TITLE.match(stem) and " " in stem and "_" not in stem, stem
    assert len(stem) <= 60 and stem.isascii()


def test_titles_are_distinct_when_compared_as_the_browser_searches():
    folded = [p.stem.lower() for p in WORKFLOWS]
    assert len(set(folded)) == len(folded)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_each_workflow_has_its_thumbnail(path):
    thumbnail = path.with_suffix(".jpg")
    assert thumbnail.is_file(), f"missing {thumbnail.name}: run python tests/workflow_thumbnails.py"
    assert thumbnail.stat().st_size <= wt.MAX_BYTES
    with Image.open(thumbnail) as image:
        assert image.format == "JPEG" and image.mode == "RGB"
        assert 256 <= image.width <= 1024 and 0.5 <= image.height / image.width <= 1.0


def test_no_thumbnail_without_its_workflow():
    assert {p.stem for p in FOLDER.glob("*.jpg")} == {p.stem for p in WORKFLOWS}
    assert {p.suffix for p in FOLDER.iterdir()} <= {".json", ".jpg"}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_thumbnail_shows_the_saved_graph(path):
    """Drawn from the file as it is now: a workflow edited without redrawing its thumbnail fails here."""
    stored = np.asarray(Image.open(path.with_suffix(".jpg")), dtype=np.int16)
    fresh = np.asarray(wt.render(json.loads(path.read_text())), dtype=np.int16)
    assert stored.shape == fresh.shape
    assert np.abs(stored - fresh).mean() < 4, "run python tests/workflow_thumbnails.py"


def test_a_changed_graph_changes_its_thumbnail():
    ui = json.loads((FOLDER / SAMPLER_WORKFLOW).read_text())
    moved = copy.deepcopy(ui)
    moved["nodes"][0]["pos"] = [900, 900]
    difference = np.abs(np.asarray(wt.render(ui), dtype=np.int16) - np.asarray(wt.render(moved), dtype=np.int16))
    assert difference.mean() >= 4


# -- runs as shipped ---------------------------------------------------------------------------------------------

def active_nodes(ui):
    return [n for n in ui["nodes"] if n.get("mode", 0) == 0 and n["type"] not in gr.VIRTUAL_NODES]


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_every_active_loader_names_a_file_with_a_public_download(path):
    """As shipped, a workflow only needs files the front end offers to download; a node wanting the user's own
    file (a LoRA) ships bypassed."""
    for node in active_nodes(json.loads(path.read_text())):
        for name, folder in wl.file_widgets(node):
            assert folder not in wl.USER_CHOSEN_FOLDERS, f"{node['type']} {node['id']} ({name}) is not bypassed"
            assert name in wl.PUBLIC_FILES, f"{node['type']} {node['id']}: {folder}/{name}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_every_workflow_converts_with_each_required_input_connected(path):
    api = gr.to_api(json.loads(path.read_text()), CLASSES)
    for node_id, node in api.items():
        spec = CLASSES[node["class_type"]].INPUT_TYPES()
        missing = set(spec.get("required", {})) - set(node["inputs"])
        assert not missing, f"node {node_id} {node['class_type']}: {missing}"
        for value in node["inputs"].values():
            if isinstance(value, list):
                assert value[0] in api, f"node {node_id} links to {value[0]}, which is not sent"


def test_the_lora_ships_bypassed_with_a_note_saying_how_to_enable_it():
    ui = json.loads((FOLDER / SAMPLER_WORKFLOW).read_text())
    lora = next(n for n in ui["nodes"] if n["type"] == "LoraLoaderModelOnly")
    assert lora["mode"] == gr.BYPASSED and lora["widgets_values"][0] == "your_flux_lora.safetensors"
    notes = " ".join(n["widgets_values"][0] for n in ui["nodes"] if n["type"] in gr.VIRTUAL_NODES)
    assert "Ctrl+B" in notes and "models/loras/" in notes
    api = gr.to_api(ui, CLASSES)
    (_, sampler), = [(k, v) for k, v in api.items() if v["class_type"] == "KSampler"]
    assert api[sampler["inputs"]["model"][0]]["class_type"] == "UNETLoader"


# -- the converter routes around bypassed and muted nodes as the front end does --------------------------------

def chain(*modes):
    """UNETLoader -> LoRA x len(modes) -> KSampler-like consumer (VAEDecode is not needed: a MODEL input only)."""
    nodes = [{"id": 1, "type": "UNETLoader", "mode": 0, "inputs": [],
              "outputs": [{"name": "MODEL", "type": "MODEL", "links": [1]}],
              "widgets_values": ["flux1-dev.safetensors", "default"]}]
    for i, mode in enumerate(modes, 2):
        nodes.append({"id": i, "type": "LoraLoaderModelOnly", "mode": mode,
                      "inputs": [{"name": "model", "type": "MODEL", "link": i - 1}],
                      "outputs": [{"name": "MODEL", "type": "MODEL", "links": [i]}],
                      "widgets_values": ["your_flux_lora.safetensors", 1.0]})
    last = len(modes) + 1
    nodes.append({"id": last + 1, "type": "LoraLoaderModelOnly", "mode": 0,
                  "inputs": [{"name": "model", "type": "MODEL", "link": last}], "outputs": [],
                  "widgets_values": ["other.safetensors", 0.5]})
    links = [[i, i, 0, i + 1, 0, "MODEL"] for i in range(1, last + 1)]
    return {"nodes": nodes, "links": links}


@pytest.mark.parametrize("modes, source", [((0,), "2"), ((4,), "1"), ((4, 4), "1"), ((0, 4), "2"), ((4, 0), "3")])
def test_consumers_are_wired_past_bypassed_nodes(modes, source):
    api = gr.to_api(chain(*modes), CLASSES)
    consumer = str(len(modes) + 2)
    assert api[consumer]["inputs"]["model"] == [source, 0]
    assert {k for k in api} == {"1", consumer} | {str(i) for i, m in enumerate(modes, 2) if m == 0}


def test_an_input_from_a_muted_node_is_left_out():
    api = gr.to_api(chain(2), CLASSES)
    assert "2" not in api and "model" not in api["3"]["inputs"]


def test_a_bypassed_node_passes_the_input_of_the_wanted_type():
    """Redux Encode bypassed: its REDUX_CONDITIONING output has no input of that type, so the consumer gets
    nothing (as in the front end); an IMAGE consumer of a bypassed node with an IMAGE input gets that image."""
    ui = json.loads((FOLDER / "Redux image variation (FLUX dev).json").read_text())
    encode = next(n for n in ui["nodes"] if n["type"] == "FluxReduxEncode")
    encode["mode"] = gr.BYPASSED
    api = gr.to_api(ui, CLASSES)
    generate = next(v for v in api.values() if v["class_type"] == "FluxReduxGenerate")
    assert "conditioning" not in generate["inputs"]
    image_input = next(i for i, item in enumerate(encode["inputs"]) if item["type"] == "IMAGE")
    assert gr._bypass_slot(encode, 0, "IMAGE") == image_input
    nodes, links = {n["id"]: n for n in ui["nodes"]}, {link[0]: link for link in ui["links"]}
    image_link = next(link[0] for link in ui["links"] if link[1] == encode["id"])  # Encode -> Generate
    links[image_link] = [image_link, encode["id"], 0, 99, 0, "IMAGE"]  # as if an IMAGE input took Encode's output
    loader = next(n for n in ui["nodes"] if n["type"] == "LoadImage")
    assert gr.resolve_link(nodes, links, image_link, "IMAGE") == [str(loader["id"]), 0]
