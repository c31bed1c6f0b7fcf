"""Every IAM policy of the project through three scanners — parliament (with its community auditors), cloudsplaining
and checkov — with no HIGH finding and every other finding either fixed or listed, with its reason, in ONE allowlist
(infra/iam/scanner-allowlist.toml). The test fails on a finding the allowlist does not name and on an allowlist entry
that no longer matches anything (a fixed finding must leave the list too).

Scanned: every identity policy under infra/iam/ (the operator roles, the instance roles, the stack roles' permissions
boundary), the CloudFormation service role (infra/stack/service-role.json) and the inline policies of the stack's
roles (infra/stack/nextcloud.yaml, their intrinsic functions replaced by ARNs of the shape they resolve to). The
GitHub OIDC trust policy is a trust policy, not a permission: its own test checks it.

The scanners live in their own virtualenvs (.venv/tools/<tool>, installed by .ci/setup): parliament next to
cloudsplaining would downgrade botocore under checkov, and both pin other versions than the project does.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cfnlint.data.schemas
import pytest
import yaml

from infra.stack.template import load_template

ROOT = Path(__file__).resolve().parents[2]
IAM = ROOT / "infra" / "iam"
ALLOWLIST = IAM / "scanner-allowlist.toml"
TRUST = IAM / "github-oidc-trust.json"
SERVICE_ROLE = ROOT / "infra" / "stack" / "service-role.json"
BOUNDARY = IAM / "boundary" / "nextcloud-stack-boundary.json"
SCANNERS = ("parliament", "cloudsplaining", "checkov")
# cloudsplaining's "high priority" risks; parliament and checkov say their own severity.
CLOUDSPLAINING_HIGH = {"PrivilegeEscalation", "ResourceExposure", "DataExfiltration"}
# parliament's privilege-escalation auditor flags iam:PassRole next to ec2:RunInstances whatever their conditions
# and resources. It is the only HIGH the allowlist may carry, and only where test_passrole_is_scoped_where_parliament
# _cannot_see_it proves what parliament cannot: which roles can be passed, to which service.
CONDITION_BLIND_HIGH = ("parliament", "PRIVILEGE_ESCALATION", "CreateEC2WithExistingIP")
# The tests that run the three scanners (about 30 s on 2 cores, most of it their interpreters starting and checkov
# loading its checks): in the full suite (.venv/bin/pytest, CI), not in the quick one (-m "not slow").
SCANNERS_RUN = pytest.mark.slow


def tool(name: str, program: str) -> Path:
    """A scanner from its tool venv: the worktree's own, or that of the venv running the tests."""
    for venv in (ROOT / ".venv" / "tools" / name, Path(sys.prefix) / "tools" / name):
        if (venv / "bin" / program).exists():
            return venv / "bin" / program
    pytest.fail(f".venv/tools/{name} is not installed: run `bash .ci/setup` (it installs the pin from pyproject.toml)")


# ---- what is scanned ---------------------------------------------------------------------------------------------
def identity_policies() -> list[Path]:
    """The repository's permission policies: every JSON under infra/iam/ but the trust policy, and the service role."""
    found = sorted(p for p in IAM.rglob("*.json") if p != TRUST)
    return [*found, SERVICE_ROLE]


SAMPLE = {  # the stack's parameters and pseudo parameters, as one environment would resolve them
    "AWS::Partition": "aws", "AWS::Region": "eu-central-1", "AWS::AccountId": "123456789012",
    "AWS::StackName": "nextcloud-staging", "EnvironmentName": "staging", "GroupName": "nextcloud-staging",
}
ARN_OF = {  # resource type -> the ARN (Ref or GetAtt ...Arn) CloudFormation hands a policy, {name} = logical id
    "AWS::SecretsManager::Secret":
        "arn:aws:secretsmanager:eu-central-1:123456789012:secret:nextcloud/staging/{name}-AbCdEf",
    "AWS::S3::Bucket": "arn:aws:s3:::nextcloud-staging-{name}-0123456789ab",
    "AWS::KMS::Key": "arn:aws:kms:eu-central-1:123456789012:key/0123abcd-0123-4567-89ab-0123456789ab",
    "AWS::Logs::LogGroup": "arn:aws:logs:eu-central-1:123456789012:log-group:/nextcloud/staging-{name}:*",
    "AWS::EC2::VPC": "vpc-0123456789abcdef0",
    "AWS::IAM::Role": "arn:aws:iam::123456789012:role/nextcloud-staging-{name}-0123456789AB",
}
ATTRIBUTE = {"Database.MasterUserSecret.SecretArn":
             "arn:aws:secretsmanager:eu-central-1:123456789012:secret:rds!db-0123abcd-0123-4567-89ab-0123456789ab-AbCdEf"}


def _ref(name: str, resources: dict[str, Any]) -> str:
    if name in SAMPLE:
        return SAMPLE[name]
    rtype = resources[name]["Type"]
    return ARN_OF[rtype].format(name=name.lower())


def _getatt(path: str, resources: dict[str, Any]) -> str:
    if path in ATTRIBUTE:
        return ATTRIBUTE[path]
    name, attribute = path.split(".", 1)
    assert attribute == "Arn", f"no sample value for {path}: add it to ATTRIBUTE"
    return _ref(name, resources)


