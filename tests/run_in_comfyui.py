"""Run the pack inside a real ComfyUI and report PASS/FAIL per check. Not part of pytest (it needs a ComfyUI tree):

    python tests/run_in_comfyui.py COMFYUI_DIR [--python PY] [--port 8390] [--work DIR] [--parts LIST] [-- FLAGS]

COMFYUI_DIR is left untouched: ComfyUI starts with `--base-directory WORK/base` (its custom_nodes/, models/, input/,
output/ and user/ folders), where this pack is copied to custom_nodes/ComfyUI-FLUX-Redux (a dashed name, as users
clone it). PY defaults to COMFYUI_DIR/.venv/bin/python; FLAGS go to main.py after `--cpu`. Random-weight files
in the real on-disk formats, written once into WORK/models and shared by every ComfyUI run, carry the names the
shipped workflows use, so each workflow runs with its own widget values; only the size (256x256) and the steps (1)
are lowered, and DualCLIPLoader gets the fp8 T5-XXL instead of the fp16 one (ComfyUI reads the dtype from the
file): a FLUX.1 dev and a schnell transformer at full width with 1 double + 1 single block (BFL names, bf16), the
FLUX VAE, SigLIP so400m and the Redux projector at full size, T5-XXL (fp8) and CLIP-L at full size, one LoRA.

Parts (--parts, default all, in this order; --only TEXT limits the workflows part to the files named with TEXT):
- templates: GET /workflow_templates lists every file of example_workflows/ under the pack's folder name, and
  each one's .json and .jpg thumbnail are served where the front end fetches them;
- memory: tests/comfy_memory_check.py in ComfyUI's Python (the pack's models in ComfyUI's memory manager; also
  with ComfyUI 0.33's DynamicVRAM switch on, --dynamic, where that ComfyUI has it), on tiny models;
- mixed: one prompt with Redux Generate and ComfyUI's UNETLoader + Redux -> Conditioning + KSampler, POST /free,
  the same again; the server's private memory after each;
- clipvision: ComfyUI's Load CLIP Vision + Load Style Model into Redux Encode vs the pack's encoder, same seed;
- workflows: every workflow, converted from the saved UI format with the server's own node definitions (GET
  /object_info; bypassed nodes routed around as the front end does), queued through POST /prompt. Expected: success
  and saved images; the hosted-provider ones stop at the missing API key; the masked one runs as shipped (nothing
  painted: the whole reference, with a warning) and again with a painted reference loaded.
Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import graph_runner as gr  # noqa: E402
import tiny_models as tm  # noqa: E402
from live_comfyui import server_classes  # noqa: E402

PACK = HERE.parent
PACK_FOLDER = "ComfyUI-FLUX-Redux"
WORKFLOWS_DIR = PACK / "example_workflows"
FLUX_FILE, SCHNELL_FILE, VAE_FILE = "flux1-dev.safetensors", "flux1-schnell.safetensors", "ae.safetensors"
SIGLIP_FILE, REDUX_FULL_FILE = "sigclip_vision_patch14_384.safetensors", "flux1-redux-dev.safetensors"
T5_FILE, CLIP_L_FILE, LORA_FILE = "t5xxl_fp8_e4m3fn.safetensors", "clip_l.safetensors", "your_flux_lora.safetensors"
MEMORY_VAE_FILE = "ae-comfy.safetensors"  # the full-size VAE beside the tiny models of the memory check
SIZE, STEPS = 256, 1
REMOTE_KEY_ERROR = "No API key for"
RESIDUAL_GIB = 0.5  # what may stay after POST /free beyond the server's start (allocator caches, imports)


# -- random-weight files in the real formats ----------------------------------------------------------------------

def write_streamed(path: Path, tensors: dict) -> None:
    """A safetensors file written tensor by tensor (name -> (shape, dtype, make() -> tensor)), so a 4.8 GB T5-XXL
    never sits in memory whole."""
    header, offset = {}, 0
    names = {torch.float8_e4m3fn: "F8_E4M3", torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32"}
    for name, (shape, dtype, _) in tensors.items():
        size = int(np.prod(shape)) * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": names[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    part = path.with_name(path.name + ".part")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(part, "wb") as out:
        out.write(struct.pack("<Q", len(blob)) + blob)
        for name, (shape, dtype, make) in tensors.items():
            out.write(make().to(dtype).contiguous().view(torch.uint8).numpy().tobytes())
    part.rename(path)


def t5xxl_tensors(seed: int = 8) -> dict:
    """T5-XXL's encoder under ComfyUI's (= transformers') key names, fp8 like t5xxl_fp8_e4m3fn.safetensors."""
    gen = torch.Generator().manual_seed(seed)
    d, ff, fp8 = 4096, 10240, torch.float8_e4m3fn
    rand = lambda *shape: (shape, fp8, lambda: torch.randn(shape, generator=gen) * 0.05)  # noqa: E731
    ones = lambda n: ((n,), fp8, lambda: torch.ones(n))  # noqa: E731
    tensors = {"shared.weight": ((32128, d), fp8, lambda: torch.randn((32128, d), generator=gen))}
    for i in range(24):
        block = f"encoder.block.{i}.layer"
        for name in "qkvo":
            tensors[f"{block}.0.SelfAttention.{name}.weight"] = rand(d, d)
        if i == 0:
            tensors[f"{block}.0.SelfAttention.relative_attention_bias.weight"] = rand(32, 64)
        tensors[f"{block}.0.layer_norm.weight"] = ones(d)
        tensors[f"{block}.1.DenseReluDense.wi_0.weight"] = rand(ff, d)
        tensors[f"{block}.1.DenseReluDense.wi_1.weight"] = rand(ff, d)
        tensors[f"{block}.1.DenseReluDense.wo.weight"] = rand(d, ff)
        tensors[f"{block}.1.layer_norm.weight"] = ones(d)
    tensors["encoder.final_layer_norm.weight"] = ones(d)
    return tensors


def clip_l_state(seed: int = 9) -> dict:
    """CLIP-L's text model at full size with its projection, fp16, as ComfyUI's clip_l.safetensors: `text_model.`
    keys (ComfyUI routes a file without them to T5 and leaves CLIP-L unloaded) and `text_projection.weight`."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    model = CLIPTextModelWithProjection(CLIPTextConfig(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, vocab_size=49408,
        max_position_embeddings=77, projection_dim=768))
    state = {k: v.half().contiguous() for k, v in model.state_dict().items() if "position_ids" not in k}
    assert "text_model.encoder.layers.1.mlp.fc1.weight" in state and "text_projection.weight" in state
    return state


def flux_vae_state(seed: int = 5) -> dict:
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
                        up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=2, latent_channels=16,
                        use_quant_conv=False, use_post_quant_conv=False, scaling_factor=0.3611, shift_factor=0.1159)
    return tm.vae_state_ldm(vae)


def write_models(models: Path) -> None:
    """The shared full-size-format files (written once; a finished file is never rewritten)."""
    def once(path: Path, make) -> None:
        if not path.exists():
            print(f"writing {path}", flush=True)
            make(path)

    once(models / "diffusion_models" / FLUX_FILE, lambda p: tm.write_safetensors(p, tm.bfl_transformer_state(
        guidance=True, in_channels=64, joint=4096, pooled=768)))
    once(models / "diffusion_models" / SCHNELL_FILE, lambda p: tm.write_safetensors(p, tm.bfl_transformer_state(
        guidance=False, in_channels=64, joint=4096, pooled=768, seed=6)))
    once(models / "vae" / VAE_FILE, lambda p: tm.write_safetensors(p, flux_vae_state()))
    once(models / "clip_vision" / SIGLIP_FILE, write_siglip)
    once(models / "style_models" / REDUX_FULL_FILE, lambda p: tm.write_safetensors(
        p, tm._contiguous(tm.make_redux(txt_width=4096, redux_dim=1152).half().state_dict())))
    once(models / "text_encoders" / CLIP_L_FILE, lambda p: tm.write_safetensors(p, clip_l_state()))
    once(models / "text_encoders" / T5_FILE, lambda p: write_streamed(p, t5xxl_tensors()))
    once(models / "loras" / LORA_FILE, lambda p: tm.write_safetensors(p, {
        "diffusion_model.img_in.lora_up.weight": torch.randn(3072, 4) * 0.01,
        "diffusion_model.img_in.lora_down.weight": torch.randn(4, 64) * 0.01}))


def write_siglip(path: Path) -> None:
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(6)
    config = SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                                image_size=384, patch_size=14)
    tm.write_safetensors(path, tm.siglip_state_comfy(SiglipVisionModel(config).half()))


# -- a ComfyUI base directory with the pack in custom_nodes/ ----------------------------------------------------

def install(comfy_dir: Path, base: Path, models: Path) -> None:
    """base/custom_nodes/<pack> (a fresh copy), base/models -> the shared models, base/input with ComfyUI's own
    example.png (the image every workflow's LoadImage names) and a reference painted in the Mask Editor."""
    pack = base / "custom_nodes" / PACK_FOLDER
    shutil.rmtree(pack, ignore_errors=True)
    shutil.copytree(PACK, pack, ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.pyc", "out"))
    if not (base / "models").exists():
        (base / "models").symlink_to(models, target_is_directory=True)
    inputs = base / "input"
    inputs.mkdir(parents=True, exist_ok=True)
    shutil.copy(comfy_dir / "input" / "example.png", inputs / "example.png")
    rgba = np.asarray(Image.open(inputs / "example.png").convert("RGBA")).copy()
    h, w = rgba.shape[:2]
    rgba[h // 4: 3 * h // 4, w // 4: 3 * w // 4, 3] = 0  # painted: the Mask Editor makes it transparent
    Image.fromarray(rgba, "RGBA").save(inputs / "painted.png")


def memory_base(comfy_dir: Path, work: Path, models: Path) -> Path:
    """A second base directory for the memory check: the tiny models (fast) plus the full-size VAE that ComfyUI's
    own VAELoader accepts."""
    base = work / "memory"
    if not (base / "models" / "vae" / MEMORY_VAE_FILE).exists():
        tm.build_models_dir(base)
        shutil.copy(models / "vae" / VAE_FILE, base / "models" / "vae" / MEMORY_VAE_FILE)
    pack = base / "custom_nodes" / PACK_FOLDER
    shutil.rmtree(pack, ignore_errors=True)
    shutil.copytree(PACK, pack, ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.pyc", "out"))
    return base


# -- the server ----------------------------------------------------------------------------------------------------

class Server:
    def __init__(self, comfy_dir: Path, base: Path, python: str, port: int, flags: list[str]):
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = base / "server.log"
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen([python, "main.py", "--cpu", "--port", str(port), "--disable-auto-launch",
                                         "--base-directory", str(base), *flags], cwd=comfy_dir, stdout=self.log,
                                        stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                self.get("/system_stats")
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"ComfyUI exited; see {self.log_path}")
                time.sleep(0.5)
                continue
            self.baseline_gib = self.private_gib()
            return
        raise RuntimeError("ComfyUI did not start")

    def raw(self, path: str) -> tuple[int, str, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=60) as reply:
                return reply.status, reply.headers.get("Content-Type", ""), reply.read()
        except urllib.error.HTTPError as exc:
            return exc.code, "", b""

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=60) as reply:
            return json.loads(reply.read())

    def post(self, path: str, body: dict):
        request = urllib.request.Request(self.url + path, json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as reply:
                text = reply.read()
        except urllib.error.HTTPError as exc:
            return {"http_error": exc.code, "body": json.loads(exc.read() or b"{}")}
        return json.loads(text) if text else {}

    def run(self, api: dict, timeout: float = 1800) -> dict:
        queued = self.post("/prompt", {"prompt": api, "client_id": "run_in_comfyui"})
        if "prompt_id" not in queued:
            return {"status": "rejected", "error": json.dumps(queued)[:600]}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get(f"/history/{queued['prompt_id']}")
            entry = history.get(queued["prompt_id"])
            if entry and entry.get("status", {}).get("completed") is not None:
                status = entry["status"]
                errors = [m for m in status.get("messages", []) if m[0] == "execution_error"]
                return {"status": status.get("status_str"), "outputs": entry.get("outputs", {}),
                        "error": errors[0][1].get("exception_message", "").strip() if errors else ""}
            time.sleep(1)
        return {"status": "timeout", "error": ""}

    def private_gib(self) -> float:
        """The server's private memory (RssAnon), GiB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 2**20
        return float("nan")

    def free(self, free_memory: bool) -> None:
        """POST /free, and again 3 s later: ComfyUI's worker reads the flags only when woken, and the wake-up of a
        /free sent while it still collects garbage after a prompt is lost (the flags then wait for the next
        prompt; seen in 0.33). Then wait: the worker collects garbage every 10 s."""
        for _ in range(2):
            self.post("/free", {"unload_models": True, "free_memory": free_memory})
            time.sleep(3)
        time.sleep(9)

    def private_gib_once_below(self, limit: float, patience: float = 120) -> float:
        """The server's private memory once it is at most `limit` GiB, or after `patience` s: on a loaded machine
        the worker may act on /free's flags and collect its garbage well after free()'s 12 s."""
        deadline = time.monotonic() + patience
        while (gib := self.private_gib()) > limit and time.monotonic() < deadline:
            time.sleep(2)
        return gib

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


# -- prompts -------------------------------------------------------------------------------------------------------

def api_of(path: Path, classes: dict) -> dict:
    return gr.to_api(json.loads(path.read_text()), classes)


def widget_mismatches(path: Path, classes: dict) -> list[str]:
    """Nodes whose saved widget values do not match this ComfyUI's widgets (the front end would misassign them)."""
    out = []
    for node in json.loads(path.read_text())["nodes"]:
        if node["type"] in gr.VIRTUAL_NODES:
            continue
        if node["type"] not in classes:
            out.append(f"{node['type']}: unknown to this ComfyUI")
            continue
        slots = gr.widget_slots(classes[node["type"]])
        if len(slots) != len(node.get("widgets_values", [])):
            out.append(f"{node['type']} {node['id']}: {len(node.get('widgets_values', []))} values for {slots}")
    return out


def small(api: dict) -> dict:
    """The same prompt, cheaper: SIZE x SIZE, STEPS steps; the fp8 T5-XXL file."""
    api = copy.deepcopy(api)
    for node in api.values():
        kind, inputs = node["class_type"], node["inputs"]
        if kind.startswith("FluxReduxGenerate") or kind == "FluxReduxVariation":
            inputs.update(image_size="custom", width=SIZE, height=SIZE, num_inference_steps=STEPS)
        elif kind == "EmptySD3LatentImage":
            inputs.update(width=SIZE, height=SIZE)
        elif kind == "KSampler":
            inputs.update(steps=STEPS)
        elif kind == "DualCLIPLoader":
            inputs.update(clip_name1=T5_FILE)
    return api


def renumbered(api: dict, offset: int) -> dict:
    out = {}
    for key, node in api.items():
        node = copy.deepcopy(node)
        for name, value in node["inputs"].items():
            if isinstance(value, list):
                node["inputs"][name] = [str(int(value[0]) + offset), value[1]]
        out[str(int(key) + offset)] = node
    return out


def mixed_queue(classes: dict) -> dict:
    """Redux Generate (the pack's FLUX) and ComfyUI's UNETLoader + KSampler in one prompt."""
    sampler = small(api_of(WORKFLOWS_DIR / "Redux restyle with the ComfyUI sampler and a LoRA.json", classes))
    generate = small(api_of(WORKFLOWS_DIR / "Redux image variation (FLUX dev).json", classes))
    return {**sampler, **renumbered(generate, 100)}


def clip_vision_queue() -> dict:
    """The same reference encoded by ComfyUI's CLIP_VISION + STYLE_MODEL and by the pack's own encoder from the same
    files, each generating with the same seed."""
    def branch(offset: int, encoder_inputs: dict) -> dict:
        n = lambda k: str(offset + k)  # noqa: E731
        return {
            n(1): {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
            n(2): {"class_type": "FluxReduxEncode", "inputs": {"image": [n(1), 0], "crop": "center", **encoder_inputs}},
            n(3): {"class_type": "FluxReduxLoadModel", "inputs": {
                "transformer": FLUX_FILE, "vae": VAE_FILE, "variant": "auto", "weight_dtype": "default",
                "offload": "none", "vae_tiling": "auto", "device": "auto"}},
            n(4): {"class_type": "FluxReduxGenerate", "inputs": {
                "model": [n(3), 0], "conditioning": [n(2), 0], "image_size": "custom", "width": SIZE, "height": SIZE,
                "num_inference_steps": STEPS, "guidance_scale": 3.5, "seed": 7, "num_images": 1}},
            n(5): {"class_type": "SaveImage", "inputs": {"images": [n(4), 0], "filename_prefix": f"clipvision_{offset}"}},
        }
    comfy = {"900": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": SIGLIP_FILE}},
             "901": {"class_type": "StyleModelLoader", "inputs": {"style_model_name": REDUX_FULL_FILE}}}
    pack = {"902": {"class_type": "FluxReduxLoadEncoder", "inputs": {
        "redux_model": REDUX_FULL_FILE, "clip_vision": SIGLIP_FILE, "device": "auto", "dtype": "fp32"}}}
    return {**comfy, **pack, **branch(100, {"clip_vision": ["900", 0], "style_model": ["901", 0]}),
            **branch(200, {"redux_encoder": ["902", 0]})}


def saved_images(result: dict) -> int:
    return sum(len(out.get("images", [])) for out in result.get("outputs", {}).values())


# -- the checks ----------------------------------------------------------------------------------------------------

class Report:
    def __init__(self):
        self.failures, self.passes = 0, 0

    def check(self, label: str, ok: bool, detail: str = "") -> bool:
        self.passes += ok
        self.failures += not ok
        print(f"{'PASS' if ok else 'FAIL'} {label}{': ' + detail[:400] if detail else ''}", flush=True)
        return ok


def check_templates(server: Server, report: Report) -> None:
    listed = server.get("/workflow_templates").get(PACK_FOLDER, [])
    stems = sorted(p.stem for p in WORKFLOWS_DIR.glob("*.json"))
    report.check("template browser lists every workflow under the pack's folder", sorted(listed) == stems,
                 f"{len(listed)} listed, {len(stems)} files")
    for stem in stems:  # the URLs the front end builds (getTemplateThumbnailUrl, fetchTemplateJson)
        base = f"/api/workflow_templates/{PACK_FOLDER}/{urllib.parse.quote(stem)}"
        status, kind, body = server.raw(base + ".json")
        ok_json = status == 200 and json.loads(body) == json.loads((WORKFLOWS_DIR / f"{stem}.json").read_text())
        status_jpg, kind_jpg, jpg = server.raw(base + ".jpg")
        report.check(f"template {stem!r}: workflow and thumbnail served",
                     ok_json and status_jpg == 200 and kind_jpg == "image/jpeg" and jpg[:2] == b"\xff\xd8",
                     f"json {status}, jpg {status_jpg} {kind_jpg} {len(jpg)} bytes")


def check_memory(comfy_dir: Path, python: str, base: Path, report: Report) -> None:
    dynamic = "ModelPatcherDynamic" in (comfy_dir / "comfy" / "model_patcher.py").read_text()
    for mode in (["--old"] + (["--dynamic"] if dynamic else [])):
        started = time.monotonic()
        done = subprocess.run([python, str(HERE / "comfy_memory_check.py"), str(comfy_dir), str(base), mode],
                              capture_output=True, text=True, timeout=1800)
        lines = [line for line in done.stdout.splitlines() if line.startswith(("PASS", "FAIL"))]
        for line in lines:
            print(f"  [{mode[2:]}] {line}", flush=True)
        report.check(f"memory manager checks inside ComfyUI ({mode[2:]} mode)",
                     done.returncode == 0 and lines and not any(line.startswith("FAIL") for line in lines),
                     f"{len(lines)} checks, {time.monotonic() - started:.0f} s" +
                     ("" if done.returncode == 0 else " | " + done.stderr[-600:]))


def check_mixed(server: Server, classes: dict, report: Report) -> None:
    """The mixed queue twice around POST /free; then the pack's own workflow alone and POST /free, after which the
    server must be back near its start (the pack's release also returns what ComfyUI freed to the OS)."""
    report.check("mixed queue: Redux Generate + ComfyUI UNETLoader/KSampler", saved_images(
        result := server.run(mixed_queue(classes))) == 2, result["error"])
    before = server.private_gib()
    server.free(free_memory=True)  # "Free model and node cache"
    print(f"  server private memory: {server.baseline_gib:.2f} GiB at start, {before:.2f} after the mixed queue, "
          f"{server.private_gib():.2f} after POST /free", flush=True)
    report.check("mixed queue again after POST /free", saved_images(result := server.run(mixed_queue(classes))) == 2,
                 result["error"])
    server.free(free_memory=True)
    start = server.private_gib()
    result = server.run(small(api_of(WORKFLOWS_DIR / "Redux image variation (FLUX dev).json", classes)))
    loaded = server.private_gib()
    server.free(free_memory=True)
    after = server.private_gib_once_below(server.baseline_gib + RESIDUAL_GIB)
    report.check("POST /free (free_memory) gives back the RAM of the pack's models",
                 saved_images(result) == 1 and after <= server.baseline_gib + RESIDUAL_GIB,
                 f"server private memory {server.baseline_gib:.2f} GiB at start, {start:.2f} before Redux image "
                 f"variation, {loaded:.2f} after it, {after:.2f} after POST /free")


def check_clip_vision(server: Server, base: Path, report: Report) -> None:
    result = server.run(clip_vision_queue())
    if report.check("ComfyUI's CLIP_VISION + STYLE_MODEL in Redux Encode", saved_images(result) == 2, result["error"]):
        images = [np.asarray(Image.open(base / "output" / result["outputs"][k]["images"][0]["filename"]),
                             dtype=np.int16) for k in ("105", "205")]
        print(f"  same image from both encoders: max difference {np.abs(images[0] - images[1]).max()} "
              "(8-bit levels)", flush=True)


def check_workflows(server: Server, classes: dict, report: Report, only: str = "") -> None:
    for path in sorted(p for p in WORKFLOWS_DIR.glob("*.json") if only in p.stem):
        mismatch = widget_mismatches(path, classes)
        if not report.check(f"{path.stem}: saved widgets match this ComfyUI's nodes", not mismatch, "; ".join(mismatch)):
            continue
        api = small(api_of(path, classes))
        kinds = {n["class_type"] for n in api.values()}
        started = time.monotonic()
        result = server.run(api)
        seconds = f"{time.monotonic() - started:.0f} s"
        if any("Remote" in k for k in kinds):  # fal as shipped: no key on this machine
            report.check(f"{path.stem}: stops at the missing API key", REMOTE_KEY_ERROR in result["error"],
                         f"{result['error'][:200]} ({seconds})")
        elif path.stem.startswith("Redux masked reference"):
            report.check(f"{path.stem}: runs as shipped (nothing painted)",
                         result["status"] == "success" and saved_images(result) >= 1,
                         f"{result['status']} {result['error']} ({seconds})")
            for node in api.values():
                if node["class_type"] == "LoadImage":
                    node["inputs"]["image"] = "painted.png"
            result = server.run(api)
            report.check(f"{path.stem}: with a painted reference", saved_images(result) >= 1,
                         f"{result['status']} {result['error']} ({time.monotonic() - started:.0f} s)")
        else:
            report.check(f"{path.stem}: runs", result["status"] == "success" and saved_images(result) >= 1,
                         f"{result['status']}, {saved_images(result)} image(s) {result['error']} ({seconds})")
        server.free(free_memory=True)


def main() -> int:
    argv = sys.argv[1:]
    flags = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("comfyui", type=Path)
    parser.add_argument("--python", default=None)
    parser.add_argument("--port", type=int, default=8390)
    parser.add_argument("--work", type=Path, default=Path("/tmp/redux_in_comfyui"))
    parser.add_argument("--parts", default="templates,memory,mixed,clipvision,workflows")
    parser.add_argument("--only", default="", help="workflows part: only the files whose name contains this")
    args = parser.parse_args(argv)
    comfy_dir = args.comfyui.resolve()
    python = args.python or str(comfy_dir / ".venv" / "bin" / "python")
    version = {}
    exec((comfy_dir / "comfyui_version.py").read_text(), version)
    print(f"ComfyUI {version.get('__version__')} at {comfy_dir}, Python {python}, flags {flags}", flush=True)
    models = args.work / "models"
    write_models(models)
    parts = args.parts.split(",")
    report = Report()
    if "memory" in parts:
        check_memory(comfy_dir, python, memory_base(comfy_dir, args.work, models), report)
    base = args.work / f"base-{version.get('__version__')}"
    install(comfy_dir, base, models)
    server = Server(comfy_dir, base, python, args.port, flags)
    try:
        classes = server_classes(server.get("/object_info"))
        if "FluxReduxGenerate" not in classes:  # ComfyUI starts without a custom node that fails to import
            raise SystemExit(f"ComfyUI did not load the pack (are its requirements.txt installed in {python}?); "
                             f"the import error is in {server.log_path}")
        if "templates" in parts:
            check_templates(server, report)
        if "mixed" in parts:
            check_mixed(server, classes, report)
        if "clipvision" in parts:
            check_clip_vision(server, base, report)
        if "workflows" in parts:
            check_workflows(server, classes, report, args.only)
    finally:
        server.stop()
    print(f"ComfyUI {version.get('__version__')}: {report.passes} passed, {report.failures} failed; "
          f"server log: {server.log_path}")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
