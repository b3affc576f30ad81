"""Things that are not regular files, made where a user might leave them, and a runner that turns a hang
into a test failure instead of a frozen test session."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
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


def release_fifos() -> None:
    """Open every FIFO made here for writing and close it: a reader blocked in open() or read() returns."""
    for path in MADE_FIFOS:
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass


def within(seconds: float, function, *args, **kwargs):
    """function(*args) in a daemon thread; a hang past `seconds` fails the test (and the FIFOs are released
    so the thread ends), an exception is re-raised here."""
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = function(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        release_fifos()
        thread.join(10)
        pytest.fail(f"{getattr(function, '__name__', function)} hung for more than {seconds} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
