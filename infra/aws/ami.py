"""AMIs: resolve the source, find a reusable one, finish a baked one (IMDSv2, tags on every copy and snapshot),
publish it.

Tag keys come from render/tags.py. While a bake runs, its AMIs (and their snapshots) carry PURPOSE=bake and the
run's id like every throwaway resource of the run; when the bake has finished every step (IMDSv2 on each copy,
every tag in every region) PURPOSE is removed: an AMI still carrying PURPOSE=bake never completed, is never
reused, rolled out or tested, and is what ``inv sweep`` may remove.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError, WaiterError

from infra.aws.session import Aws, AwsError, describe_client_error
from render import tags as T

Log = Callable[[str], None]

# The same selector the template's source_ami_filter uses: an AMI resolved here also matches there.
SOURCE_FILTERS = {"architecture": "x86_64", "virtualization-type": "hvm", "root-device-type": "ebs"}
IMDS_V2 = "v2.0"


@dataclass(frozen=True)
class SourceAmi:
    image_id: str
    name: str
    creation_date: str


def _filters(values: Mapping[str, str | Iterable[str]]) -> list[dict[str, Any]]:
    return [
        {"Name": name, "Values": [value] if isinstance(value, str) else list(value)}
        for name, value in values.items()
    ]


def tag_filters(env: str, **more: str | Iterable[str]) -> list[dict[str, Any]]:
    """EC2 filters for this project's resources of environment ``env`` (plus ``tag:<key>`` = value pairs)."""
    wanted: dict[str, str | Iterable[str]] = {f"tag:{T.MANAGED}": "true", f"tag:{T.ENVIRONMENT}": env}
    wanted.update({f"tag:{key}": value for key, value in more.items()})
    return _filters(wanted)


def tag_dict(resource: Mapping[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags") or []}


def as_tag_list(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in sorted(tags.items())]


def resolve_source_ami(aws: Aws, owner: str, name_filter: str) -> SourceAmi:
    """The newest available AMI of ``owner`` whose name matches ``name_filter`` (x86_64, HVM, EBS-backed).

    Deprecated AMIs are left out (DescribeImages' default), so a base the publisher retired is never picked.
    """
    pages = aws.client("ec2").get_paginator("describe_images").paginate(
        Owners=[owner], Filters=_filters({"name": name_filter, "state": "available", **SOURCE_FILTERS})
    )
    try:
        images = [image for page in pages for image in page.get("Images", [])]
    except ClientError as exc:
        raise AwsError(f"cannot look up the source AMI ({describe_client_error(exc)}); nothing was changed") from None
    if not images:
        raise AwsError(
            f"no available AMI of owner {owner} matches base_image.name_filter {name_filter!r} in {aws.region} "
            "(x86_64, HVM, EBS): check base_image.owner and base_image.name_filter; nothing was changed"
        )
    newest = max(images, key=lambda i: (i.get("CreationDate", ""), i.get("Name", ""), i["ImageId"]))
    return SourceAmi(newest["ImageId"], newest.get("Name", ""), newest.get("CreationDate", ""))


def parse_artifact_id(artifact_id: str) -> dict[str, str]:
    """Packer's amazon-ebs artifact id ``region:ami-…[,region:ami-…]`` as {region: AMI id}."""
    amis: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in artifact_id.split(","))):
        region, sep, image_id = part.partition(":")
        if not sep or not region or not image_id.startswith("ami-") or region in amis:
            raise AwsError(
                f"Packer's manifest names the artifact {artifact_id!r}: expected one region:ami-… (an AMI) per region"
            )
        amis[region] = image_id
    if not amis:
        raise AwsError("Packer's manifest names no AMI for this run")
    return amis


