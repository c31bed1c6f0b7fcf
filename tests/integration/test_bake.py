"""The cheap parts of the bake, for real: validate.sh against image-like directory trees, the
scripts' refusals of bad input (they stop before touching the system), cache keys, and the
reuse of an existing artifact without starting a VM.

The full bake (a TCG VM, several minutes) is `python -m infra.localtwin.build local`; the
lead's chain test drives it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from infra import build_record
from infra.localtwin import base_disk, build, standin

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "image" / "scripts"
FINGERPRINT = "cd" * 32
CANARY = "canary-0123456789abcdef0123"


def run_script(name: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPTS / name)], capture_output=True, text=True, timeout=120,
        env={"PATH": os.environ["PATH"], **env},
    )


@pytest.fixture
def clean_root(tmp_path: Path) -> Path:
    """A filesystem tree in the state cleanup.sh leaves an image in."""
    root = tmp_path / "rootfs"
    for d in ("etc/ssh/sshd_config.d", "etc/nextcloud-image", "var/lib/cloud", "var/lib/docker/overlay2/l1/diff/etc",
              "home/admin/.ssh", "root", "proc", "run", "usr/bin"):
        (root / d).mkdir(parents=True)
    (root / "etc/machine-id").write_text("")
    (root / "etc/shadow").write_text("root:*:19000:0:99999:7:::\nadmin:!:19000:0:99999:7:::\n")
    (root / "etc/ssh/sshd_config.d/10-nextcloud-hardening.conf").write_text("PasswordAuthentication no\n")
    (root / "etc/nextcloud-image/version-info.json").write_text(json.dumps({"fingerprint": FINGERPRINT}, indent=2))
    (root / "var/lib/docker/overlay2/l1/diff/etc/app.conf").write_text("harmless\n")
    # Outside the searched filesystem: virtual files and tmpfs.
    (root / "proc/environ").write_text(CANARY)
    (root / "run/runtime.env").write_text(CANARY)
    return root


def validate(root: Path, canaries: str = f"{CANARY},another-canary-value") -> subprocess.CompletedProcess[str]:
    return run_script("validate.sh", {"VALIDATE_ROOT": str(root), "VALIDATE_CANARIES": canaries,
                                      "FINGERPRINT": FINGERPRINT})


def test_validate_passes_a_clean_image(clean_root):
    proc = validate(clean_root)
    assert proc.returncode == 0, proc.stderr
    assert "image is clean" in proc.stdout


def test_validate_finds_a_canary_deep_in_dockers_store_without_printing_it(clean_root):
    leak = clean_root / "var/lib/docker/overlay2/l1/diff/etc/app.conf"
    leak.write_bytes(b"\x00binary\x00prefix " + CANARY.encode() + b" suffix")
    proc = validate(clean_root)
    assert proc.returncode == 1
    assert "/var/lib/docker/overlay2/l1/diff/etc/app.conf" in proc.stderr
    assert CANARY not in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("damage", "complaint"),
    [
        (lambda r: (r / "etc/ssh/ssh_host_ed25519_key").write_text("k"), "SSH host key"),
        (lambda r: (r / "etc/machine-id").write_text("0123456789abcdef\n"), "machine-id is not empty"),
        (lambda r: (r / "etc/machine-id").unlink(), "machine-id is missing"),
        (lambda r: (r / "var/lib/cloud/instance").mkdir(), "cloud-init state"),
        (lambda r: (r / "home/admin/.ssh/authorized_keys").write_text("ssh-ed25519 AAA"), "authorized keys"),
        (lambda r: (r / "root/.bash_history").write_text("ls"), "shell history"),
        (lambda r: (r / "etc/shadow").write_text("admin:$6$salt$hash:19000::::::\n"), "admin has a usable password"),
        (lambda r: (r / "etc/shadow").write_text("admin::19000::::::\n"), "admin has a usable password"),
        (lambda r: (r / "etc/ssh/sshd_config.d/10-nextcloud-hardening.conf").unlink(), "password authentication"),
        (lambda r: (r / "etc/nextcloud-image/version-info.json").write_text("{}"), "does not record fingerprint"),
        (lambda r: (r / "etc/nextcloud").mkdir() or (r / "etc/nextcloud/instance.json").write_text("{}"),
         "instance.json"),
        (lambda r: (r / "var/lib/systemd").mkdir(parents=True) or (r / "var/lib/systemd/random-seed").write_text("s"),
         "random-seed"),
        (lambda r: (r / "var/log/journal/0123456789abcdef").mkdir(parents=True), "journal of the bake"),
    ],
    ids=["host-key", "machine-id", "no-machine-id", "cloud-init", "authorized-keys", "history", "password-hash",
         "empty-password", "ssh-passwords", "version-info", "instance-secrets", "random-seed", "journal"],
)
def test_validate_fails_the_bake_on_identity_or_access_leftovers(clean_root, damage, complaint):
    damage(clean_root)
    proc = validate(clean_root)
    assert proc.returncode == 1
    assert complaint in proc.stderr


@pytest.mark.parametrize("canaries", ["", ",,", "short"])
def test_validate_refuses_to_prove_nothing(clean_root, canaries):
    proc = validate(clean_root, canaries)
    assert proc.returncode != 0
    assert "canary" in proc.stderr.lower() or "VALIDATE_CANARIES" in proc.stderr


def test_install_units_refuses_a_secret_in_the_baked_env_file(tmp_path):
    (tmp_path / "rootfs/etc/systemd/system").mkdir(parents=True)
    (tmp_path / "nextcloud.env").write_text("NEXTCLOUD_DB_HOST=db\nNEXTCLOUD_DB_PASSWORD=hunter2hunter2\n")
    proc = run_script("install-units.sh", {"STAGING_DIR": str(tmp_path)})
    assert proc.returncode == 1
    assert "NEXTCLOUD_DB_PASSWORD" in proc.stderr
    assert "hunter2hunter2" not in proc.stderr


def test_cache_refuses_an_unpinned_image_reference():
    proc = run_script("cache-nextcloud-image.sh", {"NEXTCLOUD_IMAGE": "nextcloud:29-apache"})
    assert proc.returncode == 1
    assert "@sha256:" in proc.stderr


@pytest.mark.parametrize(
    ("script", "env", "complaint"),
    [
        ("install-docker.sh", {}, "DOCKER_VERSION"),
        ("build-nextcloud-image.sh", {"NEXTCLOUD_IMAGE": "x", "FINGERPRINT": "abc", "BUILD_CONTEXT": "/"},
         "64 lowercase hex"),
        ("write-version-info.sh", {"ENV_NAME": "local"}, "GIT_SHA is required"),
        ("cleanup.sh", {}, "STAGING_DIR"),
        ("install-os-packages.sh", {}, "OS_PACKAGES"),
    ],
)
def test_scripts_check_their_inputs_first(script, env, complaint):
    proc = run_script(script, env)
    assert proc.returncode != 0
    assert complaint in proc.stderr


# ---- caches and reuse ----

def test_base_disk_key_follows_its_inputs(monkeypatch):
    key = base_disk.base_disk_key()
    assert key == base_disk.base_disk_key()
    monkeypatch.setattr(base_disk, "PACKAGES", (*base_disk.PACKAGES, "vim"))
    assert base_disk.base_disk_key() != key


def test_standin_key_follows_every_file_of_the_fixture_but_its_documentation(tmp_path):
    tree = tmp_path / "standin"
    shutil.copytree(standin.FIXTURE_DIR, tree, ignore=shutil.ignore_patterns("__pycache__"))
    key = standin.standin_key("29.0.7", tree)
    assert standin.standin_key("29.0.8", tree) != key, "the version is part of the image"
    (tree / "README.md").write_text("edited\n")
    (tree / "nextcloud/README.md").write_text("edited\n")
    assert standin.standin_key("29.0.7", tree) == key, "documentation reaches no layer of the image"
    (tree / "rootfs/usr/local/etc/php/conf.d/nextcloud.ini").write_text("memory_limit = 1G\n")
    assert standin.standin_key("29.0.7", tree) != key
    shutil.rmtree(tree / "nextcloud")
    with pytest.raises(RuntimeError, match="fake Nextcloud"):
        standin.standin_key("29.0.7", tree)


@pytest.fixture
def rendered(tmp_path: Path) -> Path:
    env_dir = tmp_path / "local"
    env_dir.mkdir()
    (env_dir / "packer-vars.json").write_text("{}")
    (env_dir / "nextcloud.env").write_text("NEXTCLOUD_DB_HOST=10.0.2.2\n")
    (env_dir / "secret-references.json").write_text("{}\n")
    (env_dir / "fingerprint").write_text(FINGERPRINT + "\n")
    return tmp_path


def fake_artifact(build_root: Path) -> dict:
    """An artifact as a previous bake leaves it: qcow2 + kernel + initrd + artifact.json."""
    adir = build_root / "local" / "artifacts" / FINGERPRINT
    adir.mkdir(parents=True)
    for name in ("nextcloud.qcow2", "vmlinuz", "initrd.img"):
        (adir / name).write_bytes(name.encode() * 1000)
    record = {
        "artifact_id": str(adir / "nextcloud.qcow2"),
        "sha256": build.file_sha256(adir / "nextcloud.qcow2"),
        "fingerprint": FINGERPRINT, "reused": False, "built_at": "2026-01-02T03:04:05Z",
        "kernel": str(adir / "vmlinuz"), "initrd": str(adir / "initrd.img"),
    }
    (adir / "artifact.json").write_text(json.dumps(record))
    return record


def test_unchanged_inputs_reuse_the_artifact_without_a_vm(rendered, monkeypatch):
    record = fake_artifact(rendered)

    def no_bake(*_a, **_k):
        raise AssertionError("a bake was started although the artifact could be reused")

    monkeypatch.setattr(build, "run_packer_build", no_bake)
    monkeypatch.setattr(build.base_disk, "ensure_base_disk", no_bake)
    manifest = build.build_local_image(ROOT, env="local", build_root=rendered, log=lambda _m: None)
    assert manifest["reused"] is True
    assert manifest["artifact_id"] == record["artifact_id"]
    assert manifest["sha256"] == record["sha256"]
    assert build_record.read(build_record.manifest_path(ROOT, "local", rendered))["reused"] is True


@pytest.mark.parametrize("change", ["artifact-modified", "other-fingerprint"])
def test_changed_inputs_or_a_modified_artifact_are_not_reused(rendered, change):
    # Another base disk or stand-in image is another fingerprint (tests/unit/test_fingerprint.py).
    record = fake_artifact(rendered)
    fingerprint = FINGERPRINT
    if change == "artifact-modified":
        Path(record["artifact_id"]).write_bytes(b"tampered")
    else:
        fingerprint = "ef" * 32
    assert build.find_reusable_artifact(rendered / "local", fingerprint) is None


def test_missing_render_output_is_a_clear_error(tmp_path):
    (tmp_path / "local").mkdir()
    with pytest.raises(build.BuildError, match="render the environment first"):
        build.build_local_image(ROOT, env="local", build_root=tmp_path, log=lambda _m: None)


def test_literal_secrets_of_the_user_data_become_canaries(tmp_path):
    instance = {"schema": 1, "secrets": {
        "NEXTCLOUD_DB_PASSWORD": "literal:db-password-123",
        "NEXTCLOUD_REDIS_PASSWORD": "literal:",
        "NEXTCLOUD_SECRET": "arn:aws:secretsmanager:eu-central-1:1:secret:x",
        "NEXTCLOUD_ADMIN_PASSWORD": "literal:pa ss'word\"x",
    }}
    user_data = tmp_path / "user-data.yaml"
    user_data.write_text(
        "#cloud-config\nwrite_files:\n  - path: /etc/nextcloud/instance.json\n    permissions: '0600'\n"
        f"    content: {json.dumps(json.dumps(instance))}\n"
    )
    assert build.literal_secrets(user_data) == ["db-password-123", "pa ss'word\"x"]