def concrete(value: Any, resources: dict[str, Any], conditions: dict[str, bool]) -> Any:
    """A policy document with its intrinsic functions resolved to values of the shape CloudFormation gives them."""
    if isinstance(value, list):
        return [v for v in (concrete(v, resources, conditions) for v in value) if v is not _NO_VALUE]
    if not isinstance(value, dict):
        return value
    if set(value) == {"Ref"}:
        return _NO_VALUE if value["Ref"] == "AWS::NoValue" else _ref(value["Ref"], resources)
    if set(value) == {"Fn::GetAtt"}:
        got = value["Fn::GetAtt"]
        return _getatt(got if isinstance(got, str) else ".".join(got), resources)
    if set(value) == {"Fn::Sub"}:
        def sub(m: re.Match[str]) -> str:
            key = m.group(1)
            return _getatt(key, resources) if "." in key else _ref(key, resources)
        return re.sub(r"\$\{([\w:.]+)\}", sub, value["Fn::Sub"])
    if set(value) == {"Fn::If"}:
        name, then, otherwise = value["Fn::If"]
        return concrete(then if conditions[name] else otherwise, resources, conditions)
    out = {}
    for k, v in value.items():
        resolved = concrete(v, resources, conditions)
        if resolved is not _NO_VALUE:
            out[k] = resolved
    return out


_NO_VALUE = object()


def template_policies(tmp: Path) -> list[tuple[Path, str]]:
    """The inline policies of the stack's roles, each written to tmp as a plain policy document, resolved once with
    every condition true (interface endpoints on) and once false: (file, how a finding names it)."""
    template = load_template()
    resources = template["Resources"]
    written = []
    for mode in (True, False):
        conditions = dict.fromkeys(template.get("Conditions", {}), mode)
        for logical, resource in resources.items():
            if resource["Type"] != "AWS::IAM::Role":
                continue
            for policy in resource["Properties"].get("Policies", []):
                label = f"infra/stack/nextcloud.yaml#{logical}/{policy['PolicyName']}"
                doc = concrete(policy["PolicyDocument"], resources, conditions)
                path = tmp / f"{logical}-{policy['PolicyName']}-{'on' if mode else 'off'}.json"
                path.write_text(json.dumps(doc, indent=2))
                written.append((path, label))
    return written


# ---- findings ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Finding:
    scanner: str
    file: str
    id: str
    detail: str
    high: bool

    def __str__(self) -> str:
        return f"{self.scanner} {self.id}{' (HIGH)' if self.high else ''} in {self.file}: {self.detail[:300]}"


def run_parliament(files: dict[Path, str]) -> list[Finding]:
    proc = subprocess.run(
        [str(tool("parliament", "parliament")), "--files", ",".join(map(str, files)), "--json",
         "--include-community-auditors", "--minimum_severity", "LOW"],
        capture_output=True, text=True, stdin=subprocess.DEVNULL,
    )
    findings = []
    for line in proc.stdout.splitlines():
        if not line.strip():
            continue
        raw = json.loads(line)
        location = raw.get("location") or {}
        detail = raw.get("detail")
        if raw["issue"] == "PRIVILEGE_ESCALATION":
            detail = location.get("type", "")
        elif raw["issue"] in ("PERMISSIONS_MANAGEMENT_ACTIONS", "CREDENTIALS_EXPOSURE"):
            detail = ", ".join(sorted(location.get("actions") or []))
        elif not isinstance(detail, str):
            detail = json.dumps(detail, sort_keys=True)
        findings.append(Finding("parliament", files[Path(location["filepath"])], raw["issue"], detail,
                                raw["severity"] in ("HIGH", "CRITICAL")))
    assert proc.returncode in (0, 1) and (proc.returncode == 0 or findings), proc.stdout + proc.stderr
    return findings


CLOUDSPLAINING = """
import json, sys
from cloudsplaining.command.scan_policy_file import scan_policy
out = {}
for path in sys.argv[1:]:
    results = scan_policy(json.load(open(path)))
    out[path] = {k: sorted(v.get("findings") or []) for k, v in results.items() if isinstance(v, dict)}
print(json.dumps(out))
"""


