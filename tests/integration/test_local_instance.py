"""The throwaway local instance (infra/localtwin/instance.py): user data merge, boot, and teardown on every exit.

The boot tests use the cached base disk (infra/localtwin/base_disk.py; built on demand, ~90 s) under QEMU TCG.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from infra import build_record
from infra.localtwin.instance import Instance, InstanceError, merge_ssh_key

REPO = Path(__file__).resolve().parents[2]
RENDERED = """#cloud-config
# comment kept out of the merge on purpose
write_files:
  - path: /etc/nextcloud/instance.json
    owner: root:root
    permissions: "0600"
    content: |
      {"schema": 1, "secrets": {"NEXTCLOUD_DB_PASSWORD": "literal:canarydbpw0123456789"}}
"""
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJx2 test@host"


# ---- user data merge (no VM) ------------------------------------------------------------------------------
def test_merge_keeps_write_files_and_adds_key():
    merged = merge_ssh_key(RENDERED, KEY)
    assert merged.startswith("#cloud-config\n")
    doc = yaml.safe_load(merged)
    assert doc["ssh_authorized_keys"] == [KEY]
    assert doc["write_files"] == yaml.safe_load(RENDERED)["write_files"]


def test_merge_appends_to_existing_keys_and_keeps_default_user():
    doc = yaml.safe_load(
        merge_ssh_key("#cloud-config\nssh_authorized_keys: [ssh-ed25519 AAAAold]\nusers: [{name: ops}]\n", KEY)
    )
    assert doc["ssh_authorized_keys"] == ["ssh-ed25519 AAAAold", KEY]
    assert doc["users"][0] == "default", "a users list without 'default' would drop admin, the key's user"


@pytest.mark.parametrize("bad", ["", "#!/bin/sh\necho hi\n", "#cloud-config\n- a list\n"])
def test_merge_rejects_what_is_not_a_cloud_config_mapping(bad):
    with pytest.raises(InstanceError, match="cloud-config"):
        merge_ssh_key(bad, KEY)


# ---- booting the base disk ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    from infra.localtwin.base_disk import ensure_base_disk

    return ensure_base_disk(log=lambda m: None)


def _qemu_running_in(workdir: Path) -> bool:
    out = subprocess.run(["pgrep", "-af", "qemu-system-x86_64"], capture_output=True, text=True).stdout
    return str(workdir) in out


@pytest.mark.integration
@pytest.mark.slow
def test_timeout_reports_serial_tail_and_cleans_up(base):
    inst = Instance(base.disk, base.kernel, base.initrd, RENDERED, name="nc-timeout", timeout_s=20, progress=print)
    with pytest.raises(InstanceError) as err, inst:
        pytest.fail("an instance cannot be reachable 20 s after power-on under TCG")
    message = str(err.value)
    assert "timed out after 20s" in message and "phase: waiting for SSH" in message
    tail = message.split("--- serial console, last lines ---\n", 1)[1]
    assert tail.strip() and tail != "(no serial log)", "no console output in the failure report"
    assert inst.workdir is None and inst._proc is None


@pytest.mark.integration
@pytest.mark.slow
def test_sigterm_tears_down(base, tmp_path):
    ud = tmp_path / "user-data"
    ud.write_text(RENDERED)
    proc = subprocess.Popen(
        [sys.executable, "-m", "infra.localtwin.instance", str(base.disk), str(base.kernel), str(base.initrd), str(ud)],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    workdir = None
    deadline = time.monotonic() + 30
    while workdir is None and time.monotonic() < deadline:
        time.sleep(1)
        if proc.poll() is not None:
            pytest.fail(f"instance CLI exited early ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        for p in Path("/tmp").glob("nc-test-1-*"):
            if (p / "ssh_config").exists() and _qemu_running_in(p):
                workdir = p
    assert workdir is not None, "instance did not start"
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=60)
    assert rc == 128 + signal.SIGTERM
    assert not workdir.exists(), "temp dir with the user data survived SIGTERM"
    assert not _qemu_running_in(workdir), "QEMU survived SIGTERM"


@pytest.mark.integration
@pytest.mark.slow
def test_boot_applies_user_data_and_key(base):
    backing_mtime = Path(base.disk).stat().st_mtime_ns
    with Instance(base.disk, base.kernel, base.initrd, RENDERED, name="nc-boot", wait_ready=False) as inst:
        workdir = inst.workdir
        assert inst.timings.ssh and inst.timings.cloud_init_done, inst.timings
        assert inst.timings.cloud_init_status == "done"
        r = inst.ssh(
            "sudo stat -c '%a %U' /etc/nextcloud/instance.json && hostname && cat /var/lib/cloud/data/instance-id"
        )
        assert r.returncode == 0, r.stderr
        mode_owner, hostname, instance_id = r.stdout.split("\n")[:3]
        assert (mode_owner, hostname, instance_id) == ("600 root", "nc-boot", inst.instance_id)
    assert not workdir.exists()
    assert Path(base.disk).stat().st_mtime_ns == backing_mtime, "the backing disk was written to"


# ---- test-ami inputs (no VM) --------------------------------------------------------------------------------
def test_canary_user_data_carries_every_secret_as_literal_and_keeps_the_rendered_document():
    from infra.localtwin.test_ami import make_canaries, render_user_data_with_secrets, secret_variables
    from render.outputs import render_user_data
    from render.settings import load_settings

    settings = load_settings(REPO, "local").settings
    canaries = make_canaries(list(secret_variables().values()))
    assert len(set(canaries.values())) == len(canaries) == 6
    assert all(v.startswith("canary") and v.isalnum() and v.islower() for v in canaries.values())
    rendered = render_user_data_with_secrets(settings, canaries)
    entry = yaml.safe_load(rendered)["write_files"][0]
    assert (entry["path"], entry["permissions"], entry["owner"]) == (
        "/etc/nextcloud/instance.json",
        "0600",
        "root:root",
    )
    doc = json.loads(entry["content"])
    assert doc["secrets"] == {name: f"literal:{value}" for name, value in canaries.items()}
    # Only the secrets differ from what `inv render` writes for the environment.
    plain = json.loads(yaml.safe_load(render_user_data(settings))["write_files"][0]["content"])
    assert {k: v for k, v in doc.items() if k != "secrets"} == {k: v for k, v in plain.items() if k != "secrets"}


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        (None, "bake the image first"),
        ("not json", "is not JSON"),
        ({"kernel": "/nonexistent"}, "no artifact disk recorded"),
        ({"artifact_id": "/nonexistent/x.qcow2", "kernel": "k", "initrd": "i"}, "does not exist"),
    ],
)
def test_manifest_errors_name_the_fix(tmp_path, manifest, message):
    from infra.localtwin.test_ami import TestAmiError, read_manifest

    path = tmp_path / "manifest.json"
    if manifest is not None:
        path.write_text(manifest if isinstance(manifest, str) else json.dumps(manifest))
    with pytest.raises(TestAmiError, match=message):
        read_manifest(path, tmp_path)


def test_manifest_resolves_artifact_kernel_initrd(tmp_path):
    from infra.localtwin.test_ami import read_manifest

    for name in ("nextcloud.qcow2", "vmlinuz", "initrd.img"):
        (tmp_path / name).write_bytes(b"x")
    path = tmp_path / "manifest.json"
    path.write_text(
        json.dumps({"artifact_id": str(tmp_path / "nextcloud.qcow2"), "kernel": "vmlinuz", "initrd": "initrd.img"})
    )
    a = read_manifest(path, tmp_path)
    assert (a.disk.name, a.kernel.name, a.initrd.name) == ("nextcloud.qcow2", "vmlinuz", "initrd.img")


# ---- live checks of the suite, shown failing on a deliberately broken booted instance ------------------------
def _suite_outcomes(nodes, canaries, artifact, workdir: Path, files: list[str]) -> dict[str, str]:
    import xml.etree.ElementTree as ET

    ssh_config = workdir / "ssh_config"
    ssh_config.write_text("\n".join(n.ssh_config_entry() for n in nodes))
    junit = workdir / f"junit-{time.monotonic_ns()}.xml"
    hosts = ",".join(f"paramiko://{n.name}" for n in nodes)
    env = {**os.environ, "NEXTCLOUD_TEST_CANARIES": json.dumps(canaries)}
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        *files,
        f"--hosts={hosts}",
        f"--ssh-config={ssh_config}",
        "--sudo",
        f"--image-artifact={artifact}",
        "-m",
        "live",
        "-p",
        "no:cacheprovider",
        f"--junitxml={junit}",
        "-q",
    ]
    subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, timeout=1200)
    results = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed"}.get(child.tag, child.tag)
        name = case.get("name", "")
        for n in nodes:
            name = name.replace(f"paramiko://{n.name}-", "").replace(f"-paramiko://{n.name}", "")
            name = name.replace(f"paramiko://{n.name}", "")
        results[f"{case.get('classname', '').rsplit('.', 1)[-1]}::{name.replace('[]', '')}"] = outcome
    return results


LIVE_BREAKS = (
    # (command run as root on the instance, checks that must then fail)
    (
        "systemctl stop nextcloud.service",
        [
            "test_nextcloud::test_nextcloud_service_active",
            "test_nextcloud::test_container_runs_recorded_image_and_is_healthy",
            "test_nextcloud::test_readiness_endpoint",
        ],
    ),
    (
        "systemd-run --unit=stray-listener python3 -m http.server 8081",
        [
            "test_hardening::test_only_expected_ports_listen[tcp]",
        ],
    ),
    (
        "mkdir -p /var/tmp/ondisk && mount --bind /var/tmp/ondisk /run/nextcloud",
        [
            "test_secrets::test_runtime_env_on_tmpfs",
        ],
    ),
)


@pytest.mark.integration
@pytest.mark.slow
def test_live_checks_pass_then_fail_on_a_broken_instance(tmp_path, local_artifact):
    """Boot the baked artifact once: the live checks pass, then each deliberate break fails its check."""
    from infra.localtwin.services import ThrowawayPostgres, ThrowawayRedis
    from infra.localtwin.test_ami import (
        make_canaries,
        read_manifest,
        render_user_data_with_secrets,
        secret_variables,
    )
    from render.settings import load_settings

    manifest = build_record.manifest_path(REPO, "local")
    settings = load_settings(REPO, "local").settings
    artifact = read_manifest(manifest, REPO)
    canaries = make_canaries(list(secret_variables().values()))
    user_data = render_user_data_with_secrets(settings, canaries)
    db = settings.database
    with (
        ThrowawayPostgres(db.port, canaries["NEXTCLOUD_DB_PASSWORD"], dbname=db.name, user=db.user),
        ThrowawayRedis(settings.redis.port, canaries["NEXTCLOUD_REDIS_PASSWORD"]),
        Instance(artifact.disk, artifact.kernel, artifact.initrd, user_data, name="nc-live", progress=print) as inst,
    ):
        files = ["tests/image/test_nextcloud.py", "tests/image/test_hardening.py", "tests/image/test_secrets.py"]
        before = _suite_outcomes([inst], canaries, artifact.disk, tmp_path, files)
        expected = [e for _, checks in LIVE_BREAKS for e in checks]
        assert all(before.get(e) == "passed" for e in expected), f"live checks not passing on a good instance: {before}"
        for command, _ in LIVE_BREAKS:
            r = inst.ssh(f"sudo sh -c '{command}'")
            assert r.returncode == 0, f"{command}: {r.stderr}"
        time.sleep(3)
        after = _suite_outcomes([inst], canaries, artifact.disk, tmp_path, files)
        missed = [e for e in expected if after.get(e) != "failed"]
        assert not missed, f"checks that did not fail on the broken instance: {[(m, after.get(m)) for m in missed]}"
