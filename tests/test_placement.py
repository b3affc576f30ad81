"""`auto` placement: the pure decision for common cards and file formats, and its inputs read from headers."""

import pytest
import torch
from packloader import submodule

import tiny_models as tm

placement = submodule("pipelines.placement")
weights = submodule("pipelines.weights")
models_mod = submodule("pipelines.models")
loading = submodule("pipelines.loading")
sampling = submodule("pipelines.sampling")
params = submodule("pipelines.params")
ModelCache = submodule("pipelines.cache").ModelCache

GB = 10**9
FLUX_PARAMS = 11_901_408_320  # FLUX.1 dev transformer (19 double + 38 single blocks, width 3072)
VAE_BYTES = 168 * 10**6  # 84 M parameters in bf16
FILES = {  # what each file's header says: (parameters, bytes on disk, stays quantized in memory)
    "bf16": placement.Footprint(FLUX_PARAMS, FLUX_PARAMS * 2),
    "fp8": placement.Footprint(FLUX_PARAMS, FLUX_PARAMS),
    "gguf-Q8_0": placement.Footprint(FLUX_PARAMS, 12_700_000_000, quantized=True),
    "gguf-Q4_K_S": placement.Footprint(FLUX_PARAMS, 6_800_000_000, quantized=True),
}
# free VRAM on a card of N GB: the CUDA context and the desktop take about half a gigabyte
CARDS = {6: 5.5, 8: 7.5, 12: 11.5, 16: 15.5, 24: 23.5, 48: 47.5, 80: 79.0}
EXPECTED = {  # card -> file -> (offload, weight storage)
    80: {"bf16": ("none", "default"), "fp8": ("none", "default"), "gguf-Q8_0": ("none", "default"),
         "gguf-Q4_K_S": ("none", "default")},
    48: {"bf16": ("none", "default"), "fp8": ("none", "default"), "gguf-Q8_0": ("none", "default"),
         "gguf-Q4_K_S": ("none", "default")},
    24: {"bf16": ("none", "fp8"), "fp8": ("none", "fp8"), "gguf-Q8_0": ("none", "default"),
         "gguf-Q4_K_S": ("none", "default")},
    16: {"bf16": ("none", "fp8"), "fp8": ("none", "fp8"), "gguf-Q8_0": ("group", "default"),
         "gguf-Q4_K_S": ("none", "default")},
    12: {"bf16": ("group", "default"), "fp8": ("group", "default"), "gguf-Q8_0": ("group", "default"),
         "gguf-Q4_K_S": ("none", "default")},
    8: {"bf16": ("group", "default"), "fp8": ("group", "default"), "gguf-Q8_0": ("group", "default"),
        "gguf-Q4_K_S": ("group", "default")},
    6: {"bf16": ("group", "default"), "fp8": ("group", "default"), "gguf-Q8_0": ("group", "default"),
        "gguf-Q4_K_S": ("group", "default")},
}


@pytest.mark.parametrize("file", sorted(FILES))
@pytest.mark.parametrize("card", sorted(CARDS))
def test_auto_placement_for_common_cards(card, file):
    decision = placement.decide(FILES[file], VAE_BYTES, int(CARDS[card] * GB))
    assert (decision.offload, decision.weight_storage) == EXPECTED[card][file]
    assert f"{CARDS[card]:.1f} GB free" in decision.reason and "\n" not in decision.reason


def test_tiny_card_falls_back_to_sequential():
    decision = placement.decide(FILES["bf16"], VAE_BYTES, 3 * GB)
    assert decision.offload == "sequential" and "layer by layer" in decision.reason


def test_fp8_asked_for_is_kept_and_fp32_needs_more_room():
    asked = placement.decide(FILES["bf16"], VAE_BYTES, 48 * GB, weight_storage="fp8")
    assert (asked.offload, asked.weight_storage) == ("none", "fp8") and "asked for" in asked.reason
    streamed = placement.decide(FILES["bf16"], VAE_BYTES, 8 * GB, weight_storage="fp8")
    assert (streamed.offload, streamed.weight_storage) == ("group", "fp8")
    fp32 = placement.decide(FILES["bf16"], VAE_BYTES, 47 * GB, bytes_per_param=4)
    assert (fp32.offload, fp32.weight_storage) == ("none", "fp8")  # 47.6 GB of fp32 weights do not fit


def test_auto_counts_an_fp8_file_at_its_own_size():
    """An fp8 file kept fp8 costs what the file holds (vectors in bf16), so it fits a 24 GB card unchanged, and
    asking for the compute dtype (bf16) needs room for the whole bf16 model."""
    matrices = FLUX_PARAMS - 30_000_000
    fp8_file = placement.Footprint(FLUX_PARAMS, FLUX_PARAMS + 30_000_000, matrix_params=matrices, fp8_params=matrices)
    kept = placement.decide(fp8_file, VAE_BYTES, int(23.5 * GB))
    assert (kept.offload, kept.weight_storage) == ("none", "default")
    assert "11.9 GB" in kept.reason
    wide = placement.decide(fp8_file, VAE_BYTES, int(23.5 * GB), weight_storage="compute")
    assert (wide.offload, wide.weight_storage) == ("group", "compute")


def test_footprint_reads_fp8_weights_from_the_header(models, tmp_path):
    source = tm._contiguous(models["sources"]["dev"].state_dict())
    path = tm.write_safetensors(tmp_path / "fp8.safetensors",
                                {k: v.to(torch.float8_e4m3fn) if v.ndim == 2 else v for k, v in source.items()})
    footprint = weights.transformer_footprint(path)
    matrices = sum(v.numel() for v in source.values() if v.ndim == 2)
    assert (footprint.matrix_params, footprint.fp8_params) == (matrices, matrices)
    assert footprint.memory_bytes(2) == matrices + 2 * (footprint.params - matrices)
    assert footprint.memory_bytes(2, "compute") == 2 * footprint.params