def run_cloudsplaining(files: dict[Path, str]) -> list[Finding]:
    python = tool("checkov", "python")
    proc = subprocess.run([str(python), "-c", CLOUDSPLAINING, *map(str, files)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    findings = []
    for path, categories in json.loads(proc.stdout).items():
        for category, actions in categories.items():
            if actions:
                findings.append(Finding("cloudsplaining", files[Path(path)], category, ", ".join(actions),
                                        category in CLOUDSPLAINING_HIGH))
    return findings


def run_checkov(files: dict[Path, str], tmp: Path) -> list[Finding]:
    """checkov's IAM checks read policies in templates: each policy becomes one managed policy in one template."""
    resources, names = {}, {}
    for n, path in enumerate(files):
        logical = f"Policy{n}"
        resources[logical] = {"Type": "AWS::IAM::ManagedPolicy",
                              "Properties": {"PolicyDocument": json.loads(path.read_text())}}
        names[logical] = files[path]
    template = tmp / "checkov" / "policies.yaml"
    template.parent.mkdir()
    template.write_text(yaml.safe_dump({"AWSTemplateFormatVersion": "2010-09-09", "Resources": resources}))
    proc = subprocess.run(
        [str(tool("checkov", "checkov")), "--framework", "cloudformation", "--file", str(template), "--compact",
         "--quiet", "--skip-download", "--output", "json"],
        capture_output=True, text=True, env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
    )
    report = json.loads(proc.stdout or "{}")
    report = report[0] if isinstance(report, list) else report
    assert not report.get("summary", {}).get("parsing_errors"), proc.stdout[-2000:]
    findings = []
    for check in report.get("results", {}).get("failed_checks", []):
        logical = check["resource"].split(".")[-1]
        # checkov's own severities come from its vendor's API (offline here): an IAM check it fails is HIGH unless
        # the allowlist says why it is not.
        findings.append(Finding("checkov", names[logical], check["check_id"], check["check_name"], False))
    return findings


@pytest.fixture(scope="module")
def findings(tmp_path_factory: pytest.TempPathFactory) -> list[Finding]:
    tmp = tmp_path_factory.mktemp("iam-scan")
    files = {p: str(p.relative_to(ROOT)) for p in identity_policies()}
    files.update(dict(template_policies(tmp)))
    found = [*run_parliament(files), *run_cloudsplaining(files), *run_checkov(files, tmp)]
    return sorted(set(found), key=str)


# ---- the allowlist -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    scanner: str
    file: str
    id: str
    match: str
    why: str
    high: bool

    def matches(self, f: Finding) -> bool:
        return (f.scanner, f.id) == (self.scanner, self.id) and fnmatch.fnmatchcase(f.file, self.file) \
            and self.match in f.detail


def load_allowlist(path: Path = ALLOWLIST) -> list[Entry]:
    doc = tomllib.loads(path.read_text())
    entries = []
    for n, raw in enumerate(doc.get("finding", []), 1):
        unknown = set(raw) - {"scanner", "file", "id", "match", "why", "high"}
        assert not unknown, f"{path.name} entry {n}: unknown key(s) {sorted(unknown)}"
        for key in ("scanner", "file", "id", "why"):
            assert isinstance(raw.get(key), str) and raw[key].strip(), f"{path.name} entry {n}: {key} is required"
        assert raw["scanner"] in SCANNERS, f"{path.name} entry {n}: scanner must be one of {SCANNERS}"
        assert len(raw["why"]) >= 40, f"{path.name} entry {n}: say why in a sentence, not {raw['why']!r}"
        entries.append(Entry(raw["scanner"], raw["file"], raw["id"], raw.get("match", ""), raw["why"],
                             bool(raw.get("high", False))))
    return entries


def unexplained(found: list[Finding], entries: list[Entry]) -> list[Finding]:
    """Findings no entry explains (a HIGH one only by an entry that says high = true)."""
    return [f for f in found if not any(e.matches(f) and e.high == f.high for e in entries)]


def stale(found: list[Finding], entries: list[Entry]) -> list[Entry]:
    """Entries that match no finding any more."""
    return [e for e in entries if not any(e.matches(f) and e.high == f.high for f in found)]


@SCANNERS_RUN
def test_every_finding_is_fixed_or_explained_in_the_allowlist(findings):
    gaps = unexplained(findings, load_allowlist())
    assert not gaps, (
        f"{len(gaps)} scanner finding(s) are neither fixed nor in {ALLOWLIST.relative_to(ROOT)}:\n"
        + "\n".join(f"  {f}" for f in gaps)
        + "\nfix the policy, or add an entry (scanner, file, id, match, why) that says why the finding is accepted"
    )


@SCANNERS_RUN
def test_no_allowlist_entry_outlives_its_finding(findings):
    old = stale(findings, load_allowlist())
    assert not old, "allowlist entries that match no finding any more (remove them):\n" + "\n".join(
        f"  {e.scanner} {e.id} {e.file} {e.match!r}" for e in old)


@SCANNERS_RUN
def test_no_high_finding_but_the_condition_blind_one(findings):
    high = [f for f in findings if f.high]
    assert all((f.scanner, f.id, f.detail) == CONDITION_BLIND_HIGH for f in high), "\n".join(map(str, high))
    for entry in load_allowlist():
        if entry.high:
            assert (entry.scanner, entry.id, entry.match) == CONDITION_BLIND_HIGH, (
                f"only parliament's condition-blind PassRole+RunInstances may be accepted as HIGH, not {entry}")


# ---- what the scanners cannot see ------------------------------------------------------------------------------------
def _statements(path: Path) -> list[dict]:
    return json.loads(path.read_text())["Statement"]


def _list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


PASSABLE = {  # the roles each policy may hand to a service: never the bootstrap role from CI, never "any role"
    "bake.json": {"arn:aws:iam::*:role/nextcloud-bake-${aws:PrincipalTag/nextcloud-image:environment}",
                  "arn:aws:iam::*:role/nextcloud-${aws:PrincipalTag/nextcloud-image:environment}-InstanceRole-*"},
    "rollout.json": {"arn:aws:iam::*:role/nextcloud-${aws:PrincipalTag/nextcloud-image:environment}-InstanceRole-*"},
    "stack.json": {"arn:aws:iam::*:role/cloudformation-nextcloud", "arn:aws:iam::*:role/nextcloud-*-BootstrapRole-*"},
    "service-role.json": {"arn:aws:iam::*:role/nextcloud-*Role-*",
                          "arn:aws:iam::*:role/nextcloud-*-DatabaseProxyRole-*"},  # the proxy's, to RDS alone
}


@pytest.mark.parametrize("name", sorted(PASSABLE))
def test_passrole_is_scoped_where_parliament_cannot_see_it(name):
    path = SERVICE_ROLE if name == "service-role.json" else IAM / name
    passes = [s for s in _statements(path) if s["Effect"] == "Allow" and "iam:PassRole" in _list(s["Action"])]
    assert passes, f"{name} passes no role: drop it from PASSABLE (and its allowlist entry)"
    roles = {r for s in passes for r in _list(s["Resource"])}
    assert roles == PASSABLE[name], f"{name} may pass {sorted(roles)}"
    for s in passes:
        assert s["Condition"]["StringEquals"]["iam:PassedToService"], f"{name}/{s['Sid']}: to any service"
    if name in ("bake.json", "rollout.json"):  # CI's roles: the caller's environment, never the bootstrap role
        assert not any("Bootstrap" in r or not r.startswith("arn:aws:iam::*:role/nextcloud-") for r in roles)


def test_the_service_role_lives_outside_what_it_may_change():
    own = "arn:aws:iam::123456789012:role/cloudformation-nextcloud"
    stack = json.loads((IAM / "stack.json").read_text())
    handed = [s for s in stack["Statement"] if s.get("Sid") == "HandTheServiceRoleToCloudFormationOnly"]
    assert handed[0]["Resource"] == own.replace("123456789012", "*")
    for s in _statements(SERVICE_ROLE):
        if s["Effect"] == "Allow" and any(a.startswith("iam:") for a in _list(s["Action"])):
            for pattern in _list(s["Resource"]):
                assert pattern == "*" or not fnmatch.fnmatchcase(own, pattern), f"{s['Sid']} reaches the role itself"


def test_the_service_role_creates_and_changes_roles_only_within_the_boundary():
    boundary = "arn:aws:iam::${aws:PrincipalAccount}:policy/nextcloud-stack-boundary"
    writes = {"iam:CreateRole", "iam:PutRolePolicy", "iam:DeleteRolePolicy", "iam:PutRolePermissionsBoundary",
              "iam:AttachRolePolicy", "iam:DetachRolePolicy"}
    seen = set()
    for s in _statements(SERVICE_ROLE):
        actions = set(_list(s["Action"]))
        if s["Effect"] != "Allow" or not actions & writes:
            continue
        seen |= actions & writes
        assert s["Condition"]["ArnEquals"]["iam:PermissionsBoundary"] == boundary, s["Sid"]
        if actions & {"iam:AttachRolePolicy", "iam:DetachRolePolicy"}:
            assert s["Condition"]["ArnEquals"]["iam:PolicyARN"] == (
                "arn:aws:iam::aws:policy/service-role/AmazonRDSEnhancedMonitoringRole")
    assert seen == writes
    denied = {a for s in _statements(SERVICE_ROLE) if s["Effect"] == "Deny" for a in _list(s["Action"])}
    assert {"iam:DeleteRolePermissionsBoundary", "iam:CreatePolicyVersion", "iam:SetDefaultPolicyVersion"} <= denied
    allowed = {a for s in _statements(SERVICE_ROLE) if s["Effect"] == "Allow" for a in _list(s["Action"])}
    assert not any(a.endswith(":*") or a == "*" for a in allowed), "no service-wide wildcard"


# What CloudFormation calls, as the service role, to create, update and delete each resource type of the template
# (the Service Authorization Reference's actions and their dependent actions). The emulator checks no IAM, so this
# table is how a new resource type in nextcloud.yaml finds out that the service role must grow with it.
SERVICE_ROLE_NEEDS = {
    "AWS::AutoScaling::AutoScalingGroup": [
        "autoscaling:CreateAutoScalingGroup", "autoscaling:UpdateAutoScalingGroup",
        "autoscaling:DeleteAutoScalingGroup", "autoscaling:DescribeAutoScalingGroups", "ec2:RunInstances",
        "iam:PassRole", "autoscaling:EnableMetricsCollection"],
    "AWS::AutoScaling::ScalingPolicy": ["autoscaling:PutScalingPolicy", "autoscaling:DeletePolicy"],
    "AWS::CloudWatch::Alarm": ["cloudwatch:PutMetricAlarm", "cloudwatch:DeleteAlarms", "cloudwatch:DescribeAlarms"],
    "AWS::CloudWatch::Dashboard": ["cloudwatch:PutDashboard", "cloudwatch:DeleteDashboards", "cloudwatch:GetDashboard"],
    "AWS::EC2::EIP": ["ec2:AllocateAddress", "ec2:ReleaseAddress", "ec2:CreateTags"],
    "AWS::EC2::FlowLog": ["ec2:CreateFlowLogs", "ec2:DeleteFlowLogs", "iam:PassRole"],
    "AWS::EC2::InternetGateway": ["ec2:CreateInternetGateway", "ec2:DeleteInternetGateway"],
    "AWS::EC2::VPCGatewayAttachment": ["ec2:AttachInternetGateway", "ec2:DetachInternetGateway"],
    "AWS::EC2::LaunchTemplate": ["ec2:CreateLaunchTemplate", "ec2:CreateLaunchTemplateVersion",
                                 "ec2:DeleteLaunchTemplate", "ec2:ModifyLaunchTemplate"],
    "AWS::EC2::NatGateway": ["ec2:CreateNatGateway", "ec2:DeleteNatGateway"],
    "AWS::EC2::Route": ["ec2:CreateRoute", "ec2:DeleteRoute", "ec2:ReplaceRoute"],
    "AWS::EC2::RouteTable": ["ec2:CreateRouteTable", "ec2:DeleteRouteTable"],
    "AWS::EC2::SecurityGroup": ["ec2:CreateSecurityGroup", "ec2:DeleteSecurityGroup",
                                "ec2:AuthorizeSecurityGroupIngress", "ec2:AuthorizeSecurityGroupEgress",
                                "ec2:RevokeSecurityGroupEgress"],
    "AWS::EC2::SecurityGroupEgress": ["ec2:AuthorizeSecurityGroupEgress", "ec2:RevokeSecurityGroupEgress"],
    "AWS::EC2::SecurityGroupIngress": ["ec2:AuthorizeSecurityGroupIngress", "ec2:RevokeSecurityGroupIngress"],
    "AWS::EC2::Subnet": ["ec2:CreateSubnet", "ec2:DeleteSubnet", "ec2:ModifySubnetAttribute"],
    "AWS::EC2::SubnetRouteTableAssociation": ["ec2:AssociateRouteTable", "ec2:DisassociateRouteTable"],
    "AWS::EC2::VPC": ["ec2:CreateVpc", "ec2:DeleteVpc", "ec2:ModifyVpcAttribute", "ec2:DescribeVpcs"],
    "AWS::EC2::VPCEndpoint": ["ec2:CreateVpcEndpoint", "ec2:DeleteVpcEndpoints", "ec2:ModifyVpcEndpoint",
                              "route53:AssociateVPCWithHostedZone"],
    "AWS::ElastiCache::ReplicationGroup": ["elasticache:CreateReplicationGroup", "elasticache:ModifyReplicationGroup",
                                           "elasticache:DeleteReplicationGroup", "elasticache:AddTagsToResource",
                                           "ec2:CreateNetworkInterface", "secretsmanager:GetSecretValue",
                                           "kms:CreateGrant"],
    "AWS::ElastiCache::SubnetGroup": ["elasticache:CreateCacheSubnetGroup", "elasticache:DeleteCacheSubnetGroup"],
    "AWS::ElasticLoadBalancingV2::Listener": ["elasticloadbalancing:CreateListener",
                                              "elasticloadbalancing:DeleteListener",
                                              "elasticloadbalancing:ModifyListener",
                                              "elasticloadbalancing:ModifyListenerAttributes"],
    "AWS::ElasticLoadBalancingV2::LoadBalancer": ["elasticloadbalancing:CreateLoadBalancer",
                                                  "elasticloadbalancing:DeleteLoadBalancer",
                                                  "elasticloadbalancing:ModifyLoadBalancerAttributes",
                                                  "elasticloadbalancing:AddTags"],
    "AWS::ElasticLoadBalancingV2::TargetGroup": ["elasticloadbalancing:CreateTargetGroup",
                                                 "elasticloadbalancing:DeleteTargetGroup",
                                                 "elasticloadbalancing:ModifyTargetGroupAttributes"],
    "AWS::ElasticLoadBalancingV2::ListenerRule": ["elasticloadbalancing:CreateRule", "elasticloadbalancing:ModifyRule",
                                                  "elasticloadbalancing:DeleteRule"],
    "AWS::IAM::InstanceProfile": ["iam:CreateInstanceProfile", "iam:DeleteInstanceProfile",
                                  "iam:AddRoleToInstanceProfile", "iam:RemoveRoleFromInstanceProfile"],
    "AWS::IAM::Role": ["iam:CreateRole", "iam:DeleteRole", "iam:PutRolePolicy", "iam:DeleteRolePolicy",
                       "iam:AttachRolePolicy", "iam:GetRole", "iam:TagRole"],
    "AWS::KMS::Alias": ["kms:CreateAlias", "kms:DeleteAlias", "kms:UpdateAlias"],
    "AWS::KMS::Key": ["kms:CreateKey", "kms:PutKeyPolicy", "kms:EnableKeyRotation", "kms:DescribeKey",
                      "kms:TagResource"],
    "AWS::Logs::LogGroup": ["logs:CreateLogGroup", "logs:DeleteLogGroup", "logs:PutRetentionPolicy",
                            "logs:AssociateKmsKey"],
    "AWS::RDS::DBInstance": ["rds:CreateDBInstance", "rds:ModifyDBInstance", "rds:DeleteDBInstance",
                             "rds:CreateDBSnapshot", "rds:AddTagsToResource", "kms:CreateGrant",
                             "secretsmanager:CreateSecret", "iam:PassRole"],
    "AWS::RDS::DBProxy": ["rds:CreateDBProxy", "rds:ModifyDBProxy", "rds:DeleteDBProxy", "rds:DescribeDBProxies",
                          "rds:AddTagsToResource", "rds:RemoveTagsFromResource", "rds:ListTagsForResource",
                          "iam:PassRole"],
    "AWS::RDS::DBProxyTargetGroup": ["rds:DescribeDBProxyTargetGroups", "rds:DescribeDBProxyTargets",
                                     "rds:ModifyDBProxyTargetGroup", "rds:RegisterDBProxyTargets",
                                     "rds:DeregisterDBProxyTargets", "rds:AddTagsToResource",
                                     "rds:ListTagsForResource"],
    "AWS::RDS::DBParameterGroup": ["rds:CreateDBParameterGroup", "rds:ModifyDBParameterGroup",
                                   "rds:DeleteDBParameterGroup"],
    "AWS::RDS::DBSubnetGroup": ["rds:CreateDBSubnetGroup", "rds:ModifyDBSubnetGroup", "rds:DeleteDBSubnetGroup"],
    "AWS::Route53::RecordSet": ["route53:ChangeResourceRecordSets", "route53:GetChange"],
    "AWS::S3::Bucket": ["s3:CreateBucket", "s3:DeleteBucket", "s3:PutEncryptionConfiguration",
                        "s3:PutBucketPublicAccessBlock", "s3:PutBucketVersioning", "s3:PutLifecycleConfiguration",
                        "s3:PutBucketOwnershipControls", "s3:PutBucketTagging", "s3:PutBucketLogging"],
    "AWS::S3::BucketPolicy": ["s3:PutBucketPolicy", "s3:DeleteBucketPolicy", "s3:GetBucketPolicy"],
    # Association takes both: wafv2 on the web ACL and the load balancer, and the load balancer's own SetWebAcl.
    "AWS::WAFv2::WebACL": ["wafv2:CreateWebACL", "wafv2:UpdateWebACL", "wafv2:DeleteWebACL", "wafv2:GetWebACL",
                           "wafv2:ListTagsForResource", "wafv2:TagResource", "wafv2:UntagResource"],
    "AWS::WAFv2::WebACLAssociation": ["wafv2:AssociateWebACL", "wafv2:DisassociateWebACL",
                                      "wafv2:GetWebACLForResource", "wafv2:GetWebACL",
                                      "elasticloadbalancing:SetWebAcl"],
    "AWS::SecretsManager::Secret": ["secretsmanager:CreateSecret", "secretsmanager:DeleteSecret",
                                    "secretsmanager:UpdateSecret", "secretsmanager:TagResource",
                                    "secretsmanager:GetRandomPassword", "kms:GenerateDataKey"],
}


def _allowed_by(statements: list[dict], action: str) -> bool:
    def matches(s: dict) -> bool:
        return any(fnmatch.fnmatchcase(action.lower(), a.lower()) for a in _list(s["Action"]))

    if any(s["Effect"] == "Deny" and matches(s) for s in statements):
        return False
    return any(s["Effect"] == "Allow" and matches(s) for s in statements)


def test_the_service_role_covers_every_resource_type_of_the_stack():
    types = {r["Type"] for r in load_template()["Resources"].values()}
    unknown = sorted(types - set(SERVICE_ROLE_NEEDS))
    assert not unknown, (
        f"nextcloud.yaml has resource type(s) {unknown} the service role was never checked for: add the actions "
        "CloudFormation calls for them (Service Authorization Reference) to infra/stack/service-role.json, scoped, "
        "and to SERVICE_ROLE_NEEDS here")
    statements = _statements(SERVICE_ROLE)
    gaps = {t: [a for a in SERVICE_ROLE_NEEDS[t] if not _allowed_by(statements, a)] for t in sorted(types)}
    gaps = {t: a for t, a in gaps.items() if a}
    assert not gaps, f"infra/stack/service-role.json does not allow what these resource types need: {gaps}"


# The one RDS resource the service role reaches by neither name nor tag: the proxy's target group (an id RDS generates,
# tagged by CloudFormation only after it has changed it). These, and nothing else, on it.
TARGET_GROUP_ONLY = {"rds:ModifyDBProxyTargetGroup", "rds:RegisterDBProxyTargets", "rds:DeregisterDBProxyTargets"}


def test_rds_writes_reach_the_stacks_resources_by_name_or_tag():
    by_name = ("arn:aws:rds:*:*:db:nextcloud-*", "arn:aws:rds:*:*:subgrp:nextcloud-*", "arn:aws:rds:*:*:pg:nextcloud-*",
               "arn:aws:rds:*:*:snapshot:nextcloud-*", "arn:aws:rds:*:*:og:default:*")
    tags = {"aws:RequestTag/nextcloud-image:managed", "aws:ResourceTag/nextcloud-image:managed"}
    for s in _statements(SERVICE_ROLE):
        actions = set(_list(s["Action"]))
        writes = {a for a in actions if a.startswith("rds:") and not a.startswith(("rds:Describe", "rds:List"))}
        if s["Effect"] != "Allow" or not writes:
            continue
        if tags & set(s.get("Condition", {}).get("StringEquals", {})):
            continue
        for resource in _list(s["Resource"]):
            if resource == "arn:aws:rds:*:*:target-group:*":
                extra = sorted(writes - TARGET_GROUP_ONLY)
                assert not extra, f"{s['Sid']}: {extra} on any target group"
            else:
                assert resource in by_name, f"{s['Sid']}: {resource} is neither named nor conditioned on a tag"


def test_every_role_of_the_stack_carries_the_boundary():
    resources = load_template()["Resources"]
    roles = {k: r for k, r in resources.items() if r["Type"] == "AWS::IAM::Role"}
    assert roles
    for name, role in roles.items():
        assert role["Properties"].get("PermissionsBoundary") == {
            "Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:policy/nextcloud-stack-boundary"}, name
    # The boundary's name is the one the service role requires, and its file is named after it.
    assert BOUNDARY.stem == "nextcloud-stack-boundary"


def test_the_boundary_holds_what_the_stacks_roles_are_granted():
    """A permission outside the boundary would be silently void in AWS: every action the stack grants its roles
    (inline and managed) must be in the boundary."""
    boundary = {a for s in _statements(BOUNDARY) if s["Effect"] == "Allow" for a in _list(s["Action"])}
    granted = set()
    for role in (r for r in load_template()["Resources"].values() if r["Type"] == "AWS::IAM::Role"):
        for policy in role["Properties"].get("Policies", []):
            for s in policy["PolicyDocument"]["Statement"]:
                granted |= set(_list(s["Action"]))
    # AmazonRDSEnhancedMonitoringRole (attached to the monitoring role) writes the RDSOSMetrics log group.
    granted |= {"logs:CreateLogGroup", "logs:PutRetentionPolicy", "logs:CreateLogStream", "logs:PutLogEvents",
                "logs:DescribeLogStreams", "logs:GetLogEvents"}
    assert granted <= boundary, f"granted outside the boundary: {sorted(granted - boundary)}"


def test_service_principals_assume_the_stacks_roles_only_for_this_account():
    for name, role in load_template()["Resources"].items():
        if role["Type"] != "AWS::IAM::Role":
            continue
        for statement in role["Properties"]["AssumeRolePolicyDocument"]["Statement"]:
            service = statement["Principal"]["Service"]
            if service != "ec2.amazonaws.com":  # EC2 hands a role only to instances launched in this account
                assert statement["Condition"]["StringEquals"]["aws:SourceAccount"] == {"Ref": "AWS::AccountId"}, name


def test_what_the_rollout_conditions_on_carries_the_tags():
    """The rollout's launch template and upgrade conditions read tags CloudFormation must put there: the launch
    template is not taggable through stack tags, so the template tags it itself."""
    (spec,) = load_template()["Resources"]["LaunchTemplate"]["Properties"]["TagSpecifications"]
    tags = {t["Key"]: t["Value"] for t in spec["Tags"]}
    assert spec["ResourceType"] == "launch-template"
    assert tags == {"nextcloud-image:managed": "true", "nextcloud-image:environment": {"Ref": "EnvironmentName"}}
    versions = next(s for s in _statements(IAM / "rollout.json") if "ec2:CreateLaunchTemplateVersion" in s["Action"])
    assert set(versions["Condition"]["StringEquals"]) == {
        "aws:ResourceTag/nextcloud-image:managed", "aws:ResourceTag/nextcloud-image:environment"}


# Resource types whose stack-propagated tags (managed, environment: deploy-stack tags the stack) a policy condition
# reads: the service role (KMS key, cache, RDS Proxy, load balancer) and the CI roles (subnets, the group).
TAGGED_BY_THE_STACK = ["AWS::EC2::Subnet", "AWS::AutoScaling::AutoScalingGroup", "AWS::KMS::Key",
                       "AWS::ElastiCache::ReplicationGroup", "AWS::RDS::DBProxy",
                       "AWS::ElasticLoadBalancingV2::LoadBalancer"]


@pytest.mark.parametrize("rtype", TAGGED_BY_THE_STACK)
def test_cloudformation_propagates_the_stack_tags_the_conditions_read(rtype):
    """CloudFormation puts stack-level tags only on resource types its registry schema marks taggable (cfn-lint
    ships those schemas); the launch template is not, which is why the template tags it itself."""
    schemas = Path(cfnlint.data.schemas.__file__).parent
    index = json.loads((schemas / "providers" / "us-east-1.json").read_text())
    schema = json.loads((schemas / "resources" / f"{index[rtype]}.json").read_text())
    assert schema["tagging"]["taggable"] is True and schema["tagging"]["tagOnCreate"] is True, rtype
    template_types = {r["Type"] for r in load_template()["Resources"].values()}
    assert rtype in template_types
    launch_template = json.loads((schemas / "resources" / f"{index['AWS::EC2::LaunchTemplate']}.json").read_text())
    assert launch_template["tagging"]["taggable"] is False


def test_ci_cannot_retag_another_environments_images_into_its_own():
    """Tagging is the way around tag conditions: the bake role tags only untagged (new) images and snapshots, as its
    own environment's, and retags only its own environment's, never to another environment."""
    tagging = [s for s in _statements(IAM / "bake.json") if s["Effect"] == "Allow"
               and set(_list(s["Action"])) & {"ec2:CreateTags", "ec2:DeleteTags"}
               and any("::image/" in r or "::snapshot/" in r for r in _list(s["Resource"]))]
    assert tagging
    env = "${aws:PrincipalTag/nextcloud-image:environment}"
    for s in tagging:
        c = s["Condition"]
        if "Null" in c:
            assert c["Null"] == {"aws:ResourceTag/nextcloud-image:managed": "true"}
            assert c["StringEquals"]["aws:RequestTag/nextcloud-image:environment"] == env
        else:
            assert c["StringEquals"]["aws:ResourceTag/nextcloud-image:environment"] == env
            assert c["StringEqualsIfExists"] == {"aws:RequestTag/nextcloud-image:environment": env}
    for name in ("bake.json", "rollout.json", "preflight.json"):
        actions = {a for s in _statements(IAM / name) if s["Effect"] == "Allow" for a in _list(s["Action"])}
        assert not {a for a in actions if a.startswith(("iam:", "sts:"))} - {"iam:PassRole", "sts:GetCallerIdentity"}, (
            f"{name}: a CI role that could change its own tags or policies would undo every condition here")


def test_destructive_image_actions_need_the_projects_tags():
    """The project's images and snapshots only of the caller's environment; besides, for the bake alone, images and
    snapshots that carry no project tag at all: the intermediate AMI Packer's encrypt_boot registers and removes
    before anything can tag it (and sweep's removal of it when a bake dies). Never a tagged one of another
    environment."""
    for name in ("bake.json", "rollout.json"):
        for s in _statements(IAM / name):
            if s["Effect"] != "Allow" or not set(_list(s["Action"])) & {"ec2:DeregisterImage", "ec2:DeleteSnapshot"}:
                continue
            if name == "bake.json" and "Null" in s["Condition"]:
                assert s["Condition"] == {"Null": {"aws:ResourceTag/nextcloud-image:managed": "true"}}, s["Sid"]
                continue
            tags = s["Condition"]["StringEquals"]
            assert tags["aws:ResourceTag/nextcloud-image:managed"] == "true", (name, s["Sid"])
            assert tags["aws:ResourceTag/nextcloud-image:environment"].startswith("${aws:PrincipalTag/"), name


def test_ci_removes_only_its_environments_throwaway_resources():
    """Never a member of the fleet (purpose=member) or another environment's canary."""
    removes = {"ec2:StopInstances", "ec2:TerminateInstances", "ec2:DeleteVolume", "ec2:DeleteKeyPair",
               "ec2:DeleteSecurityGroup"}
    seen = set()
    for s in _statements(IAM / "bake.json"):
        if s["Effect"] == "Allow" and set(_list(s["Action"])) & removes:
            seen |= set(_list(s["Action"])) & removes
            assert s["Condition"]["StringEquals"] == {
                "aws:ResourceTag/nextcloud-image:managed": "true",
                "aws:ResourceTag/nextcloud-image:environment": "${aws:PrincipalTag/nextcloud-image:environment}",
                "aws:ResourceTag/nextcloud-image:purpose": ["bake", "canary"]}, s["Sid"]
    assert seen == removes


def test_start_session_only_with_the_document_check_to_bake_and_canary_instances():
    starts = [s for s in _statements(IAM / "bake.json") if "ssm:StartSession" in _list(s["Action"])]
    assert starts
    for s in starts:
        assert s["Condition"]["BoolIfExists"] == {"ssm:SessionDocumentAccessCheck": "true"}, s["Sid"]
        if any(":instance/" in r for r in _list(s["Resource"])):
            assert s["Condition"]["StringEquals"]["ssm:resourceTag/nextcloud-image:purpose"] == ["bake", "canary"]


def test_the_runtime_role_cannot_read_the_admin_password():
    runtime = IAM / "instance-role" / "runtime.json"
    readable = [r for s in _statements(runtime) if "secretsmanager:GetSecretValue" in _list(s["Action"])
                for r in _list(s["Resource"])]
    admin = "arn:aws:secretsmanager:eu-central-1:123456789012:secret:nextcloud/staging/admin-password-AbCdEf"
    assert readable and not any(fnmatch.fnmatchcase(admin, r) for r in readable)
    install, seal = _statements(IAM / "instance-role" / "install.json")
    assert fnmatch.fnmatchcase(admin, install["Resource"])
    # As in the stack: only while the secret carries the install tag, which the installing node then removes.
    assert install["Condition"]["StringEquals"]["secretsmanager:ResourceTag/nextcloud-image:install"] == "pending"
    assert seal["Action"] == ["secretsmanager:UntagResource"] and fnmatch.fnmatchcase(admin, seal["Resource"])
    assert seal["Condition"] == {"ForAllValues:StringEquals": {"aws:TagKeys": ["nextcloud-image:install"]},
                                 "Null": {"aws:TagKeys": "false"}}
    for s in [*_statements(runtime), install]:
        if set(_list(s["Action"])) & {"secretsmanager:GetSecretValue", "s3:GetObject"}:
            assert s["Condition"]["StringEquals"]["aws:ec2InstanceSourceVPC"] == "${aws:SourceVpc}", s["Sid"]


def test_the_github_trust_pins_audience_environment_workflow_and_main():
    (statement,) = json.loads(TRUST.read_text())["Statement"]
    assert statement["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert statement["Principal"]["Federated"].endswith(":oidc-provider/token.actions.githubusercontent.com")
    cond = statement["Condition"]
    assert set(cond) == {"StringEquals"}, "no StringLike: a wildcard in sub would admit other branches"
    assert cond["StringEquals"]["token.actions.githubusercontent.com:aud"] == "sts.amazonaws.com"
    assert cond["StringEquals"]["token.actions.githubusercontent.com:sub"] == (
        "repo:OWNER/REPO:environment:ENVIRONMENT:job_workflow_ref:OWNER/REPO/.github/workflows/rebuild.yml"
        "@refs/heads/main")


def test_the_stacks_inline_policies_are_scanned_as_they_resolve(tmp_path):
    written = dict(template_policies(tmp_path))
    labels = set(written.values())
    assert {"infra/stack/nextcloud.yaml#InstanceRole/nextcloud-member",
            "infra/stack/nextcloud.yaml#BootstrapRole/database-bootstrap",
            "infra/stack/nextcloud.yaml#FlowLogRole/write-flow-logs"} <= labels
    for path in written:
        text = path.read_text()
        assert "Fn::" not in text and '"Ref"' not in text, f"{path.name}: an intrinsic function is left"
    on = json.loads((tmp_path / "InstanceRole-nextcloud-member-on.json").read_text())
    off = json.loads((tmp_path / "InstanceRole-nextcloud-member-off.json").read_text())
    secrets_on, secrets_off = ({s["Sid"]: s for s in d["Statement"]}["ClusterSecrets"] for d in (on, off))
    assert secrets_on["Condition"] == {"StringEquals": {"aws:SourceVpc": "vpc-0123456789abcdef0"}}
    assert "Condition" not in secrets_off, "without interface endpoints the secrets are reached through the NAT"


# ---- the checker itself --------------------------------------------------------------------------------------------
def test_the_allowlist_check_fails_on_a_new_finding_and_on_a_stale_entry(tmp_path):
    allow = tmp_path / "allow.toml"
    allow.write_text('[[finding]]\nscanner = "parliament"\nfile = "infra/iam/x.json"\nid = "RESOURCE_STAR"\n'
                     'match = "ec2:Describe"\n'
                     'why = "describe calls have no resource-level permissions in EC2 at all"\n')
    entries = load_allowlist(allow)
    known = Finding("parliament", "infra/iam/x.json", "RESOURCE_STAR", '["ec2:DescribeImages"]', False)
    new = Finding("parliament", "infra/iam/x.json", "RESOURCE_MISMATCH", "ec2:RunInstances", False)
    high = Finding("parliament", "infra/iam/x.json", "RESOURCE_STAR", "ec2:DescribeImages", True)
    assert unexplained([known], entries) == [] and stale([known], entries) == []
    assert unexplained([known, new], entries) == [new]
    assert unexplained([high], entries) == [high], "a HIGH finding is explained only by an entry marked high"
    assert stale([new], entries) == entries
    allow.write_text('[[finding]]\nscanner = "parliament"\nfile = "x"\nid = "Y"\nwhy = "short"\n')
    with pytest.raises(AssertionError, match="say why"):
        load_allowlist(allow)


@SCANNERS_RUN
def test_the_scanners_find_what_the_audit_found_in_the_original_service_role(tmp_path):
    """The scanners are wired so that they see: the service role of before this fix fails all three."""
    before = tmp_path / "service-role.json"
    before.write_text(json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["rds:*", "kms:PutKeyPolicy", "kms:Decrypt", "ec2:RunInstances"],
         "Resource": "*"},
        {"Effect": "Allow", "Action": ["iam:CreateRole", "iam:PutRolePolicy", "iam:AttachRolePolicy", "iam:PassRole"],
         "Resource": "arn:aws:iam::*:role/nextcloud-*"},
    ]}))
    files = {before: "before"}
    parliament = run_parliament(files)
    assert any(f.high and f.id == "PRIVILEGE_ESCALATION" for f in parliament), parliament
    cloudsplaining = {f.id for f in run_cloudsplaining(files)}
    assert {"ResourceExposure", "ServiceWildcard", "InfrastructureModification"} <= cloudsplaining, cloudsplaining
    checkov = {f.id for f in run_checkov(files, tmp_path)}
    assert {"CKV_AWS_109", "CKV_AWS_111"} <= checkov, checkov
