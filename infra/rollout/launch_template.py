"""Launch template versions: a new one from the group's version with only the image changed, checked before use.

``CreateLaunchTemplateVersion(SourceVersion=N, LaunchTemplateData={ImageId})`` inherits everything else from
version N. The new version is compared with N before anything launches it: if anything but the image differs (an
endpoint that ignores SourceVersion, as moto does, would drop the user data, the instance profile, ...), the rollout
stops there and the version is never used. Snapshot ids in inherited block device mappings are not compared: AWS
drops them on purpose (they belong to the old image).
"""

from __future__ import annotations

from typing import Any

from infra.aws.session import Aws
from infra.rollout.outcome import Refused


def version_data(aws: Aws, template_id: str, version: int | str) -> dict[str, Any]:
    answer = aws.client("ec2").describe_launch_template_versions(LaunchTemplateId=template_id, Versions=[str(version)])
    return answer["LaunchTemplateVersions"][0]["LaunchTemplateData"]


def _comparable(data: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in data.items() if k != "ImageId"}
    if "BlockDeviceMappings" in out:
        out["BlockDeviceMappings"] = [
            {**m, "Ebs": {k: v for k, v in m["Ebs"].items() if k != "SnapshotId"}} if "Ebs" in m else m
            for m in out["BlockDeviceMappings"]
        ]
    return out


def create_image_version(aws: Aws, template_id: str, source_version: int, image_id: str, description: str) -> int:
    """A new version of ``template_id``: version ``source_version`` with ``image_id``; its number."""
    answer = aws.client("ec2").create_launch_template_version(
        LaunchTemplateId=template_id, SourceVersion=str(source_version), VersionDescription=description[:255],
        LaunchTemplateData={"ImageId": image_id},
    )
    number = int(answer["LaunchTemplateVersion"]["VersionNumber"])
    source, new = version_data(aws, template_id, source_version), version_data(aws, template_id, number)
    if new.get("ImageId") != image_id:
        raise Refused(f"launch template version {number} does not launch {image_id}; it stays unused and nothing "
                      "else was changed")
    before, after = _comparable(source), _comparable(new)
    if before != after:
        differ = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        raise Refused(
            f"launch template version {number} differs from version {source_version} in more than the image "
            f"({', '.join(differ)}): the endpoint did not inherit SourceVersion. The version stays unused; the group "
            "and its instances were not changed"
        )
    return number


def set_default(aws: Aws, template_id: str, version: int) -> None:
    """Make ``version`` the template's default (what a launch without a version, or $Default, gets)."""
    aws.client("ec2").modify_launch_template(LaunchTemplateId=template_id, DefaultVersion=str(version))
