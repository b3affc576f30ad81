"""Run the pack inside a real ComfyUI: its workflows, a queue that mixes Redux Generate with ComfyUI's own
loaders + KSampler, POST /free between runs. Not part of the pytest suite (it needs a ComfyUI checkout):

    python tests/run_in_comfyui.py COMFYUI_DIR COMFYUI_PYTHON WORK_DIR PORT [ComfyUI flags, e.g. --lowvram]

PARTS=mixed or PARTS=workflows runs one of the two parts (default both).

COMFYUI_DIR is copied to WORK_DIR/ComfyUI (without .venv) with this pack in custom_nodes/ComfyUI-FLUX-Redux and
random-weight models in models/: the tiny ones of tiny_models.py, plus files ComfyUI's own loaders accept (their
FLUX geometry is hard-coded): a FLUX.1-dev transformer at full width with 1 double + 1 single block, a FLUX VAE
at full size, a Redux projector with 4096-wide output, a one-layer LoRA. Everything runs with --cpu.
Prints one line per check and exits non-zero when one fails.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import graph_runner as gr  # noqa: E402
import tiny_models as tm  # noqa: E402

PACK = HERE.parent
FLUX_FILE, VAE_FILE, REDUX_FILE, LORA_FILE = ("flux1-dev-comfy.safetensors", "ae-comfy.safetensors",
                                              "flux1-redux-4096.safetensors", "your_flux_lora.safetensors")
SIGLIP_FILE, REDUX_FULL_FILE = "siglip-so400m-random.safetensors", "flux1-redux-dev-random.safetensors"
SIZE, STEPS = 256, 1
COMFY_MODEL_WORKFLOWS = ("Redux restyle with the ComfyUI sampler and a LoRA.json", "Redux with ComfyUI Load CLIP Vision.json")  # 4096 wide
AS_SHIPPED_ERRORS = {"Redux masked reference (paint the part to keep).json": "is empty"}  # nothing painted in the Mask Editor yet: by design


def write_models(models: Path) -> None:
    if (models / "diffusion_models" / FLUX_FILE).exists():
        return
    tm.build_models_dir(models.parent)  # tiny files under models/
    tm.write_safetensors(models / "diffusion_models" / FLUX_FILE,
                         tm.bfl_transformer_state(guidance=True, in_channels=64, joint=4096, pooled=768))
    from diffusers import AutoencoderKL

    torch.manual_seed(5)
    vae = AutoencoderKL(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
                        up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=2, latent_channels=16,
                        use_quant_conv=False, use_post_quant_conv=False, scaling_factor=0.3611, shift_factor=0.1159)
    tm.write_safetensors(models / "vae" / VAE_FILE, tm.vae_state_ldm(vae))
    tm.write_safetensors(models / "style_models" / REDUX_FILE, tm._contiguous(tm.make_redux(txt_width=4096).state_dict()))
    tm.write_safetensors(models / "loras" / LORA_FILE, {
        "diffusion_model.img_in.lora_up.weight": torch.randn(3072, 4) * 0.01,
        "diffusion_model.img_in.lora_down.weight": torch.randn(4, 64) * 0.01})


def write_full_size_encoder(models: Path) -> None:
    """SigLIP so400m and the Redux projector at their real sizes (random, fp16): the only ones ComfyUI's
    Load CLIP Vision and Load Style Model accept."""
    if (models / "clip_vision" / SIGLIP_FILE).exists():
        return
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(6)
    config = SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                                image_size=384, patch_size=14)
    siglip = SiglipVisionModel(config).half()
    tm.write_safetensors(models / "clip_vision" / SIGLIP_FILE, tm.siglip_state_comfy(siglip))
    redux = tm.make_redux(txt_width=4096, redux_dim=1152).half()
    tm.write_safetensors(models / "style_models" / REDUX_FULL_FILE, tm._contiguous(redux.state_dict()))


def clip_vision_queue() -> dict:
    """The same reference encoded by ComfyUI's CLIP_VISION + STYLE_MODEL and by the pack's own encoder from the same
    files, each generating with the same seed: the two saved images must match."""
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


def install(comfy_src: Path, work: Path) -> Path:
    root = work / "ComfyUI"
    if not root.exists():
        shutil.copytree(comfy_src, root, ignore=shutil.ignore_patterns(".venv", ".git"))
    pack = root / "custom_nodes" / "ComfyUI-FLUX-Redux"
    shutil.rmtree(pack, ignore_errors=True)
    shutil.copytree(PACK, pack, ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.pyc"))
    write_models(root / "models")
    (root / "input").mkdir(exist_ok=True)
    pixels = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / "input" / "example.png")
    return root


class Server:
    def __init__(self, root: Path, python: str, port: int, flags: list[str]):
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(root / "server.log", "w")
        self.process = subprocess.Popen([python, "main.py", "--cpu", "--port", str(port), "--disable-auto-launch",
                                         *flags], cwd=root, stdout=self.log, stderr=subprocess.STDOUT)
        for _ in range(600):
            try:
                self.get("/system_stats")
                return
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"ComfyUI exited; see {root / 'server.log'}")
                time.sleep(0.5)
        raise RuntimeError("ComfyUI did not start")

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as reply:
            return json.loads(reply.read())

    def post(self, path: str, body: dict):
        request = urllib.request.Request(self.url + path, json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as reply:
                text = reply.read()
        except urllib.error.HTTPError as exc:
            return {"http_error": exc.code, "body": json.loads(exc.read() or b"{}")}
        return json.loads(text) if text else {}

    def run(self, api: dict, timeout: float = 1200) -> dict:
        queued = self.post("/prompt", {"prompt": api})
        if "prompt_id" not in queued:
            return {"status": "rejected", "detail": queued}
        started = time.time()
        while time.time() - started < timeout:
            history = self.get(f"/history/{queued['prompt_id']}")
            if queued["prompt_id"] in history:
                entry = history[queued["prompt_id"]]
                status = entry.get("status", {})
                errors = [m for m in status.get("messages", []) if m[0] == "execution_error"]
                return {"status": status.get("status_str"), "outputs": entry.get("outputs", {}),
                        "error": errors[0][1].get("exception_message", "") if errors else ""}
            time.sleep(1)
        return {"status": "timeout"}

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)
        self.log.close()


def api_of(name: str) -> dict:
    gr.MODEL_FILES = {"diffusion_models": [FLUX_FILE], "loras": [LORA_FILE], "vae": [VAE_FILE, "ae.safetensors"],
                      "clip_vision": [SIGLIP_FILE, "sigclip_vision_patch14_384.safetensors"],
                      "style_models": [REDUX_FULL_FILE, "flux1-redux-dev.safetensors"]}
    classes = {**packloader.pack.NODE_CLASS_MAPPINGS, **gr.BUILTINS}
    return gr.to_api(json.loads((PACK / "example_workflows" / name).read_text()), classes)


def small(api: dict, comfy_models: bool) -> dict:
    """Cheaper settings: SIZE x SIZE, STEPS steps; comfy_models: the files ComfyUI's loaders accept."""
    api = copy.deepcopy(api)
    for node in api.values():
        kind, inputs = node["class_type"], node["inputs"]
        if kind.startswith("FluxReduxGenerate"):
            inputs.update(image_size="custom", width=SIZE, height=SIZE, num_inference_steps=STEPS)
        elif kind == "FluxReduxLoadModel" and comfy_models:
            inputs.update(transformer=FLUX_FILE, vae=VAE_FILE)
        elif kind == "FluxReduxLoadEncoder" and comfy_models:
            inputs.update(redux_model=REDUX_FILE)
        elif kind == "EmptySD3LatentImage":
            inputs.update(width=SIZE, height=SIZE)
        elif kind == "KSampler":
            inputs.update(steps=STEPS)
        elif kind == "UNETLoader":
            inputs.update(unet_name=FLUX_FILE)
        elif kind == "VAELoader":
            inputs.update(vae_name=VAE_FILE)
        elif kind == "CLIPVisionLoader":
            inputs.update(clip_name=SIGLIP_FILE)
        elif kind == "StyleModelLoader":
            inputs.update(style_model_name=REDUX_FULL_FILE)
    return api


