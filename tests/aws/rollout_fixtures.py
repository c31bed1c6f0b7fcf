"""Fixtures and helpers of the rollout tests (tests/aws/rollout/), made fixtures by tests/aws/conftest.py: a
conftest.py of their own would shadow the other test directories' `conftest` module (module names are global
without packages).

A fleet in the emulator, behind the front door (front_door.py): the environment `example` as the stack would
leave it, a VPC with two subnets, a launch template pinned by the group, an Auto Scaling group of 4 instances
behind a target group and a listener, an alarm, and AMIs baked the way `inv build-ami` tags them.

The AMIs are made in the emulator directly (CreateImage from a throwaway instance, then the bake's provenance tags
on the image and its snapshot, and test-ami's verdict), standing in for `inv build-ami` + `inv test-ami`, which
cannot run here.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from front_door import FrontDoor
from rich.console import Console

from infra.rollout.report import Reporter
from infra.rollout.rollout import run
from infra.rollout.upgrade import upgrade
from render import tags as T
from render.outputs import render_user_data
from render.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
ENV = "example"
GROUP = "nextcloud-example"
TEMPLATE = "nextcloud-example"
ALARM = "nextcloud-example-5xx"
BASE_VERSION = "33.0.8"


class Captured(Reporter):
    """The production Reporter writing to a string (a console that is not a terminal: one line per change)."""

    def __init__(self) -> None:
        self.buffer = io.StringIO()
        super().__init__(Console(file=self.buffer, width=200, force_terminal=False, color_system=None))

    @property
    def text(self) -> str:
        return self.buffer.getvalue()


@dataclass
class Fleet:
    door: FrontDoor
    region: str
    vpc: str = ""
    subnets: list[str] = field(default_factory=list)
    security_group: str = ""
    template_id: str = ""
    target_group: str = ""
    listener: str = ""
    base_image: str = ""
    counter: Any = field(default_factory=lambda: itertools.count(1))
    root: Path = ROOT

    clients: dict[tuple[str, str], Any] = field(default_factory=dict)

    def client(self, service: str, region: str | None = None):
        """A plain client through the front door, for arranging and inspecting (not production code)."""
        key = (service, region or self.region)
        if key not in self.clients:
            self.clients[key] = boto3.client(service, region_name=key[1], endpoint_url=self.door.url)
        return self.clients[key]

    def settings(self, **overrides: Any):
        values = {"rollout.poll_seconds": 0, "rollout.alarm_names": [ALARM],
                  **({"upgrade.listener_arn": self.listener} if self.listener else {}), **overrides}
        return load_settings(ROOT, ENV, environ={}, overrides=values).settings

    def bake(self, nextcloud: str = BASE_VERSION, *, env: str = ENV, tested: bool | None = True,
             managed: bool = True, region: str | None = None, built: str | None = None,
             fingerprint: str | None = None, tag_snapshots: bool = True) -> str:
        """An AMI as `inv build-ami` (+ `inv test-ami`) leaves it: provenance tags on the image and its snapshot."""
        region = region or self.region
        ec2 = self.client("ec2", region)
        n = next(self.counter)
        base = self.base_image if region == self.region else _any_image(ec2)
        builder = ec2.run_instances(ImageId=base, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
        # The builder is left running: terminating it costs the emulator more than it is worth, and nothing here
        # counts instances outside the group.
        image = ec2.create_image(InstanceId=builder, Name=f"nextcloud-{env}-{n:04d}")["ImageId"]
        snapshots = [m["Ebs"]["SnapshotId"] for m in ec2.describe_images(ImageIds=[image])["Images"][0][
            "BlockDeviceMappings"] if "Ebs" in m]
        tags = {T.ENVIRONMENT: env, T.NEXTCLOUD_VERSION: nextcloud,
                T.BUILD_TIME: built or (dt.datetime(2026, 1, 1) + dt.timedelta(hours=n)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                T.FINGERPRINT: fingerprint or hashlib.sha256(f"{env}-{n}".encode()).hexdigest(),
                T.NEXTCLOUD_IMAGE: f"nextcloud:{nextcloud}-apache@sha256:{'0' * 64}"}
        if managed:
            tags[T.MANAGED] = "true"
        if tested is not None:
            tags[T.TEST_VERDICT] = T.VERDICT_PASSED if tested else T.VERDICT_FAILED
        tagged = [image, *snapshots] if tag_snapshots else [image]
        ec2.create_tags(Resources=tagged, Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
        return image

    # ---- looking at the emulator ------------------------------------------------------------------------------
    def group(self) -> dict[str, Any]:
        return self.client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[GROUP])[
            "AutoScalingGroups"][0]

    def images(self) -> list[str]:
        """The AMI each instance of the group runs (sorted)."""
        ids = [i["InstanceId"] for i in self.group()["Instances"]]
        found = self.client("ec2").describe_instances(InstanceIds=ids)["Reservations"] if ids else []
        return sorted(i["ImageId"] for r in found for i in r["Instances"])

    def template(self) -> dict[str, Any]:
        return self.client("ec2").describe_launch_templates(LaunchTemplateIds=[self.template_id])["LaunchTemplates"][0]

    def state(self) -> dict[str, Any]:
        """Everything a rollout, rollback, upgrade or prune could change, to compare before/after."""
        ec2 = self.client("ec2")
        group = self.group()
        versions = ec2.describe_launch_template_versions(LaunchTemplateId=self.template_id)["LaunchTemplateVersions"]
        ssm = self.client("ssm").describe_parameters()["Parameters"]
        return {
            "group_template": group["LaunchTemplate"], "desired": group["DesiredCapacity"],
            "instances": sorted((i["InstanceId"], i["LifecycleState"]) for i in group["Instances"]),
            "images": self.images(),
            "template": {k: self.template()[k] for k in ("DefaultVersionNumber", "LatestVersionNumber")},
            "versions": sorted((v["VersionNumber"], v["LaunchTemplateData"].get("ImageId")) for v in versions),
            "amis": sorted(i["ImageId"] for i in ec2.describe_images(Owners=["self"])["Images"]),
            # Snapshots made by CreateImage (the emulator's catalogue has thousands of its own, never ours).
            "snapshots": sorted(s["SnapshotId"] for s in ec2.describe_snapshots(OwnerIds=["self"], Filters=[
                {"Name": "description", "Values": ["Created by CreateImage*"]}])["Snapshots"]),
            "refreshes": [(r.id, r.status) for r in self.door.refresh.refreshes],
            "parameters": sorted(p["Name"] for p in ssm),
            "rules": sorted(r["RuleArn"] for r in
                            self.client("elbv2").describe_rules(ListenerArn=self.listener)["Rules"]),
            "running": sorted(i["InstanceId"] for r in ec2.describe_instances(Filters=[
                {"Name": "instance-state-name", "Values": ["pending", "running"]}])["Reservations"]
                for i in r["Instances"]),
        }


_CATALOGUE: dict[str, str] = {}


def _any_image(ec2) -> str:
    """A Linux image of the emulator's public catalogue to launch throwaway builders from (looked up once)."""
    region = ec2.meta.region_name
    if region not in _CATALOGUE:
        images = ec2.describe_images(Owners=["amazon"], Filters=[{"Name": "architecture", "Values": ["x86_64"]}])
        _CATALOGUE[region] = next(i["ImageId"] for i in images["Images"] if not i.get("Platform"))
    return _CATALOGUE[region]


