"""One bad file never kills a batch: every input is checked before any model loads, bad ones are skipped
with a summary (or stop the run with --fail-fast), and the exit status says whether anything was skipped."""

from __future__ import annotations

import os

import pytest

from fakes.cli_runs import FAST, bomb_png, no_loading, noise_png, run_cli, truncated_png, weights_args  # noqa: F401
from packloader import submodule

checks = submodule("pipelines.cli_checks")

BAD_FILES = {  # name -> (how to make it, words of the reason)
    "corrupt.jpg": (lambda p: p.write_bytes(b"this is not a JPEG"), "not a readable image"),
    "empty.png": (lambda p: p.write_bytes(b""), "empty file"),
    "truncated.png": (truncated_png, "not a readable image"),
    "bomb.png": (bomb_png, "too many pixels"),
    "folder.png": (lambda p: p.mkdir(), None),  # a folder named like an image is not an input
}


@pytest.fixture
def mixed_folder(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    noise_png(folder / "good.png")
    for name, (make, _) in BAD_FILES.items():
        make(folder / name)
    (folder / "._good.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS resource fork
    return folder


@pytest.mark.parametrize("name", [n for n, (_, why) in BAD_FILES.items() if why])
def test_each_bad_file_gets_a_reason(mixed_folder, name):
    assert BAD_FILES[name][1] in checks.image_problem(mixed_folder / name)


def test_unreadable_file_says_permission(mixed_folder, monkeypatch):
    target = mixed_folder / "good.png"
    os.chmod(target, 0)
    try:
        if os.geteuid() == 0:  # root reads anything: make open() fail the way it does for other users
            real_open = checks.files.open_regular
            monkeypatch.setattr(checks.files, "open_regular", lambda p: (_ for _ in ()).throw(
                PermissionError(13, "Permission denied", str(p))) if p == target else real_open(p))
        assert "permission denied" in checks.image_problem(target)
    finally:
        os.chmod(target, 0o644)


def test_bad_files_are_skipped_with_a_summary_and_exit_1(models, mixed_folder, tmp_path):
    done = run_cli("variation", mixed_folder, *weights_args(models), *FAST, "--out", tmp_path / "out")
    assert done.code == 1, done.err
    assert "wrote 1 image(s)" in done.out and [p.name for p in (tmp_path / "out").iterdir()] == ["good_seed5_0.png"]
    assert "skipped 4 input(s):" in done.err
    for name in ("corrupt.jpg", "empty.png", "truncated.png", "bomb.png"):
        assert f"{mixed_folder / name}: " in done.err
    assert "._good.png" not in done.err and "Traceback" not in done.err


def test_fail_fast_stops_before_loading(models, mixed_folder, tmp_path, no_loading):
    done = run_cli("variation", mixed_folder, *weights_args(models), *FAST, "--fail-fast", "--out", tmp_path / "o")
    assert done.code == 2 and len(done.error_lines) == 1
    assert f"input {mixed_folder / 'bomb.png'}: too many pixels" in done.err  # the first bad one, sorted
    assert not no_loading and not (tmp_path / "o").exists()


def test_no_usable_input_stops_before_loading(models, mixed_folder, tmp_path, no_loading):
    (mixed_folder / "good.png").unlink()
    done = run_cli("variation", mixed_folder, *weights_args(models), *FAST, "--out", tmp_path / "o")
    assert done.code == 2 and done.error_lines[0].startswith(f"error: no usable input image in {mixed_folder}")
    assert not no_loading


@pytest.mark.parametrize("option", ["--ref", "--mask", "--init-image"])
def test_bad_shared_image_stops_before_loading(models, mixed_folder, tmp_path, no_loading, option):
    bad = mixed_folder / "truncated.png"
    done = run_cli("variation", mixed_folder / "good.png", *weights_args(models), *FAST, option, bad,
                   "--out", tmp_path / "o")
    assert done.code == 2 and len(done.error_lines) == 1
    assert f"{option} {bad}: not a readable image" in done.err and not no_loading


def test_missing_input_is_one_line(models, tmp_path, no_loading):
    done = run_cli("variation", tmp_path / "nope.png", *weights_args(models), "--out", tmp_path / "o")
    assert done.code == 2
    assert done.error_lines == [f"error: input {tmp_path / 'nope.png'} does not exist (expected an image file or "
                                "a folder of images)"]


def test_folder_without_images_says_what_it_looked_for(models, tmp_path, no_loading):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no image")
    done = run_cli("variation", tmp_path / "empty", *weights_args(models), "--out", tmp_path / "o")
    assert done.code == 2 and len(done.error_lines) == 1
    assert f"no usable input image in {tmp_path / 'empty'} (no .bmp, .gif, .jpeg, .jpg, .png" in done.err


# -- files that cannot be read without blocking (issue 18, class 1) -------------------------------------------
# A FIFO blocks open() until a writer comes, so every case runs under `within`: a hang fails the test.

from fakes.hostile_files import HOSTILE, fifo, within  # noqa: E402

weights = submodule("pipelines.weights")
HANG_S = 30  # far beyond what a header scan of tiny files takes, even on a loaded machine


def scan_models(models, root, bad_folder=None, kind=None):
    """A models/ folder whose only transformer has an unusual name (so the header scan runs), with a hostile
    entry named like a weight file that sorts before it."""
    for sub, name, key in (("style_models", "flux1-redux-dev.safetensors", "redux"), ("vae", "ae.safetensors", "vae"),
                           ("clip_vision", "sigclip_vision_patch14_384.safetensors", "siglip")):
        (root / sub).mkdir(parents=True)
        (root / sub / name).symlink_to(models["files"][key])
    for sub in ("diffusion_models", "unet", "checkpoints"):
        (root / sub).mkdir()
    (root / "unet" / "zz-my-dev.safetensors").symlink_to(models["files"]["dev"])
    bad = None
    if kind:
        bad = HOSTILE[kind][0](root / bad_folder / "aa-flux.safetensors")
    return root, bad


@pytest.mark.parametrize("folder", ["diffusion_models", "unet", "checkpoints"])
@pytest.mark.parametrize("kind", list(HOSTILE))
def test_header_scan_skips_what_is_not_a_regular_file_and_names_it(models, tmp_path, caplog, folder, kind):
    root, bad = scan_models(models, tmp_path / "models", folder, kind)
    found = within(HANG_S, weights.find_weights, root, "dev")
    assert found.transformer == root / "unet" / "zz-my-dev.safetensors"
    lines = [r.getMessage() for r in caplog.records if str(bad) in r.getMessage()]
    assert len(lines) == 1 and HOSTILE[kind][1] in lines[0], lines


@pytest.mark.parametrize("kind", ["fifo", "link to fifo"])
def test_cli_with_a_fifo_in_the_models_folder_runs_to_the_end(models, tmp_path, caplog, kind):
    root, bad = scan_models(models, tmp_path / "models", "diffusion_models", kind)
    done = within(120, run_cli, "variation", noise_png(tmp_path / "r.png"), "--models-dir", root, *FAST,
                  "--out", tmp_path / "out")
    assert done.code == 0, done.err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["r_seed5_0.png"]
    assert any(str(bad) in r.getMessage() and "FIFO" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("slot", ["transformer", "vae", "redux", "siglip"])
@pytest.mark.parametrize("kind", ["fifo", "socket", "link to fifo", "link to device"])
def test_a_fifo_given_as_a_weight_file_is_one_line(models, tmp_path, no_loading, slot, kind):
    bad = HOSTILE[kind][0](tmp_path / f"{slot}.safetensors")
    args = weights_args(models)
    args[args.index(f"--{slot}") + 1] = bad
    done = within(HANG_S, run_cli, "variation", noise_png(tmp_path / "r.png"), *args, "--out", tmp_path / "o")
    assert done.code == 2 and len(done.error_lines) == 1, done.err
    assert f"{bad}: {HOSTILE[kind][1]}" in done.error_lines[0] and not no_loading


def test_diffusers_folder_with_a_fifo_for_its_weights(models, tmp_path, no_loading):
    folder = tmp_path / "vae"
    folder.mkdir()
    (folder / "config.json").write_bytes((models["folders"]["flux_dev"] / "vae" / "config.json").read_bytes())
    bad = fifo(folder / "diffusion_pytorch_model.safetensors")
    args = weights_args(models)
    args[args.index("--vae") + 1] = folder
    done = within(HANG_S, run_cli, "variation", noise_png(tmp_path / "r.png"), *args, "--out", tmp_path / "o")
    assert done.code == 2 and f"{bad}: a FIFO (named pipe), not a regular file" in done.error_lines[0]
    assert not no_loading


@pytest.mark.parametrize("kind", ["fifo", "socket", "link to fifo", "link to device"])
def test_input_folder_with_a_fifo_skips_it_by_name(models, tmp_path, kind):
    folder = tmp_path / "in"
    folder.mkdir()
    noise_png(folder / "good.png")
    bad = HOSTILE[kind][0](folder / "bad.png")
    done = within(120, run_cli, "variation", folder, *weights_args(models), *FAST, "--out", tmp_path / "out")
    assert done.code == 1, done.err
    assert f"{bad}: {HOSTILE[kind][1]}" in done.err and "skipped 1 input(s)" in done.err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["good_seed5_0.png"]


@pytest.mark.parametrize("option", ["--ref", "--mask", "--init-image"])
def test_a_fifo_as_a_shared_image_is_one_line(models, tmp_path, no_loading, option):
    bad = fifo(tmp_path / "shared.png")
    done = within(HANG_S, run_cli, "variation", noise_png(tmp_path / "r.png"), *weights_args(models), option, bad,
                  "--out", tmp_path / "o")
    assert done.code == 2 and done.error_lines == [f"error: {option} {bad}: a FIFO (named pipe), not a regular file"]
    assert not no_loading


def test_a_fifo_as_the_only_input_says_what_it_is(models, tmp_path, no_loading):
    bad = fifo(tmp_path / "only.png")
    done = within(HANG_S, run_cli, "variation", bad, *weights_args(models), "--out", tmp_path / "o")
    assert done.code == 2 and "(only.png: a FIFO (named pipe), not a regular file)" in done.error_lines[0]


def test_a_fifo_as_a_lora_is_one_line(models, tmp_path, no_loading):
    bad = fifo(tmp_path / "style.safetensors")
    done = within(HANG_S, run_cli, "variation", noise_png(tmp_path / "r.png"), *weights_args(models),
                  "--lora", f"{bad}:0.5", "--out", tmp_path / "o")
    assert done.code == 2 and f"{bad}: a FIFO (named pipe), not a regular file" in done.error_lines[0]
    assert not no_loading


def test_node_loaders_refuse_a_fifo_without_waiting(tmp_path):
    loaders = submodule("nodes.local_loaders")
    bad = fifo(tmp_path / "ae.safetensors")
    with pytest.raises(weights.WeightsError, match="a FIFO \\(named pipe\\), not a regular file"):
        within(HANG_S, loaders.check_file, str(bad), "vae")


def test_a_fifo_as_the_remote_key_file_is_named(tmp_path):
    keys = submodule("pipelines.remote.keys")
    bad = fifo(tmp_path / "redux_api_keys.json")
    with pytest.raises(keys.MissingKeyError, match="a FIFO \\(named pipe\\), not a regular file"):
        within(HANG_S, keys._read_key_file, bad)


def test_a_file_swapped_for_a_fifo_after_the_stat_still_cannot_block(tmp_path, monkeypatch):
    """The open itself is non-blocking: even when the stat said "regular file", a FIFO is refused at once."""
    files = submodule("pipelines.files")
    bad = fifo(tmp_path / "x.safetensors")
    real_stat = files.os.stat
    regular = real_stat(__file__)
    monkeypatch.setattr(files.os, "stat", lambda p, *a, **k: regular if str(p) == str(bad) else real_stat(p, *a, **k))
    with pytest.raises(files.NotRegularFileError, match="a FIFO"):
        within(HANG_S, files.open_regular, bad)


def test_serve_with_a_fifo_in_the_models_folder_opens_its_port(models, tmp_path):
    from server_support import KEYS, ServeProcess

    root, bad = scan_models(models, tmp_path / "models", "diffusion_models", "fifo")
    env = {"REDUX_SERVER_KEYS": ",".join(f"{k}={v}" for k, v in KEYS.items()), "CUDA_VISIBLE_DEVICES": ""}
    server = ServeProcess(["--models-dir", str(root), "--gpus", "cpu", "--state-dir", str(tmp_path / "state")], env,
                          tmp_path / "serve.log", timeout_s=120)
    try:
        server.start()  # raises when /health does not answer in time
    finally:
        server.stop()
        from fakes.hostile_files import release_fifos
        release_fifos()
    log = (tmp_path / "serve.log").read_text()
    assert f"skipped {bad}" in log and "FIFO" in log
