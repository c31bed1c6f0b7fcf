"""The image suite (tests/image) catches what it claims to: each check FAILS on a deliberately broken target.

The target is not a VM: a small Debian root filesystem built once with mmdebstrap (cached under
build/cache/image-suite-rootfs/<key>/), put in the state of a correctly booted instance, then broken one way
per case. Each case gets its own overlayfs over the cached tree, so cases never see each other's damage and
the cache is never written. The real tests/image files run in a pytest subprocess through testinfra's chroot
backend (``--connection=chroot --hosts=/path``, ``-m "not live"``), and the case asserts that the specific
check failed. The unbroken target must pass every check that is meaningful without a running system.

Covered here (file-level checks): engine pins (installed, held, recorded), the package list, provenance against the
expected build values, unit enablement, daemon.json; runtime.env
presence/mode/content; canaries outside the allowed files, in world-readable files, in the journal, in the
artifact (plain and compressed qcow2); machine-id, SSH host keys and cloud-init state against the artifact;
sshd effective options (sshd -T); passwords in /etc/shadow.

NOT covered here (marked ``live`` in the suite; they need systemd, the Docker daemon, sockets or HTTP of a
booted system, and only run against a VM or EC2): docker/nextcloud units running, effective daemon config,
derived image id, container health, /readyz, web root in the image, config writability in the container,
tmpfs, listening ports, identity files created after boot, cloud-init status.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from render.outputs import SECRET_VARIABLES

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / "build" / "cache" / "image-suite-rootfs"
PACKAGES = (
    "systemd-sysv",
    "openssh-server",
    "docker.io",
    "iproute2",
    "curl",
    "systemd-journal-remote",  # only to plant a journal entry in the journal-leak case
)
ROOTFS_FORMAT = 1
SECRET_NAMES = tuple(sorted(SECRET_VARIABLES.values()))


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not installed")


# ---- the cached pristine root filesystem -------------------------------------------------------------
@pytest.fixture(scope="session")
def pristine_rootfs() -> Path:
    """A Debian bookworm tree with the packages the suite inspects; built once, reused while inputs match."""
    if os.geteuid() != 0:
        pytest.skip("needs root (chroot, overlayfs)")
    for tool in ("mmdebstrap", "qemu-img", "mkfs.ext4", "debugfs"):
        _need(tool)
    key = hashlib.sha256(json.dumps([ROOTFS_FORMAT, PACKAGES]).encode()).hexdigest()[:16]
    root = CACHE / key
    if (root / ".complete").exists():
        return root
    tmp = CACHE / f".{key}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mmdebstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", "bookworm", str(tmp)],
        check=True,
        capture_output=True,
    )
    (tmp / ".complete").touch()
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    return root


@pytest.fixture(scope="session")
def canaries() -> dict[str, str]:
    return {name: f"canary{name[10:].lower().replace('_', '')}{secrets.token_hex(8)}" for name in SECRET_NAMES}


# ---- a booted-instance state, then per-case damage -----------------------------------------------------
def _write(root: Path, path: str, content: str | bytes, mode: int = 0o644) -> Path:
    p = root / path.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.is_symlink() or p.exists():
        p.unlink()
    p.write_bytes(content.encode() if isinstance(content, str) else content)
    p.chmod(mode)
    return p


def _chroot(root: Path, *cmd: str, stdin: bytes | None = None) -> str:
    return subprocess.run(["chroot", str(root), *cmd], check=True, capture_output=True, input=stdin).stdout.decode()


def expected_build(docker_version: str) -> dict[str, object]:
    """What "the settings that drove the bake" asked for, as test-ami hands it to the suite."""
    return {
        "fingerprint": "cd" * 32,
        "docker_version": "debian",
        "docker_packages": {"docker.io": docker_version},
        "nextcloud_image": "10.0.2.2:55000/nextcloud-standin:29.0.7-apache@sha256:" + "ee" * 32,
        "nextcloud_version": "29.0.7",
        "base_image": "sha256:" + "bb" * 32,
    }


def make_instance_state(root: Path, canaries: dict[str, str], instance_id: str) -> None:
    """What a correctly baked and booted instance looks like, as far as files go."""
    _write(root, "/etc/machine-id", secrets.token_hex(16) + "\n", 0o444)
    for t in ("ed25519", "ecdsa", "rsa"):  # "freshly generated at first boot"
        for suffix in ("", ".pub"):
            (root / f"etc/ssh/ssh_host_{t}_key{suffix}").unlink(missing_ok=True)
    _chroot(root, "ssh-keygen", "-A")
    _write(root, "/etc/ssh/sshd_config.d/50-image.conf", "PasswordAuthentication no\nKbdInteractiveAuthentication no\n")
    (root / "run/sshd").mkdir(parents=True, exist_ok=True)
    daemon = {"log-driver": "journald", "live-restore": True, "bridge": "none", "iptables": False, "ip6tables": False}
    _write(root, "/etc/docker/daemon.json", json.dumps(daemon))
    docker_version = _chroot(root, "dpkg-query", "-W", "-f", "${Version}", "docker.io")
    _chroot(root, "apt-mark", "hold", "docker.io")
    listing = _chroot(root, "dpkg-query", "--show", "--showformat", "${Package}\t${Version}\n")
    expected = expected_build(docker_version)
    # Fixed here, before any case breaks the target: the settings do not change when the instance does.
    (root.parent / "expected-build.json").write_text(json.dumps(expected))
    _write(
        root,
        "/etc/nextcloud-image/version-info.json",
        json.dumps(
            {
                "git_sha": "0" * 40,
                "nextcloud_version": expected["nextcloud_version"],
                "nextcloud_image": expected["nextcloud_image"],
                "nextcloud_image_digest": expected["nextcloud_image"].rsplit("@", 1)[1],
                "nextcloud_image_id": "sha256:" + "ab" * 32,
                "docker_version": docker_version,
                "docker_packages": {"docker.io": {"pinned": docker_version, "installed": docker_version}},
                "held_packages": ["docker.io"],
                "packages": dict(line.split("\t", 1) for line in listing.splitlines() if "\t" in line),
                "base_image": expected["base_image"],
                "fingerprint": expected["fingerprint"],
                "build_time": "2026-01-01T00:00:00Z",
                "environment": "local",
            }
        ),
    )
    for unit in ("nextcloud-secrets.service", "nextcloud.service"):
        _write(
            root,
            f"/etc/systemd/system/{unit}",
            "[Unit]\nDescription=fixture\n[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n",
        )
    _chroot(root, "systemctl", "enable", "nextcloud-secrets.service", "nextcloud.service", "docker.service")
    (root / "run/nextcloud").mkdir(mode=0o700, parents=True, exist_ok=True)
    (root / "run/nextcloud").chmod(0o700)
    env_lines = ["NEXTCLOUD_ALLOW_INSTALL=1", "NEXTCLOUD_ALLOW_UPGRADE=0"]
    # Every secret but the admin password, which only the installing node fetches, on demand.
    env_lines += [f"{k}={v}" for k, v in sorted(canaries.items()) if k != "NEXTCLOUD_ADMIN_PASSWORD"]
    _write(root, "/run/nextcloud/runtime.env", "\n".join(env_lines) + "\n", 0o600)
    instance_json = json.dumps({"schema": 1, "secrets": {k: f"literal:{v}" for k, v in canaries.items()}})
    _write(root, "/etc/nextcloud/instance.json", instance_json, 0o600)
    user_data = (
        "#cloud-config\nwrite_files:\n- path: /etc/nextcloud/instance.json\n  content: '" + instance_json + "'\n"
    )
    inst = f"/var/lib/cloud/instances/{instance_id}"
    _write(root, f"{inst}/user-data.txt", user_data, 0o600)
    _write(root, f"{inst}/cloud-config.txt", user_data, 0o600)
    _write(root, f"{inst}/obj.pkl", b"\x80\x04" + instance_json.encode(), 0o400)
    _write(root, f"{inst}/boot-finished", "1 up 100\n")
    _write(root, "/var/lib/cloud/data/instance-id", instance_id + "\n")
    link = root / "var/lib/cloud/instance"
    link.unlink(missing_ok=True)
    link.symlink_to(inst)


def make_artifact(workdir: Path, name: str, extra: Callable[[Path], None] | None = None, compress: bool = False):
    """A small qcow2 standing in for the baked artifact: no identity, unless ``extra`` adds some."""
    tree = workdir / f"{name}-tree"
    _write(tree, "/etc/machine-id", "")
    _write(tree, "/etc/ssh/sshd_config", "Include /etc/ssh/sshd_config.d/*.conf\n")
    (tree / "var/lib/cloud/instances").mkdir(parents=True, exist_ok=True)
    if extra:
        extra(tree)
    raw = workdir / f"{name}.raw"
    subprocess.run(["truncate", "-s", "64M", str(raw)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-L", "root", "-d", str(tree), str(raw)], check=True)
    out = workdir / f"{name}.qcow2"
    subprocess.run(
        ["qemu-img", "convert", *(["-c"] if compress else []), "-O", "qcow2", str(raw), str(out)], check=True
    )
    raw.unlink()
    return out


@pytest.fixture
def target(pristine_rootfs: Path, canaries: dict[str, str], tmp_path: Path) -> Iterator[Path]:
    """A fresh overlay of the cached rootfs in the state of a correctly booted instance (per test)."""
    upper, work, merged = tmp_path / "upper", tmp_path / "work", tmp_path / "root"
    for d in (upper, work, merged):
        d.mkdir()
    subprocess.run(
        [
            "mount",
            "-t",
            "overlay",
            "overlay",
            "-o",
            f"lowerdir={pristine_rootfs},upperdir={upper},workdir={work}",
            str(merged),
        ],
        check=True,
    )
    try:
        make_instance_state(merged, canaries, "i-fixture0001")
        yield merged
    finally:
        subprocess.run(["umount", "-l", str(merged)], check=False)


@pytest.fixture
def clean_artifact(tmp_path: Path) -> Path:
    return make_artifact(tmp_path, "clean")


def run_suite(
    root: Path, canaries: dict[str, str], tmp_path: Path, *, artifact: Path | None = None, files: tuple[str, ...] = ()
) -> dict[str, str]:
    """Run tests/image against ``root``; return {"file::test[param]": "passed|failed|skipped|error"}."""
    junit = tmp_path / f"junit-{secrets.token_hex(4)}.xml"
    targets = [f"tests/image/{f}" for f in files] or ["tests/image"]
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        *targets,
        "--connection=chroot",
        f"--hosts={root}",
        "-m",
        "not live",
        "-p",
        "no:cacheprovider",
        f"--junitxml={junit}",
        "-q",
        "--no-header",
    ]
    if artifact:
        cmd.append(f"--image-artifact={artifact}")
    env = {**os.environ, "NEXTCLOUD_TEST_CANARIES": json.dumps(canaries),
           "NEXTCLOUD_TEST_EXPECTED": (root.parent / "expected-build.json").read_text()}
    env.pop("NEXTCLOUD_TEST_ARTIFACT", None)
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if not junit.exists():
        raise AssertionError(f"suite did not run:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    results = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        module = case.get("classname", "").rsplit(".", 1)[-1]
        # Drop testinfra's host part of the id ("chroot:///tmp/...root-"): ids are then stable per case.
        name = case.get("name", "").replace(f"chroot://{root}-", "").replace(f"chroot://{root}", "")
        name = name.replace("[-", "[").replace("-]", "]").replace("--", "-").replace("[]", "")
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed"}.get(child.tag, child.tag)
        results[f"{module}::{name}"] = outcome
    return results


# ---- the unbroken target passes -----------------------------------------------------------------------
def test_unbroken_target_passes_every_file_level_check(target, canaries, clean_artifact, tmp_path):
    results = run_suite(target, canaries, tmp_path, artifact=clean_artifact)
    failed = {k: v for k, v in results.items() if v in ("failed", "error")}
    assert not failed, f"checks failing on a correct target: {failed}"
    passed = [k for k, v in results.items() if v == "passed"]
    skipped = [k for k, v in results.items() if v == "skipped"]
    assert not skipped, f"file-level checks skipped on a full target (canaries and artifact given): {skipped}"
    assert len(passed) >= 30, f"only {len(passed)} checks ran: {results}"
    # Every concern is exercised, not skipped away.
    for module in ("test_docker", "test_nextcloud", "test_secrets", "test_hygiene", "test_hardening"):
        assert any(k.startswith(module + "::") for k in passed), f"nothing in {module} ran: {results}"
    assert "test_secrets::test_canaries_not_in_artifact" in passed


# ---- one deliberate break per case; the named check must fail -------------------------------------------
def _leak_world_readable(root: Path, c: dict[str, str]) -> None:
    _write(root, "/etc/nextcloud/debug-dump.conf", f"db_password={c['NEXTCLOUD_DB_PASSWORD']}\n", 0o644)


def _leak_into_docker_state(root: Path, c: dict[str, str]) -> None:
    _write(root, "/var/lib/docker/containers/abc/config.v2.json", json.dumps({"Env": [c["NEXTCLOUD_SECRET"]]}), 0o600)


def _instance_json_world_readable(root: Path, c: dict[str, str]) -> None:
    (root / "etc/nextcloud/instance.json").chmod(0o644)


def _runtime_env_mode(root: Path, c: dict[str, str]) -> None:
    (root / "run/nextcloud/runtime.env").chmod(0o644)


def _runtime_env_missing(root: Path, c: dict[str, str]) -> None:
    (root / "run/nextcloud/runtime.env").unlink()


def _runtime_env_lacks_secret(root: Path, c: dict[str, str]) -> None:
    p = root / "run/nextcloud/runtime.env"
    p.write_text("".join(line + "\n" for line in p.read_text().splitlines() if "REDIS" not in line))


def _runtime_env_keeps_admin_password(root: Path, c: dict[str, str]) -> None:
    with (root / "run/nextcloud/runtime.env").open("a") as f:
        f.write(f"NEXTCLOUD_ADMIN_PASSWORD={c['NEXTCLOUD_ADMIN_PASSWORD']}\n")


def _journal_leak(root: Path, c: dict[str, str]) -> None:
    machine_id = (root / "etc/machine-id").read_text().strip()
    (root / f"var/log/journal/{machine_id}").mkdir(parents=True, exist_ok=True)
    entry = f"__REALTIME_TIMESTAMP=1700000000000000\nMESSAGE=connecting with {c['NEXTCLOUD_ADMIN_PASSWORD']}\n\n"
    # journal-remote writes a real journal file from export format; it needs /proc (boot id) while it runs.
    subprocess.run(["mount", "-t", "proc", "proc", str(root / "proc")], check=True)
    try:
        _chroot(
            root,
            "/lib/systemd/systemd-journal-remote",
            "-o",
            f"/var/log/journal/{machine_id}/leak.journal",
            "-",
            stdin=entry.encode(),
        )
    finally:
        subprocess.run(["umount", str(root / "proc")], check=True)


def _unit_disabled(unit: str):
    def breaker(root: Path, c: dict[str, str]) -> None:
        _chroot(root, "systemctl", "disable", unit)

    return breaker


def _daemon_json(key: str, value: object):
    def breaker(root: Path, c: dict[str, str]) -> None:
        p = root / "etc/docker/daemon.json"
        p.write_text(json.dumps({**json.loads(p.read_text()), key: value}))

    return breaker


def _version_info_field(key: str, value: object):
    def breaker(root: Path, c: dict[str, str]) -> None:
        p = root / "etc/nextcloud-image/version-info.json"
        p.write_text(json.dumps({**json.loads(p.read_text()), key: value}))

    return breaker


def _docker_pins_misrecorded(root: Path, c: dict[str, str]) -> None:
    _version_info_field("docker_packages", {"docker.io": {"pinned": "99.0.0", "installed": "99.0.0"}})(root, c)


def _docker_unheld(root: Path, c: dict[str, str]) -> None:
    _chroot(root, "apt-mark", "unhold", "docker.io")


def _docker_other_version(root: Path, c: dict[str, str]) -> None:
    # dpkg believes another version is installed, as after an upgrade the pin did not hold.
    status = root / "var/lib/dpkg/status"
    text = status.read_text()
    start = text.index("Package: docker.io\n")
    end = text.index("\n\n", start)
    block = "\n".join("Version: 99.0.0-1" if line.startswith("Version: ") else line
                      for line in text[start:end].splitlines())
    status.write_text(text[:start] + block + text[end:])


def _package_list_incomplete(root: Path, c: dict[str, str]) -> None:
    p = root / "etc/nextcloud-image/version-info.json"
    info = json.loads(p.read_text())
    info["packages"].pop("docker.io")
    p.write_text(json.dumps(info))


def _password_set(root: Path, c: dict[str, str]) -> None:
    _chroot(root, "chpasswd", stdin=b"root:correct-horse\n")


def _empty_password(root: Path, c: dict[str, str]) -> None:
    _chroot(root, "passwd", "-d", "root")


def _sshd_passwords_on(root: Path, c: dict[str, str]) -> None:
    # sshd takes the first value it reads; an earlier drop-in wins, as a careless package's would.
    _write(root, "/etc/ssh/sshd_config.d/00-cloudimg.conf", "PasswordAuthentication yes\n")


def _machine_id_empty(root: Path, c: dict[str, str]) -> None:
    _write(root, "/etc/machine-id", "")


def _no_host_keys(root: Path, c: dict[str, str]) -> None:
    for p in (root / "etc/ssh").glob("ssh_host_*"):
        p.unlink()


def _stale_cloud_instance(root: Path, c: dict[str, str]) -> None:
    _write(root, "/var/lib/cloud/instances/i-bake-packer/boot-finished", "1\n")


CASES = {
    "canary in a world-readable file": (
        _leak_world_readable,
        [
            "test_secrets::test_canary_only_in_allowed_files[NEXTCLOUD_DB_PASSWORD]",
            "test_secrets::test_files_holding_canaries_are_root_only",
        ],
    ),
    "canary in Docker's container state": (
        _leak_into_docker_state,
        ["test_secrets::test_canary_only_in_allowed_files[NEXTCLOUD_SECRET]"],
    ),
    "instance.json readable by others": (
        _instance_json_world_readable,
        ["test_secrets::test_files_holding_canaries_are_root_only"],
    ),
    "runtime.env mode 0644": (_runtime_env_mode, ["test_secrets::test_runtime_env_is_root_only"]),
    "runtime.env missing": (_runtime_env_missing, ["test_secrets::test_runtime_env_is_root_only"]),
    "runtime.env lacks a secret": (_runtime_env_lacks_secret, ["test_secrets::test_runtime_env_holds_every_secret"]),
    "runtime.env keeps the admin password": (
        _runtime_env_keeps_admin_password,
        ["test_secrets::test_admin_password_is_not_kept_at_boot"],
    ),
    "canary in the journal": (_journal_leak, ["test_secrets::test_canary_not_in_journal[NEXTCLOUD_ADMIN_PASSWORD]"]),
    "nextcloud.service disabled": (
        _unit_disabled("nextcloud.service"),
        ["test_nextcloud::test_units_enabled[nextcloud.service]"],
    ),
    "nextcloud-secrets.service disabled": (
        _unit_disabled("nextcloud-secrets.service"),
        ["test_nextcloud::test_units_enabled[nextcloud-secrets.service]"],
    ),
    "docker.service disabled": (
        _unit_disabled("docker.service"),
        ["test_docker::test_docker_units_enabled[docker.service]"],
    ),
    "live-restore off": (_daemon_json("live-restore", False), ["test_docker::test_daemon_json[live-restore-True]"]),
    "docker bridge and NAT back on": (
        _daemon_json("iptables", True),
        ["test_docker::test_daemon_json[iptables-False]"],
    ),
    "json-file logging": (
        _daemon_json("log-driver", "json-file"),
        ["test_docker::test_daemon_json[log-driver-journald]"],
    ),
    "engine pins misrecorded": (
        _docker_pins_misrecorded,
        ["test_docker::test_version_info_records_the_pins"],
    ),
    "engine not held": (_docker_unheld, ["test_docker::test_engine_packages_held"]),
    "engine at another version than pinned": (
        _docker_other_version,
        ["test_docker::test_engine_packages_installed_at_pinned_versions"],
    ),
    "package list incomplete": (
        _package_list_incomplete,
        ["test_docker::test_version_info_lists_every_installed_package"],
    ),
    "another Nextcloud image recorded than asked for": (
        _version_info_field("nextcloud_image", "10.0.2.2:55000/nextcloud-standin:29.0.7-apache@sha256:" + "ff" * 32),
        ["test_provenance::test_version_info_records_what_was_asked_for[nextcloud_image-nextcloud_image]"],
    ),
    "another base image recorded than asked for": (
        _version_info_field("base_image", "sha256:" + "00" * 32),
        ["test_provenance::test_version_info_records_what_was_asked_for[base_image-base_image]"],
    ),
    "another digest pulled than pinned": (
        _version_info_field("nextcloud_image_digest", "sha256:" + "ff" * 32),
        ["test_provenance::test_version_info_records_the_pulled_digest"],
    ),
    "root has a password": (_password_set, ["test_hardening::test_no_account_has_a_password"]),
    "root has an empty password": (_empty_password, ["test_hardening::test_no_account_has_a_password"]),
    "sshd accepts passwords": (
        _sshd_passwords_on,
        ["test_hardening::test_sshd_effective_option[passwordauthentication-no]"],
    ),
    "machine-id empty": (_machine_id_empty, ["test_hygiene::test_machine_id_is_set"]),
    "no SSH host keys": (_no_host_keys, ["test_hygiene::test_host_keys_exist"]),
    "stale cloud-init instance from the bake": (
        _stale_cloud_instance,
        ["test_hygiene::test_cloud_init_ran_for_this_instance_only"],
    ),
}


def _failed(results: dict[str, str], expected: list[str]) -> list[str]:
    return [e for e in expected if results.get(e) != "failed"]


@pytest.mark.parametrize("case", list(CASES))
def test_broken_target_fails_the_check(case, target, canaries, tmp_path):
    breaker, expected = CASES[case]
    breaker(target, canaries)
    files = tuple(sorted({e.split("::")[0] + ".py" for e in expected}))
    results = run_suite(target, canaries, tmp_path, files=files)
    missed = _failed(results, expected)
    assert not missed, f"{case}: expected failures not seen: {[(m, results.get(m)) for m in missed]}\n{results}"


# ---- the artifact side (host-side checks) -------------------------------------------------------------
def _artifact_with_target_identity(target: Path):
    def extra(tree: Path) -> None:
        for p in (target / "etc/ssh").glob("ssh_host_*"):
            shutil.copy(p, tree / "etc/ssh" / p.name)
        shutil.copy(target / "etc/machine-id", tree / "etc/machine-id")

    return extra


@pytest.mark.parametrize("compress", [False, True], ids=["plain-qcow2", "compressed-qcow2"])
def test_canary_in_artifact_fails(target, canaries, tmp_path, compress):
    def extra(tree: Path) -> None:
        _write(tree, "/var/log/bake.log", f"resolved {canaries['NEXTCLOUD_PASSWORDSALT']}\n")

    artifact = make_artifact(tmp_path, "leaky", extra, compress=compress)
    results = run_suite(target, canaries, tmp_path, artifact=artifact, files=("test_secrets.py",))
    assert results.get("test_secrets::test_canaries_not_in_artifact") == "failed", results


def test_baked_identity_fails(target, canaries, tmp_path):
    artifact = make_artifact(tmp_path, "identity", _artifact_with_target_identity(target))
    results = run_suite(target, canaries, tmp_path, artifact=artifact, files=("test_hygiene.py",))
    expected = [
        "test_hygiene::test_artifact_carries_no_identity",
        "test_hygiene::test_machine_id_differs_from_artifact",
        "test_hygiene::test_host_keys_differ_from_artifact",
    ]
    assert not _failed(results, expected), results
