"""Shared fixtures. Everything is offline: the hub is switched off and any non-loopback connection fails."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["DIFFUSERS_OFFLINE"] = "1"
os.environ.setdefault("TQDM_DISABLE", "1")

import socket  # noqa: E402

import pytest  # noqa: E402

import tiny_models  # noqa: E402

BLOCKED_CONNECTIONS: list = []
_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _is_loopback(address) -> bool:
    if isinstance(address, (str, bytes)):  # unix socket
        return True
    host = address[0].decode() if isinstance(address[0], bytes) else str(address[0])
    return host in ("localhost", "::1") or host.startswith("127.")


def _guarded(real):
    def connect(self, address):
        if not _is_loopback(address):
            BLOCKED_CONNECTIONS.append(address)
            raise OSError(f"test network guard: connection to {address!r} blocked (tests must stay offline)")
        return real(self, address)
    return connect


_real_getaddrinfo = socket.getaddrinfo


def _guarded_getaddrinfo(host, *args, **kwargs):
    if host is not None and not _is_loopback((host,)):
        BLOCKED_CONNECTIONS.append(host)
        raise OSError(f"test network guard: name lookup of {host!r} blocked (tests must stay offline)")
    return _real_getaddrinfo(host, *args, **kwargs)


socket.socket.connect = _guarded(_real_connect)
socket.socket.connect_ex = _guarded(_real_connect_ex)
socket.getaddrinfo = _guarded_getaddrinfo


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """A tiny ComfyUI models/ folder plus diffusers folders; see tiny_models.build_models_dir."""
    return tiny_models.build_models_dir(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def engine():
    from packloader import engine as pack_engine
    return pack_engine


@pytest.fixture
def fresh_cache(engine):
    """A private model cache, so cache assertions do not depend on test order."""
    return engine.ModelCache()
