"""Cluster-wide maintenance for an upgrade: a fixed 503 rule in front of every other rule on the load balancer.

Nextcloud's own maintenance mode is a per-node config value (and the nodes' config is read-only by design), so it
cannot switch a cluster at once. The load balancer can: while the rule exists no request reaches any node, old or
new; health checks still do (they go to the targets directly), so the new fleet is seen healthy before the rule is
removed. The rule is tagged (managed, environment, purpose=maintenance, the upgrade's run id), so a resumed upgrade
finds it again, from any machine.
"""

from __future__ import annotations

from html import escape
from typing import Any

import botocore.exceptions

from infra.aws.session import Aws
from infra.rollout.outcome import Refused
from render import tags as T


def _is_ours(tags: dict[str, str], environment: str) -> bool:
    return (tags.get(T.MANAGED) == "true" and tags.get(T.ENVIRONMENT) == environment
            and tags.get(T.PURPOSE) == T.PURPOSE_MAINTENANCE)


def find_rule(aws: Aws, listener_arn: str, environment: str) -> str | None:
    """This environment's maintenance rule on the listener, if one is there."""
    elbv2 = aws.client("elbv2")
    rules = [r["RuleArn"] for r in elbv2.describe_rules(ListenerArn=listener_arn)["Rules"] if not r.get("IsDefault")]
    for start in range(0, len(rules), 20):
        for desc in elbv2.describe_tags(ResourceArns=rules[start:start + 20])["TagDescriptions"]:
            if _is_ours({t["Key"]: t["Value"] for t in desc.get("Tags", [])}, environment):
                return desc["ResourceArn"]
    return None


def switch_on(aws: Aws, settings: Any, run_id: str, message: str) -> str:
    """Every request answered 503 with ``message``; the rule's ARN (an existing one is reused)."""
    listener = settings.upgrade.listener_arn
    existing = find_rule(aws, listener, settings.name)
    if existing:
        return existing
    body = (f"<!doctype html><title>Maintenance</title><h1>{escape(settings.site.domain)} is being upgraded</h1>"
            f"<p>{escape(message)}</p>")[:1024]
    try:
        answer = aws.client("elbv2").create_rule(
            ListenerArn=listener, Priority=settings.upgrade.maintenance_rule_priority,
            Conditions=[{"Field": "path-pattern", "PathPatternConfig": {"Values": ["/*"]}}],
            Actions=[{"Type": "fixed-response", "FixedResponseConfig": {
                "StatusCode": "503", "ContentType": "text/html", "MessageBody": body}}],
            Tags=[{"Key": T.MANAGED, "Value": "true"}, {"Key": T.ENVIRONMENT, "Value": settings.name},
                  {"Key": T.PURPOSE, "Value": T.PURPOSE_MAINTENANCE}, {"Key": T.RUN, "Value": run_id}],
        )
    except botocore.exceptions.ClientError as exc:
        if exc.response["Error"]["Code"] == "PriorityInUse":
            raise Refused(f"upgrade.maintenance_rule_priority {settings.upgrade.maintenance_rule_priority} is taken on "
                          "the listener: set it to a free priority lower than every rule that forwards to the fleet; "
                          "the cluster was not put in maintenance") from None
        raise
    return answer["Rules"][0]["RuleArn"]


def switch_off(aws: Aws, settings: Any, rule_arn: str | None) -> bool:
    """Remove the maintenance rule (the one recorded, or the one found by its tags); True if one was removed."""
    arn = rule_arn or find_rule(aws, settings.upgrade.listener_arn, settings.name)
    if not arn:
        return False
    try:
        aws.client("elbv2").delete_rule(RuleArn=arn)
    except botocore.exceptions.ClientError as exc:
        if exc.response["Error"]["Code"] != "RuleNotFound":
            raise
        return False
    return True
