"""Things that are not regular files, made where a user might leave them, and a runner that turns a hang
into a test failure instead of a frozen test session."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

MADE_FIFOS: list[Path] = []  # released (opened for writing) when a run hangs, so its thread can end


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    MADE_FIFOS.append(path)
    return path


def folder(path: Path) -> Path:
    path.mkdir()
    return path


def unix_socket(path: Path) -> Path:
    """A bound socket file at `path` (bound in a short folder first: socket paths are limited to ~100 bytes)."""
    short = Path(tempfile.mkdtemp(prefix="s", dir="/tmp"))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(short / "s"))
        os.rename(short / "s", path)
    finally:
        sock.close()
        shutil.rmtree(short, ignore_errors=True)
    return path


def link_to_fifo(path: Path) -> Path:
    target = fifo(path.with_name(path.name + ".target-fifo"))
    path.symlink_to(target)
    return path


def link_to_device(path: Path) -> Path:
    path.symlink_to("/dev/zero")
    return path


def link_loop(path: Path) -> Path:
    path.symlink_to(path.name)
    return path


# kind -> (how to make it at a path, words the skip or error line must hold)
HOSTILE = {
    "fifo": (fifo, "a FIFO (named pipe), not a regular file"),
    "folder": (folder, "a folder, not a regular file"),
    "socket": (unix_socket, "a socket, not a regular file"),
    "link to fifo": (link_to_fifo, "a FIFO (named pipe), not a regular file"),
    "link to device": (link_to_device, "a character device, not a regular file"),
    "link loop": (link_loop, "cannot be examined"),
}


RELEASER = """
import os, sys, time
time.sleep(float(sys.argv[1]))
while True:  # until killed: a reader that opens a FIFO again is released again
    for path in sys.argv[2:]:
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
    time.sleep(0.2)
"""


def release_fifos() -> None:
    """Open every FIFO made here for writing and close it: a reader blocked in open() or read() returns."""
    for path in MADE_FIFOS:
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass


def within(seconds: float, function, *args, **kwargs):
    """function(*args), failing the test when it takes longer than `seconds`. A read blocked on a FIFO may hold
    the GIL (a library's native open), so no thread of this process could step in: a separate process opens
    every FIFO made here for writing once the time is up, which ends the blocked open (then the test fails)."""
    fifos = [str(p) for p in MADE_FIFOS if os.path.lexists(p)]
    releaser = subprocess.Popen([sys.executable, "-c", RELEASER, str(seconds), *fifos])
    started = time.monotonic()
    try:
        value = function(*args, **kwargs)
    except BaseException:
        elapsed = time.monotonic() - started
        if elapsed >= seconds:
            pytest.fail(f"{getattr(function, '__name__', function)} hung on a FIFO until released after {seconds} s")
        raise
    finally:
        releaser.kill()
        releaser.wait()
    if time.monotonic() - started >= seconds:
        pytest.fail(f"{getattr(function, '__name__', function)} hung on a FIFO until released after {seconds} s")
    return value
