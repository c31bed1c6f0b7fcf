"""Does the repository's IAM policy allow every AWS call the code made? (infra/iam/*.json)

Calls arrive as (boto3 service name, operation) from infra.aws.session's observer, and as (signing name,
action) for other programs (Packer), read from the emulator's request recording. Each becomes the IAM action
AWS authorises it as (``ec2:DescribeImages``); most are prefix:Operation, the exceptions are listed below from
the Service Authorization Reference. An action counts as allowed when an ``Allow`` statement's Action matches
it (wildcards as IAM evaluates them) and no ``Deny`` statement names it unconditionally.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
POLICY_DIR = ROOT / "infra" / "iam"

# boto3 service name (or SigV4 signing name) -> IAM action prefix, where they differ.
PREFIX = {"elbv2": "elasticloadbalancing", "monitoring": "cloudwatch", "cloudwatch": "cloudwatch"}
# Operations AWS authorises under another action name.
ACTION = {
    "s3:HeadBucket": "s3:ListBucket",
    "s3:ListObjectsV2": "s3:ListBucket",
    "s3:ListObjects": "s3:ListBucket",
    "s3:HeadObject": "s3:GetObject",
    "s3:ListObjectVersions": "s3:ListBucketVersions",
    "s3:DeleteObjects": "s3:DeleteObject",
    "s3:GetBucketEncryption": "s3:GetEncryptionConfiguration",
    "s3:PutBucketEncryption": "s3:PutEncryptionConfiguration",
    "s3:GetPublicAccessBlock": "s3:GetBucketPublicAccessBlock",
    "s3:PutPublicAccessBlock": "s3:PutBucketPublicAccessBlock",
}


def iam_action(service: str, operation: str) -> str:
    action = f"{PREFIX.get(service, service)}:{operation}"
    return ACTION.get(action, action)


def load_statements(policy_dir: Path = POLICY_DIR) -> list[dict]:
    statements = []
    for path in sorted(policy_dir.glob("*.json")):
        doc = json.loads(path.read_text())
        for st in doc.get("Statement", []):
            if "Principal" in st:  # a trust policy (github-oidc-trust.json) grants no action to the role itself
                continue
            statements.append({**st, "_file": path.name})
    return statements


def _actions(statement: dict) -> list[str]:
    value = statement.get("Action", [])
    return [value] if isinstance(value, str) else list(value)


def allowed(action: str, statements: list[dict]) -> bool:
    def matches(st: dict) -> bool:
        return any(fnmatch.fnmatchcase(action.lower(), pattern.lower()) for pattern in _actions(st))

    if any(st.get("Effect") == "Deny" and "Condition" not in st and matches(st) for st in statements):
        return False
    return any(st.get("Effect") == "Allow" and matches(st) for st in statements)


def missing(calls: Iterable[tuple[str, str]], statements: list[dict]) -> list[str]:
    return sorted({a for a in (iam_action(s, o) for s, o in calls) if not allowed(a, statements)})


def assert_allowed(calls: Iterable[tuple[str, str]], foreign: Iterable[tuple[str, str]] = ()) -> None:
    """Fail when a call the code (or Packer) made is not allowed by the policies in infra/iam/."""
    statements = load_statements()
    gaps = missing([*calls, *foreign], statements)
    assert not gaps, (
        f"the IAM policies in infra/iam/ do not allow {', '.join(gaps)}, which the code called; add them to the "
        "policy of the task that makes the call (least privilege: name the resources where IAM can)"
    )
