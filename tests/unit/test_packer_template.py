"""The Packer template and the bake's scripts: formatted, valid for both sources with a var file
shaped like render's output, shellcheck-clean; and the Packer driver reads the manifest of the
right run and times each step.

Runs the real Packer (Debian's 1.6.6): `validate` needs no cloud credentials and no network.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from infra.packer import (
    PackerError,
    StepTimer,
    parse_machine_readable,
    read_manifest,
    run_packer_build,
)
from render.secret_refs import render_contract

ROOT = Path(__file__).resolve().parents[2]
PACKER_DIR = ROOT / "packer"
FINGERPRINT = "ab" * 32

needs_packer = pytest.mark.skipif(
    shutil.which("packer") is None, reason="packer not installed (apt-get install packer)"
)

# Shaped like render's build/<env>/packer-vars.json (contract), with both a list and a map.
SAMPLE_VARS = {
    "env_name": "staging",
    "region": "eu-central-1",
    "instance_type": "t3.medium",
    "source_ami_owner": "136693071363",
    "source_ami_name_filter": "debian-12-amd64-*",
    "ami_name_prefix": "nextcloud-staging",
    "ami_regions": ["eu-west-1"],
    "extra_tags": {"project": "nextcloud", "cost-center": "42"},
    "debian_release": "bookworm",
    "nextcloud_image": "nextcloud:29.0.7-apache@sha256:" + "0" * 64,
    "nextcloud_version": "29.0.7",
    "docker_version": "5:27.3.1-1~debian.12~bookworm",
    "db_ca_bundle_url": "https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem",
    "db_ca_bundle_sha256": "ab" * 32,
    "docker_packages": "containerd.io=1.7.22-1 docker-ce=5:27.3.1-1~debian.12~bookworm",
    "root_volume_size_gb": 20,
    "ssh_username": "admin",
}


@pytest.fixture
def build_dir(tmp_path: Path) -> Path:
    """A build dir with the rendered files and the qemu inputs infra passes with -var."""
    (tmp_path / "packer-vars.json").write_text(json.dumps(SAMPLE_VARS))
    (tmp_path / "nextcloud.env").write_text("NEXTCLOUD_DB_HOST=db\n")
    (tmp_path / "secret-references.json").write_text(render_contract())
    for name in ("disk.raw", "vmlinuz", "initrd.img"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "seed").mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "key")], check=True)
    return tmp_path


def volatile_vars(build_dir: Path, only: str) -> list[str]:
    common = {
        "fingerprint": FINGERPRINT,
        "git_sha": "0123456789abcdef0123456789abcdef01234567",
        "build_time": "2026-01-02T03:04:05Z",
        "build_dir": str(build_dir),
        "image_upload_dir": str(ROOT / "image"),
    }
    if only.startswith("qemu."):
        common |= {
            "output_dir": str(build_dir / "out"),
            "base_disk": str(build_dir / "disk.raw"),
            "kernel": str(build_dir / "vmlinuz"),
            "initrd": str(build_dir / "initrd.img"),
            "ssh_private_key_file": str(build_dir / "key"),
            "bake_seed_dir": str(build_dir / "seed"),
        }
    return [f"-var={k}={v}" for k, v in common.items()]


def packer(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["packer", *args], capture_output=True, text=True, cwd=ROOT,
        env={"CHECKPOINT_DISABLE": "1", "PATH": "/usr/bin:/bin"},
    )


@needs_packer
def test_template_is_packer_fmt_clean():
    proc = packer("fmt", "-check", "-diff", str(PACKER_DIR))
    assert proc.returncode == 0, f"run `packer fmt packer/`:\n{proc.stdout}{proc.stderr}"


@needs_packer
@pytest.mark.parametrize("only", ["amazon-ebs.nextcloud", "qemu.nextcloud"])
def test_template_validates_with_a_json_var_file(build_dir, only):
    proc = packer("validate", f"-only={only}", f"-var-file={build_dir / 'packer-vars.json'}",
                  *volatile_vars(build_dir, only), str(PACKER_DIR))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_packer
def test_template_rejects_a_var_file_without_the_nextcloud_image(build_dir):
    incomplete = {k: v for k, v in SAMPLE_VARS.items() if k != "nextcloud_image"}
    (build_dir / "packer-vars.json").write_text(json.dumps(incomplete))
    proc = packer("validate", "-only=amazon-ebs.nextcloud", f"-var-file={build_dir / 'packer-vars.json'}",
                  *volatile_vars(build_dir, "amazon-ebs.nextcloud"), str(PACKER_DIR))
    assert proc.returncode != 0
    assert "nextcloud_image" in proc.stdout + proc.stderr


@needs_packer
def test_template_needs_the_staged_upload_dir(build_dir):
    proc = packer("validate", "-only=qemu.nextcloud", f"-var-file={build_dir / 'packer-vars.json'}",
                  *[v for v in volatile_vars(build_dir, "qemu.nextcloud") if not v.startswith("-var=image_upload_dir")],
                  str(PACKER_DIR))
    assert proc.returncode != 0
    assert "image_upload_dir" in proc.stdout + proc.stderr


def test_every_provisioning_script_exists_and_is_wired_with_its_inputs():
    template = (PACKER_DIR / "nextcloud.pkr.hcl").read_text()
    scripts = sorted(p.name for p in (ROOT / "image" / "scripts").glob("*.sh"))
    for name in scripts:
        assert f"image/scripts/{name}" in template, f"{name} is not run by the template"
    # The canaries reach every script's environment, and validate.sh runs last.
    assert template.count("local.common_env") == len(scripts)
    assert template.rfind("validate.sh") > template.rfind("cleanup.sh") > template.rfind("install-units.sh")


SHELL_SCRIPTS = sorted(
    [*(ROOT / "image" / "scripts").glob("*.sh"), *(ROOT / "image" / "scripts" / "lib").glob("*.sh"),
     *(ROOT / "infra" / "localtwin" / "standin").glob("*.sh"),
     ROOT / "infra" / "localtwin" / "standin" / "rootfs" / "usr" / "local" / "bin" / "apache2-foreground",
     ROOT / "infra" / "localtwin" / "standin" / "rootfs" / "entrypoint.sh",
     *(ROOT / "infra" / "localtwin").glob("*.sh")]
)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shell_scripts_are_shellcheck_clean_and_strict(script):
    proc = subprocess.run(["shellcheck", "--external-sources", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    if script.parent.name != "lib":  # a sourced library runs under its caller's strict mode
        assert "set -o errexit -o nounset -o pipefail" in text


# ---- machine-readable output and the manifest ----

def test_machine_readable_lines_are_unescaped():
    rec = parse_machine_readable(
        "1700000000,qemu.nextcloud,ui,say,==> qemu.nextcloud: a%!(PACKER_COMMA) b\\nnext line\n"
    )
    assert rec is not None
    assert (rec.timestamp, rec.target, rec.type) == (1700000000, "qemu.nextcloud", "ui")
    assert rec.data == ("say", "==> qemu.nextcloud: a, b\nnext line")
    assert parse_machine_readable("plain text, not a record") is None


def test_step_timer_times_each_step_and_tells_provisioners_apart():
    timer = StepTimer(started=100.0)
    timer.announce("Starting VM, booting disk image", now=101.0)
    timer.announce("Provisioning with shell script: /w/image/scripts/install-docker.sh", now=160.0)
    timer.announce("Provisioning with shell script: /tmp/packer-shell123456", now=400.5)
    timer.announce("Uploading /w/image/ => /tmp/nextcloud-image", now=401.0)
    timer.announce("Gracefully halting virtual machine...", now=410.0)
    timer.finish(now=430.0)
    got = timer.as_dict()
    assert [(s["name"], s["kind"], s["seconds"]) for s in got["steps"]] == [
        ("Starting VM, booting disk image", "builder", 59.0),
        ("shell: install-docker.sh", "provisioner", 240.5),
        ("shell: inline", "provisioner", 0.5),
        ("Uploading /w/image/ => /tmp/nextcloud-image", "provisioner", 9.0),
        ("Gracefully halting virtual machine...", "builder", 20.0),
    ]
    assert got["provisioning_seconds"] == 250.0


def manifest_with(runs: list[tuple[str, str, str, str]], last: str) -> dict:
    return {
        "builds": [
            {"name": name, "builder_type": btype, "build_time": 1700000000 + i,
             "files": [{"name": f"{art}.qcow2", "size": 1}], "artifact_id": art,
             "packer_run_uuid": uuid, "custom_data": {"fingerprint": FINGERPRINT}}
            for i, (uuid, name, btype, art) in enumerate(runs)
        ],
        "last_run_uuid": last,
    }


def test_manifest_picks_the_last_run_among_appended_runs(tmp_path):
    path = tmp_path / "packer-manifest.json"
    path.write_text(json.dumps(manifest_with(
        [("run-1", "nextcloud", "amazon-ebs", "eu-central-1:ami-old"),
         ("run-2", "nextcloud", "amazon-ebs", "eu-central-1:ami-new,eu-west-1:ami-copy"),
         ("run-3-failed-no-entry", "x", "x", "x")][:2],
        last="run-2",
    )))
    entry = read_manifest(path)
    assert entry.artifact_id == "eu-central-1:ami-new,eu-west-1:ami-copy"
    assert entry.packer_run_uuid == "run-2"
    assert entry.custom_data["fingerprint"] == FINGERPRINT


def test_manifest_with_both_sources_in_one_run_needs_a_choice(tmp_path):
    path = tmp_path / "packer-manifest.json"
    path.write_text(json.dumps(manifest_with(
        [("run-1", "nextcloud", "amazon-ebs", "eu-central-1:ami-1"), ("run-1", "nextcloud", "qemu", "/b/x")],
        last="run-1",
    )))
    with pytest.raises(PackerError, match="found 2"):
        read_manifest(path)
    assert read_manifest(path, builder_type="qemu").files == ("/b/x.qcow2",)


def test_manifest_of_a_run_that_built_nothing_is_an_error(tmp_path):
    path = tmp_path / "packer-manifest.json"
    path.write_text(json.dumps(manifest_with([("run-1", "nextcloud", "qemu", "/a")], last="run-2")))
    with pytest.raises(PackerError, match="run-2"):
        read_manifest(path)
    with pytest.raises(PackerError, match="not found"):
        read_manifest(tmp_path / "missing.json")


# ---- the driver against the real Packer (file builder: no VM, no cloud) ----

TINY_TEMPLATE = """
variable "greeting" {
  type = string
}
variable "secret" {
  type      = string
  sensitive = true
}
source "file" "demo" {
  content = var.greeting
  target  = "${path.root}/out.txt"
}
build {
  sources = ["source.file.demo"]
  provisioner "shell-local" {
    inline = ["sleep 1", "echo step one, done", "test -n \\"$SECRET\\""]
    environment_vars = ["SECRET=${var.secret}"]
  }
  provisioner "shell-local" {
    inline = ["exit ${var.greeting == "fail" ? 3 : 0}"]
  }
  post-processor "manifest" {
    output      = "${path.root}/packer-manifest.json"
    custom_data = { greeting = var.greeting }
  }
}
"""


@needs_packer
def test_run_packer_build_streams_times_steps_and_reads_the_manifest(tmp_path):
    (tmp_path / "demo.pkr.hcl").write_text(TINY_TEMPLATE)
    (tmp_path / "vars.json").write_text("{}")
    lines: list[str] = []
    for greeting in ("first", "second"):  # the manifest appends; the second run must win
        result = run_packer_build(
            tmp_path, var_file=tmp_path / "vars.json", variables={"greeting": greeting},
            sensitive_variables={"secret": "s3cr3t-value-never-logged"}, only="file.demo",
            manifest_path=tmp_path / "packer-manifest.json", log=lines.append,
        )
    assert result.entry.custom_data == {"greeting": "second"}
    assert len(json.loads((tmp_path / "packer-manifest.json").read_text())["builds"]) == 2
    assert any(line.startswith("[00:0") and "Running local shell script" in line for line in lines)
    assert any("step one, done" in line for line in lines)
    assert not any("s3cr3t-value-never-logged" in line for line in lines)
    timings = json.loads((tmp_path / "packer-timings.json").read_text())
    assert timings["packer_run_uuid"] == result.entry.packer_run_uuid
    assert timings["exit_code"] == 0
    assert timings["steps"], "no step was recorded"


@needs_packer
def test_run_packer_build_failure_raises_with_packers_error(tmp_path):
    (tmp_path / "demo.pkr.hcl").write_text(TINY_TEMPLATE)
    (tmp_path / "vars.json").write_text("{}")
    with pytest.raises(PackerError, match="failed"):
        run_packer_build(
            tmp_path, var_file=tmp_path / "vars.json", variables={"greeting": "fail"},
            sensitive_variables={"secret": "x"}, only="file.demo",
            manifest_path=tmp_path / "packer-manifest.json", log=lambda _m: None,
        )
    assert json.loads((tmp_path / "packer-timings.json").read_text())["exit_code"] != 0


@needs_packer
def test_validate_template_for_inv_validate(build_dir):
    from infra.packer import validate_template

    ok, text = validate_template(ROOT, build_dir / "packer-vars.json")
    assert ok, text
    assert "validate -only=qemu.nextcloud: ok" in text
    (build_dir / "packer-vars.json").write_text(json.dumps({**SAMPLE_VARS, "root_volume_size_gb": "big"}))
    ok, text = validate_template(ROOT, build_dir / "packer-vars.json")
    assert not ok
    assert "root_volume_size_gb" in text
