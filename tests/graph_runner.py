"""A small stand-in for ComfyUI's front end and executor, for tests (no ComfyUI installed).

- `widget_slots(cls)`: the widgets the front end creates for a node class, in `widgets_values` order (an
  INT named seed/noise_seed, or with control_after_generate, is followed by its control value; an
  image_upload combo by the upload widget's value).
- `validate_workflow(ui, classes)`: check a saved UI workflow against node definitions; returns problems.
- `to_api(ui, classes)`: the API format that `POST /prompt` takes ({id: {class_type, inputs}}).
- `execute(api, classes)`: validate like ComfyUI's server, then run the nodes that output nodes need (a lazy
  input's node only when the node's `check_lazy_status` asks for it).
Built-in LoadImage / SaveImage / PreviewImage / PreviewAny stand-ins read INPUT_DIR and write OUTPUT_DIR (set by tests);
DualCLIPLoader (type flux) / CLIPTextEncode stand-ins load the tiny CLIP + T5 files of TEXT_ENCODERS_DIR
(tiny_models.write_text_encoders) and return a ComfyUI-shaped CONDITIONING.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

INPUT_DIR: Path | None = None
OUTPUT_DIR: Path | None = None
TEXT_ENCODERS_DIR: Path | None = None
T5_MIN_TOKENS = 256  # ComfyUI pads FLUX's T5 prompt to at least 256 tokens
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SEED_NAMES = {"seed", "noise_seed"}
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
VIRTUAL_NODES = {"Note": 1, "MarkdownNote": 1}  # front-end only: never sent to the server; widget count


# -- ComfyUI built-ins (same names, inputs and outputs as ComfyUI's own) ------------------------------------------

class LoadImage:
    CATEGORY, FUNCTION, RETURN_TYPES = "image", "load_image", ("IMAGE", "MASK")

    @classmethod
    def INPUT_TYPES(cls):
        files = sorted(p.name for p in INPUT_DIR.iterdir() if p.is_file()) if INPUT_DIR else []
        return {"required": {"image": (files, {"image_upload": True})}}

    def load_image(self, image):
        with Image.open(INPUT_DIR / image) as im:
            alpha = "A" in im.getbands() or "transparency" in im.info
            rgba = np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0
        pixels = torch.from_numpy(rgba[..., :3].copy())[None]
        if not alpha:  # ComfyUI: an empty 64x64 mask when the image has no alpha
            return pixels, torch.zeros(1, 64, 64)
        return pixels, 1.0 - torch.from_numpy(rgba[..., 3].copy())[None]  # ComfyUI: mask = 1 - alpha


class SaveImage:
    CATEGORY, FUNCTION, RETURN_TYPES, OUTPUT_NODE = "image", "save_images", (), True
    saved: list[Path] = []

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",), "filename_prefix": ("STRING", {"default": "ComfyUI"})}}

    def save_images(self, images, filename_prefix="ComfyUI"):
        results = []
        for image in images:
            path = OUTPUT_DIR / f"{filename_prefix}_{len(SaveImage.saved) + 1:05}_.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((image.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)).save(path)
            SaveImage.saved.append(path)
            results.append({"filename": path.name, "type": "output"})
        return {"ui": {"images": results}}


class PreviewImage:
    CATEGORY, FUNCTION, RETURN_TYPES, OUTPUT_NODE = "image", "preview", (), True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",)}}

    def preview(self, images):
        return {"ui": {"images": [{"shape": list(images.shape), "type": "temp"}]}}


class PreviewAny:
    """ComfyUI's 'Preview Any' (comfy_extras): shows any value as text."""
    CATEGORY, FUNCTION, RETURN_TYPES, OUTPUT_NODE = "utils", "main", (), True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"source": ("*", {})}}

    def main(self, source=None):
        return {"ui": {"text": [source if isinstance(source, str) else json.dumps(source)]}}


