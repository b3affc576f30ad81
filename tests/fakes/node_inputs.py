"""The local nodes as a workflow runs them, on the tiny models folder: loaders, a photo, a Redux conditioning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from packloader import submodule

bridge = submodule("nodes.comfy_bridge")
loaders = submodule("nodes.local_loaders")


@pytest.fixture
def models_root(models):
    """Outside ComfyUI the loaders list this folder (ComfyUI's models/ layout)."""
    saved, bridge.MODELS_ROOT = bridge.MODELS_ROOT, models["root"]
    yield models["root"]
    bridge.MODELS_ROOT = saved


def load_encoder(**kw):
    args = dict(redux_model="flux1-redux-dev.safetensors", clip_vision="sigclip_vision_patch14_384.safetensors",
                device="cpu", dtype="auto") | kw
    return loaders.FluxReduxLoadEncoder().load(**args)[0]


def load_model(transformer="flux1-dev.safetensors", **kw):
    args = dict(transformer=transformer, vae="ae.safetensors", variant="auto", weight_dtype="default",
                offload="none", vae_tiling="auto", device="cpu") | kw
    return loaders.FluxReduxLoadModel().load(**args)[0]


def photo(h=48, w=64, batch=1):
    return torch.from_numpy(np.random.default_rng(0).random((batch, h, w, 3), dtype=np.float32))
