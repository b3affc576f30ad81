"""Opening files a user named, or that sit in a folder the user named, without ever blocking.

A FIFO (named pipe) blocks `open()` until some other process opens it for writing, and a terminal or other
character device can block the first read; a header scan that meets one freezes the CLI, or `serve` before it
opens its port, with no output at all. So every user path goes through here: `stat` first (it never waits on
a FIFO or a socket), anything that is not a regular file is refused with a line saying what it is, and the
open itself uses O_NONBLOCK, so a file swapped for a FIFO between the stat and the open still cannot hang
(O_NONBLOCK changes nothing for regular files, and is cleared once the file is known to be one).

Libraries that take a path and open it themselves (safetensors, gguf, diffusers) get it after
`require_regular`; what the pack reads itself (images, JSON, key files) is read through `open_regular`.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

try:
    import fcntl
except ImportError:  # Windows: no FIFOs to block on, no O_NONBLOCK
    fcntl = None

OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)

KINDS = (  # (test, words) for st_mode of what is not a regular file
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


class NotRegularFileError(OSError):
    """A path that is not a regular file (a FIFO, socket, device, folder): reading it could block or make no
    sense. `str()` and `strerror` say what it is; `filename` is the path."""

    def __init__(self, path: str | Path, what: str):
        super().__init__(errno.EINVAL, f"{what}, not a regular file", str(path))
        self.what = what

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


def kind_of(mode: int) -> str:
    """What an st_mode is, in words ("a FIFO (named pipe)", "a regular file", ...)."""
    if stat.S_ISREG(mode):
        return "a regular file"
    return next((words for test, words in KINDS if test(mode)), "a special file")


def not_regular(path: str | Path) -> str | None:
    """Why `path` (a symlink is followed) cannot be read as a file, in words, or None for a regular file.
    Never opens it, so never blocks on a FIFO."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "a broken link" if os.path.islink(path) else "does not exist"
    except OSError as exc:  # permission on a parent folder, a name too long, a loop of links
        return f"cannot be examined ({exc.strerror or exc})"
    return None if stat.S_ISREG(mode) else f"{kind_of(mode)}, not a regular file"


def open_regular(path: str | Path) -> BinaryIO:
    """The file opened for reading in binary, or NotRegularFileError (or the OSError of the open, e.g.
    PermissionError) without ever waiting: stat first, open with O_NONBLOCK, check again on the descriptor."""
    mode = os.stat(path).st_mode  # FileNotFoundError / PermissionError as usual
    if not stat.S_ISREG(mode):
        raise NotRegularFileError(path, kind_of(mode))
    fd = os.open(path, OPEN_FLAGS)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):  # swapped between the stat and the open
            raise NotRegularFileError(path, kind_of(mode))
        if fcntl is not None:  # back to ordinary blocking reads of a regular file
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def require_regular(path: str | Path) -> None:
    """Raise (as open_regular) unless `path` is a regular file that opens without waiting; for libraries
    that open the path themselves."""
    open_regular(path).close()


def read_bytes(path: str | Path) -> bytes:
    with open_regular(path) as handle:
        return handle.read()


def read_text(path: str | Path, encoding: str = "utf-8") -> str:
    return read_bytes(path).decode(encoding)
