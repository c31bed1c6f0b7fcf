"""The AWS emulator for the tests: moto in server mode on loopback, reached through AWS_ENDPOINT_URL exactly as
production code reaches any endpoint, so the code under test is the code that runs against AWS.

What the emulator does not do (instance refresh, SourceVersion, snapshot deletion on deregister, …) is listed in
shared/DESIGN.md; tests that need those parts use doubles that say what they stand in for.

Every test that uses the ``aws`` fixture also proves two things on the way out:
- the IAM policies in infra/iam/ allow every call the production code made during the test (the calls made
  through infra.aws.session, and those Packer made, read from the emulator's request recording);
- nothing connected anywhere but loopback (a socket guard; the emulator hands out private addresses that belong
  to nobody here).
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import os
import socket
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from emulator_process import moto_api as _moto_api
from emulator_process import serve_moto
from iam_coverage import assert_allowed
from rollout_fixtures import door, fleet, report  # noqa: F401 - the rollout tests' fixtures

from infra.aws import session as aws_session

ROOT = Path(__file__).resolve().parents[2]
REGION = "eu-central-1"
ACCOUNT = "123456789012"  # moto's account for any credentials


def _allowed_address(address: object) -> bool:
    if not isinstance(address, tuple) or not address:
        return True  # AF_UNIX and friends
    host = address[0]
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any connection from this process to a non-loopback address fails the test (network rule)."""
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def connect(self: socket.socket, address: object) -> None:
        if not _allowed_address(address):
            raise AssertionError(f"a test tried to connect to {address!r}: only loopback may be reached")
        return real_connect(self, address)

    def connect_ex(self: socket.socket, address: object) -> int:
        if not _allowed_address(address):
            raise AssertionError(f"a test tried to connect to {address!r}: only loopback may be reached")
        return real_connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)


# Debian's AMIs (owner 136693071363) are not in moto's catalogue: the server starts with its small catalogue plus
# these (MOTO_AMIS_PATH), in every region, restored by every reset. Without MOTO_AMIS_PATH moto also loads ~1,250
# "latest" AMIs per region, each with a volume and a snapshot, which costs seconds after every reset.
DEBIAN_AMIS = Path(__file__).with_name("debian-amis.json")


def _ami_catalogue(path: Path) -> Path:
    """moto's own AMI catalogue (44 public AMIs) + Debian's."""
    from moto.utilities.utils import load_resource

    amis = [*load_resource("ec2/resources/amis.json"), *json.loads(DEBIAN_AMIS.read_text())]
    path.write_text(json.dumps(amis))
    return path


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``moto_server`` in its own process on 127.0.0.1 (a free port), request recording on; yields its URL."""
    catalogue = _ami_catalogue(tmp_path_factory.mktemp("amis") / "amis.json")
    yield from serve_moto(tmp_path_factory, [sys.executable, "-m", "moto.server"], {"MOTO_AMIS_PATH": str(catalogue)})


@dataclass
class Emulator:
    """The running emulator for one test: its URL, a boto3 client factory for test setup, the calls made."""

    url: str
    region: str = REGION
    account: str = ACCOUNT
    calls: set[tuple[str, str]] = field(default_factory=set)

    def client(self, service: str, region: str | None = None):
        """A plain boto3 client for arranging and inspecting state (not production code: not IAM-checked)."""
        import boto3

        return boto3.client(service, region_name=region or self.region)

    def recorded_requests(self) -> list[dict]:
        raw = _moto_api(self.url, "/moto-api/recorder/download-recording").decode()
        return [json.loads(line) for line in raw.splitlines() if line.strip()]

    def foreign_calls(self) -> set[tuple[str, str]]:
        """(IAM prefix, action) of requests made by programs other than boto3 (Packer), from the recording."""
        found = set()
        for req in self.recorded_requests():
            headers = {k.lower(): v for k, v in (req.get("headers") or {}).items()}
            agent = headers.get("user-agent", "")
            if agent.startswith(("Boto3/", "Botocore/", "aws-cli/")) or req.get("path", "/").startswith("/moto-api"):
                continue
            scope = headers.get("authorization", "").split("Credential=", 1)[-1].split(",", 1)[0].split("/")
            service = scope[3] if len(scope) > 3 else "?"
            action = None
            if "x-amz-target" in headers:
                action = headers["x-amz-target"].rsplit(".", 1)[-1]
            else:
                body = req.get("body") or ""
                with contextlib.suppress(ValueError, UnicodeDecodeError):
                    body = base64.b64decode(body).decode()
                qs = urllib.parse.parse_qs(body) if "=" in body else {}
                qs.update(urllib.parse.parse_qs(urllib.parse.urlsplit(req.get("path", "")).query))
                action = (qs.get("Action") or [None])[0]
            found.add((service, action or f"{req.get('method')} {req.get('path')}"))
        return found


@pytest.fixture
def aws(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulator]:
    """A fresh emulator state, the standard endpoint variable pointing at it, fake credentials, no host config.

    On the way out: every call the production code made must be allowed by infra/iam/*.json.
    """
    _moto_api(moto_server, "/moto-api/reset", b"")
    _moto_api(moto_server, "/moto-api/recorder/reset-recording", b"")
    _moto_api(moto_server, "/moto-api/recorder/start-recording", b"")
    for name in list(os.environ):
        if name.startswith(("AWS_", "NCIMAGE_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    emulator = Emulator(moto_server)
    observer = lambda service, operation: emulator.calls.add((service, operation))  # noqa: E731
    aws_session.CALL_OBSERVERS.append(observer)
    try:
        yield emulator
    finally:
        aws_session.CALL_OBSERVERS.remove(observer)
    assert_allowed(emulator.calls, emulator.foreign_calls())
