"""Which AMI the stack passes to the group: always the one the group launches now (deploy-stack never changes it:
the rollout does), or, for the group's very first deployment, the tested AMI of this environment's last bake."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import botocore.exceptions

from infra import build_record
from infra.aws.session import Aws, AwsError
from render import tags


@dataclass(frozen=True)
class GroupImage:
    image_id: str
    launch_template_id: str
    version: str
    source: str  # where the image id came from, for the operator


def image_the_group_runs(aws: Aws, group_name: str) -> GroupImage | None:
    """The AMI the group launches now: the group's launch template version → its ImageId. None without a group."""
    groups = aws.client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[group_name])
    if not groups["AutoScalingGroups"]:
        return None
    group = groups["AutoScalingGroups"][0]
    spec = group.get("LaunchTemplate") or (
        group.get("MixedInstancesPolicy", {}).get("LaunchTemplate", {}).get("LaunchTemplateSpecification")
    )
    if not spec:
        raise AwsError(f"the group {group_name} launches from no launch template; it was not made by this stack")
    version = str(spec.get("Version") or "$Default")
    ident = {"LaunchTemplateId": spec["LaunchTemplateId"]} if spec.get("LaunchTemplateId") else {
        "LaunchTemplateName": spec["LaunchTemplateName"]
    }
    answer = aws.client("ec2").describe_launch_template_versions(**ident, Versions=[version])
    data = answer["LaunchTemplateVersions"][0]
    image = data.get("LaunchTemplateData", {}).get("ImageId")
    if not image:
        raise AwsError(f"the group {group_name}'s launch template version {version} names no AMI")
    return GroupImage(
        image_id=image,
        launch_template_id=data["LaunchTemplateId"],
        version=str(data["VersionNumber"]),
        source=f"the group {group_name} launches it (launch template {data['LaunchTemplateId']} version "
        f"{data['VersionNumber']})",
    )


def first_tested_image(aws: Aws, manifest: Path, environment: str) -> GroupImage | None:
    """The AMI of the last bake (build/<env>/manifest.json), if test-ami passed it; None if there is none yet.

    Raises when there is one that is not usable: untested, failed, of another environment, gone.
    """
    try:
        doc = build_record.read(manifest)
    except build_record.RecordError as exc:
        raise AwsError(f"{manifest}: {exc.reason}; run `inv build-ami` again") from None
    if doc is None:
        return None
    image_id = _ami_in(str(doc.get("ami_id") or doc.get("artifact_id") or ""), aws.region)
    if not image_id:
        return None
    try:
        images = aws.client("ec2").describe_images(ImageIds=[image_id])["Images"]
    except botocore.exceptions.ClientError as exc:
        if "InvalidAMIID" in exc.response.get("Error", {}).get("Code", ""):
            images = []
        else:
            raise
    if not images:
        raise AwsError(f"{image_id} (from {manifest}) does not exist in {aws.region}: run `inv build-ami` again")
    image_tags = {t["Key"]: t["Value"] for t in images[0].get("Tags", [])}
    if image_tags.get(tags.ENVIRONMENT) != environment:
        raise AwsError(f"{image_id} belongs to environment {image_tags.get(tags.ENVIRONMENT)!r}, not {environment!r}")
    verdict = image_tags.get(tags.TEST_VERDICT)
    if verdict != tags.VERDICT_PASSED:
        state = f"test-ami said {verdict!r}" if verdict else "it has not been tested"
        raise AwsError(
            f"{image_id} is the last bake, but {state}: run `inv test-ami --env {environment}` and deploy again; "
            "the group is created only with a tested AMI"
        )
    return GroupImage(image_id=image_id, launch_template_id="", version="", source=f"the tested bake in {manifest}")


def _ami_in(artifact: str, region: str) -> str:
    """``ami-…`` or Packer's ``region:ami-…[,region:ami-…]`` → this region's AMI id."""
    for part in artifact.split(","):
        where, _, ami = part.strip().rpartition(":")
        if ami.startswith("ami-") and where in ("", region):
            return ami
    return ""
