"""Shared arrangements of the AWS-path tests: an environment pointed at the emulator's network, Debian's AMIs,
an Auto Scaling group like the stack's, and a full listing of the emulator's state (to prove "nothing changed")."""

from __future__ import annotations

import base64
import contextlib
import json
import urllib.parse
from pathlib import Path
from typing import Any

from render import tags as T
from render.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
REGION = "eu-central-1"
COPY_REGION = "eu-west-1"
ACCOUNT = "123456789012"
DEBIAN = "136693071363"
# tests/aws/debian-amis.json: the two newest x86_64 Debian 12 AMIs.
DEBIAN_CURRENT = "ami-0de12a0000000a002"
DEBIAN_NEWER = "ami-0de12a0000000a003"
BUILD_HOST = "203.0.113.7/32"  # documentation range: stands in for the build host's public address


def default_subnet(aws: Any, region: str = REGION) -> str:
    subnets = aws.client("ec2", region).describe_subnets(
        Filters=[{"Name": "default-for-az", "Values": ["true"]}]
    )["Subnets"]
    return sorted(s["SubnetId"] for s in subnets)[0]


def settings_for(aws: Any, env: str = "example", **overrides: Any):
    """environments/<env>.toml against the emulator: its default subnet, its account, emulator bakes (no
    communicator), SSH allowed from a documentation address. ``overrides`` are dotted settings keys."""
    values = {
        "bake.subnet_id": default_subnet(aws),
        "bake.communicator": "none",
        "bake.ssh_source_cidrs": [BUILD_HOST],
        "account_id": ACCOUNT,
        **{k.replace("__", "."): v for k, v in overrides.items()},
    }
    return load_settings(ROOT, env, environ={}, overrides=values).settings


def hide_newer_debian(aws: Any) -> None:
    """Before Debian publishes it: moto cannot add an AMI of another owner after it starts, so the newer one is
    seeded and held back with DisableImage (a disabled AMI is not available, as on AWS)."""
    for region in (REGION, COPY_REGION):
        aws.client("ec2", region).disable_image(ImageId=DEBIAN_NEWER)


def publish_newer_debian(aws: Any) -> None:
    for region in (REGION, COPY_REGION):
        aws.client("ec2", region).enable_image(ImageId=DEBIAN_NEWER)


def _tags(resource: dict) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags") or []}


def emulator_state(aws: Any, regions: tuple[str, ...] = (REGION, COPY_REGION)) -> dict[str, Any]:
    """Everything a task could have created or changed, with tags, per region (for before/after comparisons)."""
    state: dict[str, Any] = {}
    for region in regions:
        ec2 = aws.client("ec2", region)
        instances = {
            i["InstanceId"]: (i["State"]["Name"], _tags(i))
            for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]
        }
        state[region] = {
            "instances": instances,
            "volumes": {v["VolumeId"]: (v["State"], _tags(v)) for v in ec2.describe_volumes()["Volumes"]},
            "key_pairs": {k["KeyName"]: _tags(k) for k in ec2.describe_key_pairs()["KeyPairs"]},
            "security_groups": {
                g["GroupId"]: (_tags(g), json.dumps(g.get("IpPermissions"), sort_keys=True))
                for g in ec2.describe_security_groups()["SecurityGroups"]
            },
            "images": {i["ImageId"]: (i["State"], _tags(i)) for i in ec2.describe_images(Owners=["self"])["Images"]},
            "snapshots": {s["SnapshotId"]: _tags(s) for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]},
            "parameters": {
                p["Name"]: p.get("Version")
                for p in aws.client("ssm", region).describe_parameters().get("Parameters", [])
            },
        }
    return state


def ours(state: dict[str, Any], run_id: str) -> dict[str, set[str]]:
    """The resources of one run in an ``emulator_state`` (by its RUN tag), per kind."""
    found: dict[str, set[str]] = {}
    for region, kinds in state.items():
        for kind, items in kinds.items():
            if kind == "parameters":
                continue
            for resource_id, value in items.items():
                tags = value if isinstance(value, dict) else next((v for v in value if isinstance(v, dict)), {})
                if tags.get("nextcloud-image:run") == run_id and not (kind == "instances" and value[0] == "terminated"):
                    found.setdefault(kind, set()).add(f"{region}/{resource_id}")
    return found


