"""``inv test-ami`` for AWS environments: one canary from the AMI, tested like a scale-out instance, then gone.

The canary is launched like the Auto Scaling group's instances — the group's first subnet, the security groups,
instance profile, instance type, metadata options and block devices of the launch template version the group
uses (read from AWS, nothing typed twice) — but with RunInstances, so it is never in the group or its load
balancer's target groups. Its user data is the environment's own (render/, the same secret references) with the
role narrowed: ``allow_install`` and ``allow_upgrade`` forced false, so it can never install, upgrade or write
the cluster's state. It is tagged as throwaway (PURPOSE=canary, RUN=<run id>), reached over SSH only from the
build host (its own security group, added to the group's), or through Session Manager.

Before the first SSH contact it reads the canary's host keys from its console output (cloud-init prints them there:
the hypervisor's record, not a network path) and trusts no other key; no keys before the timeout, no contact.
It waits as a scale-out instance would: running, EC2 status checks passing (the group's liveness), ``/readyz``
200 (the load balancer's readiness). An empty cluster database (``not_installed``) or a newer Nextcloud than the
cluster's (``upgrade_pending``) is said so, and the suite checks everything up to the install or upgrade. Then
``tests/image`` runs with testinfra. The instance, its key pair and security group are removed in every case
(success, failure, timeout, Ctrl-C) and listed; the verdict is recorded on the AMI in every region
(TEST_VERDICT / TESTED_AT / TEST_RUN), which the rollout requires.

Everything that reaches into the instance (SSH, the /readyz probe, testinfra) goes through an ``InstanceAccess``;
tests against the emulator replace only that (its instances have addresses that belong to nobody).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, WaiterError

from infra import build_record
from infra.aws import ami as amis
from infra.aws import throwaway
from infra.aws.canary_access import AccessFactory, AccessFailed, InstanceAccess, SshAccess, Target
from infra.aws.console import console_text as _console_text
from infra.aws.session import Aws, AwsError, describe_client_error
from infra.aws.sweep import remove_run
from infra.errors import PipelineError
from infra.host_keys import HostKey, console_host_keys
from infra.verdict import Verdict
from render import tags as T

__test__ = False  # a pipeline step named "test", not a pytest module

Log = Callable[[str], None]
DEFAULT_TIMEOUT_S = 1200.0
# /readyz codes that say the image is fine but the cluster is not ready for it, and what that means here.
PARTIAL = {
    "not_installed": "the cluster database is empty: nothing to join yet; checked everything up to the install",
    "upgrade_pending": "the AMI carries newer Nextcloud code than the cluster (that is `inv upgrade`); checked "
                       "everything up to the upgrade",
}
# With --accept-new-host-key: how long to look for the printed host keys before trusting the first key seen.
ACCEPT_NEW_AFTER_S = 180.0
# Suite checks that need a node serving the cluster; deselected when PARTIAL applies.
NEEDS_READY = (
    "tests/image/test_nextcloud.py::test_readiness_endpoint",
    "tests/image/test_nextcloud.py::test_container_runs_recorded_image_and_is_healthy",
)




# ---- what the group's instances use ----------------------------------------------------------------------------
@dataclass(frozen=True)
class GroupLaunch:
    group: str
    subnets: tuple[str, ...]
    template_id: str
    template_name: str
    version: str
    data: dict[str, Any]
    target_groups: tuple[str, ...]

    @property
    def security_groups(self) -> list[str]:
        groups = list(self.data.get("SecurityGroupIds") or [])
        for nic in self.data.get("NetworkInterfaces") or []:
            groups += [g for g in nic.get("Groups") or [] if g not in groups]
        return groups

    @property
    def instance_profile(self) -> dict[str, str] | None:
        profile = self.data.get("IamInstanceProfile") or {}
        return {k: v for k, v in profile.items() if k in ("Arn", "Name") and v} or None


def read_group_launch(aws: Aws, settings: Any) -> GroupLaunch:
    """The Auto Scaling group of ``autoscaling.group_name`` and the launch template version its instances use."""
    name = settings.autoscaling.group_name
    groups = aws.client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[name]).get(
        "AutoScalingGroups", []
    )
    if not groups:
        raise AwsError(
            f"autoscaling.group_name = {name!r}: no such Auto Scaling group in {aws.region}; deploy the stack "
            "first (inv deploy-stack) or correct the name; nothing was changed"
        )
    group = groups[0]
    spec = group.get("LaunchTemplate") or (
        (group.get("MixedInstancesPolicy") or {}).get("LaunchTemplate", {}).get("LaunchTemplateSpecification")
    )
    if not spec:
        raise AwsError(f"Auto Scaling group {name} uses no launch template (a launch configuration?): the canary "
                       "copies the launch template's instance settings; nothing was changed")
    selector = {"LaunchTemplateId": spec["LaunchTemplateId"]} if spec.get("LaunchTemplateId") else {
        "LaunchTemplateName": spec["LaunchTemplateName"]}
    version = str(spec.get("Version") or "$Default")
    versions = aws.client("ec2").describe_launch_template_versions(**selector, Versions=[version]).get(
        "LaunchTemplateVersions", []
    )
    if not versions:
        raise AwsError(f"launch template {selector} has no version {version}; nothing was changed")
    data = dict(versions[0].get("LaunchTemplateData") or {})
    overrides = ((group.get("MixedInstancesPolicy") or {}).get("LaunchTemplate") or {}).get("Overrides") or []
    if not data.get("InstanceType") and overrides:
        data["InstanceType"] = overrides[0].get("InstanceType")
    subnets = tuple(s for s in (group.get("VPCZoneIdentifier") or "").split(",") if s)
    if not subnets:
        raise AwsError(f"Auto Scaling group {name} names no subnet (VPCZoneIdentifier); nothing was changed")
    return GroupLaunch(name, subnets, versions[0]["LaunchTemplateId"], versions[0].get("LaunchTemplateName", ""),
                       str(versions[0].get("VersionNumber", version)), data, tuple(group.get("TargetGroupARNs") or []))


def canary_user_data(settings: Any) -> str:
    """The environment's user data with the role narrowed: never install, never upgrade (only ever narrows)."""
    from render.outputs import render_user_data

    narrowed = settings.model_copy(
        update={"cluster": settings.cluster.model_copy(update={"allow_install": False, "allow_upgrade": False})}
    )
    return render_user_data(narrowed)