def build_fleet(door: FrontDoor, region: str, desired: int = 4) -> Fleet:
    """The environment `example` as the stack leaves it, with one AMI of Nextcloud 33.0.8 running on 4 instances."""
    f = Fleet(door, region)
    ec2 = f.client("ec2")
    f.base_image = _any_image(ec2)
    f.vpc = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
    f.subnets = [
        ec2.create_subnet(VpcId=f.vpc, CidrBlock=f"10.20.{i}.0/24", AvailabilityZone=f"{region}{az}")["Subnet"][
            "SubnetId"] for i, az in ((1, "a"), (2, "b"))
    ]
    f.security_group = ec2.create_security_group(GroupName="nextcloud-example", Description="fleet", VpcId=f.vpc)[
        "GroupId"]
    first = f.bake()
    settings = f.settings()
    f.template_id = ec2.create_launch_template(LaunchTemplateName=TEMPLATE, LaunchTemplateData={
        "ImageId": first, "InstanceType": "t3.medium", "SecurityGroupIds": [f.security_group],
        "UserData": base64.b64encode(render_user_data(settings).encode()).decode(),
        "MetadataOptions": {"HttpTokens": "required", "HttpPutResponseHopLimit": 1},
        "BlockDeviceMappings": [{"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": 16, "Encrypted": True}}],
        "TagSpecifications": [{"ResourceType": "instance", "Tags": [{"Key": "project", "Value": "nextcloud"}]}],
    })["LaunchTemplate"]["LaunchTemplateId"]
    elbv2 = f.client("elbv2")
    lb = elbv2.create_load_balancer(Name="nextcloud-example", Subnets=f.subnets)["LoadBalancers"][0]["LoadBalancerArn"]
    f.target_group = elbv2.create_target_group(Name="nextcloud-example", Protocol="HTTP", Port=80, VpcId=f.vpc,
                                               HealthCheckPath="/readyz")["TargetGroups"][0]["TargetGroupArn"]
    f.listener = elbv2.create_listener(LoadBalancerArn=lb, Protocol="HTTP", Port=80, DefaultActions=[
        {"Type": "forward", "TargetGroupArn": f.target_group}])["Listeners"][0]["ListenerArn"]
    f.client("autoscaling").create_auto_scaling_group(
        AutoScalingGroupName=GROUP, MinSize=1, MaxSize=8, DesiredCapacity=desired, HealthCheckGracePeriod=60,
        LaunchTemplate={"LaunchTemplateId": f.template_id, "Version": "1"},
        VPCZoneIdentifier=",".join(f.subnets), TargetGroupARNs=[f.target_group],
    )
    f.client("cloudwatch").put_metric_alarm(
        AlarmName=ALARM, Namespace="AWS/ApplicationELB", MetricName="HTTPCode_Target_5XX_Count", Statistic="Sum",
        Period=60, EvaluationPeriods=1, Threshold=10, ComparisonOperator="GreaterThanThreshold",
    )
    door.nextcloud.db.version = BASE_VERSION
    door.nextcloud.join([i["InstanceId"] for i in f.group()["Instances"]])
    return f