def mixed_queue() -> dict:
    """Redux Generate (the pack's FLUX) and ComfyUI's UNETLoader + LoRA + KSampler in one prompt."""
    sampler = small(api_of("Redux restyle with the ComfyUI sampler and a LoRA.json"), True)
    generate = small(api_of("Redux image variation (FLUX dev).json"), True)
    offset = 100
    renamed = {}
    for key, node in generate.items():
        node = copy.deepcopy(node)
        for name, value in node["inputs"].items():
            if isinstance(value, list):
                node["inputs"][name] = [str(int(value[0]) + offset), value[1]]
        renamed[str(int(key) + offset)] = node
    return {**sampler, **renamed}


def main() -> int:
    comfy_src, python, work, port, *flags = sys.argv[1:]
    root = install(Path(comfy_src), Path(work))
    write_full_size_encoder(root / "models")
    server = Server(root, python, int(port), flags)
    failures = 0

    def check(label: str, result: dict, expect_error: str | None = None) -> None:
        nonlocal failures
        ok = (result["status"] == "success") if expect_error is None else expect_error in result.get("error", "")
        failures += not ok
        detail = result.get("error") or result.get("detail") or ""
        print(f"{'PASS' if ok else 'FAIL'} {label}: {result['status']} {str(detail)[:300]}", flush=True)

    parts = os.environ.get("PARTS", "mixed,workflows").split(",")  # which checks to run
    try:
        if "mixed" in parts:
            check("mixed queue: Redux Generate + ComfyUI UNETLoader/LoRA/KSampler", server.run(mixed_queue()))
            print("  /free ->", server.post("/free", {"unload_models": True, "free_memory": True}), flush=True)
            check("mixed queue again after /free", server.run(mixed_queue()))
        if "clipvision" in parts:
            result = server.run(clip_vision_queue())
            check("ComfyUI's CLIP_VISION + STYLE_MODEL in Redux Encode", result)
            if result["status"] == "success":
                images = [np.asarray(Image.open(root / "output" / result["outputs"][k]["images"][0]["filename"]),
                                     dtype=np.int16) for k in ("105", "205")]
                print(f"  same image from both encoders: max difference {np.abs(images[0] - images[1]).max()} "
                      "(8-bit levels)", flush=True)
        for path in sorted((PACK / "example_workflows").glob("*.json")) if "workflows" in parts else []:
            api = small(api_of(path.name), path.name in COMFY_MODEL_WORKFLOWS)
            kinds = {n["class_type"] for n in api.values()}
            if "DualCLIPLoader" in kinds:
                print(f"SKIP {path.name}: needs T5-XXL + CLIP-L files that ComfyUI's DualCLIPLoader accepts", flush=True)
                continue
            remote = any("Remote" in k for k in kinds)
            check(path.name, server.run(api), expect_error="key" if remote else AS_SHIPPED_ERRORS.get(path.name))
            server.post("/free", {"unload_models": True, "free_memory": False})
    finally:
        server.stop()
    print(f"{failures} failure(s); server log: {root / 'server.log'}")
    return 1 if failures else 0


import packloader  # noqa: E402  (after sys.path is set)

if __name__ == "__main__":
    sys.exit(main())
