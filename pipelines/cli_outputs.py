"""Output files of the CLI: nothing a user already has is overwritten, and no half-written file is left.

Each PNG is written to a hidden temporary file in the output folder and then published under its final
name in one step: without --overwrite by a hard link (which fails instead of replacing an existing file, so
another run writing into the same folder cannot be clobbered either), with --overwrite by a rename. An
interrupted or failed write leaves only the temporary file, which is removed.

The temporary name carries the writer's process id and fits the file system's name limit whenever the final
name does (a long stem is cut there, never in the final name). A run killed outright (kill -9, power loss)
leaves its temporary file behind; the next run into the folder removes the ones whose process has ended and
whose lock nobody holds (a writer holds an exclusive lock on its temporary file), never a live run's.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import stat
from pathlib import Path
from typing import Iterator

from PIL import Image
from PIL.PngImagePlugin import PngInfo

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, and os.kill(pid, 0) would end the process: no stale clean-up
    fcntl = None

log = logging.getLogger("flux-redux")
PARTIAL_SUFFIX = ".partial"
PARTIAL_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)" + re.escape(PARTIAL_SUFFIX) + "$")
DEFAULT_NAME_MAX = 255  # bytes per file name on ext4, xfs, btrfs, apfs, NTFS (UTF-16 units), ...


def name_max(folder: Path) -> int:
    """The longest file name (in bytes) the file system of `folder` takes."""
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (AttributeError, OSError, ValueError):  # Windows, or a folder that does not exist yet
        return DEFAULT_NAME_MAX


def name_bytes(name: str) -> int:
    return len(os.fsencode(name))


def partial_name(name: str, pid: int, limit: int = DEFAULT_NAME_MAX) -> str:
    """`.NAME.PID.partial`, NAME cut so the whole fits in `limit` bytes (a final name that fits then always
    has a temporary name that fits)."""
    tail = f".{pid}{PARTIAL_SUFFIX}"
    room = limit - 1 - name_bytes(tail)
    return "." + os.fsdecode(os.fsencode(name)[:max(room, 1)]) + tail  # bytes kept as they are (Linux names)


def process_alive(pid: int) -> bool:
    """True when `pid` is a running process (or one this user may not signal: it exists)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):  # another user's process, or no pid at all: keep
        return True
    return True


def _lock_free(path: Path) -> bool:
    """True when `path` is a regular file (not followed if a link) and nobody holds the writer's lock on it;
    checked without waiting."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def remove_stale_partials(folder: Path) -> list[Path]:
    """Delete the temporary files in `folder` that runs which ended without clean-up (kill -9) left; returns
    them. A file is stale only when its process id names no running process and its lock is free."""
    if fcntl is None or not folder.is_dir():
        return []
    removed = []
    for entry in folder.iterdir():
        match = PARTIAL_NAME.match(entry.name)
        if not match or int(match["pid"]) == os.getpid() or process_alive(int(match["pid"])):
            continue
        if not _lock_free(entry):
            continue
        try:
            entry.unlink()
        except OSError:
            continue
        removed.append(entry)
    if removed:
        log.info("removed %d temporary file(s) left in %s by runs that ended without cleaning up (%s)",
                 len(removed), folder, ", ".join(p.name for p in removed[:3]) + (", ..." if len(removed) > 3 else ""))
    return removed


def output_name(stem: str, seed: int, index: int) -> str:
    """The PNG name of image `index` of an input: STEM_seedSEED_INDEX.png."""
    return f"{stem}_seed{seed}_{index}.png"


class OutputError(OSError):
    """An output file could not be written (full disk, permissions, ...): the message names it."""


def _numbered(target: Path, limit: int = DEFAULT_NAME_MAX) -> Iterator[Path]:
    """target, then name-2.png, name-3.png, ... (a stem at the name limit is cut to make room for the number)."""
    yield target
    number = 2
    while True:
        tail = f"-{number}{target.suffix}"
        stem = os.fsdecode(os.fsencode(target.stem)[:limit - name_bytes(tail)])
        yield target.with_name(stem + tail)
        number += 1


class OutputWriter:
    """Writes PNGs into one folder; `written` lists the complete files, in order."""

    def __init__(self, folder: Path, overwrite: bool = False):
        self.folder, self.overwrite = folder, overwrite
        self.written: list[Path] = []
        self._taken: set[Path] = set()  # names this run used: two inputs with one stem never share a file

    def save_png(self, image: Image.Image, name: str, metadata: dict) -> Path:
        info = PngInfo()
        info.add_text("flux_redux", json.dumps(metadata))
        partial = self.folder / partial_name(name, os.getpid(), name_max(self.folder))
        try:
            with open(partial, "wb") as handle:
                if fcntl is not None:  # held until closed: remove_stale_partials never takes a live file
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                image.save(handle, format="PNG", pnginfo=info)
                handle.flush()
                os.fsync(handle.fileno())
            final = self._publish(partial, self.folder / name)
        except OSError as exc:
            raise OutputError(f"{self.folder / name}: could not write the image ({exc.strerror or exc}); "
                              "check free space and permissions of --out") from exc
        finally:
            partial.unlink(missing_ok=True)
        self._taken.add(final)
        self.written.append(final)
        if final.name != name:
            log.info("%s already exists: wrote %s instead (--overwrite replaces files)", name, final.name)
        return final

    def _publish(self, partial: Path, target: Path) -> Path:
        for candidate in _numbered(target, name_max(self.folder)):
            if candidate in self._taken:
                continue
            if self.overwrite:
                os.replace(partial, candidate)
                return candidate
            try:
                os.link(partial, candidate)  # atomic, and never replaces an existing file
                return candidate
            except FileExistsError:
                continue
            except OSError as exc:  # a file system without hard links (FAT, some network shares)
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                    raise
                if not candidate.exists():
                    os.replace(partial, candidate)
                    return candidate
        raise AssertionError("unreachable: the numbered names never run out")
