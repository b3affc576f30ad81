"""`python -m pipelines serve`: arguments, keys and start-up checks (the paths that end before serving)."""

from __future__ import annotations

import json

import pytest

from packloader import submodule

cli = submodule("pipelines.cli")
server_cli = submodule("pipelines.server.cli")
auth = submodule("pipelines.server.auth")
worker = submodule("pipelines.server.worker")
engine = submodule("pipelines.server.engine")
supervisor = submodule("pipelines.server.supervisor")


def parse(*argv):
    return cli.build_parser().parse_args(["serve", *argv])


def test_defaults_listen_on_loopback_only():
    config = server_cli.config_from(parse("--gpus", "cpu"))
    assert (config.host, config.port, config.devices) == ("127.0.0.1", 8184, ("cpu",))
    assert config.result_ttl_s == 3600 and config.url_inputs is False and config.queue_url is None


@pytest.mark.parametrize("gpus, devices", [("0,1", ("cuda:0", "cuda:1")), ("cpu,cpu", ("cpu", "cpu")),
                                          ("none", ()), ("cuda:1", ("cuda:1",))])
def test_gpus(gpus, devices):
    assert server_cli.devices(gpus) == devices


def test_each_gpu_worker_sees_only_its_own_gpu():
    assert supervisor.device_visibility("cuda:3") == ("3", "cuda")
    assert supervisor.device_visibility("cpu") == (None, "cpu")
    assert supervisor.device_visibility("cuda") == (None, "cuda")


@pytest.mark.parametrize("argv, words", [
    (["--gpus", "two"], "gpus"), (["--result-ttl", "0"], "result_ttl"), (["--max-jobs-per-key", "0"], "max_jobs"),
    (["--gpus", "cpu"], "--models-dir"), (["--tls-cert", "cert.pem"], "go together"),
    (["--tls-cert", "nope.pem", "--tls-key", "nope.key"], "no such file"),
    (["--drain-timeout", "-1"], "drain_timeout"), (["--max-sync-waits-per-key", "0"], "max_sync_waits"),
])
def test_bad_arguments_exit_2_with_one_line(capsys, argv, words):
    assert cli.main(["serve", *argv]) == 2
    error = capsys.readouterr().err
    assert words in error and error.count("\n") == 1


def test_missing_models_and_missing_keys(tmp_path, capsys, monkeypatch):
    assert cli.main(["serve", "--gpus", "cpu", "--models-dir", str(tmp_path)]) == 2
    assert "missing FLUX.1" in capsys.readouterr().err
    monkeypatch.delenv(auth.KEYS_VARIABLE, raising=False)
    monkeypatch.setattr(auth, "PACK_ROOT", tmp_path)
    assert cli.main(["serve", "--gpus", "none"]) == 2
    assert "REDUX_SERVER_KEYS" in capsys.readouterr().err


def test_keys_from_environment_or_file(tmp_path):
    keys = auth.load_keys({"REDUX_SERVER_KEYS": "alice=alice-key-0123456789, bare-key-0123456789abc"})
    assert keys.names == ["alice", "key-2"]
    assert keys.owner("Key alice-key-0123456789") == "alice" and keys.owner("bearer bare-key-0123456789abc") == "key-2"
    assert keys.owner("Basic alice-key-0123456789") is None and keys.owner(None) is None
    assert "alice-key" not in repr(keys)
    path = tmp_path / "redux_server_keys.json"
    path.write_text(json.dumps({"keys": {"studio": "studio-key-0123456789"}}))
    assert auth.load_keys({}, path).owner("Key studio-key-0123456789") == "studio"
    path.write_text('{"keys": ["x"]}')
    with pytest.raises(auth.KeyConfigError, match="must hold"):
        auth.load_keys({}, path)
    with pytest.raises(auth.KeyConfigError, match="shorter than 16") as caught:
        auth.load_keys({"REDUX_SERVER_KEYS": "bob=short"})
    assert "short" not in str(caught.value).replace("shorter", "")


def test_the_key_file_is_git_ignored():
    ignored = (auth.PACK_ROOT / ".gitignore").read_text().split()
    assert f"/{auth.KEYS_FILE_NAME}" in ignored and "/server-state/" in ignored


def test_workers_get_the_real_engine_on_their_device(models):
    config = server_cli.config_from(parse("--gpus", "cpu", "--models-dir", str(models["root"]), "--dtype", "fp32"))
    built = worker.make_engine(config, "cpu")
    assert isinstance(built, engine.ReduxEngine) and built.options.device == "cpu"
    assert built.options.dtype == "fp32" and built.models_dir == models["root"]
