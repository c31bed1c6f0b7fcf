"""AMI pieces on their own: the source AMI resolution (emulator), ImdsSupport against botocore's service model
(Stubber: the emulator accepts ModifyImageAttribute but does not record the attribute), Packer's manifest with
several runs and regions, the Nextcloud digest refusal, Packer plugin detection."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import boto3
import pytest
from bake_support import DEBIAN_CURRENT, DEBIAN_NEWER, REGION, hide_newer_debian
from botocore.exceptions import ParamValidationError
from botocore.stub import Stubber

from infra.aws import ami
from infra.aws.image_digest import DigestError, resolve_image_digest
from infra.aws.session import Aws, AwsError
from infra.packer import PackerError, ensure_plugins, read_manifest

DEBIAN = "136693071363"


def test_the_newest_available_x86_64_match_of_the_owner_is_the_source(aws):
    ctx = Aws(region=REGION)
    # Newer look-alikes are seeded too: arm64, Debian 13, the same name from another owner.
    assert ami.resolve_source_ami(ctx, DEBIAN, "debian-12-amd64-*").image_id == DEBIAN_NEWER
    hide_newer_debian(aws)
    source = ami.resolve_source_ami(ctx, DEBIAN, "debian-12-amd64-*")
    assert (source.image_id, source.name) == (DEBIAN_CURRENT, "debian-12-amd64-20261015-2266")
    with pytest.raises(AwsError, match="no available AMI of owner 136693071363 matches .*debian-14"):
        ami.resolve_source_ami(ctx, DEBIAN, "debian-14-amd64-*")


def stubbed(region: str = REGION) -> tuple[Aws, Stubber]:
    session = boto3.session.Session(aws_access_key_id="x", aws_secret_access_key="x", region_name=region)
    ctx = Aws(region=region, session=session)
    return ctx, Stubber(ctx.client("ec2"))


def test_imds_v2_request_matches_the_service_model():
    """moto accepts ModifyImageAttribute(ImdsSupport=…) and drops it, so what the code sends is checked here:
    botocore validates the parameters against the EC2 service model before the Stubber answers."""
    ctx, stub = stubbed()
    model = ctx.client("ec2").meta.service_model
    assert "ImdsSupport" in model.operation_model("ModifyImageAttribute").input_shape.members
    assert "v2.0" in model.shape_for("ImdsSupportValues").enum  # what DescribeImages reports afterwards
    stub.add_response("modify_image_attribute", {}, {"ImageId": "ami-0123456789abcdef0",
                                                     "ImdsSupport": {"Value": "v2.0"}})
    with stub:
        assert ami.require_imds_v2(ctx, REGION, {"ImageId": "ami-0123456789abcdef0"}, log=lambda _m: None)
    stub.assert_no_pending_responses()
    # The model refuses the shapes a slip would produce.
    with pytest.raises(ParamValidationError):
        ctx.client("ec2").modify_image_attribute(ImageId="ami-0123456789abcdef0", ImdsSupport="v2.0")


def test_imds_v2_is_not_requested_twice():
    """ModifyImageAttribute(ImdsSupport) is one-way; an AMI that reports v2.0 (newer Packer's imds_support) is
    left alone (no call: the Stubber would fail on an unexpected one)."""
    ctx, stub = stubbed()
    with stub:
        assert not ami.require_imds_v2(ctx, REGION, {"ImageId": "ami-1", "ImdsSupport": "v2.0"}, log=lambda _m: None)


def packer_manifest(tmp_path: Path, runs: list[tuple[str, str]], last: str) -> Path:
    path = tmp_path / "packer-manifest.json"
    path.write_text(json.dumps({"builds": [
        {"name": "nextcloud", "builder_type": "amazon-ebs", "build_time": 1_700_000_000 + i, "files": None,
         "artifact_id": artifact, "packer_run_uuid": uuid, "custom_data": {"fingerprint": "f" * 64}}
        for i, (uuid, artifact) in enumerate(runs)], "last_run_uuid": last}))
    return path


def test_the_manifest_entry_of_this_run_gives_one_ami_per_region(tmp_path):
    path = packer_manifest(tmp_path, [
        ("run-1", "eu-central-1:ami-0aaa,eu-west-1:ami-0bbb"),
        ("run-2", "eu-central-1:ami-0ccc,eu-west-1:ami-0ddd,us-east-1:ami-0eee"),
        ("run-3", "eu-central-1:ami-0fff"),
    ], last="run-2")
    entry = read_manifest(path, build_name="nextcloud", builder_type="amazon-ebs")
    assert ami.parse_artifact_id(entry.artifact_id) == {
        "eu-central-1": "ami-0ccc", "eu-west-1": "ami-0ddd", "us-east-1": "ami-0eee"}
    assert ami.parse_artifact_id("eu-central-1:ami-0fff") == {"eu-central-1": "ami-0fff"}


@pytest.mark.parametrize("artifact", ["", "ami-0aaa", "eu-central-1:snap-1", "eu-central-1:ami-1,eu-central-1:ami-2"])
def test_a_manifest_that_does_not_name_one_ami_per_region_is_refused(artifact):
    with pytest.raises(AwsError, match="AMI"):
        ami.parse_artifact_id(artifact)


def test_an_unpinned_image_without_an_engine_is_refused_naming_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    with pytest.raises(DigestError, match=r"not pinned by digest and no Docker-compatible engine.*@sha256"):
        resolve_image_digest("nextcloud:29.0.7-apache")
    pinned = "nextcloud:29.0.7-apache@sha256:" + "a" * 64
    assert resolve_image_digest(pinned) == pinned  # pinned: no engine needed


def fake_packer(tmp_path: Path, version: str, installed: str = "") -> tuple[Path, Path]:
    """Stands in for a newer Packer release (HashiCorp's downloads are unreachable here): answers `version` and
    `plugins installed` as Packer does, and records every command it was given."""
    calls = tmp_path / "calls"
    script = tmp_path / "packer"
    script.write_text(
        "#!/usr/bin/env bash\nset -o errexit -o nounset -o pipefail\n"
        f"echo \"$*\" >> {calls}\n"
        f"case \"$1\" in version) echo 'Packer v{version}';; plugins) [[ $2 == installed ]] && printf '%s\\n' "
        f"'{installed}' || true;; esac\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script, calls


def test_packer_plugins_are_installed_only_where_builders_are_not_bundled(tmp_path):
    (tmp_path / "old").mkdir()
    old, old_calls = fake_packer(tmp_path / "old", "1.9.4")
    assert ensure_plugins(str(old), log=lambda _m: None) == []
    assert old_calls.read_text().split("\n")[:-1] == ["version"]

    (tmp_path / "new").mkdir()
    have = "/root/.config/packer/plugins/github.com/hashicorp/qemu/packer-plugin-qemu_v1.1.0_x5.0_linux_amd64"
    new, new_calls = fake_packer(tmp_path / "new", "1.11.2", installed=have)
    installed = ensure_plugins(str(new), log=lambda _m: None)
    assert installed == ["github.com/hashicorp/amazon v1.8.0"]
    assert "plugins install github.com/hashicorp/amazon v1.8.0" in new_calls.read_text()
    assert "plugins install github.com/hashicorp/qemu" not in new_calls.read_text()


def test_debian_packer_needs_no_plugins():
    if not any(os.access(Path(p) / "packer", os.X_OK) for p in os.environ.get("PATH", "").split(":")):
        pytest.skip("packer not installed")
    assert ensure_plugins("packer", log=lambda _m: None) == []
    with pytest.raises(PackerError, match="not found"):
        ensure_plugins("/nonexistent/packer")


def test_a_copy_without_tags_gets_every_tag_on_itself_and_its_snapshot(aws):
    """CopyImage copies no tags unless asked: whatever Packer did, finish_images tags each copy and its
    snapshots explicitly, and only then drops the bake's purpose tag."""
    from render import tags as T

    ec2 = aws.client("ec2")
    subnet = ec2.describe_subnets()["Subnets"][0]["SubnetId"]
    instance = ec2.run_instances(ImageId=DEBIAN_CURRENT, MinCount=1, MaxCount=1, SubnetId=subnet)["Instances"][0]
    home = ec2.create_image(InstanceId=instance["InstanceId"], Name="nextcloud-example-test")["ImageId"]
    copy = aws.client("ec2", "eu-west-1").copy_image(SourceImageId=home, SourceRegion=REGION,
                                                    Name="nextcloud-example-test")["ImageId"]
    ec2.create_tags(Resources=[home], Tags=[{"Key": T.PURPOSE, "Value": T.PURPOSE_BAKE}])
    tags = {T.MANAGED: "true", T.ENVIRONMENT: "example", T.FINGERPRINT: "f" * 64, T.PURPOSE: T.PURPOSE_BAKE}
    snapshots = ami.finish_images(Aws(region=REGION), {REGION: home, "eu-west-1": copy}, tags, log=lambda _m: None)
    for region, image_id in ((REGION, home), ("eu-west-1", copy)):
        client = aws.client("ec2", region)
        image = client.describe_images(ImageIds=[image_id])["Images"][0]
        expected = {k: v for k, v in tags.items() if k != T.PURPOSE}
        assert {t["Key"]: t["Value"] for t in image["Tags"]} == expected
        (snapshot,) = client.describe_snapshots(SnapshotIds=snapshots[region])["Snapshots"]
        assert {t["Key"]: t["Value"] for t in snapshot["Tags"]} == expected
