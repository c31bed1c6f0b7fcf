"""The stack's tests run against moto with CloudFormation's missing parts filled in (cfn_emulator.py says which)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from emulator_process import serve_moto


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """This directory's emulator: moto's server started through cfn_emulator.py (same API, same fixtures)."""
    yield from serve_moto(tmp_path_factory, [sys.executable, str(Path(__file__).with_name("cfn_emulator.py"))])
