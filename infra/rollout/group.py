"""The Auto Scaling group and what it launches now.

``current_launch`` answers "which launch template version and AMI does the group launch now": the rollout starts
from it. (deploy-stack asks the same question through infra/stack/images.py and passes that image as the stack's,
so a stack update never puts an old AMI back and never undoes a rollout.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from infra.aws.session import Aws
from infra.rollout.outcome import Refused


@dataclass(frozen=True)
class Launch:
    """What the group launches: its launch template, the version it names (as a number) and that version's AMI."""

    group: str
    template_id: str
    template_name: str
    version: int
    version_spec: str  # as the group names it: "7", or "$Latest"/"$Default" (then ``version`` is what it means now)
    image_id: str
    default_version: int
    latest_version: int

    @property
    def pinned(self) -> bool:
        return self.version_spec not in ("$Latest", "$Default")


def describe_group(aws: Aws, settings: Any) -> dict[str, Any]:
    """The environment's group (``autoscaling.group_name``), or Refused naming the setting."""
    name = settings.autoscaling.group_name
    if not name:
        raise Refused("autoscaling.group_name is not set: name the Auto Scaling group in the settings")
    groups = aws.client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"]
    if not groups:
        raise Refused(f"the Auto Scaling group {name!r} (autoscaling.group_name) does not exist in {aws.region}: "
                      "deploy the stack first (`inv deploy-stack`) or fix the name; nothing was changed")
    return groups[0]


def launch_of(aws: Aws, group: dict[str, Any]) -> Launch:
    """The Launch of an already described group."""
    spec = group.get("LaunchTemplate") or (group.get("MixedInstancesPolicy") or {}).get(
        "LaunchTemplate", {}).get("LaunchTemplateSpecification")
    if not spec:
        raise Refused(f"the group {group['AutoScalingGroupName']} does not use a launch template (a launch "
                      "configuration?): the rollout versions launch templates only; nothing was changed")
    ec2 = aws.client("ec2")
    ident = ({"LaunchTemplateIds": [spec["LaunchTemplateId"]]} if spec.get("LaunchTemplateId")
             else {"LaunchTemplateNames": [spec["LaunchTemplateName"]]})
    template = ec2.describe_launch_templates(**ident)["LaunchTemplates"][0]
    version_spec = spec.get("Version") or "$Default"
    version = {"$Latest": template["LatestVersionNumber"], "$Default": template["DefaultVersionNumber"]}.get(
        version_spec) or int(version_spec)
    data = ec2.describe_launch_template_versions(
        LaunchTemplateId=template["LaunchTemplateId"], Versions=[str(version)]
    )["LaunchTemplateVersions"][0]["LaunchTemplateData"]
    return Launch(
        group=group["AutoScalingGroupName"], template_id=template["LaunchTemplateId"],
        template_name=template["LaunchTemplateName"], version=version, version_spec=version_spec,
        image_id=data.get("ImageId", ""), default_version=template["DefaultVersionNumber"],
        latest_version=template["LatestVersionNumber"],
    )


def current_launch(aws: Aws, settings: Any) -> Launch:
    """Which launch template version and AMI the environment's group launches now (read-only)."""
    return launch_of(aws, describe_group(aws, settings))


def instances_of(aws: Aws, group: dict[str, Any]) -> list[dict[str, Any]]:
    """The group's instances with their AMI (ec2:DescribeInstances: the image each really runs)."""
    members = group.get("Instances", [])
    ids = [m["InstanceId"] for m in members]
    images: dict[str, str] = {}
    if ids:
        for page in aws.client("ec2").get_paginator("describe_instances").paginate(InstanceIds=ids):
            for reservation in page["Reservations"]:
                for inst in reservation["Instances"]:
                    images[inst["InstanceId"]] = inst.get("ImageId", "")
    return [{**m, "ImageId": images.get(m["InstanceId"], "")} for m in members]
