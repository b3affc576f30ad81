"""Load the pack the way ComfyUI does: from its folder's __init__.py under a name that is not an identifier."""

import importlib
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACK_NAME = "ComfyUI-FLUX-Redux"  # a hyphenated folder name, as users clone it


def load_pack():
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    spec = importlib.util.spec_from_file_location(PACK_NAME, ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[PACK_NAME]
        raise
    return module


pack = load_pack()


def submodule(name: str):
    """e.g. submodule('pipelines.params') -> the pack's own copy of that module."""
    return importlib.import_module(f"{PACK_NAME}.{name}")


engine = submodule("pipelines")
