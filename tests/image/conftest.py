"""Shared fixtures and options of the image suite (pytest-testinfra).

The target comes from the command line, so the same files check a local QEMU instance, a throwaway EC2
instance or (for the suite's own negative tests) a directory used as a chroot:

    pytest tests/image --hosts=paramiko://nc-test-1 --ssh-config=FILE --sudo
    pytest tests/image --connection=chroot --hosts=/path/to/rootfs -m "not live"

Expected values come from the settings that drove the bake, passed in by whoever runs the suite (test-ami reads
them from the artifact's record), never from constants in the tests nor from the instance's own
/etc/nextcloud-image/version-info.json, which is checked against them:

- ``NEXTCLOUD_TEST_EXPECTED`` (env, JSON) or ``--expected-build``: ``fingerprint``, ``docker_version``,
  ``docker_packages`` (package -> exact version, "" = not pinned), ``nextcloud_image`` (digest-pinned reference),
  ``nextcloud_version``, ``base_image`` (source AMI id / base disk digest).

- ``NEXTCLOUD_TEST_CANARIES`` (env, JSON object name -> value): the secret values this boot was given; kept
  out of argv because argv is visible to every local user.
- ``--image-artifact PATH`` (or ``NEXTCLOUD_TEST_ARTIFACT``): the disk image the instance was booted from,
  scanned on the test host (a local qcow2/raw file; not given for an AMI).
- ``--expected-instance-ids`` (or ``NEXTCLOUD_TEST_INSTANCE_IDS``, JSON host -> cloud-init instance id).
- ``--expected-tcp-ports`` / ``--expected-udp-ports``: what may listen on non-loopback addresses.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # image_suite_support, whatever the import mode

from image_suite_support import ON_DEMAND_SECRETS, ArtifactView, honour_strict_host_key_checking  # noqa: E402

VERSION_INFO = "/etc/nextcloud-image/version-info.json"

EXPECTED_KEYS = (
    "fingerprint", "docker_version", "docker_packages", "nextcloud_image", "nextcloud_version", "base_image",
)

MARKERS = {
    "provenance": "what the image records and carries, against the settings that drove the bake",
    "webroot": "the served code: outside any volume, read-only for the web server, nothing copied at start",
    "docker": "Docker engine: package, unit, daemon configuration",
    "nextcloud": "the derived Nextcloud image, its units, container health and readiness",
    "secrets": "secret delivery: runtime env file and canary values",
    "hygiene": "per-instance identity: host keys, machine-id, cloud-init state",
    "hardening": "SSH, accounts, listening ports",
    "live": "needs a booted system (systemd state, sockets, HTTP, Docker daemon); not meaningful in a chroot",
    "host_side": "runs on the test host against the artifact file, not on the target",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("nextcloud-image", "Nextcloud image suite")
    group.addoption(
        "--image-artifact",
        default=os.environ.get("NEXTCLOUD_TEST_ARTIFACT") or None,
        help="disk image file the target was booted from (qcow2 or raw), scanned on this host for canaries "
        "and bake identity; env NEXTCLOUD_TEST_ARTIFACT",
    )
    group.addoption(
        "--expected-build",
        default=os.environ.get("NEXTCLOUD_TEST_EXPECTED") or None,
        help="JSON object of what the bake was asked for (keys: " + ", ".join(EXPECTED_KEYS) + "); "
        "env NEXTCLOUD_TEST_EXPECTED. inv test-ami passes it from the artifact's record",
    )
    group.addoption(
        "--expected-instance-ids",
        default=os.environ.get("NEXTCLOUD_TEST_INSTANCE_IDS") or None,
        help='JSON object {"<testinfra host name>": "<cloud-init instance id>"}; env NEXTCLOUD_TEST_INSTANCE_IDS',
    )
    group.addoption(
        "--expected-tcp-ports",
        default=os.environ.get("NEXTCLOUD_TEST_TCP_PORTS", "22,80"),
        help="comma-separated TCP ports allowed to listen on non-loopback addresses (default 22,80)",
    )
    group.addoption(
        "--expected-udp-ports",
        default=os.environ.get("NEXTCLOUD_TEST_UDP_PORTS", "68"),
        help="comma-separated UDP ports allowed on non-loopback addresses (default 68, the DHCP client)",
    )


def pytest_configure(config: pytest.Config) -> None:
    honour_strict_host_key_checking()  # before testinfra connects: the canary's pinned host keys
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")


def _canary_values() -> dict[str, str] | None:
    raw = os.environ.get("NEXTCLOUD_TEST_CANARIES")
    if not raw:
        return None
    try:
        values = json.loads(raw)
    except ValueError as e:
        raise pytest.UsageError(f"NEXTCLOUD_TEST_CANARIES is not JSON: {e}") from None
    if (
        not isinstance(values, dict)
        or not values
        or not all(isinstance(v, str) and len(v) >= 12 for v in values.values())
    ):
        raise pytest.UsageError(
            "NEXTCLOUD_TEST_CANARIES must be a JSON object of name -> value with values of 12+ characters "
            "(short values would match by accident)"
        )
    return values


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # One test per secret, named after it, so a report says which secret leaked.
    if "canary_name" in metafunc.fixturenames:
        metafunc.parametrize("canary_name", sorted(_canary_values() or {}))
    if "boot_canary_name" in metafunc.fixturenames:  # the secrets resolved at boot, into runtime.env
        metafunc.parametrize("boot_canary_name", sorted(set(_canary_values() or {}) - ON_DEMAND_SECRETS))


# ---- fixtures -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def canaries() -> dict[str, str]:
    """The secret values given to this boot (NEXTCLOUD_TEST_CANARIES); the canary tests skip without them."""
    values = _canary_values()
    if values is None:
        pytest.skip("NEXTCLOUD_TEST_CANARIES not set: no canary values to look for")
    return values


@pytest.fixture(scope="session")
def artifact(request: pytest.FixtureRequest) -> Path:
    """The local disk image the target was booted from; tests needing it skip when none was given."""
    value = request.config.getoption("--image-artifact")
    if not value:
        pytest.skip("no --image-artifact given (an AMI cannot be scanned from here)")
    path = Path(value)
    if not path.is_file():
        raise pytest.UsageError(f"--image-artifact {path}: no such file")
    return path


@pytest.fixture(scope="session")
def artifact_view(artifact: Path, tmp_path_factory: pytest.TempPathFactory):
    """Read-only access to the artifact's bytes and root filesystem (see artifact_tools)."""
    view = ArtifactView(artifact, tmp_path_factory.mktemp("artifact"))
    yield view
    view.close()


