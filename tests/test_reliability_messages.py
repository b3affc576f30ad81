"""Misleading messages: what is missing is what the message names, for every variant choice."""

from __future__ import annotations

import shutil

import pytest

from fakes.cli_runs import no_loading, noise_png, run_cli  # noqa: F401
from packloader import submodule

weights = submodule("pipelines.weights")


def partial_models(models, tmp_path, *drop):
    root = tmp_path / "models"
    shutil.copytree(models["root"], root, ignore=shutil.ignore_patterns("diffusers", *drop))
    return root


def test_auto_without_a_transformer_lists_dev_and_schnell_places(models, tmp_path, no_loading):
    root = partial_models(models, tmp_path, "diffusion_models", "unet")
    done = run_cli("variation", noise_png(tmp_path / "r.png"), "--models-dir", root, "--out", tmp_path / "o")
    assert done.code == 2 and not no_loading
    assert "missing FLUX.1 dev or schnell weights for: transformer." in done.err
    for place in ("diffusion_models/flux1-dev.safetensors", "unet/flux1-schnell.safetensors",
                  "diffusers/FLUX.1-dev/transformer/", "diffusers/FLUX.1-schnell/transformer/"):
        assert place in done.err


@pytest.mark.parametrize("model", ["auto", "dev"])
def test_dev_transformer_without_vae_names_the_vae(models, tmp_path, no_loading, model):
    root = partial_models(models, tmp_path, "vae")
    done = run_cli("variation", noise_png(tmp_path / "r.png"), "--models-dir", root, "--model", model,
                   "--out", tmp_path / "o")
    assert done.code == 2
    assert "weights for: vae." in done.err and "transformer" not in done.error_lines[0]


def test_no_models_dir_names_the_missing_options(tmp_path, models, no_loading):
    done = run_cli("variation", noise_png(tmp_path / "r.png"), "--transformer", models["files"]["dev"],
                   "--out", tmp_path / "o")
    assert done.error_lines == ["error: no weights given for vae, redux, siglip: pass --models-dir ComfyUI/models, "
                                "or --vae FILE --redux FILE --siglip FILE"]


def test_find_weights_searches_only_the_slots_asked(tmp_path):
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "ae.safetensors").write_bytes(b"x")
    found = weights.find_weights(tmp_path, "dev", ("vae",))
    assert found.vae == tmp_path / "vae" / "ae.safetensors" and found.as_dict() == {"vae": str(found.vae)}


# -- messages that hide the rule (issue 18, class 5) ------------------------------------------------------------

from fakes.cli_runs import weights_args  # noqa: E402
from packloader import ROOT  # noqa: E402

params = submodule("pipelines.params")
loaders = submodule("nodes.local_loaders")


@pytest.mark.parametrize("strength", ["11", "-11", "10.01", "inf", "-inf", "nan", "1e309"])
def test_lora_strength_out_of_range_says_the_range(models, tmp_path, no_loading, strength):
    lora = tmp_path / "style.safetensors"
    lora.write_bytes(b"never read")
    done = run_cli("variation", noise_png(tmp_path / "r.png"), *weights_args(models), "--lora", f"{lora}:{strength}",
                   "--out", tmp_path / "o")
    assert done.code == 2 and len(done.error_lines) == 1, done.err
    line = done.error_lines[0]
    assert f"lora='{lora}:{strength}' is not allowed: the strength {strength} is outside -10 to 10" in line
    assert "with a number" not in line and not no_loading


def test_a_strength_that_is_no_number_still_says_the_range(models, tmp_path, no_loading):
    done = run_cli("variation", noise_png(tmp_path / "r.png"), *weights_args(models), "--lora",
                   f"{tmp_path / 'style.safetensors'}:strong", "--out", tmp_path / "o")
    assert done.code == 2 and "with a number in -10 to 10" in done.error_lines[0]


def test_readme_cli_table_is_the_one_params_py_gives():
    cli_docs = submodule("pipelines.cli_docs")
    readme = (ROOT / "README.md").read_text()
    assert cli_docs.readme_block(readme) == cli_docs.cli_table(), "run python -m pipelines.cli_docs and paste it"
    assert "schnell 1–50 (4)" in cli_docs.cli_table()  # the CLI runs 1-50 on schnell; 12 is fal's limit only


def test_readme_ranges_elsewhere_match_params():
    """Ranges stated in the README's prose and node tables, each rendered from its spec."""
    cli_docs = submodule("pipelines.cli_docs")
    readme = (ROOT / "README.md").read_text()
    span = cli_docs.span
    claims = [
        f"weight {span(params.REFERENCE_WEIGHT)}; 0 leaves one out",
        f"`num_images` ({span(params.NUM_IMAGES)}, one batched call)",
        f"{span(params.VARIANTS['dev'].steps)} run as set on either variant "
        f"({cli_docs.number(params.provider_steps('fal', 'schnell').maximum)} is fal's schnell limit",
        f"`max_concurrency` ({span(params.MAX_CONCURRENCY)}, default {params.MAX_CONCURRENCY.default})",
        f"dev only, sides {span(params.WAVESPEED_SIDE)}",
        f"`weight_n` (Combine), {span(params.REFERENCE_WEIGHT)}",
        f"({span(params.DOWNSAMPLE_FACTOR)}; 3 → 9×9 = 81 tokens)",
        f"strength {span(params.LORA_STRENGTH)}, default {cli_docs.number(params.LORA_STRENGTH.default)}",
    ]
    missing = [claim for claim in claims if claim not in readme]
    assert not missing, missing


def test_load_flux_model_tooltip_states_the_real_step_range():
    tooltip = loaders.FluxReduxLoadModel.INPUT_TYPES()["required"]["variant"][1]["tooltip"]
    schnell = params.VARIANTS["schnell"].steps
    assert f"{schnell.minimum}-{schnell.maximum} steps" in tooltip and "1-12" not in tooltip