def requests(aws: Any, since: int = 0) -> list[tuple[str, str, dict[str, list[str]]]]:
    """(agent, action, query parameters) of each request the emulator recorded (after the ``since``-th); agent is
    "packer" (aws-sdk-go) or "boto3" (the production code, and the tests' own arrangements)."""
    out = []
    for req in aws.recorded_requests()[since:]:
        headers = {k.lower(): v for k, v in (req.get("headers") or {}).items()}
        agent = "packer" if headers.get("user-agent", "").startswith("aws-sdk-go") else "boto3"
        body = req.get("body") or ""
        with contextlib.suppress(ValueError):
            body = base64.b64decode(body).decode()
        params = urllib.parse.parse_qs(body)
        target = headers.get("x-amz-target", "")
        action = target.rsplit(".", 1)[-1] if target else (params.get("Action") or ["?"])[0]
        out.append((agent, action, params))
    return out


def packer_requests(aws: Any, action: str) -> list[dict[str, list[str]]]:
    """The query parameters of each ``action`` request Packer sent to the emulator."""
    return [params for agent, act, params in requests(aws) if agent == "packer" and act == action]


def boto_requests(aws: Any, action: str) -> list[dict[str, list[str]]]:
    """The query parameters of each ``action`` request boto3 sent."""
    return [params for agent, act, params in requests(aws) if agent == "boto3" and act == action]


def actions_since(aws: Any, index: int) -> list[tuple[str, str]]:
    """(agent, action) of every request after the ``index``-th."""
    return [(agent, action) for agent, action, _ in requests(aws, index)]


def make_group(aws: Any, settings: Any, image_id: str, *, desired: int = 1) -> dict[str, str]:
    """What the stack gives an environment, made directly: instance role + profile, the instances' security
    group, a launch template (IMDSv2, hop limit 2, gp3 root), a target group and the Auto Scaling group."""
    iam = aws.client("iam")
    role = f"nextcloud-{settings.name}-instance"
    iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}],
    }))
    profile = iam.create_instance_profile(InstanceProfileName=role)["InstanceProfile"]
    iam.add_role_to_instance_profile(InstanceProfileName=role, RoleName=role)
    ec2 = aws.client("ec2")
    subnet = settings.bake.subnet_id
    vpc = ec2.describe_subnets(SubnetIds=[subnet])["Subnets"][0]["VpcId"]
    group_sg = ec2.create_security_group(GroupName=f"nextcloud-{settings.name}-instances", VpcId=vpc,
                                         Description="instances: HTTP from the load balancer")["GroupId"]
    template = ec2.create_launch_template(LaunchTemplateName=settings.launch_template.name, LaunchTemplateData={
        "ImageId": image_id,
        "InstanceType": "t3.small",
        "IamInstanceProfile": {"Arn": profile["Arn"]},
        "SecurityGroupIds": [group_sg],
        "MetadataOptions": {"HttpTokens": "required", "HttpPutResponseHopLimit": 2, "HttpEndpoint": "enabled"},
        "BlockDeviceMappings": [{"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": 16, "VolumeType": "gp3",
                                                                    "Encrypted": True}}],
    })["LaunchTemplate"]
    target_group = aws.client("elbv2").create_target_group(
        Name=f"nextcloud-{settings.name}", Protocol="HTTP", Port=80, VpcId=vpc, HealthCheckPath="/readyz",
    )["TargetGroups"][0]["TargetGroupArn"]
    aws.client("autoscaling").create_auto_scaling_group(
        AutoScalingGroupName=settings.autoscaling.group_name,
        LaunchTemplate={"LaunchTemplateId": template["LaunchTemplateId"], "Version": "1"},
        MinSize=0, MaxSize=4, DesiredCapacity=desired, VPCZoneIdentifier=subnet, TargetGroupARNs=[target_group],
    )
    return {"security_group": group_sg, "profile_arn": profile["Arn"], "target_group": target_group,
            "launch_template": template["LaunchTemplateId"], "subnet": subnet}


def registered_targets(aws: Any, target_group: str) -> set[str]:
    health = aws.client("elbv2").describe_target_health(TargetGroupArn=target_group)["TargetHealthDescriptions"]
    return {t["Target"]["Id"] for t in health}


def register_ami(aws: Any, settings: Any, *, complete: bool = True, env: str | None = None) -> dict[str, str]:
    """A finished AMI of the environment (and its copy), as a bake leaves it: registered, tagged."""
    tags = {T.MANAGED: "true", T.ENVIRONMENT: env or settings.name, T.FINGERPRINT: "f" * 64,
            T.NEXTCLOUD_VERSION: settings.nextcloud.version, T.RUN: "20260101T000000Z-abcdef"}
    if not complete:
        tags[T.PURPOSE] = T.PURPOSE_BAKE
    amis = {}
    for region in (REGION, *settings.ami.regions):
        ec2 = aws.client("ec2", region)
        image_id = ec2.register_image(Name=f"nextcloud-{settings.name}-test", RootDeviceName="/dev/xvda")["ImageId"]
        ec2.create_tags(Resources=[image_id], Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
        amis[region] = image_id
    return amis
