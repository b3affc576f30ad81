"""Queue workflows from workflows/ on a running ComfyUI and report what each did (not a pytest file).

The UI workflow is converted to the API format with the server's own node definitions (GET /object_info), so
this checks the saved files against a real ComfyUI, not against the test stand-ins. Standard library only:

    python tests/live_comfyui.py --url http://127.0.0.1:8185 workflows/redux_variation_any_backend.json \
        --set FluxReduxVariation.num_inference_steps=2 --set FluxReduxVariation.backend='"custom"'

`--set TYPE.INPUT=JSON` changes an input on every node of that type (e.g. a smaller size for CPU runs);
`--expect-error TEXT` passes only when the prompt fails (at validation or when it runs) with TEXT in the
error. `--check-links` instead looks up every loader's download link the way the front end decides a model
is missing (the file name in GET /experiment/models/<directory>) and fails for a link it would offer.
Exit status 0 when every workflow did what was expected.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FRONTEND_ONLY = {"Note", "MarkdownNote"}


def call(url: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return json.loads(reply.read())
    except urllib.error.HTTPError as exc:  # /prompt answers 400 with the validation errors
        return json.loads(exc.read())


def widget_names(definition: dict) -> list[tuple[str, bool]]:
    """[(input name, is a real value)] in widgets_values order, as the front end lays them out."""
    slots = []
    for section in ("required", "optional"):
        for name, entry in definition["input"].get(section, {}).items():
            kind, options = entry[0], (entry[1] if len(entry) > 1 else {})
            if not (isinstance(kind, list) or kind in WIDGET_TYPES) or options.get("forceInput"):
                continue
            slots.append((name, True))
            if kind == "INT" and (name in ("seed", "noise_seed") or options.get("control_after_generate")):
                slots.append((name, False))  # control after generate
            if options.get("image_upload"):
                slots.append((name, False))  # the upload button
    return slots


def to_api(ui: dict, definitions: dict) -> dict:
    links = {link[0]: link for link in ui["links"]}
    api = {}
    for node in ui["nodes"]:
        if node["type"] in FRONTEND_ONLY or node.get("mode", 0) == 2:
            continue
        if node["type"] not in definitions:
            raise SystemExit(f"node type {node['type']} is not known to this ComfyUI")
        inputs = {name: value for (name, real), value in
                  zip(widget_names(definitions[node["type"]]), node.get("widgets_values", [])) if real}
        for item in node.get("inputs", []):
            if item.get("link") is not None:
                _, source, slot, *_ = links[item["link"]]
                inputs[item["name"]] = [str(source), slot]
        api[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return api


def apply_settings(api: dict, settings: list[str]) -> None:
    for setting in settings:
        target, value = setting.split("=", 1)
        node_type, name = target.split(".", 1)
        for node in api.values():
            if node["class_type"] == node_type:
                node["inputs"][name] = json.loads(value)


def wait_for(url: str, prompt_id: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        history = call(f"{url}/history/{prompt_id}")
        if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
            return history[prompt_id]
        time.sleep(0.5)
    raise SystemExit(f"no result after {timeout:.0f} s")


def summary(entry: dict) -> tuple[bool, str]:
    """(succeeded, one line per output or the error)."""
    status = entry["status"]
    for kind, message in status.get("messages", []):
        if kind == "execution_error":
            return False, f"{message['node_type']}: {message['exception_message'].strip()}"
    lines = []
    for node_id, output in entry.get("outputs", {}).items():
        if "images" in output:
            lines.append(f"node {node_id}: {len(output['images'])} image(s) {[i['filename'] for i in output['images']]}")
        if "text" in output:
            lines.append(f"node {node_id}: text {str(output['text'][0])[:300]!r}")
    return status.get("status_str") == "success", "\n    ".join(lines)


def check_links(url: str, path: Path) -> bool:
    """Would ComfyUI's front end call any linked model missing? (It is when the file name is not listed.)"""
    ui, missing, count = json.loads(path.read_text()), [], 0
    for node in ui["nodes"]:
        for link in node.get("properties", {}).get("models", []):
            count += 1
            listed = call(f"{url}/experiment/models/{link['directory']}")
            if not isinstance(listed, list) or link["name"] not in {m.get("name") for m in listed}:
                missing.append(f"{link['directory']}/{link['name']}")
    print(f"{'FAIL' if missing else 'PASS'} {path.name}: {count} link(s), missing {missing}")
    return not missing


def run(url: str, path: Path, settings: list[str], expect_error: str | None, timeout: float) -> bool:
    definitions = call(f"{url}/object_info")
    api = to_api(json.loads(path.read_text()), definitions)
    apply_settings(api, settings)
    started = time.monotonic()
    reply = call(f"{url}/prompt", {"prompt": api, "client_id": "live_comfyui"})
    if "prompt_id" not in reply:
        ok, text = False, json.dumps(reply.get("node_errors") or reply.get("error"))[:600]
    else:
        ok, text = summary(wait_for(url, reply["prompt_id"], timeout))
    wanted = (not ok and expect_error in text) if expect_error else ok
    verdict = "PASS" if wanted else "FAIL"
    print(f"{verdict} {path.name} {' '.join(settings)} ({time.monotonic() - started:.1f} s)\n    {text}")
    return wanted


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workflows", nargs="+", type=Path)
    parser.add_argument("--url", default="http://127.0.0.1:8188")
    parser.add_argument("--set", action="append", default=[], dest="settings", metavar="TYPE.INPUT=JSON")
    parser.add_argument("--expect-error", default=None)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--check-links", action="store_true")
    args = parser.parse_args()
    if args.check_links:
        return 0 if all([check_links(args.url, path) for path in args.workflows]) else 1
    results = [run(args.url, path, args.settings, args.expect_error, args.timeout) for path in args.workflows]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
