"""Docker engine: installed and held at the versions the settings pinned, enabled, running, configured as the
contract says."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.docker

DAEMON_JSON = "/etc/docker/daemon.json"


def _upstream(deb_version: str) -> str:
    """'5:24.0.7-1~debian.12~bookworm' -> '24.0.7'; '20.10.24+dfsg1-1+b3' -> '20.10.24+dfsg1'."""
    without_epoch = deb_version.split(":", 1)[-1]
    return without_epoch.rsplit("-", 1)[0] if "-" in without_epoch else without_epoch


def _pins(expected: dict) -> list[tuple[str, str]]:
    return sorted(expected["docker_packages"].items())


def test_engine_packages_installed_at_pinned_versions(host, expected):
    wrong = {}
    for name, version in _pins(expected):
        pkg = host.package(name)
        if not pkg.is_installed or (version and pkg.version != version):
            wrong[name] = {"pinned": version or "(any)", "installed": pkg.version if pkg.is_installed else None}
    assert not wrong, f"engine packages not at the versions the settings pin: {wrong}"


def test_engine_packages_held(host, expected):
    held = set(host.check_output("apt-mark showhold").split())
    loose = sorted(name for name, _ in _pins(expected) if name not in held)
    assert not loose, f"not held (an upgrade could move them away from the pinned version): {loose}"


def test_version_info_records_the_pins(version_info, expected):
    recorded = version_info.get("docker_packages") or {}
    for name, version in _pins(expected):
        entry = recorded.get(name) or {}
        assert entry.get("pinned") == version, f"version-info records pin {entry.get('pinned')!r} for {name}"
        if version:
            assert entry.get("installed") == version, f"version-info says {name} {entry.get('installed')!r} installed"


def test_version_info_lists_every_installed_package(host, version_info):
    listed = host.check_output("dpkg-query --show --showformat '${Package}\\t${Version}\\n'")
    installed = dict(line.split("\t", 1) for line in listed.splitlines() if "\t" in line)
    assert version_info.get("packages") == installed, "version-info's package list is not what dpkg has installed"


@pytest.mark.parametrize("unit", ["docker.service", "containerd.service"])
def test_docker_units_enabled(host, unit):
    out = host.run(f"systemctl is-enabled {unit}")
    assert out.stdout.strip() == "enabled", f"{unit} is {out.stdout.strip() or out.stderr.strip()!r}, not enabled"


@pytest.mark.parametrize(
    ("key", "want"),
    [
        ("log-driver", "journald"),
        ("live-restore", True),
        # Host networking only: no docker0, no NAT, no iptables rules on the instance.
        ("bridge", "none"),
        ("iptables", False),
        ("ip6tables", False),
    ],
)
def test_daemon_json(host, key, want):
    f = host.file(DAEMON_JSON)
    assert f.is_file, f"{DAEMON_JSON} missing"
    config = json.loads(f.content_string)
    assert config.get(key) == want, f"{DAEMON_JSON}: {key} is {config.get(key)!r}, expected {want!r}"


@pytest.mark.live
def test_docker_running(host):
    assert host.service("docker").is_running, "docker.service is not active"


@pytest.mark.live
def test_running_engine_is_the_pinned_one(host, expected):
    server = host.check_output("docker version --format '{{.Server.Version}}'")
    engine = "docker.io" if expected["docker_version"] == "debian" else "docker-ce"
    pinned = expected["docker_packages"].get(engine) or host.package(engine).version
    assert server == _upstream(pinned), f"running dockerd is {server!r}, the pinned {engine} is {pinned!r}"


@pytest.mark.live
@pytest.mark.parametrize(
    ("template", "want"), [("{{.LoggingDriver}}", "journald"), ("{{.LiveRestoreEnabled}}", "true")]
)
def test_daemon_effective_config(host, template, want):
    value = host.check_output(f"docker info --format '{template}'")
    assert value == want, f"docker info {template} is {value!r}, expected {want!r}"


# The engine starts beside cloud-init: it must not wait for what cloud-init holds back (basic.target, the
# network targets), or every boot waits for SSH host keys and user data before dockerd even starts.
NOT_BEFORE_ENGINE = ("basic.target", "sysinit.target", "network-online.target", "network.target", "cloud-init.service")


@pytest.mark.live  # systemd's own view of the units (packaged unit, copies in /etc, drop-ins)
@pytest.mark.parametrize("unit", ["containerd.service", "docker.service", "docker.socket"])
def test_engine_starts_beside_cloud_init(host, unit):
    waits_for = _waits_for(host, unit, NOT_BEFORE_ENGINE)
    assert not waits_for, f"{unit} waits for {waits_for}: it would start only after cloud-init's network stage"


def _waits_for(host, unit: str, not_before: tuple[str, ...]) -> list[str]:
    """What of ``not_before`` the unit is ordered after, in systemd's own view (basic.target with default deps)."""
    props = dict(
        line.split("=", 1)
        for line in host.check_output(f"systemctl show {unit} -p DefaultDependencies -p After").splitlines()
        if "=" in line
    )
    waits_for = sorted(set(props.get("After", "").split()) & set(not_before))
    if props.get("DefaultDependencies") != "no":
        waits_for.append("basic.target (DefaultDependencies=yes)")
    return waits_for


