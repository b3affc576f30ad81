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


# -- output lost after the work is done (issue 18, class 2) ---------------------------------------------------

import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from fakes.cli_runs import no_loading  # noqa: E402,F401
from fakes.hostile_files import fifo  # noqa: E402

NAME_MAX = 255


def stem_of(byte_count: int, char: str = "a") -> str:
    size = len(char.encode())
    assert byte_count % size == 0
    return char * (byte_count // size)


@pytest.mark.parametrize("char", ["a", "日"])
def test_a_final_name_of_exactly_255_bytes_is_written(models, tmp_path, char):
    stem = stem_of(NAME_MAX - len("_seed5_0.png"), char)  # the final name fits exactly; .NAME.PID.partial did not
    image = noise_png(tmp_path / f"{stem}.png")
    done = run_cli("variation", image, *weights_args(models), *FAST, "--out", tmp_path / "out")
    assert done.code == 0, done.err
    assert pngs(tmp_path / "out") == [f"{stem}_seed5_0.png"]
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_a_rerun_at_the_name_limit_numbers_within_the_limit(models, tmp_path):
    stem = stem_of(NAME_MAX - len("_seed5_0.png"))
    image = noise_png(tmp_path / f"{stem}.png")
    for _ in range(2):
        done = run_cli("variation", image, *weights_args(models), *FAST, "--out", tmp_path / "out")
        assert done.code == 0, done.err
    names = pngs(tmp_path / "out")
    assert len(names) == 2 and all(len(n.encode()) <= NAME_MAX for n in names)
    assert any(n.endswith("-2.png") for n in names)


def test_a_stem_too_long_for_its_output_is_skipped_before_loading_and_the_rest_runs(models, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    long = noise_png(folder / f"{stem_of(240)}.png")  # 240 + _seed<20 digits>_0.png > 255 with a random seed
    noise_png(folder / "short.png", seed=3)
    fast_random_seed = [a for a in FAST if a not in ("--seed", "5")]
    done = run_cli("variation", folder, *weights_args(models), *fast_random_seed, "--out", tmp_path / "out")
    assert done.code == 1, done.err
    assert [n.split("_seed")[0] for n in pngs(tmp_path / "out")] == ["short"]
    assert f"{long}: its output name would be" in done.err and "255-byte file name limit" in done.err
    assert "at most 224 bytes" in done.err  # 255 - len("_seed" + 20 digits + "_0.png")


def test_the_only_input_with_a_too_long_stem_fails_before_any_model_loads(models, tmp_path, no_loading):
    long = noise_png(tmp_path / f"{stem_of(250)}.png")
    done = run_cli("variation", long, *weights_args(models), *FAST, "--out", tmp_path / "out")
    assert done.code == 2 and len(done.error_lines) == 1, done.err
    assert "its output name would be 262 bytes" in done.error_lines[0] and not no_loading


def test_temporary_names_always_fit_when_the_final_name_does():
    for size in (1, 100, 243, 255):
        name = stem_of(size - 4) + ".png"
        partial = outputs.partial_name(name, 4194303)
        assert len(partial.encode()) <= NAME_MAX and partial.endswith(".4194303.partial")
        assert outputs.PARTIAL_NAME.match(partial)["pid"] == "4194303"


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_during_a_save_is_handled_like_ctrl_c(models, tmp_path, monkeypatch, signum, status):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for seed in range(3):
        noise_png(inputs / f"{seed}.png", seed=seed)
    real_save, calls = Image.Image.save, []

    def signalled_mid_write(self, fp, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            fp.write(b"\x89PNG half")
            os.kill(os.getpid(), signum)  # delivered to this (main) thread: the handler raises here
            time.sleep(5)  # never reached when handled
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", signalled_mid_write)
    unhandled = []  # the test's own handler: were the CLI not to handle the signal, it lands here (not in pytest)

    def test_handler(*args):
        unhandled.append(args)

    before = signal.signal(signum, test_handler)
    try:
        done = run_cli("variation", inputs, *weights_args(models), *FAST, "--out", tmp_path / "out")
        after = signal.getsignal(signum)
    finally:
        signal.signal(signum, before)
    assert not unhandled
    assert done.code == status, done.err
    assert f"stopped by {signal.Signals(signum).name}; 1 complete image(s) kept" in done.err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0_seed5_0.png"]  # no hidden .partial
    assert after is test_handler  # the CLI's own handler lasted as long as the run


def test_sigterm_of_a_real_run_keeps_the_complete_images_and_says_so(models, tmp_path):
    """`timeout`, `docker stop` and systemd send SIGTERM to the process: its summary and clean-up must run."""
    from packloader import ROOT

    inputs = tmp_path / "in"
    inputs.mkdir()
    for seed in range(40):
        noise_png(inputs / f"{seed:02d}.png", seed=seed)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "pipelines", "variation", str(inputs), *map(str, weights_args(models)),
               "--size", "custom", "--width", "256", "--height", "256", "--steps", "20", "--seed", "5",
               "--out", str(out)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (out.is_dir() and any(p.suffix == ".png" and not p.name.startswith(".") for p in out.iterdir())):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 143, err
    kept = pngs(out)
    assert 1 <= len(kept) < 40 and f"stopped by SIGTERM; {len(kept)} complete image(s) kept in {out}" in err
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no 0-byte hidden .partial left
    for name in kept:
        with Image.open(out / name) as image:
            image.load()  # each one complete


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_partials_of_dead_runs_are_removed_and_live_ones_kept(models, tmp_path):
    import fcntl

    out = tmp_path / "out"
    out.mkdir()
    dead = dead_pid()
    stale = out / f".x_seed5_0.png.{dead}{outputs.PARTIAL_SUFFIX}"
    stale.write_bytes(b"")  # what kill -9 (or SIGTERM before this issue) left behind
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    live = out / f".y_seed5_0.png.{sleeper.pid}{outputs.PARTIAL_SUFFIX}"
    live.write_bytes(b"\x89PNG being written")
    locked = out / f".z_seed5_0.png.{dead_pid()}{outputs.PARTIAL_SUFFIX}"  # pid gone, but a writer holds the lock
    locked.write_bytes(b"\x89PNG")
    user_file = out / ".notes.partial"  # the user's own dot file: not ours
    user_file.write_text("mine")
    link = out / f".l.png.{dead}{outputs.PARTIAL_SUFFIX}"
    link.symlink_to(user_file)
    pipe = fifo(out / f".f.png.{dead}{outputs.PARTIAL_SUFFIX}")
    holder = open(locked, "rb")
    fcntl.flock(holder.fileno(), fcntl.LOCK_EX)
    try:
        done = run_cli("variation", noise_png(tmp_path / "r.png"), *weights_args(models), *FAST, "--out", out)
    finally:
        holder.close()
        sleeper.kill()
        sleeper.wait()
    assert done.code == 0, done.err
    assert not stale.exists()
    assert live.exists() and locked.exists() and user_file.read_text() == "mine" and link.is_symlink()
    assert pipe.exists()
    assert pngs(out) == ["r_seed5_0.png"]


def test_stale_partials_are_removed_before_any_model_loads(models, tmp_path, no_loading):
    out = tmp_path / "out"
    out.mkdir()
    stale = out / f".x.png.{dead_pid()}{outputs.PARTIAL_SUFFIX}"
    stale.write_bytes(b"")
    run_cli("variation", noise_png(tmp_path / "r.png"), *weights_args(models), "--out", out)
    assert no_loading and not stale.exists()  # gone by the time the first model would load


def test_under_nohup_a_sighup_does_not_stop_the_run(models, tmp_path, monkeypatch):
    real_save = Image.Image.save

    def hangup_mid_write(self, fp, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGHUP)
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", hangup_mid_write)
    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # what nohup does
    try:
        done = run_cli("variation", noise_png(tmp_path / "r.png"), *weights_args(models), *FAST, "--out", tmp_path / "o")
    finally:
        signal.signal(signal.SIGHUP, before)
    assert done.code == 0, done.err
    assert pngs(tmp_path / "o") == ["r_seed5_0.png"]
