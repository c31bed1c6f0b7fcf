"""`inv status`: what the environment runs and what is happening to it, read-only (the dry-run guard is on).

Launch template versions (default, latest, the group's) with their AMI, Nextcloud version and build time; the
instances with their AMI, launch template version, lifecycle state, health (the group's liveness check) and target
health (the load balancer's readiness check); the newest refresh with its progress; an unfinished upgrade; the AMIs
prune-amis would remove.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from infra.aws.session import Aws
from infra.rollout import records, refresh
from infra.rollout.amis import describe_amis
from infra.rollout.group import describe_group, instances_of, launch_of
from infra.rollout.outcome import OK
from infra.rollout.prune import plan_prune
from infra.rollout.report import Reporter
from infra.rollout.rollout import require_aws_environment
from infra.verdict import Verdict


def _iso(value: Any) -> Any:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if isinstance(value, dt.datetime) else value


def _target_health(aws: Aws, group: dict[str, Any]) -> dict[str, list[str]]:
    health: dict[str, list[str]] = {}
    for arn in group.get("TargetGroupARNs", []):
        tg = arn.rsplit("/", 2)[-2] if arn.count("/") >= 2 else arn
        for desc in aws.client("elbv2").describe_target_health(TargetGroupArn=arn)["TargetHealthDescriptions"]:
            state = desc["TargetHealth"]["State"]
            reason = desc["TargetHealth"].get("Reason")
            health.setdefault(desc["Target"]["Id"], []).append(f"{tg}: {state}" + (f" ({reason})" if reason else ""))
    return health


def gather(aws: Aws, settings: Any) -> dict[str, Any]:
    """The status document (what --json prints)."""
    group = describe_group(aws, settings)
    launch = launch_of(aws, group)
    ec2 = aws.client("ec2")
    versions = {}
    for label, number in (("default", launch.default_version), ("latest", launch.latest_version),
                          ("group", launch.version)):
        data = ec2.describe_launch_template_versions(LaunchTemplateId=launch.template_id, Versions=[str(number)])
        versions[label] = {"version": number, "image_id": data["LaunchTemplateVersions"][0]["LaunchTemplateData"].get(
            "ImageId", "")}
    instances = instances_of(aws, group)
    amis = describe_amis(aws, [v["image_id"] for v in versions.values()] + [i["ImageId"] for i in instances])

    def ami_doc(image_id: str) -> dict[str, Any]:
        ami = amis.get(image_id)
        return {"image_id": image_id, "nextcloud_version": ami.nextcloud_version if ami else None,
                "build_time": ami.build_time if ami else None, "test_verdict": ami.test_verdict if ami else None,
                "exists": ami is not None}

    health = _target_health(aws, group)
    newest = next(iter(refresh.refreshes(aws, launch.group)), None)
    upgrade = records.read(aws, records.upgrade_name(settings))
    prune_plan = plan_prune(aws, settings, settings.ami.retention)
    return {
        "environment": settings.name, "region": aws.region,
        "group": {"name": launch.group, "desired": group["DesiredCapacity"], "min": group["MinSize"],
                  "max": group["MaxSize"], "launch_template": launch.template_name,
                  "launch_template_id": launch.template_id, "version": launch.version_spec},
        "launch_template_versions": {k: {**v, **ami_doc(v["image_id"])} for k, v in versions.items()},
        "instances": [
            {"instance_id": i["InstanceId"], "image_id": i["ImageId"],
             "nextcloud_version": ami_doc(i["ImageId"])["nextcloud_version"],
             "launch_template_version": (i.get("LaunchTemplate") or {}).get("Version"),
             "lifecycle": i["LifecycleState"], "health": i["HealthStatus"],
             "protected_from_scale_in": bool(i.get("ProtectedFromScaleIn")),
             "target_health": health.get(i["InstanceId"], [])}
            for i in instances
        ],
        "refresh": None if newest is None else {
            "id": newest["InstanceRefreshId"], "status": newest["Status"],
            "percent_complete": newest.get("PercentageComplete"),
            "instances_to_update": newest.get("InstancesToUpdate"),
            "status_reason": newest.get("StatusReason", ""), "desired_version": refresh.desired_version(newest),
            "started": _iso(newest.get("StartTime")), "ended": _iso(newest.get("EndTime")),
            "rollback_reason": (newest.get("RollbackDetails") or {}).get("RollbackReason"),
        },
        "upgrade": upgrade,
        "release": records.read(aws, records.release_name(settings)),
        "prune_candidates": [{"image_id": a.id, "region": a.region, "nextcloud_version": a.nextcloud_version,
                              "build_time": a.build_time} for a in prune_plan.delete],
    }


def render(doc: dict[str, Any], report: Reporter) -> None:
    g = doc["group"]
    report.info(f"{doc['environment']} ({doc['region']}): group {g['name']} desired {g['desired']} "
                f"(min {g['min']}, max {g['max']}), launch template {g['launch_template']} version {g['version']}")
    report.table("launch template versions", ["", "version", "AMI", "Nextcloud", "built", "test-ami"], [
        [label, str(v["version"]), v["image_id"] + ("" if v["exists"] else " (deregistered)"),
         v["nextcloud_version"] or "?", v["build_time"] or "?", v["test_verdict"] or "-"]
        for label, v in doc["launch_template_versions"].items()
    ])
    report.table("instances", ["instance", "AMI", "Nextcloud", "LT version", "lifecycle", "health", "target"], [
        [i["instance_id"], i["image_id"], i["nextcloud_version"] or "?", str(i["launch_template_version"]),
         i["lifecycle"] + (" (protected)" if i["protected_from_scale_in"] else ""), i["health"],
         "; ".join(i["target_health"]) or "-"]
        for i in doc["instances"]
    ])
    r = doc["refresh"]
    if r:
        line = (f"refresh {r['id']}: {r['status']} {r['percent_complete']}% ({r['instances_to_update']} to update), "
                f"desired version {r['desired_version']}, started {r['started']}")
        report.info(line + (f", ended {r['ended']}" if r["ended"] else ""))
        if r["status_reason"]:
            report.info(f"  reason: {r['status_reason']}")
    else:
        report.info("refresh: none in the last six weeks")
    u = doc["upgrade"]
    if u and u.get("step") not in ("done", "aborted"):
        report.info(f"upgrade: {u.get('from_version')} -> {u.get('to_version')} unfinished at step {u.get('step')}: "
                    f"resume with `inv upgrade --env {doc['environment']}`")
    elif u:
        report.info(f"upgrade: last one {u.get('from_version')} -> {u.get('to_version')} {u.get('step')}")
    candidates = doc["prune_candidates"]
    report.info("prune-amis would remove: " + (", ".join(f"{c['image_id']} ({c['region']})" for c in candidates)
                                               if candidates else "nothing"))


def status(settings: Any, *, as_json: bool, report: Reporter) -> Verdict:
    require_aws_environment(settings, "status")
    aws = Aws.for_settings(settings, dry_run=True)  # status only reads: the guard makes sure of it
    aws.preflight()
    doc = gather(aws, settings)
    if as_json:
        report.console.print_json(json.dumps(doc, default=_iso))
    else:
        render(doc, report)
    r = doc["refresh"]
    state = f"refresh {r['status']}" if r else "no refresh"
    return Verdict("status", f"{doc['group']['name']} launches version {doc['group']['version']}; {state}", OK)
