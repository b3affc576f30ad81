"""Each file tensor is read once, even where several model tensors take rows of it (BFL's fused qkv and
single-block linear1). safetensors' pread backend reads the whole tensor for every get_slice, so reading
q, k, v (and the MLP rows) slice by slice read linear1 four times: a full-size fp8 FLUX load took 21.8 s
instead of 14.4 s on 2 cores (benchmarks/load_memory.py)."""

from collections import Counter

import torch
from packloader import submodule

import tiny_models as tm

loading = submodule("pipelines.loading")
streaming = submodule("pipelines.streaming")


class CountingHandle:
    """A safe_open handle that counts the reads of each tensor."""

    def __init__(self, handle, reads: Counter):
        self.handle, self.reads = handle, reads

    def get_tensor(self, name):
        self.reads[name] += 1
        return self.handle.get_tensor(name)

    def get_slice(self, name):
        self.reads[name] += 1
        return self.handle.get_slice(name)

    def __getattr__(self, attr):
        return getattr(self.handle, attr)


def test_fused_bfl_tensors_are_read_once_and_land_exactly(tmp_path, monkeypatch):
    state = tm.bfl_transformer_state(True, dtype=torch.float32)
    path = tm.write_safetensors(tmp_path / "flux1-dev.safetensors", state)
    reads, enter = Counter(), streaming.WeightFile.__enter__

    def counting_enter(self):
        enter(self)
        self._file = CountingHandle(self._file, reads)
        return self

    monkeypatch.setattr(streaming.WeightFile, "__enter__", counting_enter)
    model, _ = loading.load_transformer(path, torch.float32)
    fused = ["double_blocks.0.img_attn.qkv.weight", "double_blocks.0.txt_attn.qkv.bias", "single_blocks.0.linear1.weight"]
    assert all(reads[k] == 1 for k in fused), {k: reads[k] for k in fused}
    assert max(reads.values()) == 1
    w = 3072
    params = model.state_dict()
    qkv = state["double_blocks.0.img_attn.qkv.weight"]
    for i, name in enumerate(("to_q", "to_k", "to_v")):
        torch.testing.assert_close(params[f"transformer_blocks.0.attn.{name}.weight"], qkv[i * w:(i + 1) * w], rtol=0, atol=0)
    linear1 = state["single_blocks.0.linear1.weight"]
    torch.testing.assert_close(params["single_transformer_blocks.0.proj_mlp.weight"], linear1[3 * w:], rtol=0, atol=0)