@pytest.fixture(scope="session")
def expected(request: pytest.FixtureRequest) -> dict:
    """What the bake was asked for (the settings that drove it): the suite's expected values."""
    raw = request.config.getoption("--expected-build")
    if not raw:
        raise pytest.UsageError(
            "no expected build values: pass --expected-build (or NEXTCLOUD_TEST_EXPECTED) with "
            + ", ".join(EXPECTED_KEYS) + " from the settings that drove the bake; inv test-ami does this"
        )
    try:
        values = json.loads(raw)
    except ValueError as e:
        raise pytest.UsageError(f"--expected-build is not JSON: {e}") from None
    missing = [k for k in EXPECTED_KEYS if k not in (values if isinstance(values, dict) else {})]
    if missing:
        raise pytest.UsageError(f"--expected-build lacks {missing}")
    return values


@pytest.fixture(scope="module")
def version_info(host) -> dict:
    """The target's version-info.json: what the bake says it installed (checked against ``expected``)."""
    f = host.file(VERSION_INFO)
    assert f.is_file, f"{VERSION_INFO} missing: the bake must record what it installed"
    info = json.loads(f.content_string)
    missing = {"nextcloud_version", "nextcloud_image", "nextcloud_image_id", "docker_version", "fingerprint"} - set(
        info
    )
    assert not missing, f"{VERSION_INFO} lacks {sorted(missing)}"
    return info


@pytest.fixture(scope="module")
def boot_time(host) -> int:
    """Kernel boot time of the target (epoch seconds, /proc/stat btime)."""
    out = host.check_output("awk '/^btime/ {print $2}' /proc/stat")
    return int(out)


@pytest.fixture(scope="module")
def webroot(host) -> str:
    """Where the derived image serves Nextcloud from: its NEXTCLOUD_WEBROOT (needs the Docker daemon)."""
    env = host.check_output("docker image inspect --format '{{json .Config.Env}}' nextcloud-cluster:current")
    found = [e.split("=", 1)[1] for e in json.loads(env) if e.startswith("NEXTCLOUD_WEBROOT=")]
    assert found, "the derived image sets no NEXTCLOUD_WEBROOT"
    return found[0]
