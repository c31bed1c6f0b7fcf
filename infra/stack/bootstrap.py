"""`inv bootstrap-db`: create the application's restricted database role once, from inside the VPC.

The database is in isolated subnets and never public, so nothing outside the VPC can reach it. The task starts a
one-shot instance (the environment's source AMI, Debian 12) in a private subnet with the stack's bootstrap
role and security group; cloud-init installs python3-psycopg and python3-boto3 and runs
infra/stack/bootstrap/bootstrap-database, which reads the master and application passwords itself (they never
pass through this machine, the user data or a process argument), does the SQL, writes the outcome to the SSM
parameter ``/nextcloud/<env>/database-bootstrap`` and powers the instance off (shutdown behaviour: terminate).
The task waits for that parameter and removes the instance in every case.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import botocore.exceptions
import yaml

from infra.aws.session import Aws, AwsError, describe_client_error
from infra.verdict import Verdict
from render import tags
from render.settings import Settings, SettingsError, load_settings
from render.stack_outputs import outputs_path, read_outputs

SCRIPT = Path(__file__).parent / "bootstrap" / "bootstrap-database"
PURPOSE_BOOTSTRAP = "database-bootstrap"
BOOTSTRAP_CA = "/etc/nextcloud-bootstrap-ca.pem"
_NEEDED = ("DatabaseMasterSecretArn", "DatabasePasswordSecretArn", "DatabaseAddress", "DatabasePort",
           "PrivateSubnetIds", "BootstrapInstanceProfileName", "BootstrapSecurityGroupId")

Say = Callable[[str], None]


def result_parameter(environment: str) -> str:
    return f"/nextcloud/{environment}/database-bootstrap"


def bootstrap_config(s: Settings, outputs: dict[str, str]) -> dict[str, Any]:
    """What the instance is told: ARNs and names only (its role reads the passwords)."""
    return {
        "region": s.region,
        "master_secret_arn": outputs["DatabaseMasterSecretArn"],
        "app_secret_arn": outputs["DatabasePasswordSecretArn"],
        "host": outputs["DatabaseAddress"],
        "port": int(outputs["DatabasePort"]),
        "database": s.database.name,
        "user": s.database.user,
        "result_parameter": result_parameter(s.name),
        # verify-full against the RDS CA bundle the settings pin (required for AWS); the script downloads it, as the
        # user data's 16 KB could not carry the global bundle, and refuses any other file.
        **({"sslmode": "verify-full", "sslrootcert": BOOTSTRAP_CA, "sslrootcert_url": s.database.ca_bundle_url,
            "sslrootcert_sha256": s.database.ca_bundle_sha256} if s.database.ca_bundle_sha256 else
           {"sslmode": "require"}),
    }


def render_bootstrap_user_data(config: dict[str, Any]) -> str:
    """The one-shot instance's cloud-config: packages, the script, its config, run it, power off."""
    doc = {
        "package_update": True,
        "packages": ["python3-psycopg", "python3-boto3"],
        "write_files": [
            {"path": "/usr/local/sbin/bootstrap-database", "permissions": "0755", "owner": "root:root",
             "content": SCRIPT.read_text()},
            {"path": "/etc/nextcloud-bootstrap.json", "permissions": "0600", "owner": "root:root",
             "content": json.dumps(config, indent=2, sort_keys=True) + "\n"},
        ],
        "runcmd": [["/usr/local/sbin/bootstrap-database", "/etc/nextcloud-bootstrap.json"]],
        "power_state": {"mode": "poweroff", "condition": True, "timeout": 30},
    }
    return "#cloud-config\n" + yaml.safe_dump(doc, sort_keys=False, width=1000)


def bootstrap_database(
    root: Path, env: str, *, sets: list[str] | None = None, dry_run: bool = False, timeout_seconds: float = 1800,
    poll_seconds: float = 10, say: Say = print, aws: Aws | None = None,
) -> Verdict:
    try:
        loaded = load_settings(root, env, sets=sets or [])
        outputs = read_outputs(outputs_path(root, env)) or {}
    except SettingsError as exc:
        return Verdict("refused", f"{exc}\nnothing was changed", 2)
    s = loaded.settings
    for warning in loaded.warnings:  # e.g. the pinned Nextcloud is past its end of life: said, never fatal
        say(f"warning: {warning}")
    missing = [k for k in _NEEDED if k not in outputs]
    if missing:
        return Verdict("refused", f"the stack's outputs lack {', '.join(missing)}: run `inv deploy-stack --env {env}` "
                       "first; nothing was changed", 2)
    try:
        aws = aws or Aws.for_settings(s, dry_run=dry_run)
        aws.preflight()
        return _run(aws, s, outputs, dry_run, timeout_seconds, poll_seconds, say)
    except AwsError as exc:
        return Verdict("refused" if exc.exit_code == 2 else "failed", str(exc), exc.exit_code)
    except botocore.exceptions.ClientError as exc:
        return Verdict("failed", describe_client_error(exc), 1)


