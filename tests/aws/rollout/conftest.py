"""Fixtures for the rollout tests: the front door (the emulator plus its doubles) and a fleet in it (fleet.py)."""

from __future__ import annotations

import pytest
from fleet import Captured, Fleet, build_fleet
from front_door import FrontDoor


@pytest.fixture
def door(aws, monkeypatch):
    """The emulator behind the front door (its doubles and model checks), as AWS_ENDPOINT_URL."""
    front = FrontDoor(aws.url, aws.region)
    monkeypatch.setenv("AWS_ENDPOINT_URL", front.url)
    try:
        yield front
    finally:
        front.close()
    assert not front.violations, "requests or responses the service model does not allow:\n" + "\n".join(
        front.violations)


@pytest.fixture
def fleet(door, aws) -> Fleet:
    return build_fleet(door, aws.region)


@pytest.fixture
def report() -> Captured:
    return Captured()