def image_tags(
    settings: Any, *, fingerprint: str, git_sha: str, build_time: str, source: SourceAmi, nextcloud_image: str,
    ami_name: str, run_id: str,
) -> dict[str, str]:
    """The tags of a baked AMI and each of its snapshots, in every region (PURPOSE=bake until it completes)."""
    return {
        **settings.tags,
        "Name": ami_name,
        T.MANAGED: "true",
        T.ENVIRONMENT: settings.name,
        T.FINGERPRINT: fingerprint,
        T.GIT_SHA: git_sha,
        T.BUILD_TIME: build_time,
        T.SOURCE_AMI: source.image_id,
        T.SOURCE_AMI_NAME: source.name[:256],
        T.NEXTCLOUD_IMAGE: nextcloud_image,
        T.NEXTCLOUD_VERSION: settings.nextcloud.version,
        T.DOCKER_VERSION: settings.docker.version,
        T.PURPOSE: T.PURPOSE_BAKE,
        T.RUN: run_id,
    }


def throwaway_tags(settings: Any, *, purpose: str, run_id: str, name: str) -> dict[str, str]:
    """The tags of a run's throwaway resources (instance, volume, key pair, security group)."""
    return {
        **settings.tags,
        "Name": name,
        T.MANAGED: "true",
        T.ENVIRONMENT: settings.name,
        T.PURPOSE: purpose,
        T.RUN: run_id,
    }


def is_complete(image: Mapping[str, Any], env: str) -> bool:
    """A finished AMI of this environment: the project's tags, a fingerprint, and no PURPOSE left from its bake."""
    tags = tag_dict(image)
    return (
        tags.get(T.MANAGED) == "true" and tags.get(T.ENVIRONMENT) == env and bool(tags.get(T.FINGERPRINT))
        and T.PURPOSE not in tags and image.get("State") == "available"
    )


def find_reusable(aws: Aws, settings: Any, fingerprint: str) -> dict[str, str] | None:
    """{region: AMI id} of a finished AMI with this fingerprint owned by this account, in the environment's region
    and every region it is copied to; None when any of them is missing (then the bake runs)."""
    found: dict[str, str] = {}
    for region in (settings.region, *settings.ami.regions):
        images = aws.client("ec2", region).describe_images(
            Owners=["self"], Filters=[*tag_filters(settings.name, **{T.FINGERPRINT: fingerprint}),
                                      {"Name": "state", "Values": ["available"]}],
        ).get("Images", [])
        complete = sorted(
            (i for i in images if is_complete(i, settings.name) and tag_dict(i)[T.FINGERPRINT] == fingerprint),
            key=lambda i: i.get("CreationDate", ""),
        )
        if not complete:
            return None
        found[region] = complete[-1]["ImageId"]
    return found


def snapshots_of(image: Mapping[str, Any]) -> list[str]:
    return [
        bdm["Ebs"]["SnapshotId"]
        for bdm in image.get("BlockDeviceMappings") or []
        if (bdm.get("Ebs") or {}).get("SnapshotId")
    ]


def describe_image(aws: Aws, region: str, image_id: str) -> dict[str, Any]:
    images = aws.client("ec2", region).describe_images(ImageIds=[image_id]).get("Images", [])
    if not images:
        raise AwsError(f"AMI {image_id} is not in {region}")
    return images[0]


