"""Queue workflows from example_workflows/ on a running ComfyUI and report what each did (not a pytest file).

The UI workflow is converted to the API format with the server's own node definitions (GET /object_info), so
this checks the saved files against a real ComfyUI, not against the test stand-ins. Run it with the pack's
test environment (graph_runner's converter is used):

    python tests/live_comfyui.py --url http://127.0.0.1:8185 "example_workflows/Redux variation on any backend (local or hosted).json" \
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

from graph_runner import to_api


def call(url: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return json.loads(reply.read())
    except urllib.error.HTTPError as exc:  # /prompt answers 400 with the validation errors
        return json.loads(exc.read())


def server_classes(definitions: dict) -> dict:
    """Stand-in classes carrying the server's own INPUT_TYPES and RETURN_TYPES, for graph_runner.to_api."""
    return {name: type(name, (), {"INPUT_TYPES": classmethod(lambda cls, d=definition: d["input"]),
                                  "RETURN_TYPES": tuple(definition["output"])})
            for name, definition in definitions.items()}


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
    api = to_api(json.loads(path.read_text()), server_classes(call(f"{url}/object_info")))
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
