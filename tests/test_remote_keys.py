"""Key lookup: environment first, then the git-ignored key file; messages name what to set, never the key."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from fakes.helpers import remote

ROOT = Path(__file__).resolve().parent.parent


def find(provider, tmp_path, environ=None, content=None):
    key_file = tmp_path / "redux_api_keys.json"
    if content is not None:
        key_file.write_text(content if isinstance(content, str) else json.dumps(content))
    return remote.find_key(provider, environ=environ or {}, key_file=key_file)


def test_environment_wins_over_the_file(tmp_path):
    key = find("fal", tmp_path, {"FAL_KEY": " env-key-1234 \n"}, {"FAL_KEY": "file-key-1234"})
    assert key.reveal() == "env-key-1234" and key.source == "FAL_KEY in the environment"


def test_file_is_used_when_the_environment_has_none(tmp_path):
    key = find("wavespeed", tmp_path, {}, {"WAVESPEED_API_KEY": "file-key-5678"})
    assert key.reveal() == "file-key-5678" and str(tmp_path) in key.source


def test_fal_id_and_secret(tmp_path):
    key = find("fal", tmp_path, {"FAL_KEY_ID": "the-id", "FAL_KEY_SECRET": "the-secret"})
    assert key.reveal() == "the-id:the-secret"
    assert set(key.secrets()) == {"the-id:the-secret", "the-id", "the-secret"}


@pytest.mark.parametrize("provider, variable", [("fal", "FAL_KEY"), ("wavespeed", "WAVESPEED_API_KEY"),
                                                ("custom", "REDUX_CUSTOM_API_KEY")])
def test_missing_key_names_variable_and_file(tmp_path, provider, variable):
    with pytest.raises(remote.MissingKeyError) as caught:
        find(provider, tmp_path, {"OTHER": "x"}, {"UNRELATED": "y"})
    assert variable in str(caught.value) and str(tmp_path / "redux_api_keys.json") in str(caught.value)


def test_invalid_key_file_message_does_not_quote_it(tmp_path):
    with pytest.raises(remote.MissingKeyError, match="not valid JSON") as caught:
        find("fal", tmp_path, {}, '{"FAL_KEY": "sk-leaky-123456" oops}')
    assert "sk-leaky" not in str(caught.value) and caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_invalid_file_is_not_read_when_the_environment_has_the_key(tmp_path):
    assert find("fal", tmp_path, {"FAL_KEY": "env-key-9999"}, "not json").reveal() == "env-key-9999"


def test_key_file_is_git_ignored():
    result = subprocess.run(["git", "check-ignore", "-q", str(ROOT / "redux_api_keys.json")], cwd=ROOT)
    assert result.returncode == 0
    assert submodule_keys().DEFAULT_KEY_FILE == ROOT / "redux_api_keys.json"


def submodule_keys():
    from packloader import submodule
    return submodule("pipelines.remote.keys")
