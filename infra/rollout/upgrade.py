"""`inv upgrade`: a newer Nextcloud, never rolled blindly.

Nextcloud's documented procedure (back up, maintenance on, new code, ``occ upgrade`` once, maintenance off), made
cluster-wide and resumable:

  1. checks: the new AMI passes every rollout check; its Nextcloud is newer than the cluster's and at most one major
     ahead (else the path to take is named); nothing else runs; confirm;
  2. snapshot: an RDS snapshot of the database (``upgrade.db_instance_identifier``; a warning without one);
  3. maintenance: the load balancer answers 503 for the whole cluster (maintenance.py);
  4. template: a launch template version with only the image changed (as a rollout makes it);
  5. upgrading: the one-off upgrade instance from that version, the only one allowed to upgrade; its cluster init
     runs ``occ upgrade`` exactly once under the cluster lock; followed through its readiness;
  6. refreshing: an instance refresh to that version (upgrade preferences: the whole fleet, no rollback: the old
     image cannot serve the upgraded database);
  7. serving: the new instances healthy in the load balancer's target groups (its readiness check);
  8. done: maintenance off, the release record written.

Each step is recorded in the upgrade state (records.py, SSM) before the next begins, so an interrupted upgrade
resumes where it stopped, from any machine: `inv upgrade --env E` again. A failure never leaves a half-upgraded
cluster serving: until the database is upgraded and the new fleet is ready the cluster stays in maintenance; only
an upgrade that demonstrably never started (its instance never got to run ``occ upgrade``) switches maintenance off
again, and then the old fleet serves on as before.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import botocore.exceptions

from infra.aws.session import Aws
from infra.errors import PipelineError
from infra.rollout import maintenance, records, refresh, upgrade_instance, versions
from infra.rollout.amis import check_candidate, describe_amis, manifest_ami
from infra.rollout.group import describe_group, launch_of
from infra.rollout.launch_template import create_image_version, set_default
from infra.rollout.outcome import FAILED, INTERRUPTED, OK, REFUSED, Refused
from infra.rollout.preferences import describe_preferences, refresh_preferences
from infra.rollout.report import Reporter
from infra.rollout.rollout import Confirm, require_aws_environment, unfinished_upgrade
from infra.verdict import Verdict
from render import tags as T

STEPS = ("planned", "snapshot", "maintenance", "template", "upgrading", "upgraded", "refreshing", "serving", "done")
# Readiness codes of an upgrade instance whose cluster init has not touched the database (cluster-init.php).
NOT_STARTED = {"db_unreachable", "redis_unreachable", "lock_wait", "not_installed", "init_pending", "config_error",
               "identity_mismatch", "foreign_install", "code_older", "install_interrupted", "upgrade_pending"}
TERMINAL_BEFORE = {"config_error", "identity_mismatch", "foreign_install", "code_older", "install_interrupted"}


class UpgradeFailed(PipelineError):
    def __init__(self, verdict: Verdict):
        super().__init__(verdict.detail, exit_code=verdict.exit_code)
        self.verdict = verdict


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Upgrade:
    """One upgrade, its state saved after every step."""

    def __init__(self, aws: Aws, settings: Any, state: dict[str, Any], report: Reporter,
                 sleep: Callable[[float], None], clock: Callable[[], float] = time.monotonic):
        self.aws, self.settings, self.state, self.report = aws, settings, state, report
        self.sleep, self.clock = sleep, clock

    def save(self, step: str | None = None, **changes: Any) -> None:
        if step:
            self.state["step"] = step
            self.state.setdefault("history", []).append([_now(), step])
        self.state.update(changes, updated_at=_now())
        records.write(self.aws, records.upgrade_name(self.settings), self.state)

    def after(self, step: str) -> bool:
        """True when the upgrade has already passed ``step``."""
        return STEPS.index(self.state["step"]) > STEPS.index(step)

    # ---- the steps ----------------------------------------------------------------------------------------
    def snapshot(self) -> None:
        db = self.settings.upgrade.db_instance_identifier
        if not db or self.after("snapshot"):
            return
        s = self.state
        to = s["to_version"].replace(".", "-")
        name = s.get("snapshot") or f"nextcloud-{self.settings.name}-before-{to}-{s['id'][:8]}"
        rds = self.aws.client("rds")
        self.report.info(f"snapshot: {name} of {db} (restore it if the upgrade must be undone)")
        try:
            rds.create_db_snapshot(DBSnapshotIdentifier=name, DBInstanceIdentifier=db, Tags=[
                {"Key": T.MANAGED, "Value": "true"}, {"Key": T.ENVIRONMENT, "Value": self.settings.name},
                {"Key": T.RUN, "Value": s["id"]}])
        except botocore.exceptions.ClientError as exc:
            code = exc.response["Error"]["Code"]
            if code == "DBInstanceNotFound":
                self.save("aborted", message=f"the database {db} does not exist")
                refused = Verdict("refused", f"upgrade.db_instance_identifier: {db} does not exist in "
                                             f"{self.aws.region}; fix it; nothing was changed", REFUSED)
                raise UpgradeFailed(refused) from None
            if code != "DBSnapshotAlreadyExists":
                raise
        self.save(snapshot=name)
        attempts = max(int(self.settings.upgrade.timeout_minutes * 60 / 30), 1)
        rds.get_waiter("db_snapshot_available").wait(DBSnapshotIdentifier=name,
                                                     WaiterConfig={"Delay": 30, "MaxAttempts": attempts})
        self.save("snapshot")

    def maintenance_on(self) -> None:
        if self.after("maintenance"):
            return
        s = self.state
        arn = maintenance.switch_on(self.aws, self.settings, s["id"],
                                    f"Nextcloud is being upgraded from {s['from_version']} to {s['to_version']}. "
                                    "Please come back in a few minutes.")
        self.report.info(f"maintenance on: every request to {self.settings.site.domain} is answered 503 (rule {arn})")
        self.save("maintenance", rule_arn=arn)

    def template(self) -> None:
        if self.after("template"):
            return
        s = self.state
        version = create_image_version(
            self.aws, s["template_id"], s["source_version"], s["ami"],
            f"nextcloud-image upgrade {s['id'][:8]}: Nextcloud {s['to_version']} ({s['ami']}) from version "
            f"{s['source_version']}")
        self.report.info(f"created launch template version {version}: version {s['source_version']} with image "
                         f"{s['ami']}")
        self.save("template", version=version)

    def upgrade_database(self, group: dict[str, Any]) -> None:
        if self.after("upgrading"):
            return
        s = self.state
        instance = s.get("instance_id")
        alive = upgrade_instance.find(self.aws, self.settings, s["id"])
        if instance and instance == s.get("failed_instance"):
            # Resuming after a failed upgrade: that instance's cluster init has given up; a fresh one resumes the
            # interrupted occ upgrade (cluster-init.php: a row still 'upgrading' and a node that may upgrade).
            upgrade_instance.terminate(self.aws, instance)
            self.report.info(f"the failed upgrade instance {instance} was terminated; launching a fresh one")
            alive = [i for i in alive if i != instance]
            self.save(failed_instance=None)
        if instance not in alive:
            instance = alive[0] if alive else upgrade_instance.launch(
                self.aws, self.settings, group, s["template_id"], s["version"], s["id"], len(s.get("instances", [])))
            self.report.info(f"upgrade instance {instance} launched from version {s['version']} (allow_upgrade on; "
                             "not in the group, not behind the load balancer)")
            self.save("upgrading", instance_id=instance, instances=[*s.get("instances", []), instance])
        else:
            self.report.info(f"following the upgrade instance {instance}")
        deadline = self.clock() + self.settings.upgrade.timeout_minutes * 60
        last: dict[str, Any] | None = None
        while True:
            answer = upgrade_instance.probe(self.aws, instance)
            if answer is not None:
                last = answer
                code = answer.get("code", "")
                if answer.get("ready") and answer.get("version") == s["to_version"]:
                    self.report.info(f"  {instance}: ready at Nextcloud {s['to_version']}: the database is upgraded")
                    break
                self.report.info(f"  {instance}: {code}: {answer.get('reason', '')}")
                if code in ("upgrading", "cluster_busy") and not s.get("seen_upgrading"):
                    self.save(seen_upgrading=True)
                if code == "upgrade_failed":
                    self.save(message=answer.get("reason", ""), failed_instance=instance)
                    raise UpgradeFailed(self._failed_in_maintenance(
                        f"the upgrade on {instance} failed: {answer.get('reason', '')}. The database may be partly "
                        f"upgraded; {instance} is left running for diagnosis"))
                if code in TERMINAL_BEFORE and not s.get("seen_upgrading"):
                    raise UpgradeFailed(self._abort(instance, f"the upgrade instance cannot upgrade: {code}: "
                                                              f"{answer.get('reason', '')}"))
            if self.clock() >= deadline:
                code = (last or {}).get("code")
                if code in NOT_STARTED and not s.get("seen_upgrading"):
                    raise UpgradeFailed(self._abort(instance, f"the upgrade did not start within "
                                                              f"{self.settings.upgrade.timeout_minutes} min ({code})"))
                raise UpgradeFailed(self._failed_in_maintenance(
                    f"the upgrade instance {instance} did not report the upgrade done within "
                    f"{self.settings.upgrade.timeout_minutes} min (last: {code or 'no answer'})"))
            self.sleep(self.settings.rollout.poll_seconds)
        self.save("upgraded", to_version_reached_at=_now())
        upgrade_instance.terminate(self.aws, instance)
        self.report.info(f"upgrade instance {instance} terminated")

    def refresh_fleet(self) -> None:
        if self.after("refreshing"):
            return
        s, name = self.state, self.state["group"]
        known = refresh.refreshes(self.aws, name, s["refresh_id"]) if s.get("refresh_id") else []
        current = known[0] if known else None
        if current is None or current["Status"] not in (*refresh.ACTIVE, "Successful"):
            running = refresh.active_refresh(self.aws, name)
            if running and refresh.desired_version(running) == str(s["version"]):
                current = running
            elif running:
                raise UpgradeFailed(self._failed_in_maintenance(
                    f"another refresh ({running['InstanceRefreshId']}) runs on {name}; the database is at "
                    f"{s['to_version']}, so the cluster stays in maintenance until the fleet runs it"))
            else:
                rid = refresh.start(self.aws, name, s["template_id"], s["version"],
                                    refresh_preferences(self.settings, "upgrade"))
                current = {"InstanceRefreshId": rid, "Status": "Pending"}
                self.report.info(f"started instance refresh {rid}: the whole fleet moves to version {s['version']}")
            self.save(refresh_id=current["InstanceRefreshId"])
        if current["Status"] != "Successful":
            current = refresh.follow(self.aws, name, current["InstanceRefreshId"],
                                     poll_seconds=self.settings.rollout.poll_seconds,
                                     timeout_s=self.settings.rollout.timeout_minutes * 60, report=self.report,
                                     sleep=self.sleep)
        if current["Status"] != "Successful":
            raise UpgradeFailed(self._failed_in_maintenance(
                f"the fleet's refresh ended {current['Status']} ({current.get('StatusReason', '')}); the database is "
                f"at {s['to_version']}, which the old image cannot serve"))
        set_default(self.aws, s["template_id"], s["version"])
        self.save("refreshing")

    def wait_serving(self) -> None:
        if self.after("serving"):
            return
        fresh = describe_group(self.aws, self.settings)
        targets = [{"Id": i["InstanceId"]} for i in fresh.get("Instances", [])]
        elbv2 = self.aws.client("elbv2")
        attempts = max(int(self.settings.upgrade.timeout_minutes * 60 / 15), 1)
        for arn in fresh.get("TargetGroupARNs", []):
            try:
                elbv2.get_waiter("target_in_service").wait(
                    TargetGroupArn=arn, Targets=targets,
                    WaiterConfig={"Delay": 15 if self.settings.rollout.poll_seconds else 0, "MaxAttempts": attempts})
            except botocore.exceptions.WaiterError:
                raise UpgradeFailed(self._failed_in_maintenance(
                    f"the new instances did not become ready in target group {arn}")) from None
        self.report.info(f"{len(targets)} instance(s) of the new fleet ready behind the load balancer")
        self.save("serving")

    def finish(self) -> Verdict:
        s = self.state
        maintenance.switch_off(self.aws, self.settings, s.get("rule_arn"))
        release = records.read(self.aws, records.release_name(self.settings)) or {}
        records.write(self.aws, records.release_name(self.settings), {
            "schema": 1, "environment": self.settings.name, "group": s["group"], "template_id": s["template_id"],
            "version": s["version"], "ami": s["ami"], "nextcloud_version": s["to_version"],
            "previous": {"version": s["source_version"], "ami": s["from_ami"], "nextcloud_version": s["from_version"]},
            "updated_at": _now(), "by": self.aws.identity.arn if self.aws.identity else release.get("by", ""),
        })
        self.save("done")
        return Verdict("upgraded", f"Nextcloud {s['from_version']} -> {s['to_version']}, upgraded once on "
                                   f"{s.get('instance_id')}; the group launches version {s['version']} ({s['ami']}); "
                                   "maintenance is off", OK)

    # ---- endings ------------------------------------------------------------------------------------------
    def _failed_in_maintenance(self, what: str) -> Verdict:
        self.save(message=what)
        snap = self.state.get("snapshot")
        undo = f"restore the snapshot {snap}, or " if snap else ""
        return Verdict("upgrade failed", f"{what}. The cluster stays in maintenance (nothing half-upgraded serves). "
                                         f"Fix the cause and run `inv upgrade --env {self.settings.name}` again to "
                                         f"resume at step {self.state['step']}; or {undo}ask for help", FAILED)

    def _abort(self, instance: str, what: str) -> Verdict:
        try:
            upgrade_instance.terminate(self.aws, instance)
        except botocore.exceptions.ClientError as exc:
            self.report.warn(f"could not terminate the upgrade instance {instance}: {exc}")
        maintenance.switch_off(self.aws, self.settings, self.state.get("rule_arn"))
        self.save("aborted", message=what)
        return Verdict("upgrade failed", f"{what}; the database was not touched. Maintenance is off again and the "
                                         f"old fleet serves Nextcloud {self.state['from_version']} as before", FAILED)


def _plan_rows(state: dict[str, Any], settings: Any, resume: bool) -> list[tuple[str, str]]:
    prefs = refresh_preferences(settings, "upgrade")
    rows = [
        ("Nextcloud", f"{state['from_version']} -> {state['to_version']}"),
        ("AMI", f"{state['from_ami']} -> {state['ami']}"),
        ("group", f"{state['group']}: launch template {state['template_id']} version {state['source_version']} -> new"),
        ("database snapshot", settings.upgrade.db_instance_identifier or "none (upgrade.db_instance_identifier unset)"),
        ("maintenance", f"fixed 503 rule (priority {settings.upgrade.maintenance_rule_priority}) on "
                        f"{settings.upgrade.listener_arn}"),
        ("steps", " -> ".join(STEPS[1:])),
    ]
    if resume:
        rows.insert(0, ("resume", f"upgrade {state['id']} at step {state['step']} (started {state.get('started_at')})"))
    return [*rows, ("refresh", describe_preferences(prefs))]


def upgrade(settings: Any, root: Path, *, ami_id: str | None, untested: bool, dry_run: bool, yes: bool,
            confirm: Confirm | None, report: Reporter, sleep: Callable[[float], None] = time.sleep,
            clock: Callable[[], float] = time.monotonic) -> Verdict:
    require_aws_environment(settings, "upgrade")
    if not settings.upgrade.listener_arn:
        raise Refused("upgrade.listener_arn is not set: the upgrade puts the cluster in maintenance at the load "
                      "balancer's listener (the stack's output); set it; nothing was changed")
    aws = Aws.for_settings(settings, dry_run=dry_run)
    aws.preflight()
    state = unfinished_upgrade(aws, settings)
    resume = state is not None
    if state is not None:
        if ami_id and ami_id != state["ami"]:
            raise Refused(f"an upgrade to {state['ami']} (Nextcloud {state['to_version']}) is unfinished at step "
                          f"{state['step']}: finish it first (`inv upgrade --env {settings.name}`); nothing was "
                          "changed")
    else:
        state = _new_state(aws, settings, root, ami_id=ami_id, untested=untested, report=report)
    report.table(f"upgrade plan for {settings.name}" + (" (dry run)" if dry_run else ""), ["", ""],
                 _plan_rows(state, settings, resume))
    if settings.cluster.allow_upgrade:
        report.warn("cluster.allow_upgrade is true: the fleet's own instances may upgrade too (the cluster lock keeps "
                    "it to one); set it false so that only the upgrade instance can")
    if not settings.upgrade.db_instance_identifier:
        report.warn("no database snapshot will be taken (upgrade.db_instance_identifier is unset)")
    if dry_run:
        return Verdict("planned", "dry run: nothing was changed", OK)
    if not yes and not (confirm and confirm(f"upgrade Nextcloud {state['from_version']} -> {state['to_version']} on "
                                            f"{state['group']} (the cluster goes into maintenance)?")):
        return Verdict("not confirmed", "nothing was changed", REFUSED)
    job = Upgrade(aws, settings, state, report, sleep, clock)
    try:
        if not resume:
            job.save("planned")
        job.snapshot()
        job.maintenance_on()
        job.template()
        group = describe_group(aws, settings)
        job.upgrade_database(group)
        job.refresh_fleet()
        job.wait_serving()
        return job.finish()
    except UpgradeFailed as failed:
        return failed.verdict
    except KeyboardInterrupt:
        return Verdict("interrupted", f"the upgrade stopped after step {job.state['step']} (saved in "
                                      f"{records.upgrade_name(settings)}): run `inv upgrade --env {settings.name}` "
                                      "again, from any machine, to resume it", INTERRUPTED)


def _new_state(aws: Aws, settings: Any, root: Path, *, ami_id: str | None, untested: bool,
               report: Reporter) -> dict[str, Any]:
    group = describe_group(aws, settings)
    launch = launch_of(aws, group)
    if not launch.pinned:
        raise Refused(f"the group launches launch template version {launch.version_spec}: pin a version number in "
                      "the stack first; nothing was changed")
    running = refresh.active_refresh(aws, launch.group)
    if running:
        raise Refused(f"an instance refresh is running on {launch.group} ({running['InstanceRefreshId']}, "
                      f"{running['Status']}): let it end first; nothing was changed")
    image_id = ami_id or manifest_ami(root, settings.name, settings.region)
    target, warnings = check_candidate(aws, settings, image_id, untested=untested)
    for warning in warnings:
        report.warn(warning)
    current = describe_amis(aws, [launch.image_id]).get(launch.image_id)
    if current is None or not current.nextcloud_version:
        raise Refused(f"the group's AMI {launch.image_id} has no Nextcloud version tag (or no longer exists): cannot "
                      "tell which Nextcloud the cluster runs; nothing was changed")
    problem = versions.upgrade_path_problem(current.nextcloud_version, target.nextcloud_version)
    if problem:
        raise Refused(f"{problem}; nothing was changed")
    return {
        "schema": 1, "id": str(uuid.uuid4()), "environment": settings.name, "group": launch.group,
        "template_id": launch.template_id, "source_version": launch.version, "from_ami": launch.image_id,
        "from_version": current.nextcloud_version, "ami": target.id, "to_version": target.nextcloud_version,
        "step": "planned", "started_at": _now(), "by": aws.identity.arn if aws.identity else "",
    }
