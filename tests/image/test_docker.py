"""Docker engine: installed at the version the bake recorded, enabled, running, configured as the contract says."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.docker

DAEMON_JSON = "/etc/docker/daemon.json"
PACKAGES = ("docker.io", "docker-ce")  # Debian's build or Docker's; the environment chooses


def _upstream(deb_version: str) -> str:
    """'5:24.0.7-1~debian.12~bookworm' -> '24.0.7'; '20.10.24+dfsg1-1+b3' -> '20.10.24+dfsg1'."""
    without_epoch = deb_version.split(":", 1)[-1]
    return without_epoch.rsplit("-", 1)[0] if "-" in without_epoch else without_epoch


def _matches(recorded: str, deb_version: str) -> bool:
    return recorded in (deb_version, _upstream(deb_version))


def test_docker_package_installed_at_recorded_version(host, version_info):
    installed = {name: host.package(name).version for name in PACKAGES if host.package(name).is_installed}
    assert installed, f"none of {PACKAGES} is installed"
    recorded = version_info["docker_version"]
    assert any(_matches(recorded, v) for v in installed.values()), (
        f"version-info docker_version {recorded!r} does not match installed {installed}"
    )


@pytest.mark.parametrize("unit", ["docker.service", "containerd.service"])
def test_docker_units_enabled(host, unit):
    out = host.run(f"systemctl is-enabled {unit}")
    assert out.stdout.strip() == "enabled", f"{unit} is {out.stdout.strip() or out.stderr.strip()!r}, not enabled"


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("log-driver", "journald"),
        ("live-restore", True),
        # Host networking only: no docker0, no NAT, no iptables rules on the instance.
        ("bridge", "none"),
        ("iptables", False),
        ("ip6tables", False),
    ],
)
def test_daemon_json(host, key, expected):
    f = host.file(DAEMON_JSON)
    assert f.is_file, f"{DAEMON_JSON} missing"
    config = json.loads(f.content_string)
    assert config.get(key) == expected, f"{DAEMON_JSON}: {key} is {config.get(key)!r}, expected {expected!r}"


@pytest.mark.live
def test_docker_running(host):
    assert host.service("docker").is_running, "docker.service is not active"


@pytest.mark.live
def test_docker_server_version_is_recorded_one(host, version_info):
    server = host.check_output("docker version --format '{{.Server.Version}}'")
    recorded = version_info["docker_version"]
    assert server == recorded or _upstream(recorded).startswith(server) or recorded.startswith(server), (
        f"running dockerd is {server!r}, version-info says {recorded!r}"
    )


@pytest.mark.live
@pytest.mark.parametrize(
    ("template", "expected"), [("{{.LoggingDriver}}", "journald"), ("{{.LiveRestoreEnabled}}", "true")]
)
def test_daemon_effective_config(host, template, expected):
    value = host.check_output(f"docker info --format '{template}'")
    assert value == expected, f"docker info {template} is {value!r}, expected {expected!r}"


# The engine starts beside cloud-init: it must not wait for what cloud-init holds back (basic.target, the
# network targets), or every boot waits for SSH host keys and user data before dockerd even starts.
NOT_BEFORE_ENGINE = ("basic.target", "sysinit.target", "network-online.target", "network.target", "cloud-init.service")


@pytest.mark.live  # systemd's own view of the units (packaged unit, copies in /etc, drop-ins)
@pytest.mark.parametrize("unit", ["containerd.service", "docker.service", "docker.socket"])
def test_engine_starts_beside_cloud_init(host, unit):
    props = dict(
        line.split("=", 1)
        for line in host.check_output(f"systemctl show {unit} -p DefaultDependencies -p After").splitlines()
        if "=" in line
    )
    waits_for = sorted(set(props.get("After", "").split()) & set(NOT_BEFORE_ENGINE))
    assert props.get("DefaultDependencies") == "no" and not waits_for, (
        f"{unit} waits for {waits_for or 'basic.target (DefaultDependencies=yes)'}: it would start only after "
        "cloud-init's network stage"
    )


@pytest.mark.live
def test_no_docker_bridge_or_nat(host):
    networks = host.check_output("docker network ls --format '{{.Name}}'").split()
    assert "bridge" not in networks, f"dockerd created its bridge network: {networks}"
    chains = host.run("iptables -S 2>/dev/null || true").stdout
    assert "DOCKER" not in chains, f"dockerd wrote iptables rules: {chains[:300]}"
