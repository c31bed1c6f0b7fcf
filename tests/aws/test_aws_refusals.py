"""Every refusal of the AWS tasks changes nothing in the emulator (its whole state compared before and after), and
every --dry-run plans without changing anything: through the real front door (`inv`) where it matters."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from bake_support import (
    BUILD_HOST,
    COPY_REGION,
    REGION,
    ROOT,
    emulator_state,
    make_group,
    register_ami,
    settings_for,
)

from infra.aws.bake import build_aws_image
from infra.aws.session import Aws, AwsError


def refused(aws, settings, match: str, tmp_path, **kwargs) -> None:
    before = emulator_state(aws)
    with pytest.raises(AwsError, match=match) as refusal:
        build_aws_image(ROOT, settings, build_root=tmp_path, log=lambda _m: None, **kwargs)
    assert refusal.value.exit_code == 2, "a refusal is exit 2, a failure 1"
    assert emulator_state(aws) == before
    assert not (tmp_path / settings.name).exists(), "a refusal writes nothing on disk either"


def test_missing_credentials(aws, tmp_path, monkeypatch):
    settings = settings_for(aws)
    before = emulator_state(aws)  # the test's own client was made while the credentials were there
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(AwsError, match="no AWS credentials found"):
        build_aws_image(ROOT, settings, build_root=tmp_path, log=lambda _m: None)
    assert not (tmp_path / "example").exists()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    assert emulator_state(aws) == before


def test_an_account_the_environment_does_not_allow(aws, tmp_path):
    refused(aws, settings_for(aws, account_id="210987654321"), "only account 210987654321", tmp_path)


def test_a_region_the_environment_does_not_run_in(aws, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    refused(aws, settings_for(aws), "us-east-1.*eu-central-1", tmp_path)


def test_an_unpinned_image_with_no_engine(aws, tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    settings = settings_for(aws, nextcloud__image="nextcloud:34.0.3-apache")
    refused(aws, settings, r"nextcloud.image 'nextcloud:34.0.3-apache' is not pinned by digest and no "
                           r"Docker-compatible engine", tmp_path)


def test_a_missing_subnet(aws, tmp_path):
    refused(aws, settings_for(aws, bake__subnet_id="subnet-0123456789abcdef0"),
            r"bake.subnet_id = 'subnet-0123456789abcdef0': no such subnet in eu-central-1", tmp_path)


def test_no_communicator_against_aws_itself(aws, tmp_path, monkeypatch):
    """communicator none would register an unprovisioned image on AWS; the endpoint is what tells them apart
    (faked here to AWS's own, after the preflight reached the emulator)."""
    monkeypatch.setattr(Aws, "custom_endpoint", lambda self, service, region=None: None)
    refused(aws, settings_for(aws), "bake.communicator = 'none' .* only for an AWS emulator", tmp_path)


def test_a_build_host_address_that_cannot_be_found(aws, tmp_path, monkeypatch):
    """With no ssh_source_cidrs the build host's address comes from checkip.amazonaws.com; ``unreachable`` stands
    in for it being unreachable (this machine has no route to it, and tests reach only loopback)."""
    from infra.aws import throwaway

    def unreachable(url: str) -> str:
        raise OSError(f"{url}: no route")

    monkeypatch.setattr(throwaway, "_fetch", unreachable)
    settings = settings_for(aws, bake__communicator="ssh", bake__ssh_source_cidrs=[])
    refused(aws, settings, "cannot find this host's public address .* bake.ssh_source_cidrs", tmp_path)


def test_the_build_host_address_is_a_single_host(monkeypatch):
    from infra.aws import throwaway

    class S:
        class bake:  # noqa: N801 - shaped like Settings.bake
            ssh_interface, ssh_source_cidrs = "public_ip", []

    assert throwaway.build_host_cidrs(S, fetch=lambda url: "198.51.100.23\n") == ["198.51.100.23/32"]
    assert throwaway.build_host_cidrs(S, fetch=lambda url: "2001:db8::5") == ["2001:db8::5/128"]
    S.bake.ssh_interface = "session_manager"
    assert throwaway.build_host_cidrs(S, fetch=lambda url: "198.51.100.23") == []


# ---- the front door: inv ... --dry-run against the emulator --------------------------------------------------
def inv(aws, *args: str, **settings_env: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NCIMAGE_")}
    env.update({f"NCIMAGE_{k.upper()}": v for k, v in settings_env.items()})
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def emulator_settings_env(aws) -> dict[str, str]:
    settings = settings_for(aws)
    return {"bake__subnet_id": settings.bake.subnet_id, "bake__communicator": "none",
            "bake__ssh_source_cidrs": json.dumps([BUILD_HOST]), "account_id": '"123456789012"',
            "ami__regions": json.dumps([COPY_REGION])}


def test_dry_runs_through_inv_plan_and_change_nothing(aws, tmp_path):
    env = emulator_settings_env(aws)
    settings = settings_for(aws)
    amis = register_ami(aws, settings)
    make_group(aws, settings, amis[REGION], desired=0)
    before = emulator_state(aws)
    for args, word in ((["build-ami", "--env", "example", "--dry-run"], "dry run"),
                       (["test-ami", "--env", "example", "--dry-run", "--ami", amis[REGION]], "dry run"),
                       (["sweep", "--env", "example", "--older-than", "0s", "--yes", "--dry-run"], "clean")):
        proc = inv(aws, *args, **env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        last = proc.stdout.strip().splitlines()[-1]
        assert last.startswith(f"verdict: {word} - "), proc.stdout
        assert "Traceback" not in proc.stderr
    assert emulator_state(aws) == before


def test_a_refusal_through_inv_is_a_verdict_line_and_exit_2(aws):
    env = emulator_settings_env(aws)
    env["bake__subnet_id"] = "subnet-0123456789abcdef0"
    proc = inv(aws, "build-ami", "--env", "example", **env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1].startswith("verdict: refused - bake.subnet_id = ")
    assert "Traceback" not in proc.stdout + proc.stderr
    bad = inv(aws, "sweep", "--env", "example", "--older-than", "soon", **env)
    assert bad.returncode == 2 and "verdict: refused - --older-than 'soon'" in bad.stdout
