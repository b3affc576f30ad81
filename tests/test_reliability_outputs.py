"""Lost output: names never collide or overwrite (unless --overwrite), writes are atomic, and the final
message counts only complete files."""

from __future__ import annotations

import errno

import pytest
from PIL import Image

from fakes.cli_runs import FAST, noise_png, run_cli, weights_args
from packloader import submodule

outputs = submodule("pipelines.cli_outputs")


def pngs(folder):
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def test_same_stem_in_two_folders_and_a_rerun_never_overwrite(models, tmp_path):
    noise_png((tmp_path / "a").mkdir() or tmp_path / "a" / "x.png", seed=1)
    noise_png((tmp_path / "b").mkdir() or tmp_path / "b" / "x.png", seed=2)
    out = tmp_path / "out"
    first = run_cli("variation", tmp_path / "a", tmp_path / "b", *weights_args(models), *FAST, "--out", out)
    assert first.code == 0, first.err
    assert pngs(out) == ["x_seed5_0-2.png", "x_seed5_0.png"]
    assert "wrote 2 image(s)" in first.out
    before = {name: (out / name).read_bytes() for name in pngs(out)}
    again = run_cli("variation", tmp_path / "a", *weights_args(models), *FAST, "--out", out)
    assert again.code == 0 and "wrote 1 image(s)" in again.out
    assert pngs(out) == ["x_seed5_0-2.png", "x_seed5_0-3.png", "x_seed5_0.png"]
    assert all((out / name).read_bytes() == data for name, data in before.items())  # nothing replaced
    with Image.open(out / "x_seed5_0-3.png") as image:
        assert image.text["flux_redux"]


def test_overwrite_replaces_only_when_asked(tmp_path):
    (tmp_path / "x.png").write_bytes(b"user's own file")
    keep = outputs.OutputWriter(tmp_path)
    assert keep.save_png(Image.new("RGB", (4, 4)), "x.png", {}).name == "x-2.png"
    assert (tmp_path / "x.png").read_bytes() == b"user's own file"
    replace = outputs.OutputWriter(tmp_path, overwrite=True)
    assert replace.save_png(Image.new("RGB", (4, 4)), "x.png", {}).name == "x.png"
    assert replace.save_png(Image.new("RGB", (4, 4)), "x.png", {}).name == "x-2.png"  # one run never collides
    with Image.open(tmp_path / "x.png") as image:
        assert image.size == (4, 4)


def test_interrupt_during_save_leaves_no_partial_file(monkeypatch, tmp_path):
    writer = outputs.OutputWriter(tmp_path)
    writer.save_png(Image.new("RGB", (4, 4)), "done.png", {})
    real_save = Image.Image.save

    def save_then_interrupt(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG half")
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        writer.save_png(Image.new("RGB", (4, 4)), "cut.png", {})
    monkeypatch.setattr(Image.Image, "save", real_save)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["done.png"]  # no cut.png, no temporary file
    assert writer.written == [tmp_path / "done.png"]


def test_cli_interrupt_counts_only_complete_files(models, monkeypatch, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for seed in range(2):
        noise_png(inputs / f"{seed}.png", seed=seed)
    calls = []
    real_save = outputs.OutputWriter.save_png

    def second_save_interrupted(self, image, name, metadata):
        calls.append(name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_save(self, image, name, metadata)

    monkeypatch.setattr(outputs.OutputWriter, "save_png", second_save_interrupted)
    done = run_cli("variation", inputs, *weights_args(models), *FAST, "--out", tmp_path / "out")
    assert done.code == 130
    assert "interrupted; 1 complete image(s) kept" in done.err
    assert pngs(tmp_path / "out") == ["0_seed5_0.png"]


def test_full_disk_is_one_line_and_keeps_what_was_written(monkeypatch, tmp_path):
    writer = outputs.OutputWriter(tmp_path)
    writer.save_png(Image.new("RGB", (4, 4)), "a.png", {})

    def disk_full(self, fp, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", disk_full)
    with pytest.raises(OSError) as info:
        writer.save_png(Image.new("RGB", (4, 4)), "b.png", {})
    assert "b.png: could not write the image (No space left on device)" in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_a_file_appearing_meanwhile_is_not_replaced(monkeypatch, tmp_path):
    """Another run creating the same name between our check and our write still keeps its file."""
    writer = outputs.OutputWriter(tmp_path)
    real_link = outputs.os.link

    def racing_link(source, target):
        if target.name == "x.png" and not target.exists():
            target.write_bytes(b"other run")
        return real_link(source, target)

    monkeypatch.setattr(outputs.os, "link", racing_link)
    assert writer.save_png(Image.new("RGB", (4, 4)), "x.png", {}).name == "x-2.png"
    assert (tmp_path / "x.png").read_bytes() == b"other run"