# The container, and the socket it mounts, start as soon as the engine is up, beside cloud-init too: creating and
# starting the container then happens while cloud-init's network stage runs, and the entrypoint waits for the
# secrets file. Waiting for the secrets unit (or what cloud-init holds back) puts all of it back on the boot's path.
NOT_BEFORE_CONTAINER = ("basic.target", "sysinit.target", "sockets.target", "network-online.target",
                        "network.target", "networking.service", "cloud-init.service", "nextcloud-secrets.service")


@pytest.mark.live
@pytest.mark.parametrize("unit", ["nextcloud.service", "nextcloud-admin-password.socket",
                                  "nextcloud-admin-seal.socket"])
def test_container_starts_beside_cloud_init(host, unit):
    waits_for = _waits_for(host, unit, NOT_BEFORE_CONTAINER)
    assert not waits_for, (f"{unit} waits for {waits_for}: creating and starting the container would wait for "
                           "cloud-init's network stage and the secrets")


@pytest.mark.live  # systemd's view: what it stops first at shutdown is what it started last
def test_the_container_drains_before_the_network_goes_down(host):
    props = dict(
        line.split("=", 1)
        for line in host.check_output(
            "systemctl show nextcloud-drain.service -p ActiveState -p After -p ExecStop").splitlines()
        if "=" in line
    )
    assert props["ActiveState"] == "active", "nextcloud-drain.service is not active: nothing drains at shutdown"
    after = set(props["After"].split())
    assert {"nextcloud.service", "docker.service", "network.target"} <= after, after
    assert "docker stop" in props["ExecStop"].replace("/usr/bin/docker", "docker")
    # ifupdown takes the interfaces down only after network.target stopped, i.e. after the drain.
    assert "network.target" in host.check_output("systemctl show networking.service -p Before --value").split()


@pytest.mark.live
def test_no_docker_bridge_or_nat(host):
    networks = host.check_output("docker network ls --format '{{.Name}}'").split()
    assert "bridge" not in networks, f"dockerd created its bridge network: {networks}"
    chains = host.run("iptables -S 2>/dev/null || true").stdout
    assert "DOCKER" not in chains, f"dockerd wrote iptables rules: {chains[:300]}"


# The secrets are resolved while cloud-init's network stage still runs: instance.json comes from the user data its
# local stage cached (nextcloud-instance-json.service), not from that stage's write_files.
NOT_BEFORE_SECRETS = ("basic.target", "sysinit.target", "network-online.target", "cloud-init.service")


@pytest.mark.live
@pytest.mark.parametrize("unit", ["nextcloud-instance-json.service", "nextcloud-secrets.service"])
def test_secrets_do_not_wait_for_cloud_inits_network_stage(host, unit):
    waits_for = _waits_for(host, unit, NOT_BEFORE_SECRETS)
    assert not waits_for, (f"{unit} waits for {waits_for}: the secrets would be resolved only after cloud-init's "
                           "network stage")


@pytest.mark.live
def test_instance_json_came_from_the_local_stage_cache(host):
    # On this boot the early path must have worked (the fallback, waiting for cloud-init, is for user data it cannot
    # read): otherwise the ordering above gains nothing.
    log = host.check_output("journalctl --no-pager -b -o cat -u nextcloud-instance-json.service")
    assert "from the user data cloud-init's local stage cached" in log or "exists already" in log, log[-600:]