class TinyFluxClip:
    """What DualCLIPLoader (type flux) gives CLIPTextEncode: CLIP-L and T5 with their tokenizers (tiny here)."""

    def __init__(self, files: list[Path]):
        from safetensors.torch import load_file

        import tiny_models as tm

        self.clip, self.t5 = tm.make_clip_text(seed=0), tm.make_t5(seed=0)
        self.clip_tokens, self.t5_tokens = tm.make_tokenizer(77), tm.make_tokenizer(512)
        for path in files:  # like ComfyUI, tell the two apart by their keys
            state = load_file(str(path))
            if any(k.startswith("text_model.") for k in state):
                self.clip.load_state_dict({k.removeprefix("text_model."): v for k, v in state.items()})
            else:
                self.t5.load_state_dict(state, strict=False)  # the file leaves out the tied embed_tokens

    @torch.no_grad()
    def encode(self, text: str) -> list:
        ids = lambda tok, n: tok(text, padding="max_length", max_length=n, truncation=True,  # noqa: E731
                                 return_tensors="pt").input_ids
        tokens = self.t5(ids(self.t5_tokens, T5_MIN_TOKENS)).last_hidden_state
        pooled = self.clip(ids(self.clip_tokens, 77)).pooler_output
        return [[tokens, {"pooled_output": pooled}]]


class DualCLIPLoader:
    CATEGORY, FUNCTION, RETURN_TYPES = "advanced/loaders", "load_clip", ("CLIP",)

    @classmethod
    def INPUT_TYPES(cls):
        files = sorted(p.name for p in TEXT_ENCODERS_DIR.iterdir()) if TEXT_ENCODERS_DIR else []
        return {"required": {"clip_name1": (files,), "clip_name2": (files,),
                             "type": (["sdxl", "sd3", "flux", "hunyuan_video", "hidream"],)},
                "optional": {"device": (["default", "cpu"], {"advanced": True})}}

    def load_clip(self, clip_name1, clip_name2, type, device="default"):
        if type != "flux":
            raise NotImplementedError(f"the test stand-in loads type flux only, not {type}")
        return (TinyFluxClip([TEXT_ENCODERS_DIR / clip_name1, TEXT_ENCODERS_DIR / clip_name2]),)


class CLIPTextEncode:
    CATEGORY, FUNCTION, RETURN_TYPES = "conditioning", "encode", ("CONDITIONING",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"multiline": True, "dynamicPrompts": True}), "clip": ("CLIP",)}}

    def encode(self, clip, text):
        return (clip.encode(text),)


MODEL_FILES: dict[str, list[str]] = {}  # ComfyUI model folder -> file names the loader stand-ins offer (tests set it)


def _declared(name: str, category: str, inputs: dict, returns: tuple) -> type:
    """A ComfyUI node known by its declaration only (same inputs and outputs), for validating and converting
    workflows; tests never run it (they pass it in skip_types): the tiny models do not fit ComfyUI's own loaders."""

    def run(self, **kwargs):
        raise NotImplementedError(f"{name} is declared for validation only; pass it in skip_types")

    return type(name, (), {"CATEGORY": category, "FUNCTION": "run", "RETURN_TYPES": returns, "run": run,
                           "INPUT_TYPES": classmethod(lambda cls: {"required": inputs()})})


def _files(folder):
    return lambda: MODEL_FILES.get(folder, [])


