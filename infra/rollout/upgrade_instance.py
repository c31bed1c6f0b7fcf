"""The one-off upgrade instance: the only machine allowed to upgrade the cluster's database.

It is launched from the new launch template version (the new AMI, the fleet's subnet, security group and instance
role) with the fleet's user data changed in one place: ``allow_upgrade`` is true (and ``allow_install`` false). It
is not in the Auto Scaling group and not registered with the load balancer. Its cluster init takes the cluster lock
and runs ``occ upgrade`` exactly once (image/nextcloud/cluster/cluster-init.php); the fleet's instances never may.

Its progress is read the way the load balancer reads readiness: GET /readyz inside the instance, through SSM Run
Command (the operator's machine cannot reach the instance's private address). The answer is cluster-init's JSON:
``{"ready": true, "version": ...}`` once upgraded, else a code: ``upgrading``, ``upgrade_failed``, ``db_unreachable``…
"""

from __future__ import annotations

import json
from typing import Any

import botocore.exceptions

from infra.aws.session import Aws
from render import tags as T
from render.outputs import render_user_data

# HTTP GET of /readyz inside the container, as the image's own HEALTHCHECK does; prints the JSON body on 503 too.
READINESS_PROBE = (
    "docker exec nextcloud php -r 'echo @file_get_contents(\"http://127.0.0.1/readyz\", false, "
    "stream_context_create([\"http\" => [\"timeout\" => 5, \"ignore_errors\" => true]]));'"
)


def upgrade_user_data(settings: Any) -> str:
    """The fleet's user data with allow_upgrade on and allow_install off, as text (boto3 base64-encodes the
    UserData of RunInstances itself; only launch template data must be passed encoded)."""
    cluster = settings.cluster.model_copy(update={"allow_upgrade": True, "allow_install": False})
    return render_user_data(settings.model_copy(update={"cluster": cluster}))


def find(aws: Aws, settings: Any, run_id: str) -> list[str]:
    """Upgrade instances of run ``run_id`` that are not terminated."""
    found = aws.client("ec2").describe_instances(Filters=[
        {"Name": f"tag:{T.PURPOSE}", "Values": [T.PURPOSE_UPGRADE]}, {"Name": f"tag:{T.RUN}", "Values": [run_id]},
        {"Name": f"tag:{T.ENVIRONMENT}", "Values": [settings.name]},
        {"Name": "instance-state-name", "Values": ["pending", "running"]},
    ])
    return [i["InstanceId"] for r in found["Reservations"] for i in r["Instances"]]


def launch(aws: Aws, settings: Any, group: dict[str, Any], template_id: str, version: int, run_id: str,
           attempt: int) -> str:
    """Launch the upgrade instance (idempotent per run and attempt: the client token)."""
    subnets = [s for s in (group.get("VPCZoneIdentifier") or "").split(",") if s]
    tags = [{"Key": T.MANAGED, "Value": "true"}, {"Key": T.ENVIRONMENT, "Value": settings.name},
            {"Key": T.PURPOSE, "Value": T.PURPOSE_UPGRADE}, {"Key": T.RUN, "Value": run_id},
            {"Key": "Name", "Value": f"nextcloud-{settings.name}-upgrade"}]
    kwargs: dict[str, Any] = {
        "LaunchTemplate": {"LaunchTemplateId": template_id, "Version": str(version)}, "MinCount": 1, "MaxCount": 1,
        "UserData": upgrade_user_data(settings), "ClientToken": f"{run_id}-{attempt}"[:64],
        "TagSpecifications": [{"ResourceType": "instance", "Tags": tags}, {"ResourceType": "volume", "Tags": tags}],
    }
    if subnets:
        kwargs["SubnetId"] = subnets[0]
    instance = aws.client("ec2").run_instances(**kwargs)["Instances"][0]["InstanceId"]
    aws.client("ec2").get_waiter("instance_running").wait(InstanceIds=[instance],
                                                         WaiterConfig={"Delay": 5, "MaxAttempts": 60})
    return instance


def probe(aws: Aws, instance_id: str, poll_seconds: float) -> dict[str, Any] | None:
    """The instance's readiness JSON, or None while it cannot answer yet (SSM agent or container not up)."""
    ssm = aws.client("ssm")
    try:
        command = ssm.send_command(
            InstanceIds=[instance_id], DocumentName="AWS-RunShellScript", TimeoutSeconds=60,
            Comment="nextcloud-image upgrade: readiness of the upgrade instance",
            Parameters={"commands": [READINESS_PROBE]},
        )["Command"]["CommandId"]
    except botocore.exceptions.ClientError as exc:
        if exc.response["Error"]["Code"] in ("InvalidInstanceId", "InvalidTarget"):
            return None  # the SSM agent has not registered yet
        raise
    try:
        ssm.get_waiter("command_executed").wait(
            CommandId=command, InstanceId=instance_id,
            WaiterConfig={"Delay": max(int(poll_seconds), 1) if poll_seconds else 0, "MaxAttempts": 30},
        )
    except botocore.exceptions.WaiterError:
        return None  # the command failed (the container is not up yet) or did not finish
    answer = ssm.get_command_invocation(CommandId=command, InstanceId=instance_id)
    text = answer.get("StandardOutputContent", "").strip()
    try:
        doc = json.loads(text[text.index("{"):]) if "{" in text else None
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def terminate(aws: Aws, instance_id: str) -> None:
    ec2 = aws.client("ec2")
    ec2.terminate_instances(InstanceIds=[instance_id])
    ec2.get_waiter("instance_terminated").wait(InstanceIds=[instance_id], WaiterConfig={"Delay": 5, "MaxAttempts": 60})