def _parameter(aws: Aws, name: str) -> str | None:
    try:
        return aws.client("ssm").get_parameter(Name=name)["Parameter"]["Value"]
    except botocore.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ParameterNotFound":
            return None
        raise


def _source_image(aws: Aws, s: Settings) -> dict[str, Any]:
    owner, pattern = s.base_image.owner, s.base_image.name_filter
    images = aws.client("ec2").describe_images(
        Owners=[owner or "self"], Filters=[{"Name": "name", "Values": [pattern or "*"]},
                                           {"Name": "state", "Values": ["available"]}]
    )["Images"]
    if not images:
        raise AwsError(f"no AMI of owner {owner} matches {pattern!r} in {aws.region} (base_image in the settings)")
    return max(images, key=lambda i: i.get("CreationDate", ""))


def _root_volume(image: dict[str, Any]) -> dict[str, Any]:
    """The image's root device, encrypted gp3, its size the snapshot's (an EBS override must name one)."""
    root = image.get("RootDeviceName", "/dev/xvda")
    size = next((m["Ebs"].get("VolumeSize") for m in image.get("BlockDeviceMappings", [])
                 if m.get("DeviceName") == root and "Ebs" in m), None) or 8
    return {"DeviceName": root, "Ebs": {"VolumeType": "gp3", "Encrypted": True, "DeleteOnTermination": True,
                                        "VolumeSize": int(size)}}


def _run(aws: Aws, s: Settings, outputs: dict[str, str], dry_run: bool, timeout: float, poll: float,
         say: Say) -> Verdict:
    param = result_parameter(s.name)
    previous = state = _parameter(aws, param)
    if state and state.startswith("done"):
        return Verdict("up to date", f"the database was bootstrapped already ({param}: {state})")
    source = _source_image(aws, s)
    image, image_name = source["ImageId"], source.get("Name", "")
    subnet = outputs["PrivateSubnetIds"].split(",")[0]
    config = bootstrap_config(s, outputs)
    user_data = render_bootstrap_user_data(config)
    say(f"bootstrap instance: {image} ({image_name}) in {subnet}, profile {outputs['BootstrapInstanceProfileName']}")
    say(f"  it creates role {config['user']} (restricted) owning database {config['database']} on {config['host']}")
    if dry_run:
        return Verdict("planned", "dry run: nothing was started")
    run = uuid.uuid4().hex[:12]
    instance_tags = [
        {"Key": tags.MANAGED, "Value": "true"}, {"Key": tags.ENVIRONMENT, "Value": s.name},
        {"Key": tags.PURPOSE, "Value": PURPOSE_BOOTSTRAP}, {"Key": tags.RUN, "Value": run},
        {"Key": "Name", "Value": f"nextcloud-{s.name}-database-bootstrap"},
    ]
    ec2 = aws.client("ec2")
    instance = ec2.run_instances(
        ImageId=image, InstanceType="t3.micro", MinCount=1, MaxCount=1, SubnetId=subnet,
        SecurityGroupIds=[outputs["BootstrapSecurityGroupId"]],
        IamInstanceProfile={"Name": outputs["BootstrapInstanceProfileName"]},
        UserData=user_data, InstanceInitiatedShutdownBehavior="terminate",
        MetadataOptions={"HttpTokens": "required", "HttpPutResponseHopLimit": 1, "HttpEndpoint": "enabled"},
        BlockDeviceMappings=[_root_volume(source)],
        TagSpecifications=[{"ResourceType": "instance", "Tags": instance_tags},
                           {"ResourceType": "volume", "Tags": instance_tags}],
    )["Instances"][0]["InstanceId"]
    say(f"started {instance} (run {run}); waiting for its report in {param} (bounded: {timeout:.0f} s)")
    started = time.monotonic()
    try:
        while True:
            state = _parameter(aws, param)
            if state and state != previous:  # this run's report (a failed earlier run's is overwritten)
                break
            if time.monotonic() - started > timeout:
                return Verdict("failed", f"no report from {instance} after {timeout:.0f} s; its console output "
                               f"(aws ec2 get-console-output --instance-id {instance}) says why", 1)
            say(f"  {time.monotonic() - started:5.0f} s: {_instance_state(aws, instance)}")
            time.sleep(poll)
    finally:
        ec2.terminate_instances(InstanceIds=[instance])
        say(f"removed {instance}")
    if state.startswith("done"):  # "done <time> <what it did>"
        return Verdict("bootstrapped", state.split(" ", 2)[-1])
    return Verdict("failed", f"the bootstrap failed: {state.split(' ', 2)[-1]}", 1)


def _instance_state(aws: Aws, instance: str) -> str:
    try:
        found = aws.client("ec2").describe_instances(InstanceIds=[instance])["Reservations"]
    except botocore.exceptions.ClientError as exc:
        return describe_client_error(exc)
    return found[0]["Instances"][0]["State"]["Name"] if found else "gone"
