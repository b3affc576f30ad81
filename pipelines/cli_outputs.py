"""Output files of the CLI: nothing a user already has is overwritten, and no half-written file is left.

Each PNG is written to a hidden temporary file in the output folder and then published under its final
name in one step: without --overwrite by a hard link (which fails instead of replacing an existing file, so
another run writing into the same folder cannot be clobbered either), with --overwrite by a rename. An
interrupted or failed write leaves only the temporary file, which is removed.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path
from typing import Iterator

from PIL import Image
from PIL.PngImagePlugin import PngInfo

log = logging.getLogger("flux-redux")
PARTIAL_SUFFIX = ".partial"


class OutputError(OSError):
    """An output file could not be written (full disk, permissions, ...): the message names it."""


def _numbered(target: Path) -> Iterator[Path]:
    """target, then name-2.png, name-3.png, ..."""
    yield target
    number = 2
    while True:
        yield target.with_name(f"{target.stem}-{number}{target.suffix}")
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
        partial = self.folder / f".{name}.{os.getpid()}{PARTIAL_SUFFIX}"
        try:
            with open(partial, "wb") as handle:
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
        for candidate in _numbered(target):
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
