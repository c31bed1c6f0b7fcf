"""The one-off upgrade instance: the only machine allowed to upgrade the cluster's database.

It is launched from the new launch template version (the new AMI, the fleet's subnet, security group and instance
role) with the fleet's user data changed in one place: ``allow_upgrade`` is true (and ``allow_install`` false). It
is not in the Auto Scaling group and not registered with the load balancer. Its cluster init takes the cluster lock
and runs ``occ upgrade`` exactly once (image/nextcloud/cluster/cluster-init.php); the fleet's instances never may.

Its progress is read from its console output (EC2 GetConsoleOutput: the operator's machine cannot reach the
instance's private address, and the image carries no SSM agent). Only on the upgrade instance (role.allow_upgrade
in its instance.json) the image's nextcloud-upgrade-readiness.service GETs /readyz on loopback every few seconds and
prints the answer on the console as one marked line, ``NEXTCLOUD-UPGRADE-READINESS {json}`` (image/rootfs/usr/local/
libexec/nextcloud-image/upgrade-readiness-console); the last such line is the instance's latest word. The JSON is
cluster-init's, cut to what this reads: ``{"ready": true, "version": ...}`` once upgraded, else a code:
``upgrading``, ``upgrade_failed``, ``db_unreachable``… with its reason.
"""

from __future__ import annotations

import json
from typing import Any

from infra.aws.console import console_text
from infra.aws.session import Aws
from render import tags as T
from render.outputs import render_user_data

# What the image's upgrade-readiness-console prints before the JSON (keep the two in step).
MARK = "NEXTCLOUD-UPGRADE-READINESS "


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


def console_readiness(text: str) -> dict[str, Any] | None:
    """The readiness JSON of the last marked line in console ``text`` that is whole, or None when there is none.

    The last, because the instance prints a fresh one every few seconds and the console keeps them all; a line cut
    short (the buffer's edge, kernel messages interleaved) or not a JSON object with a boolean ``ready`` is skipped
    in favour of the one before it."""
    for line in reversed(text.replace("\r", "\n").split("\n")):
        at = line.find(MARK)
        if at < 0:
            continue
        try:
            doc = json.loads(line[at + len(MARK):].strip())
        except ValueError:
            continue
        if isinstance(doc, dict) and isinstance(doc.get("ready"), bool):
            return doc
    return None


def probe(aws: Aws, instance_id: str) -> dict[str, Any] | None:
    """The instance's latest readiness from its console output, or None while it has printed none (booting, the
    container not answering yet, or AWS's copy of the console lagging)."""
    return console_readiness(console_text(aws.client("ec2"), instance_id, [True]))


def terminate(aws: Aws, instance_id: str) -> None:
    ec2 = aws.client("ec2")
    ec2.terminate_instances(InstanceIds=[instance_id])
    ec2.get_waiter("instance_terminated").wait(InstanceIds=[instance_id], WaiterConfig={"Delay": 5, "MaxAttempts": 60})
