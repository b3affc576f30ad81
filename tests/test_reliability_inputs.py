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
            real_open = checks.Image.open
            monkeypatch.setattr(checks.Image, "open", lambda p, *a, **k: (_ for _ in ()).throw(
                PermissionError(13, "Permission denied", str(p))) if p == target else real_open(p, *a, **k))
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