def _ami_to_test(aws: Aws, root: Path, settings: Any, ami: str | None) -> dict[str, Any]:
    if not ami:
        path = build_record.manifest_path(root, settings.name)
        try:
            ami = (build_record.read(path) or {})["artifact_id"]
        except (build_record.RecordError, KeyError):
            raise AwsError(f"no AMI given and {path} names none: run `inv build-ami --env {settings.name}` "
                           "or pass --ami ami-…; nothing was changed") from None
    if not isinstance(ami, str) or not ami.startswith("ami-"):
        raise AwsError(f"--ami {ami!r} is not an AMI id (ami-…); nothing was changed")
    try:
        images = aws.client("ec2").describe_images(ImageIds=[ami]).get("Images", [])
    except ClientError as exc:
        if "NotFound" in exc.response.get("Error", {}).get("Code", "") or "Malformed" in str(exc):
            images = []
        else:
            raise
    if not images:
        raise AwsError(f"AMI {ami} does not exist in {aws.region}; nothing was changed")
    image = images[0]
    tags = amis.tag_dict(image)
    problems = []
    if image.get("State") != "available":
        problems.append(f"it is {image.get('State')}, not available")
    if tags.get(T.MANAGED) != "true" or tags.get(T.ENVIRONMENT) != settings.name:
        problems.append(f"it is not an AMI of environment {settings.name} (its {T.ENVIRONMENT} tag is "
                        f"{tags.get(T.ENVIRONMENT)!r})")
    elif tags.get(T.PURPOSE) == T.PURPOSE_BAKE:
        problems.append("its bake never completed (it still carries the bake's purpose tag): bake again")
    if problems:
        raise AwsError(f"AMI {ami}: {'; '.join(problems)}; nothing was changed")
    return image


