"""`inv build-ami` for AWS against the emulator: Debian's Packer 1.6.6 runs the template's amazon-ebs source for
real (the emulator build: communicator none, no provisioners, never a connection to an emulated instance), and
the driver around it is the production code: resolve, reuse, IMDSv2, tags, copies, SSM, manifest, cleanup."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
from bake_support import (
    BUILD_HOST,
    COPY_REGION,
    DEBIAN_CURRENT,
    DEBIAN_NEWER,
    REGION,
    ROOT,
    actions_since,
    boto_requests,
    emulator_state,
    hide_newer_debian,
    ours,
    packer_requests,
    publish_newer_debian,
    settings_for,
)

from infra import build_record
from infra.aws.bake import ami_name, build_aws_image
from infra.aws.session import AwsError
from render import tags as T

pytestmark = pytest.mark.skipif(shutil.which("packer") is None, reason="packer not installed (apt-get install packer)")
# The tests that run Packer against the emulator (5-9 s each on 2 cores): in the full suite, not the quick one.
PACKER_RUNS = pytest.mark.slow

PROVENANCE = (T.MANAGED, T.ENVIRONMENT, T.FINGERPRINT, T.GIT_SHA, T.BUILD_TIME, T.SOURCE_AMI, T.SOURCE_AMI_NAME,
              T.NEXTCLOUD_IMAGE, T.NEXTCLOUD_VERSION, T.DOCKER_VERSION, T.RUN)


def tags_of(resource: dict) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags") or []}


def bake(settings, tmp_path: Path, lines: list[str] | None = None, **kwargs):
    log = (lines.append if lines is not None else (lambda _m: None))
    verdict = build_aws_image(ROOT, settings, build_root=tmp_path, log=log, **kwargs)
    manifest = build_record.read(build_record.manifest_path(ROOT, settings.name, tmp_path))
    return verdict, manifest


@PACKER_RUNS
def test_packer_bakes_the_aws_side_end_to_end_with_copies_tags_imds_and_ssm(aws, tmp_path):
    settings = settings_for(aws, ami__regions=[COPY_REGION], ami__ssm_parameter="/nextcloud/example/ami-id")
    lines: list[str] = []
    verdict, manifest = bake(settings, tmp_path, lines)

    assert verdict.word == "built" and verdict.ok, verdict.line()
    amis = manifest["amis"]
    assert set(amis) == {REGION, COPY_REGION} and manifest["artifact_id"] == amis[REGION]
    assert manifest["reused"] is False and manifest["base_image"] == DEBIAN_NEWER
    assert manifest["base_image_name"] == "debian-12-amd64-20261112-2290"
    local_keys = {"artifact_id", "fingerprint", "reused", "built_at", "git_sha", "base_image", "packer_run_uuid",
                  "timings"}
    assert local_keys <= set(manifest), local_keys - set(manifest)
    packer_manifest = json.loads((tmp_path / "example" / "packer-manifest.json").read_text())
    assert manifest["packer_run_uuid"] == packer_manifest["last_run_uuid"]

    # Packer asked for exactly the resolved AMI, and still through the selector.
    lookups = [p for p in packer_requests(aws, "DescribeImages") if "ImageId.1" in p]
    assert lookups and lookups[0]["ImageId.1"] == [DEBIAN_NEWER] and lookups[0]["Owner.1"] == ["136693071363"]
    assert "debian-12-amd64-*" in {v[0] for k, v in lookups[0].items() if k.startswith("Filter.")}
    # Launched in the settings' subnet, with this run's security group and key pair, which allow no SSH from
    # anywhere but the build host (here: none at all, an emulator bake has no communicator).
    (launch,) = packer_requests(aws, "RunInstances")
    assert launch["NetworkInterface.1.SubnetId"] == [settings.bake.subnet_id]
    assert launch["KeyName"][0].startswith("nextcloud-image-bake-example-")
    assert not packer_requests(aws, "CreateSecurityGroup") and not packer_requests(aws, "CreateKeyPair")
    assert all("0.0.0.0/0" not in json.dumps(p) for p in boto_requests(aws, "AuthorizeSecurityGroupIngress"))

    fingerprint = (tmp_path / "example" / "fingerprint").read_text().strip()
    assert manifest["fingerprint"] == fingerprint
    for region, image_id in amis.items():
        ec2 = aws.client("ec2", region)
        (image,) = ec2.describe_images(ImageIds=[image_id])["Images"]
        tags = tags_of(image)
        assert image["Name"] == ami_name(settings, fingerprint, manifest["built_at"]) == manifest["name"]
        assert all(tags.get(k) for k in PROVENANCE), {k for k in PROVENANCE if not tags.get(k)}
        assert tags[T.FINGERPRINT] == fingerprint and tags[T.SOURCE_AMI] == DEBIAN_NEWER
        assert tags[T.NEXTCLOUD_IMAGE] == settings.nextcloud.image and tags["project"] == "nextcloud"
        assert T.PURPOSE not in tags, f"{region}: the bake finished, its AMI must not look like a throwaway"
        snapshots = [b["Ebs"]["SnapshotId"] for b in image["BlockDeviceMappings"] if "Ebs" in b]
        assert snapshots and snapshots == manifest["snapshots"][region]
        for snapshot in ec2.describe_snapshots(SnapshotIds=snapshots)["Snapshots"]:
            assert {k: tags_of(snapshot).get(k) for k in PROVENANCE} == {k: tags[k] for k in PROVENANCE}
            assert T.PURPOSE not in tags_of(snapshot)
        parameter = aws.client("ssm", region).get_parameter(Name="/nextcloud/example/ami-id")["Parameter"]
        assert parameter["Value"] == image_id
    # ImdsSupport=v2.0 was asked for on every copy (the emulator does not record the attribute itself: the
    # request's shape is checked against botocore's model in test_aws_ami.py).
    imds = {p["ImageId"][0] for p in boto_requests(aws, "ModifyImageAttribute")
            if p.get("ImdsSupport.Value") == ["v2.0"]}
    assert imds == set(amis.values())
    # The run's throwaways are gone.
    assert ours(emulator_state(aws), manifest["run_id"]).keys() <= {"images", "snapshots"}
    assert any("Creating AMI" in line for line in lines) and any(line.startswith("[00:") for line in lines)


@PACKER_RUNS
def test_the_same_inputs_reuse_without_packer_and_a_newer_source_ami_bakes_again(aws, tmp_path):
    hide_newer_debian(aws)
    settings = settings_for(aws, ami__regions=[COPY_REGION])
    first, m1 = bake(settings, tmp_path)
    assert first.word == "built" and m1["base_image"] == DEBIAN_CURRENT

    before = len(aws.recorded_requests())
    second, m2 = bake(settings, tmp_path, packer=str(tmp_path / "no-packer-here"))  # starting Packer would fail
    assert second.word == "reused" and second.ok, second.line()
    assert m2["reused"] is True and m2["amis"] == m1["amis"] and m2["fingerprint"] == m1["fingerprint"]
    assert m2["timings"]["total_seconds"] < 10
    later = actions_since(aws, before)
    assert later and all(agent == "boto3" for agent, _ in later), later  # no Packer
    assert all(action.startswith("Describe") or action == "GetCallerIdentity" for _, action in later), later

    publish_newer_debian(aws)
    third, m3 = bake(settings, tmp_path)
    assert third.word == "built" and m3["base_image"] == DEBIAN_NEWER
    assert m3["fingerprint"] != m1["fingerprint"] and set(m3["amis"].values()).isdisjoint(m1["amis"].values())


@PACKER_RUNS
def test_force_bakes_again_and_the_manifest_follows_the_last_run(aws, tmp_path):
    settings = settings_for(aws, ami__regions=[COPY_REGION])
    _, m1 = bake(settings, tmp_path)
    _, m2 = bake(settings, tmp_path, force=True)
    packer_manifest = json.loads((tmp_path / "example" / "packer-manifest.json").read_text())
    assert len(packer_manifest["builds"]) == 2
    assert m2["packer_run_uuid"] == packer_manifest["last_run_uuid"] != m1["packer_run_uuid"]
    last = next(b for b in packer_manifest["builds"] if b["packer_run_uuid"] == packer_manifest["last_run_uuid"])
    assert last["artifact_id"] == f"{REGION}:{m2['amis'][REGION]},{COPY_REGION}:{m2['amis'][COPY_REGION]}"


@PACKER_RUNS
def test_a_failing_packer_run_removes_what_the_run_created(aws, tmp_path):
    settings = settings_for(aws)
    before = emulator_state(aws)

    def source_disappears(ref: str) -> str:
        # Between the host's resolution and Packer's own lookup Debian deregisters the AMI: Packer fails for real.
        aws.client("ec2").deregister_image(ImageId=DEBIAN_NEWER)
        return ref

    lines: list[str] = []
    with pytest.raises(AwsError, match="the bake failed") as failure:
        build_aws_image(ROOT, settings, build_root=tmp_path, log=lines.append, resolve_image=source_disappears)
    assert "removed 2" in str(failure.value), lines
    # The verdict carries Packer's own reason, not just "packer build ... failed (exit 1):" (issue 25).
    assert "No AMI was found" in str(failure.value), "\n".join(lines)
    assert "\n" not in str(failure.value) and ":;" not in str(failure.value), str(failure.value)
    assert emulator_state(aws) == before
    assert any(line.startswith("  removed key-pair") for line in lines)
    assert any(line.startswith("  removed security-group") for line in lines)


@PACKER_RUNS
@pytest.mark.parametrize("interruption", [KeyboardInterrupt, RuntimeError])
def test_ctrl_c_or_a_failure_after_registration_removes_the_amis_too(aws, tmp_path, monkeypatch, interruption):
    settings = settings_for(aws, ami__regions=[COPY_REGION])
    before = emulator_state(aws)
    from infra.aws import ami

    def dies(*_a, **_k):
        raise interruption()

    monkeypatch.setattr(ami, "finish_images", dies)
    lines: list[str] = []
    with pytest.raises(KeyboardInterrupt if interruption is KeyboardInterrupt else AwsError):
        build_aws_image(ROOT, settings, build_root=tmp_path, log=lines.append)
    removed = [line for line in lines if line.startswith("  removed ")]
    # key pair, security group, the AMI in each region and each one's snapshot
    assert len(removed) == 6, lines
    after = emulator_state(aws)
    for region in before:
        for kind in ("images", "snapshots", "key_pairs", "security_groups"):
            assert after[region][kind] == before[region][kind], (region, kind)


def test_ssh_is_opened_only_to_the_build_host_when_provisioning(aws, tmp_path, monkeypatch):
    """With a communicator (a real bake) the run's security group admits SSH only from the build host.

    ``stop_before_packer`` stands in for Packer here: with SSH, Packer would dial the emulated instance's address,
    which belongs to nobody. It records what the driver hands Packer and stops the run like a Ctrl-C."""
    settings = settings_for(aws, bake__communicator="ssh")
    from infra.aws import bake as bake_module

    secret = "canary-secret-key-9f2c41d7e0"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)  # the emulator takes any key
    seen = {}

    def stop_before_packer(*_a, variables, extra_args, extra_env, sensitive_variables, **_k):
        # The credentials reach Packer through its environment only, never its argument list.
        assert extra_env["AWS_SECRET_ACCESS_KEY"] == secret
        assert secret not in json.dumps([variables, extra_args, sensitive_variables])
        seen.update(variables)
        group = aws.client("ec2").describe_security_groups(GroupIds=[variables["security_group_id"]])
        seen["rules"] = group["SecurityGroups"][0]["IpPermissions"]
        raise KeyboardInterrupt

    monkeypatch.setattr(bake_module, "run_packer_build", stop_before_packer)
    with pytest.raises(KeyboardInterrupt):
        build_aws_image(ROOT, settings, build_root=tmp_path, log=lambda _m: None)
    assert seen["rules"] == [{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [
        {"CidrIp": BUILD_HOST, "Description": "the build host"}], "Ipv6Ranges": [], "PrefixListIds": [],
        "UserIdGroupPairs": []}]
    assert seen["subnet_id"] == settings.bake.subnet_id and seen["ssh_interface"] == "public_ip"


def children_named(name: str) -> list[int]:
    """Process ids of this process's children called ``name`` (from /proc)."""
    found = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
            comm = stat_file.read_text().split("(", 1)[1].rsplit(")", 1)[0]
        except (OSError, IndexError):
            continue
        if int(fields[1]) == os.getpid() and comm == name:
            found.append(int(stat_file.parent.name))
    return found


@PACKER_RUNS
def test_packer_killed_after_creating_the_image_still_leaves_nothing(aws, tmp_path):
    """Packer SIGKILLed (no cleanup of its own) right after CreateImage, then Ctrl-C: the AMI Packer registered
    untagged under a random name is found through its snapshot ("Created by CreateImage(<the run's instance>)"),
    and removed with the instance, the volume, the key pair and the security group."""
    settings = settings_for(aws)
    before = emulator_state(aws)
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        if "]     AMI: ami-" in line:  # Packer: CreateImage answered
            for pid in children_named("packer"):
                os.kill(pid, signal.SIGKILL)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_aws_image(ROOT, settings, build_root=tmp_path, log=log)
    assert any(line.startswith("  removed image") for line in lines), lines
    after = emulator_state(aws)
    for region in before:
        for kind in ("images", "snapshots", "key_pairs", "security_groups", "volumes"):
            assert after[region][kind] == before[region][kind], (region, kind, lines)
        assert {i for i, (state, _) in after[region]["instances"].items() if state != "terminated"} == {
            i for i, (state, _) in before[region]["instances"].items() if state != "terminated"}
