"""`inv rollout`: a new AMI into service on the group, through a pinned launch template version and an instance
refresh with checkpoints, alarms and automatic rollback.

The order is the one that makes rollback mean something: the group is not touched beforehand (it keeps launching
its current version, so a rollback returns there, and a scale-out meanwhile never launches the new image); a new
launch template version is made from the group's version with only the image changed and checked; the refresh
is started with that version pinned as its desired configuration; only when it succeeds does AWS move the group
to it, and then the template's default follows and the release record is written.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra.aws.session import Aws
from infra.rollout import records, refresh, versions
from infra.rollout.amis import Ami, check_candidate, describe_amis, manifest_ami
from infra.rollout.group import Launch, describe_group, instances_of, launch_of
from infra.rollout.launch_template import create_image_version, set_default
from infra.rollout.outcome import INTERRUPTED, OK, REFUSED, Refused
from infra.rollout.preferences import Purpose, describe_preferences, refresh_preferences
from infra.rollout.report import Reporter
from infra.verdict import Verdict

Confirm = Callable[[str], bool]


@dataclass
class Plan:
    """Everything a rollout will do, decided before anything changes."""

    settings: Any
    group: dict[str, Any]
    launch: Launch
    current: Ami
    target: Ami
    preferences: dict[str, Any]
    purpose: Purpose = "rollout"
    instances: list[dict[str, Any]] = field(default_factory=list)
    alarms: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    new_version_needed: bool = True


def require_aws_environment(settings: Any, task: str) -> None:
    if settings.builder != "aws":
        raise Refused(f"{task} needs an AWS environment (builder = \"aws\"): the local twin has no Auto Scaling "
                      "group; use --env with an environment such as environments/example.toml")


def unfinished_upgrade(aws: Aws, settings: Any) -> dict[str, Any] | None:
    state = records.read(aws, records.upgrade_name(settings))
    return state if state and state.get("step") not in (None, "done", "aborted") else None


def refuse_during_upgrade(aws: Aws, settings: Any, what: str) -> None:
    upgrade = unfinished_upgrade(aws, settings)
    if upgrade:
        raise Refused(f"an upgrade to Nextcloud {upgrade.get('to_version')} is unfinished (step "
                      f"{upgrade.get('step')}): cannot {what} now (the database may already be newer than the old "
                      f"image); resume it with `inv upgrade --env {settings.name}`; nothing was changed")


def check_alarms(aws: Aws, names: list[str]) -> list[tuple[str, str]]:
    """(name, state) of the configured alarms; Refused when one is missing or already in ALARM."""
    if not names:
        return []
    found = aws.client("cloudwatch").describe_alarms(AlarmNames=names)
    states = {a["AlarmName"]: a["StateValue"] for a in found.get("MetricAlarms", []) + found.get("CompositeAlarms", [])}
    missing = [n for n in names if n not in states]
    if missing:
        raise Refused(f"rollout.alarm_names: alarm(s) {', '.join(missing)} do not exist in {aws.region}: fix the names "
                      "or deploy the stack that creates them; nothing was changed")
    firing = [n for n in names if states[n] == "ALARM"]
    if firing:
        raise Refused(f"alarm(s) {', '.join(firing)} are in ALARM already: the refresh would roll back at once. Fix "
                      "what they report first; nothing was changed")
    return [(n, states[n]) for n in names]


def prepare(aws: Aws, settings: Any, root: Path, *, ami_id: str | None, untested: bool) -> Plan | Verdict:
    """The plan of a rollout of ``ami_id`` (default: the manifest's), or the verdict that nothing is to be done."""
    group = describe_group(aws, settings)
    launch = launch_of(aws, group)
    name = launch.group
    if not launch.pinned:
        raise Refused(
            f"the group {name} launches launch template version {launch.version_spec}: pin a version number in the "
            f"stack (LaunchTemplate.Version = the template's LatestVersionNumber). With {launch.version_spec} a "
            "refresh cannot be rolled back and every scale-out launches whatever the template points at; nothing "
            "was changed"
        )
    wanted = settings.launch_template.name
    if wanted and launch.template_name != wanted:
        raise Refused(f"the group {name} launches template {launch.template_name}, but launch_template.name is "
                      f"{wanted}: fix the settings or the stack; nothing was changed")
    refuse_during_upgrade(aws, settings, "roll out")
    running = refresh.active_refresh(aws, name)
    if running:
        raise Refused(
            f"an instance refresh is already running on {name} ({running['InstanceRefreshId']}: {running['Status']} "
            f"at {running.get('PercentageComplete', 0)}%): wait for it (`inv status --env {settings.name}`) or roll it "
            f"back (`inv rollback --env {settings.name}`); nothing was changed"
        )
    image_id = ami_id or manifest_ami(root, settings.name, settings.region)
    target, warnings = check_candidate(aws, settings, image_id, untested=untested)
    current = describe_amis(aws, [launch.image_id]).get(launch.image_id)
    if current is None or not current.nextcloud_version:
        what = "no longer exists" if current is None else "carries no Nextcloud version tag"
        raise Refused(f"the group's AMI {launch.image_id} {what}: cannot tell which Nextcloud the cluster runs, so "
                      "cannot check the new image against it; nothing was changed")
    cmp = versions.compare(target.nextcloud_version, current.nextcloud_version)
    if cmp > 0:
        raise Refused(
            f"AMI {target.id} carries Nextcloud {target.nextcloud_version}, newer than the cluster's "
            f"{current.nextcloud_version}: that is an upgrade, which must run exactly once in maintenance: "
            f"`inv upgrade --env {settings.name} --ami {target.id}`; nothing was changed"
        )
    if cmp < 0:
        raise Refused(
            f"AMI {target.id} carries Nextcloud {target.nextcloud_version}, older than the cluster's "
            f"{current.nextcloud_version}: Nextcloud cannot run on a newer database (its instances would never be "
            "ready); roll out an image with the cluster's version; nothing was changed"
        )
    instances = instances_of(aws, group)
    new_version_needed = target.id != launch.image_id
    if not new_version_needed and all(i["ImageId"] == target.id for i in instances):
        return Verdict("up to date", f"the group {name} already launches {target.id} (launch template "
                                     f"{launch.template_name} version {launch.version}) and every instance runs it; "
                                     "nothing was changed", OK)
    alarms = check_alarms(aws, settings.rollout.alarm_names)
    return Plan(settings, group, launch, current, target, refresh_preferences(settings, "rollout"), "rollout",
                instances, alarms, warnings, new_version_needed)


def print_plan(plan: Plan, report: Reporter, title: str) -> None:
    g, launch = plan.group, plan.launch
    new_version = f"{launch.latest_version + 1} (new: version {launch.version} with only the image changed)"
    protected = [i["InstanceId"] for i in plan.instances if i.get("ProtectedFromScaleIn")]
    standby = [i["InstanceId"] for i in plan.instances if i["LifecycleState"].startswith("Standby")]
    rows = [
        ("group", f"{launch.group} (desired {g['DesiredCapacity']}, min {g['MinSize']}, max {g['MaxSize']})"),
        ("launch template", f"{launch.template_name} ({launch.template_id})"),
        ("version", f"{launch.version} -> {new_version if plan.new_version_needed else launch.version}"),
        ("AMI", f"{plan.current.describe()} -> {plan.target.describe()}"),
        ("instances", f"{len(plan.instances)}: " + ", ".join(
            f"{n} on {image}" for image, n in Counter(i["ImageId"] for i in plan.instances).items())),
    ]
    if protected:
        rows.append(("scale-in protected", f"{', '.join(protected)}: {plan.preferences['ScaleInProtectedInstances']}"))
    if standby:
        rows.append(("standby", f"{', '.join(standby)}: {plan.preferences['StandbyInstances']}"))
    rows += [("alarm", f"{n} ({s})") for n, s in plan.alarms]
    rows.append(("refresh", describe_preferences(plan.preferences)))
    report.table(title, ["", ""], rows)


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def record_release(aws: Aws, plan: Plan, version: int) -> None:
    """The release record after a successful refresh: what runs now, and what ran before it."""
    name = records.release_name(plan.settings)
    before = records.read(aws, name) or {}
    previous = (
        {"version": plan.launch.version, "ami": plan.launch.image_id,
         "nextcloud_version": plan.current.nextcloud_version}
        if plan.launch.image_id != plan.target.id else before.get("previous")
    )
    records.write(aws, name, {
        "schema": 1, "environment": plan.settings.name, "group": plan.launch.group,
        "template_id": plan.launch.template_id, "version": version, "ami": plan.target.id,
        "nextcloud_version": plan.target.nextcloud_version, "previous": previous, "updated_at": _now(),
        "by": aws.identity.arn if aws.identity else "",
    })


def execute(aws: Aws, plan: Plan, report: Reporter, *, asked: str = "rollout",
            sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> Verdict:
    """Create the version, start the pinned refresh, follow it to the end; the verdict."""
    s, launch = plan.settings, plan.launch
    version = launch.version
    if plan.new_version_needed:
        version = create_image_version(
            aws, launch.template_id, launch.version, plan.target.id,
            f"nextcloud-image {asked}: {plan.target.id} (Nextcloud {plan.target.nextcloud_version}) from version "
            f"{launch.version} ({launch.image_id})",
        )
        report.info(f"created launch template version {version}: version {launch.version} with image {plan.target.id}")
    refresh_id = refresh.start(aws, launch.group, launch.template_id, version, plan.preferences)
    report.info(f"started instance refresh {refresh_id} on {launch.group} (desired: {launch.template_name} version "
                f"{version}); the group itself still launches version {launch.version} until it succeeds")
    final = refresh.follow(aws, launch.group, refresh_id, poll_seconds=s.rollout.poll_seconds,
                           timeout_s=s.rollout.timeout_minutes * 60, report=report, sleep=sleep, clock=clock)
    verdict = refresh.verdict(final, asked=asked)
    now = launch_of(aws, describe_group(aws, s))
    if final["Status"] == "Successful":
        set_default(aws, launch.template_id, version)
        record_release(aws, plan, version)
        return Verdict(verdict.word, f"the group launches {launch.template_name} version {now.version} "
                                     f"({plan.target.describe()}); the template's default is {version} now",
                       verdict.exit_code)
    if final["Status"] == "RollbackSuccessful":
        return Verdict(verdict.word, f"{verdict.detail}; the group launches version {now.version} ({now.image_id}) "
                                     "again", verdict.exit_code)
    return verdict


def run(settings: Any, root: Path, *, ami_id: str | None, untested: bool, dry_run: bool, yes: bool,
        confirm: Confirm | None, report: Reporter, asked: str = "rollout", aws: Aws | None = None,
        sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> Verdict:
    """Plan, confirm and carry out a rollout of ``ami_id`` (the manifest's AMI by default)."""
    require_aws_environment(settings, asked)
    if aws is None:
        aws = Aws.for_settings(settings, dry_run=dry_run)
        aws.preflight()
    plan = prepare(aws, settings, root, ami_id=ami_id, untested=untested)
    if isinstance(plan, Verdict):
        return plan
    for warning in plan.warnings:
        report.warn(warning)
    print_plan(plan, report, f"{asked} plan for {settings.name}" + (" (dry run)" if dry_run else ""))
    if dry_run:
        return Verdict("planned", "dry run: nothing was changed (no launch template version, no refresh)", OK)
    if not yes and not (confirm and confirm(f"{asked} {plan.target.id} on {plan.launch.group}?")):
        return Verdict("not confirmed", "nothing was changed", REFUSED)
    try:
        return execute(aws, plan, report, asked=asked, sleep=sleep, clock=clock)
    except KeyboardInterrupt:
        return Verdict("interrupted", f"a refresh that started goes on in AWS: follow it with `inv status --env "
                                      f"{settings.name}`, roll it back with `inv rollback --env {settings.name}`",
                       INTERRUPTED)
