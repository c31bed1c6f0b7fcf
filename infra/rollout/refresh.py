"""Instance refresh: start one pinned to a launch template version, follow it, roll it back, say how it ended.

AWS has no waiter for instance refresh: ``follow`` polls DescribeInstanceRefreshes every ``poll_seconds`` (a
bounded wait: ``timeout_s``), reporting percent complete, instances left, a checkpoint pause and the status
reason on every change. The refresh itself runs in AWS; a wait that times out or is interrupted leaves it running.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import botocore.exceptions

from infra.aws.session import Aws
from infra.rollout import outcome
from infra.rollout.outcome import Refused
from infra.rollout.report import ProgressView, Reporter
from infra.verdict import Verdict

ACTIVE = ("Pending", "InProgress", "Cancelling", "RollbackInProgress", "Baking")
TERMINAL = ("Successful", "Failed", "Cancelled", "RollbackSuccessful", "RollbackFailed")


def refreshes(aws: Aws, group: str, refresh_id: str | None = None, region: str | None = None) -> list[dict[str, Any]]:
    """The group's refreshes, newest first (AWS keeps six weeks of them), or just ``refresh_id``."""
    kwargs: dict[str, Any] = {"AutoScalingGroupName": group}
    if refresh_id:
        kwargs["InstanceRefreshIds"] = [refresh_id]
    found: list[dict[str, Any]] = []
    client = aws.client("autoscaling", region)
    while True:  # botocore has no paginator for this operation: follow NextToken
        page = client.describe_instance_refreshes(**kwargs)
        found += page["InstanceRefreshes"]
        if not page.get("NextToken"):
            break
        kwargs["NextToken"] = page["NextToken"]
    return sorted(found, key=lambda r: r.get("StartTime") or 0, reverse=True)


def active_refresh(aws: Aws, group: str) -> dict[str, Any] | None:
    return next((r for r in refreshes(aws, group) if r["Status"] in ACTIVE), None)


def desired_version(refresh: dict[str, Any]) -> str | None:
    return ((refresh.get("DesiredConfiguration") or {}).get("LaunchTemplate") or {}).get("Version")


def start(aws: Aws, group: str, template_id: str, version: int, preferences: dict[str, Any]) -> str:
    """Start a refresh whose desired configuration is ``template_id`` version ``version`` (pinned, a number)."""
    try:
        answer = aws.client("autoscaling").start_instance_refresh(
            AutoScalingGroupName=group, Strategy="Rolling",
            DesiredConfiguration={"LaunchTemplate": {"LaunchTemplateId": template_id, "Version": str(version)}},
            Preferences=preferences,
        )
    except botocore.exceptions.ClientError as exc:
        err = exc.response["Error"]
        if err["Code"] == "InstanceRefreshInProgress":
            raise Refused(f"another instance refresh started on {group} meanwhile ({err['Message']}): wait for it "
                          f"(`inv status`); launch template version {version} stays unused") from None
        raise Refused(f"StartInstanceRefresh refused: {err['Code']}: {err['Message']}; launch template version "
                      f"{version} stays unused and the group was not changed") from None
    return answer["InstanceRefreshId"]


def rollback(aws: Aws, group: str) -> str:
    """RollbackInstanceRefresh on the group's active refresh."""
    try:
        return aws.client("autoscaling").rollback_instance_refresh(AutoScalingGroupName=group)["InstanceRefreshId"]
    except botocore.exceptions.ClientError as exc:
        err = exc.response["Error"]
        if err["Code"] == "IrreversibleInstanceRefresh":
            raise Refused(f"the running refresh on {group} cannot be rolled back ({err['Message']}): it has no "
                          "pinned desired configuration. Let it finish, or cancel it with `aws autoscaling "
                          f"cancel-instance-refresh --auto-scaling-group-name {group}`") from None
        if err["Code"] == "ActiveInstanceRefreshNotFound":
            raise Refused(f"no refresh is running on {group} any more: `inv status` shows how it ended") from None
        raise


def view(refresh: dict[str, Any]) -> ProgressView:
    """How a refresh looks on the console; a checkpoint pause is inferred from the percentages (AWS has no field)."""
    percent = int(refresh.get("PercentageComplete") or 0)
    checkpoints = (refresh.get("Preferences") or {}).get("CheckpointPercentages") or []
    at = percent if refresh["Status"] == "InProgress" and percent in checkpoints and percent < 100 else None
    return ProgressView(refresh["Status"], percent, refresh.get("InstancesToUpdate"),
                        refresh.get("StatusReason", ""), at)


def follow(aws: Aws, group: str, refresh_id: str, *, poll_seconds: float, timeout_s: float, report: Reporter,
           sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    """Poll until the refresh ends or ``timeout_s`` passes; the last description."""
    deadline = clock() + timeout_s
    try:
        while True:
            found = refreshes(aws, group, refresh_id)
            if not found:
                raise Refused(f"instance refresh {refresh_id} of {group} is not known to AWS any more")
            current = found[0]
            report.progress(view(current))
            if current["Status"] in TERMINAL or clock() >= deadline:
                return current
            sleep(poll_seconds)
    finally:
        report.end_progress()


def verdict(refresh: dict[str, Any], *, asked: str = "rollout") -> Verdict:
    """The verdict of a refresh that ended (or of the wait for it). ``asked="rollback"``: a rollback was wanted."""
    status = refresh["Status"]
    reason = (refresh.get("StatusReason") or "").rstrip(".")  # AWS writes sentences; the verdict goes on after ";"
    why = ((refresh.get("RollbackDetails") or {}).get("RollbackReason") or reason or "no reason given").rstrip(".")
    if status == "Successful":
        return Verdict("rolled out" if asked == "rollout" else "rolled back", "the refresh succeeded", outcome.OK)
    if status == "RollbackSuccessful":
        code = outcome.OK if asked == "rollback" else outcome.ROLLED_BACK
        return Verdict("rolled back", why, code)
    if status == "RollbackFailed":
        return Verdict("rollback failed", f"{why}; the group may run a mix of versions: see `inv status`",
                       outcome.FAILED)
    if status == "Failed":
        return Verdict("failed", f"{reason or 'no reason given'}; instances replaced so far stay replaced",
                       outcome.FAILED)
    if status == "Cancelled":
        return Verdict("cancelled", f"{reason or 'the refresh was cancelled'}; instances replaced so far stay "
                                    "replaced", outcome.CANCELLED)
    return Verdict("still running", f"the refresh is {status} at {refresh.get('PercentageComplete', 0)}% and goes "
                                    "on in AWS: follow it with `inv status`", outcome.STILL_RUNNING)
