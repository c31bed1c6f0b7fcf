"""AMIs as the rollout sees them: their tags (render/tags.py), the checks before one is rolled out, the manifest.

A rollout refuses, with nothing changed, an AMI that does not exist, is not available, is in another region, was
not made by this project, belongs to another environment, has not passed test-ami (unless --untested), or carries
another Nextcloud version than the cluster runs (a newer one is `inv upgrade`'s job, an older one a downgrade).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import botocore.exceptions

from infra import build_record
from infra.aws.session import Aws
from infra.rollout import versions
from infra.rollout.outcome import Refused
from render import tags as T


@dataclass(frozen=True)
class Ami:
    id: str
    region: str
    name: str = ""
    state: str = ""
    owner: str = ""
    created: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    snapshots: tuple[str, ...] = ()

    @property
    def managed(self) -> bool:
        return self.tags.get(T.MANAGED) == "true"

    @property
    def environment(self) -> str | None:
        return self.tags.get(T.ENVIRONMENT)

    @property
    def nextcloud_version(self) -> str | None:
        return self.tags.get(T.NEXTCLOUD_VERSION)

    @property
    def build_time(self) -> str:
        return self.tags.get(T.BUILD_TIME) or self.created

    @property
    def fingerprint(self) -> str | None:
        return self.tags.get(T.FINGERPRINT)

    @property
    def test_verdict(self) -> str | None:
        return self.tags.get(T.TEST_VERDICT)

    def describe(self) -> str:
        """ami-… (Nextcloud 29.0.7, built 2024-…)"""
        return f"{self.id} (Nextcloud {self.nextcloud_version or '?'}, built {self.build_time or '?'})"


def _from_api(image: dict[str, Any], region: str) -> Ami:
    snaps = tuple(
        m["Ebs"]["SnapshotId"] for m in image.get("BlockDeviceMappings", []) if (m.get("Ebs") or {}).get("SnapshotId")
    )
    return Ami(
        id=image["ImageId"], region=region, name=image.get("Name", ""), state=image.get("State", ""),
        owner=image.get("OwnerId", ""), created=image.get("CreationDate", ""),
        tags={t["Key"]: t["Value"] for t in image.get("Tags", [])}, snapshots=snaps,
    )


def describe_amis(aws: Aws, image_ids: list[str], region: str | None = None) -> dict[str, Ami]:
    """The AMIs among ``image_ids`` that exist in ``region`` (default: the environment's), by id."""
    region = region or aws.region
    wanted = sorted({i for i in image_ids if i})
    if not wanted:
        return {}
    ec2 = aws.client("ec2", region)
    try:
        images = ec2.describe_images(ImageIds=wanted)["Images"]
    except botocore.exceptions.ClientError as exc:
        if exc.response["Error"]["Code"] not in ("InvalidAMIID.NotFound", "InvalidAMIID.Malformed"):
            raise
        # One missing id fails the whole call: ask one by one.
        images = []
        for image_id in wanted:
            try:
                images += ec2.describe_images(ImageIds=[image_id])["Images"]
            except botocore.exceptions.ClientError as one:
                if one.response["Error"]["Code"] not in ("InvalidAMIID.NotFound", "InvalidAMIID.Malformed"):
                    raise
    # DescribeImages ignores Filters when ImageIds are given (moto does; AWS applies both): never filter here.
    return {img["ImageId"]: _from_api(img, region) for img in images if img["ImageId"] in wanted}


def project_amis(aws: Aws, environment: str, region: str) -> list[Ami]:
    """This account's AMIs made by this project for ``environment`` in ``region`` (tags checked again here)."""
    paginator = aws.client("ec2", region).get_paginator("describe_images")
    found = []
    for page in paginator.paginate(
        Owners=["self"],
        Filters=[{"Name": f"tag:{T.MANAGED}", "Values": ["true"]},
                 {"Name": f"tag:{T.ENVIRONMENT}", "Values": [environment]}],
    ):
        found += [_from_api(img, region) for img in page["Images"]]
    return [a for a in found if a.managed and a.environment == environment]


def completed(amis: list[Ami]) -> list[Ami]:
    """Those whose bake completed: a bake removes PURPOSE from its AMIs when every step is done (render/tags.py)."""
    return [a for a in amis if not a.tags.get(T.PURPOSE)]


def manifest_ami(root: Path, environment: str, region: str) -> str:
    """The AMI id in ``region`` from ``build/<env>/manifest.json`` (written by `inv build-ami`)."""
    path = build_record.manifest_path(root, environment)
    try:
        doc = build_record.read(path)
    except build_record.RecordError as exc:
        raise Refused(f"{path.relative_to(root)} is not a build manifest ({exc.reason}); rebuild it with "
                      "`inv build-ami` or pass --ami; nothing was changed") from None
    if doc is None:
        raise Refused(f"{path.relative_to(root)} not found: bake first (`inv build-ami --env {environment}`) or name "
                      "the AMI with --ami ami-…; nothing was changed")
    by_region = doc.get("amis") or doc.get("regions") or {}  # infra/aws/bake.py writes amis: region -> id
    if isinstance(by_region, dict) and by_region.get(region):
        return str(by_region[region])
    artifact = str(doc.get("artifact_id") or "")
    for part in artifact.split(","):  # Packer's form: "eu-central-1:ami-…,eu-west-1:ami-…"
        where, _, ami = part.rpartition(":")
        if ami.startswith("ami-") and where in ("", region):
            return ami
    raise Refused(f"{path.relative_to(root)} names no AMI in {region}; pass --ami ami-…; nothing was changed")


def check_candidate(aws: Aws, settings: Any, image_id: str, *, untested: bool) -> tuple[Ami, list[str]]:
    """The AMI ``image_id`` if it may be rolled out in this environment, and the warnings; else Refused."""
    env, region = settings.name, settings.region
    found = describe_amis(aws, [image_id], region)
    if image_id not in found:
        elsewhere = [r for r in settings.ami.regions if image_id in describe_amis(aws, [image_id], r)]
        where = f"it exists in {', '.join(elsewhere)}, " if elsewhere else ""
        raise Refused(f"AMI {image_id} does not exist in {region}: {where}the group launches from {region}; "
                      "roll out the copy in that region (its id is in build/<env>/manifest.json); nothing was changed")
    ami = found[image_id]
    if ami.state != "available":
        raise Refused(f"AMI {image_id} is {ami.state or 'not available'}, not available: wait for it or rebake; "
                      "nothing was changed")
    if ami.tags.get(T.PURPOSE):
        raise Refused(f"AMI {image_id} is from a bake that never completed ({T.PURPOSE}={ami.tags[T.PURPOSE]} is still "
                      "on it): bake again (`inv sweep` removes it); nothing was changed")
    if not ami.managed:
        raise Refused(f"AMI {image_id} was not made by this project (no {T.MANAGED}=true tag): only images baked by "
                      "`inv build-ami` are rolled out; nothing was changed")
    if ami.environment != env:
        raise Refused(f"AMI {image_id} belongs to environment {ami.environment!r}, not {env!r}: bake one for {env} "
                      f"(`inv build-ami --env {env}`); nothing was changed")
    warnings = []
    if ami.test_verdict != T.VERDICT_PASSED:
        state = f"test-ami said {ami.test_verdict}" if ami.test_verdict else "test-ami has not tested it"
        if not untested:
            raise Refused(f"AMI {image_id} has not passed test-ami ({state}): run `inv test-ami --env {env} --ami "
                          f"{image_id}` first, or pass --untested to roll it out anyway; nothing was changed")
        warnings.append(f"rolling out AMI {image_id} although {state} (--untested)")
    if not ami.nextcloud_version:
        raise Refused(f"AMI {image_id} has no {T.NEXTCLOUD_VERSION} tag: cannot tell which Nextcloud it carries; "
                      "nothing was changed")
    try:
        versions.parse(ami.nextcloud_version)
    except ValueError as exc:
        raise Refused(f"AMI {image_id}: {exc}; nothing was changed") from None
    return ami, warnings
