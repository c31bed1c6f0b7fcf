"""Per-instance identity: nothing that identifies a machine may come from the bake.

Host-agnostic checks compare with the boot time; with ``--image-artifact`` the instance's identity is also
compared with what the artifact itself holds (read on the test host, without mounting).
"""

from __future__ import annotations

import json
import re

import pytest

pytestmark = pytest.mark.hygiene

MACHINE_ID = "/etc/machine-id"
CLOUD_DIR = "/var/lib/cloud"
SLACK_S = 5  # clock granularity between the kernel's btime and file timestamps


def _host_keys(host) -> dict[str, str]:
    """public key file -> 'type base64' (comment dropped) for the target's SSH host keys."""
    keys = {}
    for path in host.check_output("ls -1 /etc/ssh/ 2>/dev/null || true").split():
        if re.fullmatch(r"ssh_host_\w+_key\.pub", path):
            keys[path] = " ".join(host.file(f"/etc/ssh/{path}").content_string.split()[:2])
    return keys


def _artifact_host_keys(view) -> dict[str, str]:
    keys = {}
    for name in view.listdir("/etc/ssh"):
        if name.startswith("ssh_host_"):
            data = view.read(f"/etc/ssh/{name}") or b""
            keys[name] = " ".join(data.decode(errors="replace").split()[:2])
    return keys


def test_machine_id_is_set(host):
    value = host.file(MACHINE_ID).content_string.strip()
    assert re.fullmatch(r"[0-9a-f]{32}", value) and set(value) != {"0"}, f"{MACHINE_ID} is {value!r}"


def test_host_keys_exist(host):
    assert _host_keys(host), "no SSH host keys in /etc/ssh: sshd cannot have started with fresh keys"


@pytest.mark.host_side
def test_artifact_carries_no_identity(artifact_view):
    machine_id = (artifact_view.read(MACHINE_ID) or b"").strip()
    keys = [n for n in artifact_view.listdir("/etc/ssh") if n.startswith("ssh_host_")]
    instances = artifact_view.listdir(f"{CLOUD_DIR}/instances")
    problems = []
    if machine_id and machine_id != b"uninitialized":
        problems.append(f"machine-id {machine_id.decode(errors='replace')!r}")
    if keys:
        problems.append(f"SSH host keys {keys}")
    if instances:
        problems.append(f"cloud-init instance state {instances}")
    assert not problems, f"the artifact {artifact_view.path} carries bake identity: {problems}"


def test_machine_id_differs_from_artifact(host, artifact_view):
    baked = (artifact_view.read(MACHINE_ID) or b"").decode(errors="replace").strip()
    assert host.file(MACHINE_ID).content_string.strip() != baked, "machine-id is the one baked into the artifact"


def test_host_keys_differ_from_artifact(host, artifact_view):
    baked = set(_artifact_host_keys(artifact_view).values())
    reused = sorted(name for name, key in _host_keys(host).items() if key in baked)
    assert not reused, f"host keys identical to the artifact's: {reused}"


@pytest.mark.live
@pytest.mark.parametrize(
    "path", ["/etc/ssh/ssh_host_ed25519_key", "/etc/ssh/ssh_host_ecdsa_key", MACHINE_ID]
)
def test_identity_created_after_boot(host, boot_time, path):
    f = host.file(path)
    if not f.exists and path != MACHINE_ID:
        pytest.skip(f"{path} not generated on this image")
    # Host keys are new files: their birth time (else mtime) must be after boot. machine-id is baked as an
    # empty file that systemd fills in place at first boot, so its inode is old and only the mtime says "now".
    birth, mtime = host.check_output(f"stat -c '%W %Y' {path}").split()
    born = int(mtime) if path == MACHINE_ID or birth in ("0", "-") else int(birth)
    assert born >= boot_time - SLACK_S, f"{path} predates this boot (created {born}, boot {boot_time})"


@pytest.mark.live
def test_cloud_init_finished_cleanly(host):
    out = host.run("cloud-init status --format json")
    status = json.loads(out.stdout)
    assert status.get("status") == "done", f"cloud-init status {status.get('status')!r}: {status.get('errors')}"
    assert not status.get("errors"), f"cloud-init errors: {status['errors']}"


def test_cloud_init_ran_for_this_instance_only(host, request):
    current = host.file(f"{CLOUD_DIR}/data/instance-id").content_string.strip()
    instances = host.check_output(f"ls -1 {CLOUD_DIR}/instances 2>/dev/null || true").split()
    assert current, "cloud-init recorded no instance id"
    assert instances == [current], f"cloud-init state for other instances present: {instances} (current {current})"
    assert host.file(f"{CLOUD_DIR}/instance/boot-finished").exists, "cloud-init did not finish for this instance"
    raw = request.config.getoption("--expected-instance-ids")
    if raw:
        expected = json.loads(raw).get(host.backend.hostname)
        if expected:
            assert current == expected, f"cloud-init ran as {current}, this instance is {expected}"
