"""Who may use the server: API keys from REDUX_SERVER_KEYS or the git-ignored redux_server_keys.json.

REDUX_SERVER_KEYS holds `name=key` pairs separated by commas (a bare key gets the name key-1, key-2...);
the file holds {"keys": {"name": "key", ...}}. Requests send `Authorization: Key <key>` (fal) or
`Bearer <key>` (aggregators, WaveSpeed). Jobs belong to the key's name; the key itself is compared in
constant time and never stored, logged or echoed.
"""

from __future__ import annotations

import hmac
import json
import os
from pathlib import Path
from typing import Mapping

KEYS_VARIABLE = "REDUX_SERVER_KEYS"
KEYS_FILE_NAME = "redux_server_keys.json"
PACK_ROOT = Path(__file__).resolve().parents[2]
SCHEMES = ("key", "bearer")
MIN_KEY_LENGTH = 16


class KeyConfigError(ValueError):
    """The keys are missing or malformed; the message says where to put them (never the keys)."""


class ApiKeys:
    def __init__(self, keys: Mapping[str, str]):
        short = [name for name, key in keys.items() if len(key) < MIN_KEY_LENGTH]
        if short:
            raise KeyConfigError(f"API key(s) {', '.join(short)} are shorter than {MIN_KEY_LENGTH} characters; "
                                 "use e.g. python -c \"import secrets; print(secrets.token_urlsafe(32))\"")
        self._keys = [(name, key.encode()) for name, key in keys.items()]

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self._keys]

    def owner(self, authorization: str | None) -> str | None:
        """The key's name for an Authorization header, or None."""
        scheme, _, token = (authorization or "").strip().partition(" ")
        if scheme.lower() not in SCHEMES or not token.strip():
            return None
        given, found = token.strip().encode(), None
        for name, key in self._keys:  # compare with every key, so timing does not tell which one matched
            if hmac.compare_digest(given, key):
                found = name
        return found

    def __repr__(self) -> str:
        return f"ApiKeys({', '.join(self.names)})"


def load_keys(environ: Mapping[str, str] | None = None, key_file: Path | None = None) -> ApiKeys:
    environ = os.environ if environ is None else environ
    key_file = PACK_ROOT / KEYS_FILE_NAME if key_file is None else Path(key_file)
    text = (environ.get(KEYS_VARIABLE) or "").strip()
    if text:
        return ApiKeys(_parse_variable(text))
    if key_file.is_file():
        return ApiKeys(_read_file(key_file))
    raise KeyConfigError(f"no API keys: set {KEYS_VARIABLE}=name=KEY[,name2=KEY2] or write "
                         f'{{"keys": {{"alice": "<key>"}}}} to {key_file} (git-ignored)')


def _parse_variable(text: str) -> dict[str, str]:
    keys = {}
    for number, item in enumerate((part.strip() for part in text.split(",") if part.strip()), 1):
        name, sep, key = item.partition("=")
        name, key = (name.strip(), key.strip()) if sep else (f"key-{number}", item)
        if name in keys:
            raise KeyConfigError(f"{KEYS_VARIABLE} names the key {name!r} twice")
        keys[name] = key
    return keys


def _read_file(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyConfigError(f"cannot read {path}: {type(exc).__name__}") from None
    except json.JSONDecodeError as exc:
        raise KeyConfigError(f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno})") from None
    keys = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(keys, dict) or not keys or not all(isinstance(v, str) for v in keys.values()):
        raise KeyConfigError(f'{path} must hold {{"keys": {{"name": "<key>", ...}}}}')
    return keys
