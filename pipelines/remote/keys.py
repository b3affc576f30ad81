"""API keys: from environment variables, else from the git-ignored `redux_api_keys.json` in the pack folder.

Keys never come from a node widget, so they cannot end up in a saved workflow or in PNG metadata. The file
uses the environment variable names as its fields, e.g. {"FAL_KEY": "...", "WAVESPEED_API_KEY": "..."}.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

from .. import files
from .errors import MissingKeyError

KEY_FILE_NAME = "redux_api_keys.json"
PACK_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_KEY_FILE = PACK_ROOT / KEY_FILE_NAME


@dataclass(frozen=True)
class KeySource:
    """Where a provider's key may come from: one variable, or (fal) an id + secret pair joined by ':'."""

    variable: str
    pair: tuple[str, str] | None = None

    def describe(self) -> str:
        if self.pair:
            return f"{self.variable} (or both {self.pair[0]} and {self.pair[1]})"
        return self.variable


KEY_SOURCES: dict[str, KeySource] = {
    "fal": KeySource("FAL_KEY", ("FAL_KEY_ID", "FAL_KEY_SECRET")),
    "wavespeed": KeySource("WAVESPEED_API_KEY"),
    "custom": KeySource("REDUX_CUSTOM_API_KEY"),
}


class ApiKey:
    """A key plus where it came from. Its repr and str never show the key itself."""

    __slots__ = ("_value", "source")

    def __init__(self, value: str, source: str):
        self._value, self.source = value, source

    def reveal(self) -> str:
        return self._value

    def secrets(self) -> tuple[str, ...]:
        """Strings to redact from any text: the key and, for an id:secret pair, each half."""
        return (self._value, *self._value.split(":")) if ":" in self._value else (self._value,)

    def __repr__(self) -> str:
        return f"ApiKey(from {self.source})"

    __str__ = __repr__


def find_key(provider: str, *, environ: Mapping[str, str] | None = None, key_file: Path | None = None) -> ApiKey:
    """Return the provider's key, or raise MissingKeyError saying exactly what to set."""
    source = KEY_SOURCES[provider]
    environ = os.environ if environ is None else environ
    key_file = DEFAULT_KEY_FILE if key_file is None else Path(key_file)
    for load, where in ((lambda: environ, "the environment"), (lambda: _read_key_file(key_file), str(key_file))):
        lookup = load()  # the file is read only when the environment has no key
        value = _clean(lookup.get(source.variable))
        if value:
            return ApiKey(value, f"{source.variable} in {where}")
        if source.pair:
            first, second = (_clean(lookup.get(name)) for name in source.pair)
            if first and second:
                return ApiKey(f"{first}:{second}", f"{' + '.join(source.pair)} in {where}")
    raise MissingKeyError(
        f"No API key for {provider}: set the environment variable {source.describe()} before starting ComfyUI, "
        f'or put {{"{source.variable}": "<your key>"}} in {key_file} (git-ignored). '
        "Keys are never taken from node inputs, so they stay out of saved workflows and images.",
        provider=provider)


def _clean(value: object) -> str:
    return value.strip() if isinstance(value, str) else ""


def _read_key_file(path: Path) -> Mapping[str, str]:
    if not path.exists() and not path.is_symlink():
        return {}
    problem = files.not_regular(path)  # a FIFO here would block ComfyUI's worker forever
    if problem:
        raise MissingKeyError(f"Cannot read the key file {path}: {problem}; expected a JSON file")
    try:
        data = json.loads(files.read_text(path))
    except RecursionError:
        raise MissingKeyError(f"The key file {path} is nested too deeply to be a key file; expected e.g. "
                              '{"FAL_KEY": "<your key>"}') from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MissingKeyError(f"Cannot read the key file {path}: {type(exc).__name__}") from None
    except json.JSONDecodeError as exc:  # the message holds line/column only, never the file's text
        raise MissingKeyError(f"The key file {path} is not valid JSON (line {exc.lineno}, column {exc.colno}); "
                              'expected e.g. {"FAL_KEY": "<your key>"}') from None
    if not isinstance(data, dict):
        raise MissingKeyError(f'The key file {path} must hold a JSON object such as {{"FAL_KEY": "<your key>"}}')
    return data


# -- keeping keys out of logs ---------------------------------------------------------------------------------

MIN_SECRET_LENGTH = 6  # shorter strings would redact ordinary words
_active: Counter = Counter()  # the secrets of the runs in progress (a multiset: runs may overlap)
_active_lock = threading.Lock()


@contextmanager
def secrets_redacted(secrets: tuple[str, ...]) -> Iterator[None]:
    """While a run is in progress, its key never appears in a log line of the remote client, whatever a
    server reflects into request ids, statuses or error texts."""
    secrets = tuple(s for s in secrets if s and len(s) >= MIN_SECRET_LENGTH)
    with _active_lock:
        _active.update(secrets)
    try:
        yield
    finally:
        with _active_lock:
            _active.subtract(secrets)
            for secret in [s for s, n in _active.items() if n <= 0]:
                del _active[secret]


def redact_active(text: str) -> str:
    with _active_lock:
        secrets = sorted(_active, key=len, reverse=True)  # a whole key before its id/secret halves
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


class _RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if _active:
            text = record.getMessage()
            clean = redact_active(text)
            if clean != text:
                record.msg, record.args = clean, ()
        return True


_FILTER = _RedactingFilter()


def redacting_logger(name: str) -> logging.Logger:
    """The module's logger, with key redaction (a filter on a parent logger would not see child records)."""
    logger = logging.getLogger(name)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger
