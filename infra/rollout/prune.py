"""`inv prune-amis`: deregister this environment's old AMIs in every region and delete their snapshots.

Never deleted (each found anew on every run, in every region the environment uses):
- an AMI any launch template version a group may launch refers to: every group's own version, every template's
  $Default and $Latest, the versions pinned by the refreshes AWS still lists (running and recent, six weeks);
- the rollback target and the current release (the release record) and an unfinished upgrade's images;
- an AMI an instance runs (in the group or not);
- the newest N builds (``--keep``, default ``ami.retention``);
- anything of another environment, anything without this project's tags, and an AMI whose bake has not
  completed (PURPOSE=bake still on it: a bake in progress, or one `inv sweep` removes by its age).
A build is kept or deleted as a whole: its copies in every region go together.

DeregisterImage keeps the snapshots (and moto ignores DeleteAssociatedSnapshots), so they are deleted explicitly,
and only those that carry this project's and environment's tags and no remaining image uses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import botocore.exceptions

from infra.aws.session import Aws
from infra.rollout import records, refresh
from infra.rollout.amis import Ami, completed, project_amis
from infra.rollout.outcome import OK, REFUSED
from infra.rollout.report import Reporter
from infra.rollout.rollout import require_aws_environment
from infra.verdict import Verdict
from render import tags as T


@dataclass
class PrunePlan:
    keep: list[tuple[Ami, str]] = field(default_factory=list)
    delete: list[Ami] = field(default_factory=list)


def launch_specs(config: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """Every launch template a group (or a refresh's DesiredConfiguration, the same shape) may launch from, with
    where it is named: its LaunchTemplate, or its MixedInstancesPolicy's template and each override's own template
    (AWS launches that instance type from the override's template)."""
    specs = [(config["LaunchTemplate"], "")] if config.get("LaunchTemplate") else []
    mixed = (config.get("MixedInstancesPolicy") or {}).get("LaunchTemplate") or {}
    if mixed.get("LaunchTemplateSpecification"):
        specs.append((mixed["LaunchTemplateSpecification"], " (mixed instances policy)"))
    for override in mixed.get("Overrides") or []:
        if override.get("LaunchTemplateSpecification"):
            what = override.get("InstanceType") or "an instance requirement"
            specs.append((override["LaunchTemplateSpecification"], f" (mixed instances override for {what})"))
    return specs


def in_use(aws: Aws, settings: Any, region: str, candidates: list[Ami]) -> dict[str, str]:
    """Image id -> why it must stay, for everything in ``region`` that may launch or runs an image."""
    reasons: dict[str, str] = {}
    ec2, asg = aws.client("ec2", region), aws.client("autoscaling", region)
    specs: dict[tuple[str, str], str] = {}  # (template id, version as named) -> who names it
    ids_by_name: dict[str, str] = {}
    for page in ec2.get_paginator("describe_launch_templates").paginate():
        for lt in page["LaunchTemplates"]:
            ids_by_name[lt["LaunchTemplateName"]] = lt["LaunchTemplateId"]
            specs.setdefault((lt["LaunchTemplateId"], "$Default"), f"{lt['LaunchTemplateName']} $Default")
            specs.setdefault((lt["LaunchTemplateId"], "$Latest"), f"{lt['LaunchTemplateName']} $Latest")

    def named(spec: dict[str, Any], who: str) -> None:
        template_id = spec.get("LaunchTemplateId") or ids_by_name.get(spec.get("LaunchTemplateName") or "")
        if template_id:  # AWS launches $Default when a specification names no version
            specs.setdefault((template_id, str(spec.get("Version") or "$Default")), who)

    for page in asg.get_paginator("describe_auto_scaling_groups").paginate():
        for group in page["AutoScalingGroups"]:
            name = group["AutoScalingGroupName"]
            for spec, where in launch_specs(group):
                named(spec, f"group {name}'s version{where}")
            for r in refresh.refreshes(aws, name, region=region):
                state = "running" if r["Status"] in refresh.ACTIVE else "recent"
                for spec, where in launch_specs(r.get("DesiredConfiguration") or {}):
                    named(spec, f"pinned by {state} refresh {r['InstanceRefreshId']}{where}")
    for (template_id, version), who in specs.items():
        try:
            found = ec2.describe_launch_template_versions(LaunchTemplateId=template_id, Versions=[version])
        except botocore.exceptions.ClientError:
            continue  # a version that no longer exists launches nothing
        for v in found["LaunchTemplateVersions"]:
            if v["LaunchTemplateData"].get("ImageId"):
                reasons.setdefault(v["LaunchTemplateData"]["ImageId"],
                                   f"launch template version {v['VersionNumber']}: {who}")
    ids = [a.id for a in candidates]
    if ids:
        for page in ec2.get_paginator("describe_instances").paginate(Filters=[
            {"Name": "image-id", "Values": ids},
            {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped", "shutting-down"]},
        ]):
            for reservation in page["Reservations"]:
                for inst in reservation["Instances"]:
                    reasons.setdefault(inst["ImageId"], f"instance {inst['InstanceId']} runs it")
    if region == settings.region:
        release = records.read(aws, records.release_name(settings)) or {}
        if release.get("ami"):
            reasons.setdefault(release["ami"], "the current release (release record)")
        if (release.get("previous") or {}).get("ami"):
            reasons.setdefault(release["previous"]["ami"], "the rollback target (release record)")
        upgrade = records.read(aws, records.upgrade_name(settings)) or {}
        if upgrade.get("step") not in (None, "done", "aborted"):
            for key in ("ami", "from_ami"):
                if upgrade.get(key):
                    reasons.setdefault(upgrade[key], "an unfinished upgrade")
    return reasons


def _build_key(ami: Ami) -> tuple[str, str]:
    fingerprint, built = ami.fingerprint, ami.tags.get(T.BUILD_TIME)
    return (fingerprint, built) if fingerprint and built else (ami.id, "")


def plan_prune(aws: Aws, settings: Any, keep: int) -> PrunePlan:
    regions = list(dict.fromkeys([settings.region, *settings.ami.regions]))
    # An AMI still marked PURPOSE=bake is a bake in progress or one that died: sweep's, by its age, never prune's.
    amis = {region: completed(project_amis(aws, settings.name, region)) for region in regions}
    reasons: dict[tuple[str, str], str] = {}
    for region, found in amis.items():
        for image, why in in_use(aws, settings, region, found).items():
            reasons[(region, image)] = why
    builds: dict[tuple[str, str], list[Ami]] = {}
    for found in amis.values():
        for ami in found:
            builds.setdefault(_build_key(ami), []).append(ami)
    order = sorted(builds, key=lambda k: max(a.build_time for a in builds[k]), reverse=True)
    plan = PrunePlan()
    for rank, key in enumerate(order):
        copies = builds[key]
        used = next((f"{reasons[(a.region, a.id)]} in {a.region}" for a in copies if (a.region, a.id) in reasons), None)
        for ami in copies:
            own = reasons.get((ami.region, ami.id))
            if own:
                plan.keep.append((ami, own))
            elif used:
                plan.keep.append((ami, f"a copy of a build in use ({used})"))
            elif rank < keep:
                plan.keep.append((ami, f"one of the newest {keep} builds"))
            else:
                plan.delete.append(ami)
    return plan


def _snapshot_tags(aws: Aws, region: str, snapshot: str) -> dict[str, str] | None:
    try:
        found = aws.client("ec2", region).describe_snapshots(SnapshotIds=[snapshot])["Snapshots"]
    except botocore.exceptions.ClientError:
        return None
    return {t["Key"]: t["Value"] for t in found[0].get("Tags", [])} if found else None


def _still_referenced(aws: Aws, region: str) -> set[str]:
    used = set()
    for page in aws.client("ec2", region).get_paginator("describe_images").paginate(Owners=["self"]):
        for image in page["Images"]:
            for mapping in image.get("BlockDeviceMappings", []):
                if (mapping.get("Ebs") or {}).get("SnapshotId"):
                    used.add(mapping["Ebs"]["SnapshotId"])
    return used


def execute(aws: Aws, settings: Any, plan: PrunePlan, report: Reporter) -> tuple[int, int, list[str]]:
    """Deregister the plan's AMIs, then delete their snapshots that are ours and unused; (amis, snapshots, kept)."""
    deregistered, deleted, kept = 0, 0, []
    for ami in plan.delete:
        aws.client("ec2", ami.region).deregister_image(ImageId=ami.id)
        deregistered += 1
        report.info(f"  deregistered {ami.id} in {ami.region} ({ami.name or ami.describe()})")
    for region in sorted({a.region for a in plan.delete}):
        referenced = _still_referenced(aws, region)
        for ami in (a for a in plan.delete if a.region == region):
            for snap in ami.snapshots:
                tags = _snapshot_tags(aws, region, snap)
                if tags is None:
                    continue
                if tags.get(T.MANAGED) != "true" or tags.get(T.ENVIRONMENT) != settings.name:
                    kept.append(f"{snap} in {region} (not tagged by this project for {settings.name})")
                elif snap in referenced:
                    kept.append(f"{snap} in {region} (another image uses it)")
                else:
                    aws.client("ec2", region).delete_snapshot(SnapshotId=snap)
                    deleted += 1
                    report.info(f"  deleted snapshot {snap} of {ami.id} in {region}")
    return deregistered, deleted, kept


def prune(settings: Any, *, keep: int | None, yes: bool, dry_run: bool, report: Reporter,
          confirm: Callable[[str], bool] | None = None) -> Verdict:
    """Plan, and delete what the plan deletes: ``yes`` (--yes) without asking, else when ``confirm`` says yes;
    without either (no terminal to ask on) or in a dry run, the plan is the result."""
    require_aws_environment(settings, "prune-amis")
    keep = settings.ami.retention if keep is None else keep
    if keep < 1:
        return Verdict("refused", "--keep must be at least 1 (the image the group runs is kept anyway); nothing was "
                                  "changed", REFUSED)
    may_delete = not dry_run and (yes or confirm is not None)
    aws = Aws.for_settings(settings, dry_run=not may_delete)  # a plan cannot delete anything, even by mistake
    aws.preflight()
    plan = plan_prune(aws, settings, keep)
    rows = [[a.id, a.region, a.nextcloud_version or "?", a.build_time, f"keep: {why}"] for a, why in plan.keep]
    rows += [[a.id, a.region, a.nextcloud_version or "?", a.build_time,
              f"delete (+ {len(a.snapshots)} snapshot(s))"] for a in plan.delete]
    report.table(f"prune-amis plan for {settings.name} (keep the newest {keep} builds)",
                 ["AMI", "region", "Nextcloud", "built", "decision"], rows)
    if not plan.delete:
        return Verdict("nothing to prune", f"{len(plan.keep)} AMI(s) kept, none to delete; nothing was changed", OK)
    if not may_delete:
        return Verdict("planned", f"would deregister {len(plan.delete)} AMI(s) and delete their snapshots; pass --yes "
                                  "to do it; nothing was changed", OK)
    if not yes and not (confirm and confirm(f"deregister {len(plan.delete)} AMI(s) and delete their snapshots?")):
        return Verdict("not confirmed", "nothing was changed", REFUSED)
    amis, snaps, kept = execute(aws, settings, plan, report)
    for line in kept:
        report.info(f"  kept snapshot {line}")
    return Verdict("pruned", f"deregistered {amis} AMI(s) and deleted {snaps} snapshot(s); kept {len(plan.keep)} "
                             "AMI(s)" + (f" and {len(kept)} snapshot(s)" if kept else ""), OK)
