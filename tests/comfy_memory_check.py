"""The pack's models in a real ComfyUI's memory manager, run inside ComfyUI's own Python (not a pytest file; run by
tests/run_in_comfyui.py, or by hand):

    COMFYUI/.venv/bin/python tests/comfy_memory_check.py COMFYUI_DIR BASE_DIR [--dynamic]

BASE_DIR is a ComfyUI base directory (--base-directory) holding custom_nodes/<pack> and models/ with the tiny
models of tiny_models.py and the full-size FLUX VAE the runner writes (VAE_FILE). ComfyUI loads the pack from
custom_nodes/ with its own loader (nodes.init_extra_nodes), so nothing here stands in for ComfyUI.

Checked, with ComfyUI's own VAELoader model loaded beside the pack's: the pack's models enter
comfy.model_management.current_loaded_models through load_models_gpu as plain (non-dynamic) ModelPatchers;
ComfyUI's memory functions that walk every entry (free_memory, the pin eviction of 0.33, cleanup_models_gc) run
over them; unload_all_models (what POST /free and "Unload models" call) unloads them and the next run moves them
back from RAM without reading a file, with the same image; the Unload node drops them from ComfyUI's list and
frees their modules, leaving ComfyUI's own model alone; dropping the loaders' outputs, as ComfyUI's node cache
does on "Free model and node cache", frees them too.

--dynamic (ComfyUI 0.33): ComfyUI's DynamicVRAM switch as main.py throws it once comfy-aimdo found a GPU
(comfy_aimdo.control.init(), CoreModelPatcher = ModelPatcherDynamic, memory_management.aimdo_enabled = True). The
GPU part cannot run on a CPU (aimdo's VRAM buffers need one; ModelPatcherDynamic itself hands a CPU load device
to the plain ModelPatcher), so this checks what the switch changes around the pack on the CPU: ComfyUI's own
models now come from CoreModelPatcher and the pack's stay non-dynamic, and a real ModelPatcherDynamic for a GPU
device built over the pack's modules finds none of ComfyUI's streamable layers in them (see
nodes/comfy_memory.py for why the pack keeps the plain ModelPatcher). Prints PASS/FAIL lines; exit 1 on a FAIL.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import weakref

FAILURES: list[str] = []
VAE_FILE = "ae-comfy.safetensors"


def check(label: str, ok: bool, detail: str = "") -> None:
    print(f"{'PASS' if ok else 'FAIL'} {label}{': ' + detail if detail else ''}", flush=True)
    if not ok:
        FAILURES.append(label)


def start_comfyui(comfy_dir: str, base_dir: str, dynamic: bool):
    """Import ComfyUI as main.py does (arguments parsed, --cpu), then load the custom nodes with its own code."""
    sys.path.insert(0, comfy_dir)
    os.chdir(comfy_dir)
    sys.argv = ["main.py", "--cpu", "--base-directory", base_dir]
    import comfy.options

    comfy.options.enable_args_parsing()
    if dynamic:
        import comfy_aimdo.control

        check("comfy-aimdo initialises on this machine", bool(comfy_aimdo.control.init()))
    import comfy.model_management as mm
    import comfy.model_patcher as mp
    import folder_paths
    import nodes

    if dynamic:
        import comfy.memory_management

        mp.CoreModelPatcher = mp.ModelPatcherDynamic  # what main.py does once aimdo found its devices
        comfy.memory_management.aimdo_enabled = True
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    check("models folder is the base directory's", folder_paths.get_folder_paths("vae")[0].startswith(base_dir))
    return mm, mp, nodes


def is_dynamic(patcher) -> bool:
    return getattr(patcher, "is_dynamic", lambda: False)()  # 0.8 has no dynamic patchers and no is_dynamic()


def pack_entries(mm) -> list:
    return [m for m in mm.current_loaded_models if type(m.model.model).__name__ == "ManagedModules"]


def main() -> int:
    comfy_dir, base_dir, *flags = sys.argv[1:]
    dynamic = "--dynamic" in flags
    mm, mp, nodes = start_comfyui(os.path.abspath(comfy_dir), os.path.abspath(base_dir), dynamic)
    import torch

    classes = nodes.NODE_CLASS_MAPPINGS
    missing = {"FluxReduxLoadEncoder", "FluxReduxGenerate", "FluxReduxUnload"} - set(classes)
    check("ComfyUI loaded the pack from custom_nodes/", not missing, f"missing {sorted(missing)}" if missing else "")
    if missing:
        return 1
    pack = sys.modules[classes["FluxReduxGenerate"].__module__.rsplit(".nodes.", 1)[0]]
    cache = sys.modules[pack.__name__ + ".pipelines.cache"].CACHE

    # ComfyUI's own model, through ComfyUI's own loader node and patcher
    (vae,) = classes["VAELoader"]().load_vae(VAE_FILE)
    mm.load_models_gpu([vae.patcher])
    core = getattr(mp, "CoreModelPatcher", mp.ModelPatcher)  # 0.8 has only ModelPatcher
    check("ComfyUI's own VAE is managed", any(m.model is vae.patcher for m in mm.current_loaded_models),
          f"CoreModelPatcher is {core.__name__}, the VAE's patcher a {type(vae.patcher).__name__}")

    outputs: dict = {}  # the loaders' outputs, kept between runs as ComfyUI's node cache keeps them

    def run():
        with torch.inference_mode():  # as ComfyUI's executor runs nodes
            if not outputs:
                (outputs["encoder"],) = classes["FluxReduxLoadEncoder"]().load(
                    "flux1-redux-dev.safetensors", "sigclip_vision_patch14_384.safetensors", "auto", "auto")
                (outputs["model"],) = classes["FluxReduxLoadModel"]().load(
                    "flux1-dev.safetensors", "ae.safetensors", "auto", "default", "none", "auto", "auto")
            image = torch.rand(1, 96, 128, 3, generator=torch.Generator().manual_seed(0))
            (cond,) = classes["FluxReduxEncode"]().encode(image, "center", redux_encoder=outputs["encoder"])
            images, _ = classes["FluxReduxGenerate"]().generate(outputs["model"], cond, "custom", 256, 256, 1, 3.5,
                                                                7, 1)
        return images

    first = run()
    entries = pack_entries(mm)
    check("the pack's encoder and FLUX model are in ComfyUI's loaded models", len(entries) == 2,
          f"{len(entries)} entries: {[type(m.model).__name__ for m in entries]}")
    check("they are plain ModelPatchers, not dynamic, whatever CoreModelPatcher is",
          all(type(m.model) is mp.ModelPatcher and not is_dynamic(m.model) for m in entries))
    check("their weights are where ComfyUI put them", all(
        m.model.loaded_size() == m.model.model_size() and m.model.current_loaded_device() == m.device
        for m in entries), str([(m.model.loaded_size(), m.model.model_size()) for m in entries]))

    # ComfyUI's functions that walk every entry, over the mixed list
    walked = []
    for name, call in [("cleanup_models_gc", lambda: mm.cleanup_models_gc()),
                       ("free_memory(0, cpu)", lambda: mm.free_memory(0, torch.device("cpu"))),
                       ("free_memory(0, cpu, for_dynamic=True)",
                        lambda: mm.free_memory(0, torch.device("cpu"), for_dynamic=True)),
                       ("free_pins(1 TiB)", lambda: mm.free_pins(2**40)),
                       ("ensure_pin_budget(0)", lambda: mm.ensure_pin_budget(0))]:
        base = name.split("(")[0]
        if not hasattr(mm, base) or ("for_dynamic" in name and not hasattr(mm, "free_pins")):
            continue  # 0.8 has neither pins nor dynamic models
        try:
            call()
            walked.append(name)
        except Exception as exc:  # noqa: BLE001 - reported as a failure
            check(f"ComfyUI's {name} over the pack's entries", False, repr(exc))
    check("ComfyUI's memory functions walk the pack's entries", len(pack_entries(mm)) == 2, ", ".join(walked))

    loads = cache.loads
    mm.unload_all_models()  # POST /free {"unload_models": true} and the "Unload models" button
    check("unload_all_models unloads the pack's models and ComfyUI's", not pack_entries(mm) and not any(
        m.model is vae.patcher for m in mm.current_loaded_models))
    again = run()
    check("the next run loads them back without reading a file", cache.loads == loads and len(pack_entries(mm)) == 2,
          f"engine loads {loads} -> {cache.loads}")
    check("and makes the same image", torch.equal(first, again))

    mm.load_models_gpu([vae.patcher])
    modules = [weakref.ref(m.model.model) for m in pack_entries(mm)]
    with torch.inference_mode():
        classes["FluxReduxUnload"]().unload()
    gc.collect()
    mm.cleanup_models_gc()
    mm.cleanup_models()
    check("the Unload node frees the pack's modules and ComfyUI drops their entries",
          all(ref() is None for ref in modules) and not pack_entries(mm) and len(cache) == 0,
          f"{sum(ref() is not None for ref in modules)} module(s) alive, {len(pack_entries(mm))} entries")
    check("ComfyUI's own model stays loaded", any(m.model is vae.patcher for m in mm.current_loaded_models))
    check("a run after Unload reads the files again, same image",
          torch.equal(first, run()) and cache.loads == loads + 2, f"engine loads {cache.loads}")

    modules = [weakref.ref(m.model.model) for m in pack_entries(mm)]
    outputs.clear()  # ComfyUI drops the loader outputs: "Free model and node cache", another workflow
    gc.collect()
    wait_for_release()
    mm.cleanup_models_gc()
    mm.cleanup_models()
    check("once ComfyUI drops the loader outputs, the pack's models leave RAM and ComfyUI's list",
          all(ref() is None for ref in modules) and not pack_entries(mm) and len(cache) == 0,
          f"{sum(ref() is not None for ref in modules)} module(s) alive, {len(cache)} cached")
    check("and a new loader output loads them again, same image", torch.equal(first, run()) and
          cache.loads == loads + 4, f"engine loads {cache.loads}")

    check_gpu_patcher_kind(mm, mp, sys.modules[pack.__name__ + ".nodes.comfy_memory"], torch)
    if dynamic:
        check_dynamic_patcher(mm, mp, pack_entries(mm), torch)
    print(f"{len(FAILURES)} failure(s)")
    return 1 if FAILURES else 0


def wait_for_release(timeout: float = 60) -> None:
    """The pack frees a dropped model from a thread of its own (nodes/comfy_memory.py): wait for it."""
    import threading
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(t.name == "flux-redux-release" for t in threading.enumerate()):
        time.sleep(0.05)
    gc.collect()


def check_gpu_patcher_kind(mm, mp, memory, torch) -> None:
    """The patcher the pack would give a model bound for a GPU (built here without touching one): on a CPU every
    patcher is a plain one (ModelPatcherDynamic hands CPU load devices to ModelPatcher), so only a GPU device shows
    which kind the pack picks once DynamicVRAM is on."""
    class Probe:  # the two methods the pack's patcher reads from a cached model
        def modules(self):
            return {"linear": torch.nn.Linear(4, 4)}

        def memory_bytes(self):
            return 80

    patcher = memory._patcher(Probe(), torch.device("cuda", 0))
    check("for a GPU the pack's patcher is a plain ModelPatcher",
          type(patcher) is mp.ModelPatcher and not is_dynamic(patcher), type(patcher).__name__)


def check_dynamic_patcher(mm, mp, entries, torch) -> None:
    """A real ModelPatcherDynamic for a GPU device over the pack's modules (built on the CPU: its constructor needs
    no GPU): which of them would it stream? Only ComfyUI's own layer types (comfy.ops, `comfy_cast_weights`); every
    other weight its load() copies whole to the GPU and keeps the RAM copy beside it."""
    modules = entries[-1].model.model
    dynamic = mp.ModelPatcherDynamic(modules, torch.device("cuda", 0), torch.device("cpu"))
    check("ModelPatcherDynamic can be built for a GPU device on this CPU", dynamic.is_dynamic())
    streamable = [n for n, m in modules.named_modules() if hasattr(m, "comfy_cast_weights")]
    weights = sum(1 for _ in modules.parameters())
    check("none of the pack's modules is a layer DynamicVRAM can stream", not streamable,
          f"{len(streamable)} streamable of {weights} weight tensors")
    del dynamic


if __name__ == "__main__":
    sys.exit(main())
