"""`inv rollback`: a refresh in progress is rolled back (RollbackInstanceRefresh: AWS replaces what it deployed with
the configuration the group had before, which is why the group is never switched before a refresh); with none
running, the AMI the group ran before (the release record) is rolled out again, with every check of a rollout.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from infra.aws.session import Aws
from infra.rollout import records, refresh
from infra.rollout.group import describe_group, launch_of
from infra.rollout.outcome import INTERRUPTED, OK, REFUSED, Refused
from infra.rollout.report import Reporter
from infra.rollout.rollout import Confirm, refuse_during_upgrade, require_aws_environment, run
from infra.verdict import Verdict


def rollback(settings: Any, root: Path, *, dry_run: bool, yes: bool, confirm: Confirm | None, report: Reporter,
             sleep: Callable[[float], None] = time.sleep) -> Verdict:
    require_aws_environment(settings, "rollback")
    aws = Aws.for_settings(settings, dry_run=dry_run)
    aws.preflight()
    refuse_during_upgrade(aws, settings, "roll back")
    group = describe_group(aws, settings)
    name = group["AutoScalingGroupName"]
    active = refresh.active_refresh(aws, name)
    if active is None:
        return _roll_back_to_previous(aws, settings, root, dry_run=dry_run, yes=yes, confirm=confirm, report=report,
                                      sleep=sleep)
    launch = launch_of(aws, group)
    rid, status = active["InstanceRefreshId"], active["Status"]
    report.info(f"instance refresh {rid} on {name} is {status} at {active.get('PercentageComplete', 0)}% "
                f"(desired version {refresh.desired_version(active) or 'none'}); the group's configuration is "
                f"{launch.template_name} version {launch.version} ({launch.image_id})")
    if status not in ("RollbackInProgress", "Cancelling"):
        if dry_run:
            return Verdict("planned", f"dry run: would roll back {rid}, replacing what it deployed with version "
                                      f"{launch.version}; nothing was changed", OK)
        if not yes and not (confirm and confirm(f"roll back instance refresh {rid} on {name}?")):
            return Verdict("not confirmed", "nothing was changed", REFUSED)
        refresh.rollback(aws, name)
        report.info(f"rollback of {rid} started: AWS replaces the new instances with version {launch.version}")
    elif dry_run:
        return Verdict("planned", f"dry run: {rid} is already {status}; nothing was changed", OK)
    try:
        final = refresh.follow(aws, name, rid, poll_seconds=settings.rollout.poll_seconds,
                               timeout_s=settings.rollout.timeout_minutes * 60, report=report, sleep=sleep)
    except KeyboardInterrupt:
        return Verdict("interrupted", f"the rollback goes on in AWS: follow it with `inv status --env {settings.name}`",
                       INTERRUPTED)
    verdict = refresh.verdict(final, asked="rollback")
    if final["Status"] == "Cancelled":
        return verdict
    now = launch_of(aws, describe_group(aws, settings))
    return Verdict(verdict.word, f"{verdict.detail}; the group launches version {now.version} ({now.image_id})",
                   verdict.exit_code)


def _roll_back_to_previous(aws: Aws, settings: Any, root: Path, **kwargs: Any) -> Verdict:
    release = records.read(aws, records.release_name(settings)) or {}
    previous = release.get("previous") or {}
    if not previous.get("ami"):
        raise Refused(f"no refresh is running on the group and no earlier release is recorded "
                      f"({records.release_name(settings)}): roll out a known-good AMI with `inv rollout --env "
                      f"{settings.name} --ami ami-…`; nothing was changed")
    kwargs["report"].info(
        f"no refresh is running: rolling back to the AMI the group ran before, {previous['ami']} (launch template "
        f"version {previous.get('version')}, Nextcloud {previous.get('nextcloud_version')})"
    )
    return run(settings, root, ami_id=previous["ami"], untested=False, asked="rollback", aws=aws, **kwargs)