# ---- the run -------------------------------------------------------------------------------------------------
@dataclass
class CanaryReport:
    run_id: str
    instance_id: str | None = None
    readiness: str = ""
    partial: str | None = None
    suite_exit: int | None = None
    verdict: str | None = None  # recorded on the AMI
    created: list[tuple[str, str, str]] = field(default_factory=list)
    removed: list[tuple[str, str, str]] = field(default_factory=list)
    left: list[tuple[str, str, str]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


class CanaryFailed(PipelineError):
    """The AMI did not pass: the canary did not boot, get ready or pass the suite."""


def _wait(aws: Aws, waiter: str, instance_id: str, deadline: float, what: str) -> None:
    delay = 5
    attempts = max(1, int(max(0.0, deadline - time.monotonic()) // delay))
    try:
        aws.client("ec2").get_waiter(waiter).wait(
            InstanceIds=[instance_id], WaiterConfig={"Delay": delay, "MaxAttempts": attempts}
        )
    except WaiterError as exc:
        raise CanaryFailed(f"{instance_id} {what}: {exc}") from None


def _launch(aws: Aws, settings: Any, launch: GroupLaunch, image_id: str, *, key_name: str, group_id: str,
            run_id: str, user_data: str) -> str:
    data = launch.data
    tags = amis.as_tag_list(amis.throwaway_tags(settings, purpose=T.PURPOSE_CANARY, run_id=run_id,
                                                name=f"nextcloud-canary-{settings.name}-{run_id}"))
    request: dict[str, Any] = {
        "ImageId": image_id,
        "MinCount": 1,
        "MaxCount": 1,
        "InstanceType": data.get("InstanceType") or settings.instance_type,
        "KeyName": key_name,
        "UserData": user_data,
        "InstanceInitiatedShutdownBehavior": "terminate",
        "NetworkInterfaces": [{
            "DeviceIndex": 0,
            "SubnetId": launch.subnets[0],
            "Groups": [*launch.security_groups, group_id],
            "AssociatePublicIpAddress": settings.bake.ssh_interface == "public_ip",
            "DeleteOnTermination": True,
        }],
        "TagSpecifications": [{"ResourceType": "instance", "Tags": tags}, {"ResourceType": "volume", "Tags": tags}],
        # The AMI requires IMDSv2 anyway (ImdsSupport=v2.0); the group's hop limit comes with its template.
        "MetadataOptions": {k: v for k, v in (data.get("MetadataOptions") or {}).items()
                            if k in ("HttpTokens", "HttpPutResponseHopLimit", "HttpEndpoint")}
                           or {"HttpTokens": "required", "HttpPutResponseHopLimit": 2, "HttpEndpoint": "enabled"},
    }
    if launch.instance_profile:
        request["IamInstanceProfile"] = launch.instance_profile
    if data.get("BlockDeviceMappings"):
        request["BlockDeviceMappings"] = data["BlockDeviceMappings"]
    response = aws.client("ec2").run_instances(**request)
    return response["Instances"][0]["InstanceId"]


def _address(aws: Aws, settings: Any, instance_id: str) -> str:
    reservations = aws.client("ec2").describe_instances(InstanceIds=[instance_id]).get("Reservations", [])
    instance = reservations[0]["Instances"][0]
    interface = settings.bake.ssh_interface
    if interface == "session_manager":
        return instance_id
    address = instance.get("PublicIpAddress" if interface == "public_ip" else "PrivateIpAddress")
    if not address:  # the settings', not the AMI's fault: no verdict
        raise AwsError(
            f"{instance_id} has no {interface.replace('_', ' ')} (the group's subnet gives none): set "
            "bake.ssh_interface = 'private_ip' on a build host inside the VPC, or 'session_manager'", exit_code=1
        )
    return address


def wait_for_host_keys(aws: Aws, instance_id: str, deadline: float, poll_s: float, log: Log) -> list[HostKey]:
    """The SSH host keys cloud-init printed on the instance's console, polled until the deadline ([] if none).

    AWS's copy of the console lags the instance by minutes at times, and cloud-init prints the keys in its final
    stage (which this image runs at idle priority), so this polls; the keys are known before any SSH contact."""
    ec2, latest, said = aws.client("ec2"), [True], False
    while True:
        keys = console_host_keys(_console_text(ec2, instance_id, latest))
        if keys:
            log(f"  host keys from the console: {', '.join(k.key_type for k in keys)}")
            return keys
        if not said:
            log("  waiting for the SSH host keys on its console output (cloud-init prints them; AWS's copy lags)")
            said = True
        if time.monotonic() + poll_s > deadline:
            return []
        time.sleep(poll_s)


def _wait_ready(access: InstanceAccess, deadline: float, poll_s: float, log: Log) -> tuple[str, str | None]:
    """Poll /readyz until 200, a PARTIAL code, or the deadline. Returns (last answer, partial reason)."""
    last = "no answer"
    while True:
        try:
            status, doc = access.readyz()
            code = str(doc.get("code") or "")
            answer = f"{status} {code}: {doc.get('reason', '')}".strip()
        except OSError as exc:
            status, code, answer = 0, "", f"no answer ({exc})"
        if answer != last:
            log(f"  /readyz: {answer}")
            last = answer
        if status == 200:
            return answer, None
        if code in PARTIAL:
            return answer, PARTIAL[code]
        if time.monotonic() + poll_s > deadline:
            raise CanaryFailed(f"not ready before the timeout; /readyz said {last}")
        time.sleep(poll_s)


def run_canary(
    root: Path, settings: Any, aws: Aws, image: dict[str, Any], launch: GroupLaunch, *, access_factory: AccessFactory,
    keep_going: bool = False, timeout_s: float = DEFAULT_TIMEOUT_S, poll_s: float = 5.0, log: Log = print,
    accept_new_host_key: bool = False,
) -> CanaryReport:
    """One canary of ``image``: launch, wait, test, record the verdict, remove everything (whatever happens)."""
    run_id = throwaway.new_run_id()
    report = CanaryReport(run_id)
    created = throwaway.Created()
    started = time.monotonic()
    deadline = started + timeout_s
    access: InstanceAccess | None = None
    vpc_id = throwaway.subnet_vpc(aws, launch.subnets[0], f"the subnet {launch.subnets[0]} of group {launch.group}")
    cidrs = throwaway.build_host_cidrs(settings)
    log(f"canary run {run_id}: {image['ImageId']} in {launch.subnets[0]} with the groups "
        f"{', '.join(launch.security_groups) or 'none'} and profile {launch.instance_profile or 'none'}")
    try:
        with tempfile.TemporaryDirectory(prefix="ncimage-canary-") as tmp:
            key_name, key_file = throwaway.import_key_pair(
                aws, settings, run_id=run_id, purpose=T.PURPOSE_CANARY, workdir=Path(tmp), created=created, log=log)
            group_id = throwaway.create_security_group(
                aws, settings, vpc_id=vpc_id, run_id=run_id, purpose=T.PURPOSE_CANARY, ssh_cidrs=cidrs,
                created=created, log=log)
            instance_id = _launch(aws, settings, launch, image["ImageId"], key_name=key_name, group_id=group_id,
                                  run_id=run_id, user_data=canary_user_data(settings))
            report.instance_id = instance_id
            created.add(aws.region, "instance", instance_id, log)
            try:
                log(f"  waiting for {instance_id}: running, then EC2 status checks (the group's liveness)")
                _wait(aws, "instance_running", instance_id, deadline, "did not start")
                _wait(aws, "instance_status_ok", instance_id, deadline, "did not pass its EC2 status checks")
                report.timings["status_ok_s"] = round(time.monotonic() - started, 1)
                keys = wait_for_host_keys(
                    aws, instance_id, min(deadline, time.monotonic() + ACCEPT_NEW_AFTER_S) if accept_new_host_key
                    else deadline, poll_s * 3, log)
                if not keys and not accept_new_host_key:
                    raise AwsError(
                        f"{instance_id} showed no SSH host keys on its console output before the timeout, so its "
                        "SSH server could not be told from an impostor and was never contacted; no verdict recorded. "
                        "Run again with a longer --timeout (AWS's copy of the console can lag minutes), or pass "
                        "--accept-new-host-key to trust the key it presents on first contact (weaker: an "
                        "interception at that moment would go unnoticed)", exit_code=1)
                if not keys:
                    log("  no host keys on its console: trusting the key it presents on first contact "
                        "(--accept-new-host-key)")
                report.timings["host_keys_s"] = round(time.monotonic() - started, 1)
                target = throwaway_target(aws, settings, instance_id, key_file, keys)
                access = access_factory(target)
                try:
                    access.wait_ssh(deadline)
                except AccessFailed as exc:
                    raise CanaryFailed(str(exc)) from None
                log("  waiting for /readyz 200 (the load balancer's readiness)")
                report.readiness, report.partial = _wait_ready(access, deadline, poll_s, log)
                report.timings["ready_s"] = round(time.monotonic() - started, 1)
                if report.partial:
                    log(f"  {report.partial}")
                log("  testinfra: tests/image against the canary"
                    + (f" (without {', '.join(n.rsplit('::', 1)[1] for n in NEEDS_READY)})" if report.partial else ""))
                report.suite_exit = access.run_suite(
                    root, deselect=NEEDS_READY if report.partial else (), keep_going=keep_going)
                report.timings["suite_done_s"] = round(time.monotonic() - started, 1)
                if report.suite_exit != 0:
                    raise CanaryFailed(f"tests/image failed (pytest exit {report.suite_exit})")
                report.verdict = T.VERDICT_PASSED
            except CanaryFailed:
                report.verdict = T.VERDICT_FAILED
                raise
            finally:
                if access is not None:
                    access.close()
                if report.verdict:
                    copies = amis.copies_of(aws, settings, image)
                    amis.record_verdict(aws, copies, report.verdict, throwaway.utc_now_iso(), run_id)
                    log(f"  verdict {report.verdict} recorded on {', '.join(f'{r}:{i}' for r, i in copies.items())}")
    finally:
        report.created = list(created.items)
        log(f"canary run {run_id}: removing what it created")
        with throwaway.cleanup_shield(log):
            removal = remove_run(aws, settings, run_id, log)
        report.removed = [(i.region, i.kind, i.resource_id) for i in removal.removed]
        gone = {(r, i) for r, _, i in report.removed}
        report.left = [c for c in report.created if (c[0], c[2]) not in gone]
        log(f"  created: {', '.join(f'{k} {i}' for _, k, i in report.created) or 'nothing'}")
        log(f"  removed: {', '.join(f'{k} {i}' for _, k, i in report.removed) or 'nothing'}")
        if report.left:
            log(f"  LEFT BEHIND: {', '.join(f'{k} {i}' for _, k, i in report.left)} - run `inv sweep --yes`")
        report.timings["total_s"] = round(time.monotonic() - started, 1)
    return report


def throwaway_target(aws: Aws, settings: Any, instance_id: str, key_file: Path,
                     host_keys: list[HostKey] | tuple[HostKey, ...] = ()) -> Target:
    """How to reach a throwaway instance; with ``host_keys`` none other is trusted, without them the first seen."""
    return Target(instance_id, _address(aws, settings, instance_id), aws.region, settings.bake.ssh_interface,
                  key_file, host_keys=tuple(host_keys))


def test_aws_image(
    root: Path, settings: Any, *, ami: str | None = None, dry_run: bool = False, keep_going: bool = False,
    timeout_s: float | None = None, log: Log = print, access_factory: AccessFactory | None = None,
    poll_s: float = 5.0, accept_new_host_key: bool = False,
) -> Verdict:
    """``inv test-ami --env E [--ami ID]`` on AWS; the verdict says passed / failed / dry run."""
    aws = Aws.for_settings(settings, dry_run=dry_run)
    identity = aws.preflight()
    log(f"aws: account {identity.account}, region {settings.region}" + (" — dry run" if dry_run else ""))
    image = _ami_to_test(aws, root, settings, ami)
    launch = read_group_launch(aws, settings)
    log(f"group {launch.group}: launch template {launch.template_name or launch.template_id} version "
        f"{launch.version}, subnets {', '.join(launch.subnets)}")
    if dry_run:
        cidrs = throwaway.build_host_cidrs(settings)
        instance_type = launch.data.get("InstanceType") or settings.instance_type
        log("would create: a key pair, a security group (SSH from "
            f"{', '.join(cidrs) or 'nowhere: Session Manager'}), one {instance_type} "
            f"canary of {image['ImageId']} in {launch.subnets[0]} with {', '.join(launch.security_groups) or 'no'} "
            f"security groups and profile {launch.instance_profile or 'none'}, user data with allow_install and "
            "allow_upgrade false; SSH only to the host keys its console output shows"
            + (" (else the first key it presents)" if accept_new_host_key else "")
            + "; then remove all three and tag the verdict on the AMI")
        return Verdict("dry run", f"would test {image['ImageId']} with a canary; nothing was changed")
    try:
        report = run_canary(root, settings, aws, image, launch, access_factory=access_factory or SshAccess,
                            keep_going=keep_going, timeout_s=timeout_s or DEFAULT_TIMEOUT_S, poll_s=poll_s, log=log,
                            accept_new_host_key=accept_new_host_key)
    except CanaryFailed as exc:
        return Verdict("failed", f"{image['ImageId']}: {exc}; recorded on the AMI", exit_code=1)
    except (ClientError, BotoCoreError) as exc:
        raise AwsError(f"the canary run stopped on an AWS error ({describe_client_error(exc)}); no verdict "
                       "recorded; what it created was removed (listed above)", exit_code=1) from None
    if report.left:
        return Verdict("failed", f"{image['ImageId']} {report.verdict}, but the canary left "
                                 f"{len(report.left)} resource(s) behind: run `inv sweep --yes`", exit_code=1)
    detail = f"{image['ImageId']}: tests/image passed on a canary ({report.timings.get('total_s', 0):.0f} s)"
    if report.partial:
        detail += f"; {report.partial}"
    return Verdict("passed", detail + "; recorded on the AMI")