SAMPLING_NODES = {  # ComfyUI's own loaders and sampler, as declared in nodes.py / comfy_extras (0.3.54 and 0.8.0)
    "UNETLoader": _declared("UNETLoader", "advanced/loaders", lambda: {
        "unet_name": (_files("diffusion_models")(),), "weight_dtype": (["default", "fp8_e4m3fn", "fp8_e4m3fn_fast",
                                                                       "fp8_e5m2"],)}, ("MODEL",)),
    "LoraLoaderModelOnly": _declared("LoraLoaderModelOnly", "loaders", lambda: {
        "model": ("MODEL",), "lora_name": (_files("loras")(),),
        "strength_model": ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01})}, ("MODEL",)),
    "VAELoader": _declared("VAELoader", "loaders", lambda: {"vae_name": (_files("vae")(),)}, ("VAE",)),
    "EmptySD3LatentImage": _declared("EmptySD3LatentImage", "latent/sd3", lambda: {
        "width": ("INT", {"default": 1024, "min": 16, "max": 16384, "step": 16}),
        "height": ("INT", {"default": 1024, "min": 16, "max": 16384, "step": 16}),
        "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096})}, ("LATENT",)),
    "FluxGuidance": _declared("FluxGuidance", "advanced/conditioning/flux", lambda: {
        "conditioning": ("CONDITIONING",),
        "guidance": ("FLOAT", {"default": 3.5, "min": 0.0, "max": 100.0, "step": 0.1})}, ("CONDITIONING",)),
    "ConditioningZeroOut": _declared("ConditioningZeroOut", "advanced/conditioning", lambda: {
        "conditioning": ("CONDITIONING",)}, ("CONDITIONING",)),
    "KSampler": _declared("KSampler", "sampling", lambda: {
        "model": ("MODEL",), "seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff,
                                              "control_after_generate": True}),
        "steps": ("INT", {"default": 20, "min": 1, "max": 10000}),
        "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}),
        "sampler_name": (["euler", "euler_ancestral", "dpmpp_2m"],), "scheduler": (["simple", "normal", "beta"],),
        "positive": ("CONDITIONING",), "negative": ("CONDITIONING",), "latent_image": ("LATENT",),
        "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01})}, ("LATENT",)),
    "VAEDecode": _declared("VAEDecode", "latent", lambda: {"samples": ("LATENT",), "vae": ("VAE",)}, ("IMAGE",)),
    "CLIPVisionLoader": _declared("CLIPVisionLoader", "loaders", lambda: {"clip_name": (_files("clip_vision")(),)},
                                  ("CLIP_VISION",)),
    "StyleModelLoader": _declared("StyleModelLoader", "loaders", lambda: {
        "style_model_name": (_files("style_models")(),)}, ("STYLE_MODEL",)),
}

BUILTINS = {"LoadImage": LoadImage, "SaveImage": SaveImage, "PreviewImage": PreviewImage, "PreviewAny": PreviewAny,
            "DualCLIPLoader": DualCLIPLoader, "CLIPTextEncode": CLIPTextEncode, **SAMPLING_NODES}


# -- node definitions --------------------------------------------------------------------------------------------

def all_inputs(cls) -> dict:
    spec = cls.INPUT_TYPES()
    return {**spec.get("required", {}), **spec.get("optional", {})}


def input_kind(entry) -> str:
    """'COMBO' for a list of choices, else the type name."""
    kind = entry[0]
    return "COMBO" if isinstance(kind, (list, tuple)) else kind


def is_widget(entry) -> bool:
    options = entry[1] if len(entry) > 1 else {}
    return input_kind(entry) in WIDGET_TYPES and not options.get("forceInput", False)


def widget_slots(cls) -> list[tuple[str, str]]:
    """[(input name, 'value' | 'control' | 'upload')] in widgets_values order."""
    slots = []
    for name, entry in all_inputs(cls).items():
        if not is_widget(entry):
            continue
        options = entry[1] if len(entry) > 1 else {}
        slots.append((name, "value"))
        if input_kind(entry) == "INT" and (name in SEED_NAMES or options.get("control_after_generate")):
            slots.append((name, "control"))
        if options.get("image_upload"):
            slots.append((name, "upload"))
    return slots


def check_value(name: str, entry, value) -> str | None:
    """ComfyUI's server-side checks for one widget value; a message or None."""
    kind, options = input_kind(entry), (entry[1] if len(entry) > 1 else {})
    if kind == "COMBO":
        return None if value in entry[0] else f"{name}={value!r} not in {list(entry[0])[:8]}"
    if kind in ("INT", "FLOAT"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind == "INT" and value != int(value)):
            return f"{name}={value!r} is not {kind}"
        if "min" in options and value < options["min"] or "max" in options and value > options["max"]:
            return f"{name}={value!r} outside {options.get('min')}..{options.get('max')}"
    if kind == "STRING" and not isinstance(value, str):
        return f"{name}={value!r} is not a string"
    if kind == "BOOLEAN" and not isinstance(value, bool):
        return f"{name}={value!r} is not a boolean"
    return None


# -- saved UI workflow -------------------------------------------------------------------------------------------

def validate_workflow(ui: dict, classes: dict) -> list[str]:
    problems = []
    nodes = {n["id"]: n for n in ui["nodes"]}
    links = {link[0]: link for link in ui["links"]}
    if max(nodes, default=0) > ui["last_node_id"] or max(links, default=0) > ui["last_link_id"]:
        problems.append("last_node_id / last_link_id below the ids used")
    for node in ui["nodes"]:
        where = f"node {node['id']} ({node['type']})"
        values = node.get("widgets_values", [])
        if node["type"] in VIRTUAL_NODES:
            if len(values) != VIRTUAL_NODES[node["type"]]:
                problems.append(f"{where}: expected {VIRTUAL_NODES[node['type']]} widget value(s)")
            continue
        cls = classes.get(node["type"])
        if cls is None:
            problems.append(f"{where}: unknown node type")
            continue
        inputs = all_inputs(cls)
        slots = widget_slots(cls)
        if len(values) != len(slots):
            problems.append(f"{where}: {len(values)} widget values, expected {len(slots)} {[s for s in slots]}")
        else:
            for (name, role), value in zip(slots, values):
                if role == "value":
                    message = check_value(name, inputs[name], value)
                elif role == "control":
                    message = None if value in CONTROL_VALUES else f"{name} control {value!r}"
                else:
                    message = None if value == "image" else f"{name} upload widget value {value!r}"
                if message:
                    problems.append(f"{where}: {message}")
        declared = {i["name"]: i for i in node.get("inputs", [])}
        for name, entry in inputs.items():
            required = name in cls.INPUT_TYPES().get("required", {})
            if not is_widget(entry) and required and declared.get(name, {}).get("link") is None:
                problems.append(f"{where}: required input {name} is not connected")
        for slot, item in enumerate(node.get("inputs", [])):
            if item["name"] not in inputs:
                problems.append(f"{where}: input {item['name']} is not declared by the node")
            elif item.get("link") is not None and links.get(item["link"], [None] * 6)[3:5] != [node["id"], slot]:
                problems.append(f"{where}: input {item['name']} names link {item['link']}, which ends elsewhere")
        for slot, item in enumerate(node.get("outputs", [])):
            if slot >= len(cls.RETURN_TYPES) or item["type"] != cls.RETURN_TYPES[slot]:
                problems.append(f"{where}: output {slot} {item['type']} is not RETURN_TYPES[{slot}]")
            for link_id in item.get("links") or []:
                if links.get(link_id, [None] * 3)[1:3] != [node["id"], slot]:
                    problems.append(f"{where}: output {slot} names link {link_id}, which starts elsewhere")
    for link_id, source, out_slot, target, in_slot, kind in ui["links"]:
        src, dst = nodes.get(source), nodes.get(target)
        if src is None or dst is None or src["type"] not in classes or dst["type"] not in classes:
            problems.append(f"link {link_id}: joins unknown or virtual nodes")
            continue
        produced = classes[src["type"]].RETURN_TYPES[out_slot]
        target_input = dst["inputs"][in_slot]["name"]
        wanted = input_kind(all_inputs(classes[dst["type"]])[target_input])
        if not (produced == kind == wanted or wanted == "*"):
            problems.append(f"link {link_id}: {src['type']} output {produced} -> {dst['type']}.{target_input} "
                            f"{wanted} (link says {kind})")
    return problems


MUTED, BYPASSED = 2, 4  # LiteGraph node modes: "never" (muted) and bypass (Ctrl+M / Ctrl+B in the front end)


def _compatible(a: str, b: str) -> bool:
    return a == b or "*" in (a, b) or a == ""


def _bypass_slot(node: dict, slot: int, wanted: str) -> int:
    """The input a bypassed node passes to its output `slot`, as the front end picks it (ExecutableNodeDTO.
    _getBypassSlotIndex): the input at the same index if its type fits, else the first input of the wanted type,
    else the first compatible one; -1 when none fits."""
    inputs = node.get("inputs", [])
    produced = node["outputs"][slot]["type"]
    if wanted in ("*", ""):
        return slot if len(inputs) > slot else 0
    if slot < len(inputs) and _compatible(inputs[slot]["type"], produced) and _compatible(inputs[slot]["type"], wanted):
        return slot
    for index, item in enumerate(inputs):
        if item["type"] == wanted:
            return index
    return next((i for i, item in enumerate(inputs)
                 if _compatible(item["type"], produced) and _compatible(item["type"], wanted)), -1)


def resolve_link(ui_nodes: dict, links: dict, link_id: int, wanted: str) -> list | None:
    """[source id, slot] of the active node a link really comes from: through bypassed nodes, None when it ends at
    a muted node or at a bypassed node with nothing to pass on (the front end then leaves the input out)."""
    seen = set()
    _, source, slot, *_ = links[link_id]
    while True:
        node = ui_nodes[source]
        mode = node.get("mode", 0)
        if mode == MUTED or (source, slot) in seen:
            return None
        if mode != BYPASSED:
            return [str(source), slot]
        seen.add((source, slot))
        index = _bypass_slot(node, slot, wanted)
        if index < 0 or node["inputs"][index].get("link") is None:
            return None
        _, source, slot, *_ = links[node["inputs"][index]["link"]]


def to_api(ui: dict, classes: dict) -> dict:
    """Saved UI format -> API format, as the front end's 'Queue' does: virtual (Note) and muted nodes are left
    out, a bypassed node is left out and its consumers are wired to what it would pass on (resolve_link)."""
    links = {link[0]: link for link in ui["links"]}
    ui_nodes = {node["id"]: node for node in ui["nodes"]}
    api = {}
    for node in ui["nodes"]:
        if node["type"] in VIRTUAL_NODES or node.get("mode", 0) in (MUTED, BYPASSED):
            continue
        inputs = {}
        values = iter(node.get("widgets_values", []))
        for name, role in widget_slots(classes[node["type"]]):
            value = next(values)
            if role == "value":
                inputs[name] = value
        for item in node.get("inputs", []):
            if item.get("link") is not None:
                source = resolve_link(ui_nodes, links, item["link"], item["type"])
                if source is not None:
                    inputs[item["name"]] = source
                else:
                    inputs.pop(item["name"], None)
        api[str(node["id"])] = {"class_type": node["type"], "inputs": inputs,
                                "_meta": {"title": node.get("title", node["type"])}}
    return api


# -- executor ----------------------------------------------------------------------------------------------------

def _lazy_requests(instance, kwargs: dict, node_id: str, pending: set) -> list[str]:
    """The unevaluated lazy inputs `check_lazy_status` asks for (all of them when the node has no such method).
    Naming an input that is not connected fails, as ComfyUI's make_input_strong_link does."""
    check = getattr(instance, "check_lazy_status", None)
    wanted = check(**kwargs) if check is not None else list(pending)
    for name in wanted:
        if name not in kwargs:
            raise PromptError(f"node {node_id} says it needs input {name}, but there is no input to that node at all")
    return [name for name in wanted if name in pending]


class PromptError(ValueError):
    """What ComfyUI would reject at POST /prompt (before running anything)."""


def _validate_api(api: dict, classes: dict) -> None:
    for node_id, node in api.items():
        cls = classes[node["class_type"]]
        spec = cls.INPUT_TYPES()
        custom = getattr(cls, "VALIDATE_INPUTS", None)
        custom_args = set(inspect.signature(custom).parameters) if custom else set()
        for name in spec.get("required", {}):
            if name not in node["inputs"]:
                raise PromptError(f"node {node_id}: required input {name} missing")
        for name, value in node["inputs"].items():
            entry = all_inputs(cls).get(name)
            if entry is None:
                raise PromptError(f"node {node_id}: unknown input {name}")
            if isinstance(value, list):
                produced = classes[api[value[0]]["class_type"]].RETURN_TYPES[value[1]]
                if produced != input_kind(entry) and input_kind(entry) != "*":
                    raise PromptError(f"node {node_id}: {name} wants {input_kind(entry)}, gets {produced}")
            elif name not in custom_args and (message := check_value(name, entry, value)):
                raise PromptError(f"node {node_id}: {message}")
        if custom:  # like ComfyUI: widget values passed, linked inputs as None
            given = {k: (None if isinstance(v, list) else v) for k, v in node["inputs"].items() if k in custom_args}
            verdict = custom(**given)
            if verdict is not True:
                raise PromptError(f"node {node_id}: {verdict}")


def execute(api: dict, classes: dict, skip_types: frozenset = frozenset()) -> dict:
    """Run what the output nodes need. Nodes of `skip_types` and everything downstream are not run.

    Returns {node id: outputs tuple, or the 'ui' dict of an output node}.
    """
    _validate_api(api, classes)
    results: dict = {}
    skipped: set = set()

    def run(node_id: str):
        if node_id in results or node_id in skipped:
            return
        node = api[node_id]
        cls = classes[node["class_type"]]
        links = {k: v for k, v in node["inputs"].items() if isinstance(v, list)}
        lazy = {k for k in links if (all_inputs(cls)[k][1:] or [{}])[0].get("lazy")}
        for name, (source, _) in links.items():
            if name not in lazy:
                run(source)
        if node["class_type"] in skip_types or any(source in skipped for source, _ in links.values()):
            skipped.add(node_id)
            return
        kwargs = {k: (None if k in lazy else results[v[0]][v[1]] if k in links else v)
                  for k, v in node["inputs"].items()}
        instance = cls()
        while lazy and (wanted := _lazy_requests(instance, kwargs, node_id, lazy)):
            for name in wanted:  # like ComfyUI: run what check_lazy_status names, then ask again
                run(links[name][0])
                kwargs[name] = results[links[name][0]][links[name][1]]
                lazy.discard(name)
        out = getattr(instance, cls.FUNCTION)(**kwargs)
        results[node_id] = out["ui"] if isinstance(out, dict) and "ui" in out else out

    for node_id, node in api.items():
        if getattr(classes[node["class_type"]], "OUTPUT_NODE", False):
            run(node_id)
    return results
