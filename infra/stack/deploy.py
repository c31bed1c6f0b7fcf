"""`inv deploy-stack`: create a change set, show it as a diff, refuse data loss, execute after confirmation, show
CloudFormation's events as they arrive, and record the outputs for the settings layer.

It never changes the AMI the group runs: the ImageId parameter is the image the group launches now (the rollout
changes images, with an instance refresh). Before a group exists, it is the last bake's AMI once test-ami passed
it, and until then there is no group at all (the foundation: network, database, cache, bucket, secrets, roles).
While an instance refresh runs it refuses: the group still launches the image it ran before the refresh, so an
update then would hand the group a version with that image under the refresh's feet.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import botocore.exceptions

from infra import build_record
from infra.aws.session import Aws, AwsError, describe_client_error
from infra.rollout.refresh import active_refresh
from infra.stack.changes import Change, data_risks, parse_changes, render_diff, render_risks
from infra.stack.images import GroupImage, first_tested_image, image_the_group_runs
from infra.stack.template import TEMPLATE, load_template, planned_resources, stack_parameters, template_body
from infra.verdict import Verdict
from render import tags
from render.outputs import render_user_data, write_outputs
from render.settings import Loaded, SettingsError, load_settings
from render.stack_outputs import STACK_OUTPUTS, outputs_document, outputs_path

# Calls a dry run may make although they are not read-only: a change set is only described, then deleted.
DRY_RUN_ALLOWED = ("CreateChangeSet", "DeleteChangeSet")

_NO_CHANGES = ("didn't contain changes", "No updates are to be performed")
_BUSY = ("_IN_PROGRESS",)
_DONE_OK = {"CREATE_COMPLETE", "UPDATE_COMPLETE", "IMPORT_COMPLETE"}
_DONE_BAD = {
    "CREATE_FAILED", "ROLLBACK_COMPLETE", "ROLLBACK_FAILED", "UPDATE_FAILED", "UPDATE_ROLLBACK_COMPLETE",
    "UPDATE_ROLLBACK_FAILED", "DELETE_COMPLETE", "DELETE_FAILED", "IMPORT_ROLLBACK_COMPLETE",
    "IMPORT_ROLLBACK_FAILED",
}
# A stack in one of these cannot be updated: the operator must repair it first (the message says how).
_STUCK = {
    "ROLLBACK_COMPLETE": "its creation failed and was rolled back: delete the stack "
    "(`aws cloudformation delete-stack --stack-name {name}`; data-bearing resources are retained) and deploy again",
    "ROLLBACK_FAILED": "its creation failed and the rollback too: see its events, delete it, deploy again",
    "DELETE_FAILED": "a deletion failed: see its events and finish the deletion first",
    "UPDATE_ROLLBACK_FAILED": "an update's rollback failed: run "
    "`aws cloudformation continue-update-rollback --stack-name {name}` first",
}

Say = Callable[[str], None]
Confirm = Callable[[str], bool]


@dataclass
class Options:
    yes: bool = False
    dry_run: bool = False
    allow_data_loss: bool = False
    poll_seconds: float = 5.0
    timeout_seconds: float = 3 * 3600.0  # RDS Multi-AZ plus ElastiCache can take well over an hour to create


def deploy_stack(
    root: Path,
    env: str,
    *,
    sets: list[str] | None = None,
    options: Options | None = None,
    say: Say = print,
    confirm: Confirm | None = None,
    aws: Aws | None = None,
) -> Verdict:
    """Bring the environment's stack up to date; the verdict says what happened (and its exit code).

    ``aws`` is for tests that stub AWS's answers (botocore's Stubber); otherwise the environment's own session.
    """
    opts = options or Options()
    try:
        loaded = load_settings(root, env, sets=sets or [], stack_pending=True)
    except SettingsError as exc:
        return Verdict("refused", f"{exc}\nnothing was changed", 2)
    for warning in loaded.warnings:  # e.g. the pinned Nextcloud is past its end of life: said, never fatal
        say(f"warning: {warning}")
    problems = _missing_settings(loaded)
    if problems:
        return Verdict("refused", f"{loaded.path.name}: " + "; ".join(problems) + "; nothing was changed", 2)
    s = loaded.settings
    try:
        aws = aws or Aws.for_settings(s, dry_run=opts.dry_run, allow_in_dry_run=DRY_RUN_ALLOWED)
        identity = aws.preflight()
        say(f"account {identity.account} ({identity.arn}), region {aws.region}")
        return _Deployment(root, env, sets or [], loaded, aws, opts, say, confirm).run()
    except AwsError as exc:
        return Verdict("refused" if exc.exit_code == 2 else "failed", str(exc), exc.exit_code)
    except botocore.exceptions.ClientError as exc:
        return Verdict("failed", f"{describe_client_error(exc)}", 1)
    except botocore.exceptions.BotoCoreError as exc:
        return Verdict("failed", f"{exc}", 1)


def _missing_settings(loaded: Loaded) -> list[str]:
    s = loaded.settings
    if s.builder != "aws":
        return [f"deploy-stack deploys AWS environments; {s.name!r} is builder = {s.builder!r}"]
    problems = []
    if not s.stack.certificate_arn:
        problems.append("stack.certificate_arn is required: the ACM certificate for site.domain in this region")
    return problems


class _Deployment:
    def __init__(self, root: Path, env: str, sets: list[str], loaded: Loaded, aws: Aws, opts: Options, say: Say,
                 confirm: Confirm | None):
        self.root, self.env, self.sets, self.loaded, self.aws, self.opts = root, env, sets, loaded, aws, opts
        self.say, self.confirm = say, confirm
        self.s = loaded.settings
        self.name = self.s.stack.stack_name(self.s.name)
        self.cfn = aws.client("cloudformation")

    # ---- the steps ------------------------------------------------------------------------------------------
    def run(self) -> Verdict:
        stack = self._describe()
        status = stack["StackStatus"] if stack else None
        if status and status != "REVIEW_IN_PROGRESS":
            if status.endswith(_BUSY):
                return Verdict("refused", f"stack {self.name} is {status}: another operation is running; wait", 3)
            if status in _STUCK:
                return Verdict("refused", f"stack {self.name} is {status}: " + _STUCK[status].format(name=self.name), 3)
            self._record_outputs(stack)  # the live outputs win over an old file: nothing stale is rendered
        exists = status not in (None, "REVIEW_IN_PROGRESS")

        image = self._image()
        busy = self._refresh_running(image)
        if busy:
            return busy
        user_data = self._user_data() if exists else ""
        params = stack_parameters(self.s, image_id=image.image_id if image else "", user_data=user_data)
        self.say(f"stack {self.name}: {'update' if exists else 'create'}")
        self.say(f"  image: {image.image_id} ({image.source})" if image else
                 "  image: none yet, so no group (first deployment: bootstrap-db, build-ami, test-ami, deploy again)")
        self.say("  user data: " + ("rendered from the settings and the stack's outputs" if user_data else
                                    "none yet (set by the next deploy-stack, once the stack's outputs exist)"))

        if not exists and self.opts.dry_run:
            return self._plan_new(params)
        change_set = self._create_change_set(params, "UPDATE" if exists else "CREATE")
        if change_set is None:
            return Verdict("up to date", f"stack {self.name} already matches the template and the settings")
        changes = self._changes(change_set)
        self.say(f"change set {change_set.rsplit('/', 1)[-1]} ({len(changes)} resource changes):")
        for line in render_diff(changes):
            self.say(line)
        risks = data_risks(changes)
        for line in render_risks(risks):
            self.say(line)
        if self.opts.dry_run:
            self._delete_change_set(change_set)
            return Verdict("planned", f"dry run: {len(changes)} changes shown, none executed; change set deleted")
        if risks and not self.opts.allow_data_loss:
            self._delete_change_set(change_set)
            names = ", ".join(c.logical_id for c, _ in risks)
            return Verdict(
                "refused",
                f"the change set would destroy data ({names}); nothing was executed. Change the settings or the "
                "template so these resources are kept, or, with a backup, run again with --allow-data-loss",
                3,
            )
        if not self.opts.yes:
            if self.confirm is None:
                self._delete_change_set(change_set)
                return Verdict("refused", "no terminal to confirm the change set: run with --yes; nothing executed", 2)
            if not self.confirm(f"execute these {len(changes)} changes on {self.name}? [y/N] "):
                self._delete_change_set(change_set)
                return Verdict("cancelled", "nothing was executed; the change set was deleted", 1)
        return self._execute(change_set, changes, exists)

    def _describe(self) -> dict[str, Any] | None:
        try:
            return self.cfn.describe_stacks(StackName=self.name)["Stacks"][0]
        except botocore.exceptions.ClientError as exc:
            if "does not exist" in exc.response.get("Error", {}).get("Message", ""):
                return None
            raise

    def _image(self) -> GroupImage | None:
        group = self.s.autoscaling.group_name
        current = image_the_group_runs(self.aws, group) if group else None
        if current:
            return current
        manifest = build_record.manifest_path(self.root, self.env)
        found = first_tested_image(self.aws, manifest, self.s.name)
        if found is not None:
            found = GroupImage(found.image_id, "", "", f"the tested bake in {manifest.relative_to(self.root)}")
        return found

    def _refresh_running(self, image: GroupImage | None) -> Verdict | None:
        """A refusal while an instance refresh runs on the group (the rollout's, or anyone's)."""
        group = self.s.autoscaling.group_name
        if not image or not image.launch_template_id or not group:
            return None  # no group yet: nothing can be refreshing
        running = active_refresh(self.aws, group)
        if not running:
            return None
        return Verdict(
            "refused",
            f"an instance refresh is running on the group {group} ({running['InstanceRefreshId']}: "
            f"{running['Status']} at {running.get('PercentageComplete', 0)}%): until it ends the group still launches "
            f"{image.image_id}, and the stack's update would pin that under it. Wait for it (`inv status --env "
            f"{self.env}`) or roll it back (`inv rollback --env {self.env}`), then deploy again; nothing was changed",
            3,
        )

    def _user_data(self) -> str:
        """The launch template's user data: exactly render's, once the stack's outputs fill the settings."""
        if not outputs_path(self.root, self.env).is_file():
            return ""
        try:
            loaded = load_settings(self.root, self.env, sets=self.sets)
        except SettingsError as exc:
            raise AwsError(f"{exc}\nnothing was changed") from None
        self.loaded, self.s = loaded, loaded.settings
        return render_user_data(loaded.settings)

    def _plan_new(self, params: dict[str, str]) -> Verdict:
        planned = planned_resources(load_template(), params)
        self.say(f"the stack does not exist; it would be created with {len(planned)} resources:")
        for logical, rtype in planned:
            self.say(f"  + add      {logical:<28} {rtype}")
        return Verdict("planned", f"dry run: stack {self.name} would be created; nothing was sent")

    def _create_change_set(self, params: dict[str, str], kind: str) -> str | None:
        name = "deploy-" + datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        role = {"RoleARN": self.s.stack.service_role_arn} if self.s.stack.service_role_arn else {}
        answer = self.cfn.create_change_set(
            StackName=self.name,
            ChangeSetName=name,
            ChangeSetType=kind,
            TemplateBody=template_body(TEMPLATE),
            Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in sorted(params.items())],
            Capabilities=["CAPABILITY_IAM"],
            Tags=[{"Key": tags.MANAGED, "Value": "true"}, {"Key": tags.ENVIRONMENT, "Value": self.s.name}],
            Description=f"inv deploy-stack --env {self.env}",
            **role,
        )
        arn = answer["Id"]
        self.say(f"creating change set {name} ...")
        try:
            self.cfn.get_waiter("change_set_create_complete").wait(
                ChangeSetName=arn, StackName=self.name, WaiterConfig={"Delay": max(1, int(self.opts.poll_seconds))}
            )
        except botocore.exceptions.WaiterError:
            described = self.cfn.describe_change_set(ChangeSetName=arn, StackName=self.name)
            reason = described.get("StatusReason", "")
            if described.get("Status") == "FAILED" and any(text in reason for text in _NO_CHANGES):
                self._delete_change_set(arn)
                return None
            self._delete_change_set(arn)
            raise AwsError(f"CloudFormation refused the change set: {reason or described.get('Status')}", 1) from None
        return arn

    def _changes(self, change_set: str) -> list[Change]:
        raw: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"ChangeSetName": change_set, "StackName": self.name}
        while True:
            page = self.cfn.describe_change_set(**kwargs)
            raw.extend(page.get("Changes", []))
            if not page.get("NextToken"):
                return parse_changes(raw)
            kwargs["NextToken"] = page["NextToken"]

    def _delete_change_set(self, change_set: str) -> None:
        self.cfn.delete_change_set(ChangeSetName=change_set, StackName=self.name)

    def _execute(self, change_set: str, changes: list[Change], existed: bool) -> Verdict:
        started = datetime.now(UTC)
        seen = {e["EventId"] for e in self._events()}
        self.cfn.execute_change_set(ChangeSetName=change_set, StackName=self.name)
        self.say("executing; CloudFormation's events as they arrive:")
        deadline = time.monotonic() + self.opts.timeout_seconds
        failures: list[dict[str, Any]] = []
        while True:
            fresh = [e for e in reversed(self._events()) if e["EventId"] not in seen]
            for event in fresh:
                seen.add(event["EventId"])
                self.say(_event_line(event))
                if event.get("ResourceStatus", "").endswith("_FAILED"):
                    failures.append(event)
            stack = self._describe()
            status = stack["StackStatus"] if stack else "DELETE_COMPLETE"
            if status in _DONE_OK:
                break
            if status in _DONE_BAD:
                first = failures[0] if failures else None
                where = (
                    f"{first['LogicalResourceId']} ({first.get('ResourceType', '')}): "
                    f"{first.get('ResourceStatusReason', 'no reason given')}"
                    if first else "see the stack's events"
                )
                return Verdict("failed", f"stack {self.name} ended {status}; the first failure: {where}", 1)
            if time.monotonic() > deadline:
                return Verdict("failed", f"stack {self.name} still {status} after {self.opts.timeout_seconds:.0f} s; "
                               "it goes on in CloudFormation: watch it there", 1)
            time.sleep(self.opts.poll_seconds)
        assert stack is not None
        written = self._record_outputs(stack)
        took = (datetime.now(UTC) - started).total_seconds()
        word = "updated" if existed else "created"
        summary = ", ".join(f"{n} {a.lower()}" for a, n in _count(changes).items())
        return Verdict(word, f"stack {self.name} {status} in {took:.0f} s ({summary}); outputs recorded in "
                       f"{written.relative_to(self.root) if written.is_relative_to(self.root) else written}")

    def _events(self) -> list[dict[str, Any]]:
        """The newest events first (the first page is enough between two polls)."""
        return self.cfn.describe_stack_events(StackName=self.name).get("StackEvents", [])

    def _record_outputs(self, stack: dict[str, Any]) -> Path:
        outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", []) or []}
        path = outputs_path(self.root, self.env)
        if self.opts.dry_run:
            return path
        text = outputs_document(self.name, stack["StackId"], outputs, datetime.now(UTC).isoformat(timespec="seconds"))
        write_outputs(path.parent, {STACK_OUTPUTS: text})
        return path


def _event_line(event: dict[str, Any]) -> str:
    when = event.get("Timestamp")
    clock = when.strftime("%H:%M:%S") if hasattr(when, "strftime") else str(when or "")
    reason = event.get("ResourceStatusReason") or ""
    line = f"  {clock}  {event.get('ResourceStatus', ''):<36} {event.get('LogicalResourceId', ''):<28} "
    line += event.get("ResourceType", "")
    return line + (f"  {reason}" if reason else "")


def _count(changes: list[Change]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for c in changes:
        counts[c.action] = counts.get(c.action, 0) + 1
    return counts