def test_no_cuda_device_means_no_offload():
    decision = placement.decide(FILES["bf16"], VAE_BYTES, None)
    assert (decision.offload, decision.weight_storage) == ("none", "default") and "no CUDA" in decision.reason


def test_footprint_is_read_from_headers(models, tmp_path):
    source = models["sources"]["dev"]
    count = sum(p.numel() for p in source.parameters())
    for path in (models["files"]["dev"], models["folders"]["flux_dev"]):
        footprint = weights.transformer_footprint(path)
        assert (footprint.params, footprint.file_bytes, footprint.blocks) == (count, count * 4, 2)
    vae_params = sum(p.numel() for p in models["sources"]["vae"].state_dict().values())
    for path in (models["files"]["vae"], models["folders"]["flux_dev"]):  # a whole repo folder: only vae/
        assert weights.component_params(path, "vae", "vae") == vae_params
    ckpt = tm.write_checkpoint(tmp_path / "aio.safetensors", tm._contiguous(source.state_dict()),
                               tm.vae_state_ldm(models["sources"]["vae"]))
    assert weights.component_params(ckpt, "vae", "vae") == vae_params  # only its vae. part
    assert weights.transformer_footprint(ckpt).params == count


def test_auto_on_cpu_is_logged_and_reported_in_info(models, caplog):
    spec = models_mod.FluxModelSpec(str(models["files"]["dev"]), str(models["files"]["vae"]),
                                    options=loading.LoadOptions(device="cpu"))
    assert spec.options.offload == "auto"
    with caplog.at_level("INFO"):
        flux = models_mod.load_flux_model(spec, ModelCache())
    assert "FLUX placement for flux1-dev.safetensors: none: no CUDA device" in caplog.text
    encoder = models_mod.load_redux_encoder(models_mod.ReduxEncoderSpec(str(models["files"]["redux"]),
                                                                        str(models["files"]["siglip"])), ModelCache())
    cond = submodule("pipelines.redux").encode(encoder, torch.rand(32, 32, 3))
    result = sampling.generate(flux, cond, params.validate_generation("dev", "custom", 256, 256,
                                                                      num_inference_steps=1, seed=1))
    assert result.metadata["placement"].startswith("none: no CUDA device")


def test_component_dtypes():
    assert loading.vae_dtype(torch.float16) == torch.float32  # FLUX's VAE overflows in fp16
    assert loading.vae_dtype(torch.bfloat16) == torch.bfloat16


def test_fp16_compute_keeps_vae_in_fp32_and_still_runs(models):
    spec = models_mod.FluxModelSpec(str(models["files"]["dev"]), str(models["files"]["vae"]),
                                    options=loading.LoadOptions(device="cpu", dtype="fp16"))
    flux = models_mod.load_flux_model(spec, ModelCache())
    assert flux.pipe.transformer.dtype == torch.float16 and flux.pipe.vae.dtype == torch.float32
    encoder = models_mod.load_redux_encoder(models_mod.ReduxEncoderSpec(str(models["files"]["redux"]),
                                                                        str(models["files"]["siglip"])), ModelCache())
    cond = submodule("pipelines.redux").encode(encoder, torch.rand(32, 32, 3))
    gen = params.validate_generation("dev", "custom", 256, 256, num_inference_steps=1, seed=1)
    for extra in ({}, {"init_image": torch.rand(64, 64, 3), "denoise": 0.5}):
        images = sampling.generate(flux, cond, gen, **extra).images
        assert images.dtype == torch.float32 and torch.isfinite(images).all()


def test_redux_projector_stays_fp32_and_t5_keeps_its_fp32_layers(models, tmp_path):
    encoder = models_mod.load_redux_encoder(models_mod.ReduxEncoderSpec(
        str(models["files"]["redux"]), str(models["files"]["siglip"]), loading.LoadOptions(dtype="bf16")),
        ModelCache())
    assert encoder.vision.dtype == torch.bfloat16 and encoder.projector.redux_up.weight.dtype == torch.float32
    files = tm.write_text_encoders(tmp_path)
    text = submodule("pipelines.text")
    encoders = text.load_text_encoders(text.TextEncoderSpec(
        str(files["clip_file"]), str(files["t5_file"]), str(files["folder"]), loading.LoadOptions(dtype="fp16")),
        ModelCache())
    t5 = encoders.pipe.text_encoder_2
    assert t5.encoder.block[0].layer[1].DenseReluDense.wo.weight.dtype == torch.float32
    assert t5.encoder.block[0].layer[1].DenseReluDense.wi_0.weight.dtype == torch.float16


@pytest.mark.parametrize("spare, expected", [(10**9, ("none", "default")), (0.6, ("none", "fp8")),
                                             (0.3, ("sequential", "default"))])
def test_auto_reads_the_files_and_the_free_vram(models, monkeypatch, spare, expected):
    """The wiring on a CUDA device: header sizes and torch's free-VRAM figure go into the decision (the tiny
    model has 2 blocks, so streaming them would need as much as the whole model: no group row here)."""
    footprint = weights.transformer_footprint(models["files"]["dev"])
    vae = weights.component_params(models["files"]["vae"], "vae", "vae") * 2
    free = placement.ACTIVATION_BYTES + vae + int(spare * footprint.params * 2)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, 80 * GB))
    spec = models_mod.FluxModelSpec(str(models["files"]["dev"]), str(models["files"]["vae"]))
    decision = models_mod.resolve_placement(spec, torch.device("cuda"), torch.bfloat16)
    assert (decision.offload, decision.weight_storage) == expected
