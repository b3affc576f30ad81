"""pytest fixtures that start the fakes; test modules load them with `pytest_plugins = ["fakes.fixtures"]`."""

from __future__ import annotations

import pytest

from .fal import FakeFal
from .helpers import CUSTOM_KEY, FAL_KEY, WAVESPEED_KEY
from .wavespeed import FakeWaveSpeed


@pytest.fixture
def fal_fake():
    fake = FakeFal(key=FAL_KEY).start()
    yield fake
    fake.stop()


@pytest.fixture
def custom_fake():
    fake = FakeFal(key=CUSTOM_KEY, scheme="Bearer", prefix="/v1/fal", reply_urls="decoy").start()
    yield fake
    fake.stop()


@pytest.fixture
def wavespeed_fake():
    fake = FakeWaveSpeed(key=WAVESPEED_KEY).start()
    yield fake
    fake.stop()
