"""Run the CLI in this process (much faster than a subprocess per case) and build bad inputs for it."""

from __future__ import annotations

import io
import struct
import zlib
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from packloader import submodule

cli = submodule("pipelines.cli")
cli_restyle = submodule("pipelines.cli_restyle")

FAST = ("--size", "custom", "--width", "256", "--height", "256", "--steps", "1", "--seed", "5")


@dataclass
class Outcome:
    code: int
    out: str
    err: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.startswith("error:")]


def run_cli(*args) -> Outcome:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = cli.main([str(a) for a in args])
        except SystemExit as exc:  # argparse's own errors
            code = exc.code
    return Outcome(code, out.getvalue(), err.getvalue())


def weights_args(models) -> list:
    files = models["files"]
    return ["--transformer", files["dev"], "--vae", files["vae"], "--redux", files["redux"], "--siglip",
            files["siglip"]]


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if the CLI starts loading any model (the checks must come first)."""
    loads = []

    def refuse(*args, **kwargs):
        loads.append(args)
        raise AssertionError("a model was loaded before the arguments and files were checked")

    for module, name in ((cli, "load_flux_model"), (cli, "load_redux_encoder"), (cli_restyle, "load_text_encoders")):
        monkeypatch.setattr(module, name, refuse)
    return loads


def noise_png(path: Path, size=(64, 48), seed=0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def truncated_png(path: Path) -> Path:
    data = noise_png(path).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def bomb_png(path: Path, side: int = 100_000) -> Path:
    """A valid PNG header for side x side pixels with almost no data: PIL refuses it on open."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path