def wait_available(aws: Aws, region: str, image_id: str, *, timeout_s: float = 3600) -> None:
    """botocore's image_available waiter, bounded by ``timeout_s``."""
    delay = 15
    try:
        aws.client("ec2", region).get_waiter("image_available").wait(
            ImageIds=[image_id], WaiterConfig={"Delay": delay, "MaxAttempts": max(1, int(timeout_s // delay))}
        )
    except WaiterError as exc:
        raise AwsError(f"AMI {image_id} in {region} did not become available: {exc}") from None


def require_imds_v2(aws: Aws, region: str, image: Mapping[str, Any], log: Log) -> bool:
    """ModifyImageAttribute(ImdsSupport=v2.0): instances of the AMI get IMDSv2 only. One-way; skipped when the
    AMI says it has it already. Returns True when the call was made."""
    if image.get("ImdsSupport") == IMDS_V2:
        log(f"  {region} {image['ImageId']}: ImdsSupport already {IMDS_V2}")
        return False
    aws.client("ec2", region).modify_image_attribute(ImageId=image["ImageId"], ImdsSupport={"Value": IMDS_V2})
    log(f"  {region} {image['ImageId']}: ImdsSupport={IMDS_V2}")
    return True


def finish_images(aws: Aws, amis: Mapping[str, str], tags: Mapping[str, str], log: Log) -> dict[str, list[str]]:
    """Every copy: available, IMDSv2 only, every tag on the AMI and each of its snapshots (explicitly: copies and
    their snapshots do not inherit tags, whatever the Packer version did); then the bake's PURPOSE tag is removed,
    which marks the AMI complete. Returns {region: snapshot ids}."""
    final = {k: v for k, v in tags.items() if k != T.PURPOSE}
    snapshots: dict[str, list[str]] = {}
    for region, image_id in amis.items():
        wait_available(aws, region, image_id)
        image = describe_image(aws, region, image_id)
        require_imds_v2(aws, region, image, log)
        snaps = snapshots_of(image)
        if not snaps:
            raise AwsError(f"AMI {image_id} in {region} lists no EBS snapshot: its block device mappings are empty")
        ec2 = aws.client("ec2", region)
        ec2.create_tags(Resources=[image_id, *snaps], Tags=as_tag_list(final))
        ec2.delete_tags(Resources=[image_id, *snaps], Tags=[{"Key": T.PURPOSE}])
        snapshots[region] = snaps
        log(f"  {region} {image_id}: {len(final)} tags on the AMI and {', '.join(snaps)}")
    return snapshots


def publish_parameter(aws: Aws, name: str, amis: Mapping[str, str], log: Log) -> None:
    """The AMI id in SSM parameter ``name`` of each region (data type aws:ec2:image, so SSM checks it is one)."""
    for region, image_id in amis.items():
        aws.client("ssm", region).put_parameter(
            Name=name, Value=image_id, Type="String", DataType="aws:ec2:image", Overwrite=True,
            Description="Nextcloud image: the newest AMI of this environment (inv build-ami)",
        )
        log(f"  {region}: SSM parameter {name} = {image_id}")


def record_verdict(aws: Aws, amis: Mapping[str, str], verdict: str, tested_at: str, run_id: str) -> None:
    """TEST_VERDICT / TESTED_AT / TEST_RUN on the AMI in every region (the rollout refuses untested AMIs)."""
    tags = as_tag_list({T.TEST_VERDICT: verdict, T.TESTED_AT: tested_at, T.TEST_RUN: run_id})
    for region, image_id in amis.items():
        aws.client("ec2", region).create_tags(Resources=[image_id], Tags=tags)


def copies_of(aws: Aws, settings: Any, image: Mapping[str, Any]) -> dict[str, str]:
    """{region: AMI id} of ``image`` (in the environment's region) and its finished copies in the other regions,
    found by fingerprint."""
    fingerprint = tag_dict(image).get(T.FINGERPRINT, "")
    copies = {settings.region: image["ImageId"]}
    for region in settings.ami.regions:
        images = aws.client("ec2", region).describe_images(
            Owners=["self"], Filters=tag_filters(settings.name, **{T.FINGERPRINT: fingerprint})
        ).get("Images", [])
        done = sorted((i for i in images if is_complete(i, settings.name)), key=lambda i: i.get("CreationDate", ""))
        if done:
            copies[region] = done[-1]["ImageId"]
    return copies


def images_named(aws: Aws, region: str, name: str) -> list[dict[str, Any]]:
    """This account's AMIs called ``name`` in ``region`` (AMI names are unique per account and region)."""
    return aws.client("ec2", region).describe_images(Owners=["self"], Filters=_filters({"name": name})).get(
        "Images", []
    )