# ---- fixtures ---------------------------------------------------------------------------------------------------
@pytest.fixture
def door(aws, monkeypatch):
    """The emulator behind the front door (its doubles and model checks), as AWS_ENDPOINT_URL."""
    front = FrontDoor(aws.url, aws.region)
    monkeypatch.setenv("AWS_ENDPOINT_URL", front.url)
    try:
        yield front
    finally:
        front.close()
    assert not front.violations, "requests or responses the service model does not allow:\n" + "\n".join(
        front.violations)


@pytest.fixture
def fleet(door, aws) -> Fleet:
    return build_fleet(door, aws.region)


@pytest.fixture
def report() -> Captured:
    return Captured()


# ---- helpers ----------------------------------------------------------------------------------------------------
READS = ("Describe", "Get", "List")


def mutating(calls) -> list[str]:
    """The calls among ``calls`` that change something (service:Operation)."""
    return sorted(f"{s}:{o}" for s, o in calls if not o.startswith(READS))


def rollout(fleet: Fleet, report: Reporter, ami: str, *, settings=None, untested=False, dry_run=False):
    """`inv rollout --yes` as the task runs it (the production function), without sleeping between polls."""
    return run(settings or fleet.settings(), ROOT, ami_id=ami, untested=untested, dry_run=dry_run, yes=True,
               confirm=None, report=report, sleep=lambda _s: None)


def upgrade_to(fleet: Fleet, report: Reporter, ami=None, **kwargs):
    """`inv upgrade --yes`, with the double's virtual clock as its clock."""
    settings = kwargs.pop("settings", None) or fleet.settings(**{"upgrade.db_instance_identifier": "nextcloud-example"})
    return upgrade(settings, ROOT, ami_id=ami, untested=False, dry_run=kwargs.pop("dry_run", False), yes=True,
                   confirm=None, report=report, sleep=lambda _s: None, clock=lambda: fleet.door.clock.now)


class InterruptAt(Captured):
    """The operator presses Ctrl-C when the tool prints a line containing ``marker``."""

    def __init__(self, marker: str):
        super().__init__()
        self.marker = marker

    def info(self, text: str) -> None:
        super().info(text)
        if self.marker in text:
            raise KeyboardInterrupt
