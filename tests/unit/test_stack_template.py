"""The stack template's content, read as data: what a security reviewer and an on-call engineer check.

The emulator skips several of these resource types (tests/aws/stack say which), so their properties are checked
here and against cfn-lint's resource schemas (the last tests).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from infra.stack import template
from infra.stack.template import (
    DATA_BEARING_TYPES,
    TEMPLATE,
    TEMPLATE_BODY_LIMIT,
    evaluate_conditions,
    load_template,
    planned_resources,
    read_body,
    stack_parameters,
    template_body,
)
from render import tags
from render.capacity import MAINTENANCE_MAX_HEALTHY_PERCENTAGE
from render.settings import has_setting, load_settings
from render.stack_outputs import AWAITED, MAPPING
from render.stack_settings import PROBE_RULE_PRIORITY, RATE_LIMIT_BOUNDS, StackWaf

ROOT = Path(__file__).resolve().parents[2]
T = load_template()
R = T["Resources"]


def of_type(rtype: str) -> dict[str, dict]:
    return {k: v for k, v in R.items() if v["Type"] == rtype}


def props(logical: str) -> dict:
    return R[logical].get("Properties", {})


# ---- encryption --------------------------------------------------------------------------------------------------
def test_everything_that_holds_data_is_encrypted_with_the_stacks_key():
    bucket = props("Bucket")["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
    assert bucket["ServerSideEncryptionByDefault"] == {"SSEAlgorithm": "aws:kms",
                                                       "KMSMasterKeyID": {"Fn::GetAtt": ["DataKey", "Arn"]}}
    db = props("Database")
    assert db["StorageEncrypted"] is True and db["KmsKeyId"] == {"Ref": "DataKey"}
    cache = props("Cache")
    assert cache["TransitEncryptionEnabled"] is True and cache["AtRestEncryptionEnabled"] is True
    for name, secret in of_type("AWS::SecretsManager::Secret").items():
        assert secret["Properties"]["KmsKeyId"] == {"Ref": "DataKey"}, name
    for name, group in of_type("AWS::Logs::LogGroup").items():
        assert group["Properties"]["KmsKeyId"] == {"Fn::GetAtt": ["DataKey", "Arn"]}, name
    root = props("LaunchTemplate")["LaunchTemplateData"]["BlockDeviceMappings"][0]["Ebs"]
    assert root["Encrypted"] is True and root["VolumeType"] == "gp3"
    assert props("DataKey")["EnableKeyRotation"] is True


def test_the_database_requires_tls_and_the_bucket_refuses_plain_http():
    assert props("DatabaseParameters")["Parameters"]["rds.force_ssl"] == "1"
    (statement,) = props("BucketPolicy")["PolicyDocument"]["Statement"]
    assert statement["Effect"] == "Deny" and statement["Action"] == "s3:*"
    assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


# ---- nothing public but the load balancer ------------------------------------------------------------------------
def test_public_access_is_off_for_the_bucket_and_the_database():
    assert props("Bucket")["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True, "BlockPublicPolicy": True, "IgnorePublicAcls": True, "RestrictPublicBuckets": True,
    }
    assert props("Database")["PubliclyAccessible"] is False
    assert props("LoadBalancer")["Scheme"] == "internet-facing"


def _route_targets(table: str) -> set[str]:
    return {
        key for route in of_type("AWS::EC2::Route").values() if route["Properties"]["RouteTableId"] == {"Ref": table}
        for key in ("GatewayId", "NatGatewayId") if key in route["Properties"]
    }


def test_database_and_cache_live_in_isolated_subnets_with_no_route_out():
    isolated = {"IsolatedSubnet1", "IsolatedSubnet2", "IsolatedSubnet3"}
    for group in ("DatabaseSubnetGroup", "CacheSubnetGroup"):
        subnets = props(group)["SubnetIds"]["Fn::If"]
        assert {ref["Ref"] for ref in subnets[1]} == isolated and {ref["Ref"] for ref in subnets[2]} < isolated
    assert _route_targets("IsolatedRouteTable") == set()
    assert _route_targets("PublicRouteTable") == {"GatewayId"}
    for n in (1, 2, 3):
        assert _route_targets(f"PrivateRouteTable{n}") == {"NatGatewayId"}
    for subnet in of_type("AWS::EC2::Subnet").values():
        assert not subnet["Properties"].get("MapPublicIpOnLaunch"), "no subnet hands out public addresses"


# ---- instances -----------------------------------------------------------------------------------------------------
def test_imdsv2_is_required_with_hop_limit_1():
    assert props("LaunchTemplate")["LaunchTemplateData"]["MetadataOptions"] == {
        "HttpEndpoint": "enabled", "HttpTokens": "required", "HttpPutResponseHopLimit": 1,
    }


def test_the_launch_template_tags_members_with_the_projects_tag_keys():
    for spec in props("LaunchTemplate")["LaunchTemplateData"]["TagSpecifications"]:
        found = {t["Key"]: t["Value"] for t in spec["Tags"]}
        assert found[tags.MANAGED] == "true"
        assert found[tags.ENVIRONMENT] == {"Ref": "EnvironmentName"}
        assert found[tags.PURPOSE] == "member"  # not bake/canary: sweep never touches these
        assert found[tags.PURPOSE] not in (tags.PURPOSE_BAKE, tags.PURPOSE_CANARY)


def test_the_group_follows_liveness_and_the_load_balancer_follows_readiness():
    group = props("Group")
    assert group["HealthCheckType"] == "EC2", "ELB health checks would replace the fleet on a database outage"
    # A replacement (the watchdog's Unhealthy, rebalancing) launches before the broken instance is terminated.
    # The ceiling is the connection budget's (render/capacity.py), passed as a parameter: one number, one place.
    assert group["InstanceMaintenancePolicy"] == {"MinHealthyPercentage": 100,
                                                  "MaxHealthyPercentage": {"Ref": "InstanceMaxHealthyPercentage"}}
    assert _example_parameters()["InstanceMaxHealthyPercentage"] == str(MAINTENANCE_MAX_HEALTHY_PERCENTAGE) == "200"
    assert group["VPCZoneIdentifier"]["Fn::If"][1] == [{"Ref": f"PrivateSubnet{n}"} for n in (1, 2, 3)]
    assert R["Group"]["Condition"] == "HasImage"
    tg = props("TargetGroup")
    assert (tg["HealthCheckPath"], tg["Matcher"]) == ("/readyz", {"HttpCode": "200"})
    assert tg["HealthyThresholdCount"] == 2 and tg["UnhealthyThresholdCount"] == 2
    assert tg["HealthCheckIntervalSeconds"] <= 10
    attributes = {a["Key"]: a["Value"] for a in tg["TargetGroupAttributes"]}
    assert attributes["stickiness.enabled"] == "true"
    assert 30 <= int(attributes["deregistration_delay.timeout_seconds"]) <= 300


def test_the_readiness_path_is_the_one_the_image_serves():
    conf = (ROOT / "image" / "nextcloud" / "apache" / "nextcloud-health.conf").read_text()
    assert re.search(rf"\s{re.escape(props('TargetGroup')['HealthCheckPath'])}\s", conf), conf


def test_https_with_a_modern_policy_and_http_only_redirects():
    https = props("HttpsListener")
    # TLS 1.3 and 1.2 with the restricted ("Res") cipher list: forward-secret AEAD ciphers only.
    assert https["Protocol"] == "HTTPS" and https["SslPolicy"] == "ELBSecurityPolicy-TLS13-1-2-Res-2021-06"
    attributes = {a["Key"]: a["Value"] for a in https["ListenerAttributes"]}
    hsts = attributes["routing.http.response.strict_transport_security.header_value"]
    assert int(re.fullmatch(r"max-age=(\d+)", hsts)[1]) >= 365 * 86400, "a year at least, as browsers expect"
    assert https["Certificates"] == [{"CertificateArn": {"Ref": "CertificateArn"}}]
    (action,) = props("HttpRedirectListener")["DefaultActions"]
    assert action["Type"] == "redirect"
    assert action["RedirectConfig"]["Protocol"] == "HTTPS" and action["RedirectConfig"]["StatusCode"] == "HTTP_301"


def test_the_probes_are_answered_404_to_outside_callers_and_readiness_still_reaches_the_targets():
    rule = R["ProbesNotFound"]
    assert rule["Type"] == "AWS::ElasticLoadBalancingV2::ListenerRule" and "Condition" not in rule
    p = rule["Properties"]
    assert p["ListenerArn"] == {"Ref": "HttpsListener"}  # the HTTP listener only redirects, to this one
    assert p["Priority"] == PROBE_RULE_PRIORITY
    assert p["Priority"] != load_settings(ROOT, "example").settings.upgrade.maintenance_rule_priority
    (condition,) = p["Conditions"]
    assert condition["Field"] == "path-pattern"
    patterns = condition["PathPatternConfig"]["Values"]

    def caught(path: str) -> bool:  # ALB path patterns: * any characters, case-sensitive, whole path
        return any(re.fullmatch(re.escape(v).replace(r"\*", ".*"), path) for v in patterns)

    for path in ("/readyz", "/livez", "/readyz/", "/livez/x"):
        assert caught(path), path
    for path in ("/", "/index.php/login", "/remote.php/dav/files/u/readyz", "/status.php", "/apps/readyz"):
        assert not caught(path), path
    (action,) = p["Actions"]
    assert action == {"Type": "fixed-response", "FixedResponseConfig": {"StatusCode": "404"}}
    # The load balancer's own checks go to each target directly, never through listener rules.
    assert props("TargetGroup")["HealthCheckPath"] == "/readyz"


# ---- the edge: rate limits per client address ------------------------------------------------------------------
LOGIN_PATHS = ["/login", "/index.php/login", "/index.php/login/challenge/totp", "/login/confirm",
               "/index.php/login/flow/apptoken", "/index.php/login/v2/apptoken", "/index.php/lostpassword/email",
               "/lostpassword/set/tok/user", "/index.php/s/AbCd1234/authenticate/showShare",
               "/s/AbCd1234/authenticate/downloadShare", "/ocs/v2.php/core/getapppassword",
               "/ocs/v1.php/core/getapppassword"]
# Polled by clients (login flow v2 polls for up to 20 minutes) or serving no secret check: outside the login limit.
NOT_LOGIN = ["/", "/index.php/login/v2/poll", "/index.php/login/v2/flow/abc", "/index.php/apps/files/",
             "/remote.php/dav/files/alice/login", "/index.php/s/AbCd1234", "/status.php", "/loginx",
             "/ocs/v2.php/core/getapppassword/x"]
WEBDAV_PATHS = ["/remote.php/dav", "/remote.php/dav/files/alice/a.txt", "/remote.php/webdav/a.txt",
                "/public.php/webdav", "/public.php/dav/files/AbCd1234/"]
NOT_WEBDAV = ["/", "/remote.php/davx", "/index.php/apps/files/", "/ocs/v2.php/apps/files_sharing/api/v1/shares",
              "/status.php"]


def _rate_rules() -> dict[str, dict]:
    return {r["Name"]: r for r in props("WebAcl")["Rules"]}


def test_the_web_acl_rate_limits_the_login_and_webdav_paths_per_client_address():
    acl = R["WebAcl"]
    assert acl["Type"] == "AWS::WAFv2::WebACL" and acl["Condition"] == "WithWebAcl"
    assert acl["Properties"]["Scope"] == "REGIONAL" and acl["Properties"]["DefaultAction"] == {"Allow": {}}
    rules = _rate_rules()
    assert set(rules) == {"login", "webdav"}
    for name, limit, matched, unmatched in (("login", "LoginRateLimit", LOGIN_PATHS, NOT_LOGIN),
                                            ("webdav", "WebDavRateLimit", WEBDAV_PATHS, NOT_WEBDAV)):
        rule = rules[name]
        assert rule["Action"] == {"Block": {"CustomResponse": {"ResponseCode": 429}}}, name
        rate = rule["Statement"]["RateBasedStatement"]
        # IP: the address the TCP connection comes from, which no header (X-Forwarded-For, X-Real-IP) changes.
        assert rate["AggregateKeyType"] == "IP" and "ForwardedIPConfig" not in rate, name
        assert rate["Limit"] == {"Ref": limit} and "EvaluationWindowSec" not in rate, name  # 5 minutes
        regex = rate["ScopeDownStatement"]["RegexMatchStatement"]
        assert regex["FieldToMatch"] == {"UriPath": {}}
        # Decoded and normalized first: /index.php/%6cogin and //index.php/./login are the login too.
        assert [t["Type"] for t in sorted(regex["TextTransformations"], key=lambda t: t["Priority"])] == [
            "URL_DECODE", "NORMALIZE_PATH"]
        for path in matched:
            assert re.search(regex["RegexString"], path), f"{name} misses {path}"
        for path in unmatched:
            assert not re.search(regex["RegexString"], path), f"{name} catches {path}"
    # The template's own defaults and floor are the settings' (a stack deployed by hand gets the same limits).
    defaults = StackWaf()
    for parameter, default in (("LoginRateLimit", defaults.login_limit), ("WebDavRateLimit", defaults.webdav_limit)):
        assert T["Parameters"][parameter]["Default"] == default
        assert T["Parameters"][parameter]["MinValue"] == RATE_LIMIT_BOUNDS[0]
    association = R["WebAclAssociation"]
    assert association["Type"] == "AWS::WAFv2::WebACLAssociation" and association["Condition"] == "WithWebAcl"
    assert association["Properties"] == {"ResourceArn": {"Ref": "LoadBalancer"},
                                         "WebACLArn": {"Fn::GetAtt": ["WebAcl", "Arn"]}}


@pytest.mark.parametrize(("production", "enabled", "on"), [
    (True, None, True), (True, True, True), (False, None, False), (False, True, True), (False, False, False)])
def test_the_web_acl_is_on_in_production_and_where_a_setting_turns_it_on(production, enabled, on):
    s = load_settings(ROOT, "example").settings
    waf = s.stack.waf.model_copy(update={"enabled": enabled, "login_limit": 37, "webdav_limit": 4242})
    stack = s.stack.model_copy(update={"production": production, "waf": waf,
                                       "access_logs_bucket": "example-alb-logs" if production else None})
    params = stack_parameters(s.model_copy(update={"stack": stack}), image_id="ami-0123456789abcdef0", user_data="")
    assert (params["LoginRateLimit"], params["WebDavRateLimit"]) == ("37", "4242")
    assert evaluate_conditions(T, params)["WithWebAcl"] is on
    planned = dict(planned_resources(T, params))
    assert ("WebAcl" in planned and "WebAclAssociation" in planned) is on
    # A stack deployed by hand with Production=true gets it whatever RateLimits says.
    assert evaluate_conditions(T, {**params, "Production": "true", "RateLimits": "false"})["WithWebAcl"]


def test_production_requires_the_access_logs_in_the_template_too():
    (assertion,) = T["Rules"]["ProductionHasAccessLogs"]["Assertions"]
    assert T["Rules"]["ProductionHasAccessLogs"]["RuleCondition"] == {"Fn::Equals": [{"Ref": "Production"}, "true"]}
    assert assertion["Assert"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "AccessLogsBucket"}, ""]}]}
    attributes = props("LoadBalancer")["LoadBalancerAttributes"]
    assert {"Key": "access_logs.s3.enabled", "Value": {"Fn::If": ["HasAccessLogs", "true", "false"]}} in attributes


# ---- records ---------------------------------------------------------------------------------------------------
def test_flow_logs_record_all_traffic():
    (flow_log,) = of_type("AWS::EC2::FlowLog").values()
    assert flow_log["Properties"]["TrafficType"] == "ALL"  # accepted connections too: who reached what


def test_every_log_group_is_retained_and_expires():
    groups = of_type("AWS::Logs::LogGroup")
    assert len(groups) >= 2
    for name, group in groups.items():
        assert group.get("DeletionPolicy") == "Retain" and group.get("UpdateReplacePolicy") == "Retain", name
        assert group["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}, name


# ---- security groups: the chain and nothing else ----------------------------------------------------------------
def _rules() -> set[tuple[str, str, int, int, str]]:
    """(direction, group, from, to, peer) for every rule, inline or standalone."""
    found = set()

    def peer(rule: dict) -> str:
        for key in ("SourceSecurityGroupId", "DestinationSecurityGroupId"):
            if key in rule:
                return rule[key]["Ref"]
        return rule.get("CidrIp", "?")

    for name, sg in of_type("AWS::EC2::SecurityGroup").items():
        for direction, key in (("in", "SecurityGroupIngress"), ("out", "SecurityGroupEgress")):
            for rule in sg["Properties"].get(key, []):
                found.add((direction, name, rule.get("FromPort", -1), rule.get("ToPort", -1), peer(rule)))
    for rtype, direction in (("AWS::EC2::SecurityGroupIngress", "in"), ("AWS::EC2::SecurityGroupEgress", "out")):
        for rule in of_type(rtype).values():
            p = rule["Properties"]
            found.add((direction, p["GroupId"]["Ref"], p["FromPort"], p["ToPort"], peer(p)))
    return found


NO_EGRESS = "127.0.0.1/32"  # the rule that removes the default allow-all


def test_security_groups_are_chained_and_allow_nothing_else():
    assert _rules() == {
        ("in", "LoadBalancerSecurityGroup", 443, 443, "0.0.0.0/0"),
        ("in", "LoadBalancerSecurityGroup", 80, 80, "0.0.0.0/0"),
        ("out", "LoadBalancerSecurityGroup", -1, -1, NO_EGRESS),
        ("out", "LoadBalancerSecurityGroup", 80, 80, "InstanceSecurityGroup"),
        ("in", "InstanceSecurityGroup", 80, 80, "LoadBalancerSecurityGroup"),
        ("out", "InstanceSecurityGroup", 443, 443, "0.0.0.0/0"),
        ("out", "InstanceSecurityGroup", 5432, 5432, "DatabaseSecurityGroup"),
        ("out", "InstanceSecurityGroup", 6379, 6379, "CacheSecurityGroup"),
        ("in", "DatabaseSecurityGroup", 5432, 5432, "InstanceSecurityGroup"),
        ("in", "DatabaseSecurityGroup", 5432, 5432, "BootstrapSecurityGroup"),
        ("out", "DatabaseSecurityGroup", -1, -1, NO_EGRESS),
        # stack.database.proxy: the proxy sits in the database's group and reaches the database, nothing else
        ("out", "DatabaseSecurityGroup", 5432, 5432, "DatabaseSecurityGroup"),
        ("in", "DatabaseSecurityGroup", 5432, 5432, "DatabaseSecurityGroup"),
        ("in", "CacheSecurityGroup", 6379, 6379, "InstanceSecurityGroup"),
        ("out", "CacheSecurityGroup", -1, -1, NO_EGRESS),
        ("out", "BootstrapSecurityGroup", 443, 443, "0.0.0.0/0"),
        ("out", "BootstrapSecurityGroup", 80, 80, "0.0.0.0/0"),
        ("out", "BootstrapSecurityGroup", 5432, 5432, "DatabaseSecurityGroup"),
        ("in", "EndpointSecurityGroup", 443, 443, "InstanceSecurityGroup"),
        ("out", "EndpointSecurityGroup", -1, -1, NO_EGRESS),
    }
    assert not [r for r in _rules() if r[2] <= 22 <= r[3] and r[0] == "in"], "no SSH, anywhere"


def test_the_ports_the_rules_open_are_the_ports_the_services_listen_on():
    assert int(props("Database")["Port"]) == 5432
    assert props("Cache")["Port"] == 6379
    assert props("TargetGroup")["Port"] == 80
    settings = load_settings(ROOT, "example").settings
    assert (settings.database.port, settings.redis.port) == (5432, 6379)


# ---- the instance role: named resources only ----------------------------------------------------------------------
def _statements(role: str) -> dict[str, dict]:
    (policy,) = props(role)["Policies"]
    return {st["Sid"]: st for st in policy["PolicyDocument"]["Statement"]}


def test_the_instance_role_names_every_resource_it_can():
    statements = _statements("InstanceRole")
    wildcard = {sid for sid, st in statements.items() if st["Resource"] == "*"}
    assert wildcard == set(), "every statement of the instance role names its resources"
    assert statements["ClusterSecrets"]["Resource"] == [{"Ref": n} for n in (
        "InstanceIdSecret", "PasswordSaltSecret", "SecretSecret", "AdminPasswordSecret", "DatabasePasswordSecret",
        "CacheAuthTokenSecret")]
    health = statements["LivenessWatchdogReportsToItsOwnGroup"]
    assert health["Action"] == "autoscaling:SetInstanceHealth"
    assert health["Resource"]["Fn::Sub"].endswith(":autoScalingGroup:*:autoScalingGroupName/${GroupName}")
    assert "ManagedPolicyArns" not in props("InstanceRole"), "AmazonSSMManagedInstanceCore reads every parameter"
    for sid, st in statements.items():
        # The one deny narrows a grant (the admin password, below); every other statement allows.
        assert st["Effect"] == ("Deny" if sid == "AdminPasswordOnlyWhileInstalling" else "Allow"), sid
        assert not any(a.endswith(":*") or a == "*" for a in _list(st["Action"]))


def test_no_role_of_the_stack_is_granted_the_ssm_agents_calls():
    """The image carries no SSM agent (Debian's AMIs ship none, the bake installs none): its registration and
    channel calls are granted nowhere, neither by a role of the stack nor by the boundary that caps them."""
    boundary = json.loads((ROOT / "infra" / "iam" / "boundary" / "nextcloud-stack-boundary.json").read_text())
    documents = [boundary] + [p["PolicyDocument"] for r in load_template()["Resources"].values()
                              if r["Type"] == "AWS::IAM::Role" for p in r["Properties"].get("Policies", [])]
    actions = {a for d in documents for st in d["Statement"] for a in _list(st["Action"])}
    agent = {a for a in actions if a.split(":")[0] in ("ssmmessages", "ec2messages")}
    assert agent | (actions & {"ssm:UpdateInstanceInformation"}) == set()


def _list(v):
    return v if isinstance(v, list) else [v]


INSTALL_TAG = "nextcloud-image:install"  # resolve-secrets --seal-admin-password removes it (test_seal_admin_password)


def test_the_admin_password_is_readable_only_while_the_secret_carries_the_install_tag():
    """Every member may be the one that installs, so each may read the admin password - until the installing node
    removes the install tag (issue 23); then an explicit deny stops every member, whatever else grants it."""
    assert props("AdminPasswordSecret")["Tags"] == [{"Key": INSTALL_TAG, "Value": "pending"}]
    statements = _statements("InstanceRole")
    reads = {sid for sid, st in statements.items() if "secretsmanager:GetSecretValue" in _list(st["Action"])
             and {"Ref": "AdminPasswordSecret"} in _list(st["Resource"])}
    assert reads == {"ClusterSecrets", "AdminPasswordOnlyWhileInstalling"}
    deny = statements["AdminPasswordOnlyWhileInstalling"]
    assert (deny["Effect"], deny["Action"], deny["Resource"]) == (
        "Deny", "secretsmanager:GetSecretValue", {"Ref": "AdminPasswordSecret"})
    # StringNotEquals is true when the tag is absent too: no tag, no read.
    assert deny["Condition"] == {"StringNotEquals": {f"secretsmanager:ResourceTag/{INSTALL_TAG}": "pending"}}


def test_a_member_may_remove_only_the_install_tag_and_only_from_the_admin_password():
    statements = _statements("InstanceRole")
    tagging = {sid: st for sid, st in statements.items()
               if any(a.split(":")[1].startswith(("Tag", "Untag")) for a in _list(st["Action"]))}
    assert list(tagging) == ["SealAdminPassword"], "no member may add tags (that would reopen the password)"
    seal = tagging["SealAdminPassword"]
    assert (seal["Effect"], seal["Action"], seal["Resource"]) == (
        "Allow", "secretsmanager:UntagResource", {"Ref": "AdminPasswordSecret"})
    # ForAllValues alone is true for an empty TagKeys; Null false requires the key to be there.
    assert seal["Condition"] == {"ForAllValues:StringEquals": {"aws:TagKeys": [INSTALL_TAG]},
                                 "Null": {"aws:TagKeys": "false"}}


# ---- data-bearing resources survive a mistake ---------------------------------------------------------------------
def test_data_bearing_resources_are_retained_or_snapshotted():
    # The cache holds sessions and locks only: replacing it is refused, but nothing to keep once it is gone.
    kept = DATA_BEARING_TYPES - {"AWS::ElastiCache::ReplicationGroup"}
    # The proxy's login is a copy of the application's password in RDS Proxy's JSON form, rebuilt at every deploy.
    derived = props("DatabaseProxySecret")["SecretString"]["Fn::Sub"]
    assert "{{resolve:secretsmanager:${DatabasePasswordSecret}:SecretString}}" in derived
    data = {k: v for k, v in R.items() if v["Type"] in kept and k != "DatabaseProxySecret"}
    assert len(data) == 9  # key, bucket, database, six secrets
    for name, res in data.items():
        assert res.get("DeletionPolicy") in ("Retain", "Snapshot"), name
        assert res.get("UpdateReplacePolicy") in ("Retain", "Snapshot"), name
    assert props("Database")["DeletionProtection"] == {"Fn::If": ["IsProduction", True, False]}
    assert props("Database")["ManageMasterUserPassword"] is True and "MasterUserPassword" not in props("Database")
    assert props("Database")["BackupRetentionPeriod"] == {"Ref": "DatabaseBackupRetentionDays"}


def test_the_cluster_identity_is_generated_once_from_stable_inputs():
    instanceid = props("InstanceIdSecret")["SecretString"]
    assert "AWS::StackId" in str(instanceid), "derived from the stack's id: the same for the life of the stack"
    for name in ("PasswordSaltSecret", "SecretSecret"):
        assert props(name)["GenerateSecretString"]["ExcludePunctuation"] is True
    lifecycle = {r["Id"]: r for r in props("Bucket")["LifecycleConfiguration"]["Rules"]}
    assert lifecycle["abort-incomplete-multipart-uploads"]["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] == 7
    assert "NoncurrentVersionExpiration" in lifecycle["expire-old-versions"]
    assert props("Bucket")["VersioningConfiguration"] == {"Status": "Enabled"}


# ---- parameters, conditions and outputs agree with the code that uses them -----------------------------------------
def _example_parameters(**overrides):
    s = load_settings(ROOT, "example").settings
    return stack_parameters(s, image_id="", user_data="") | overrides


def test_deploy_stack_passes_exactly_the_templates_parameters_from_the_settings():
    s = load_settings(ROOT, "example").settings
    params = stack_parameters(s, image_id="ami-0123456789abcdef0", user_data="#cloud-config\n")
    assert set(params) == set(T["Parameters"])
    assert params["LaunchTemplateName"] == s.launch_template.name
    assert params["GroupName"] == s.autoscaling.group_name
    assert params["DatabaseName"] == s.database.name
    assert params["DomainName"] == s.site.domain
    assert params["InstanceWarmup"] == str(s.rollout.instance_warmup_seconds)
    assert params["DatabaseFreeStorageAlarmBytes"] == str(s.stack.database.allocated_storage_gb * 1024**3 // 10)


def test_before_an_ami_exists_there_is_no_group_and_with_one_there_is():
    without = dict(planned_resources(T, _example_parameters()))
    assert "Group" not in without and "CpuTargetTracking" not in without and "LaunchTemplate" in without
    with_image = dict(planned_resources(T, _example_parameters(ImageId="ami-0123456789abcdef0")))
    assert with_image["Group"] == "AWS::AutoScaling::AutoScalingGroup"
    two_azs = evaluate_conditions(T, _example_parameters(AvailabilityZoneCount="2", NatGateways="single"))
    assert not two_azs["ThreeAzs"] and not two_azs["NatPerAz"] and not two_azs["NatInAz3"]


def test_every_output_the_settings_layer_reads_exists_and_every_key_it_feeds_is_a_setting():
    outputs = T["Outputs"]
    for feed in MAPPING:
        assert feed.output in outputs, f"render/stack_outputs.py reads {feed.output}, which the template lacks"
        assert has_setting(feed.key) or feed.key in AWAITED, f"{feed.key} is no setting; fix the table"
    # Once another part of the project adds an awaited key, it must leave AWAITED (and starts flowing).
    assert not [k for k in AWAITED if has_setting(k)], "move these out of AWAITED: the settings have them now"


def test_the_wire_form_fits_cloudformations_template_body_limit():
    body = template_body()
    size = len(body.encode())
    assert size < TEMPLATE_BODY_LIMIT, (
        f"the template as sent is {size} bytes, over CloudFormation's {TEMPLATE_BODY_LIMIT}-byte TemplateBody: it is "
        "already compact YAML without Metadata or parameter/output descriptions (infra/stack/template.py). Deploy it "
        "from S3 instead (TemplateURL in infra/stack/deploy.py, a bucket that exists before the stack, the deployer's "
        "s3:PutObject in infra/iam/stack.json) or split infra/stack/nextcloud.yaml into nested stacks"
    )
    wire = read_body(body)
    assert "Metadata" not in wire and not [k for k, v in wire["Resources"].items() if "Metadata" in v]
    assert "checkov" not in body
    # What CloudFormation reads is the template itself: every section but what only labels it in the console.
    assert wire["Resources"] == json.loads(json.dumps({k: {x: y for x, y in v.items() if x != "Metadata"}
                                                       for k, v in R.items()}))
    assert wire["Conditions"] == T["Conditions"]
    assert wire["Parameters"] == {k: {x: y for x, y in v.items() if x != "Description"}
                                  for k, v in T["Parameters"].items()}
    assert wire["Outputs"] == {k: {x: y for x, y in v.items() if x != "Description"} for k, v in T["Outputs"].items()}
    assert set(wire) == set(T) - {"Metadata"}
    assert "!Ref " in body and '{"Ref"' not in body, "the short forms are what keep it under the limit"


@pytest.mark.slow
def test_cfn_lint_reads_the_wire_form_as_it_reads_the_template(tmp_path):
    """CloudFormation reads the body, not nextcloud.yaml: its YAML (short forms, quoting) must be a valid template."""
    wire = tmp_path / "wire.yaml"
    wire.write_text(template_body())
    proc = subprocess.run([str(ROOT / ".venv" / "bin" / "cfn-lint"), str(wire)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_wire_form_refuses_a_body_that_reads_back_differently(monkeypatch):
    """A short form the serializer gets wrong is refused before it reaches CloudFormation."""
    monkeypatch.setattr(template, "_SHORT", {**template._SHORT, "Fn::Select": "!Split"})
    with pytest.raises(RuntimeError, match="does not read back as the template"):
        template_body()


# ---- the types the emulator skips: their properties against cfn-lint's resource schemas ---------------------------
@pytest.mark.slow
def test_cfn_lint_finds_no_error_or_warning():
    proc = subprocess.run([str(ROOT / ".venv" / "bin" / "cfn-lint"), str(TEMPLATE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


BREAKS = [  # (the template's text, a mistake in a property of a type the emulator skips, what cfn-lint says)
    ("      TransitEncryptionEnabled: true\n", "      TransitEncryptionEnabled: sometimes\n", "E3012"),
    ("      AlarmName: !Sub \"nextcloud-${EnvironmentName}-latency\"\n",
     "      AlarmName: !Sub \"nextcloud-${EnvironmentName}-latency\"\n      Treshold: 3\n", "E3002"),
    ("      GenerateSecretString: {PasswordLength: 30, ExcludePunctuation: true}\n",
     "      GenerateSecretString: {PasswordLength: thirty, ExcludePunctuation: true}\n", "E3012"),
]


@pytest.mark.slow
def test_cfn_lint_checks_the_properties_of_types_the_emulator_skips(tmp_path):
    text = TEMPLATE.read_text()
    for needle, broken, _ in BREAKS:
        assert needle in text
        text = text.replace(needle, broken, 1)
    bad = tmp_path / "nextcloud.yaml"
    bad.write_text(text)
    proc = subprocess.run([str(ROOT / ".venv" / "bin" / "cfn-lint"), str(bad)], capture_output=True, text=True)
    assert proc.returncode != 0
    found = proc.stdout
    assert "sometimes" in found and "Treshold" in found and "thirty" in found, found
    assert {rule for _, _, rule in BREAKS} <= set(re.findall(r"\b[EW]\d{4}\b", found)), found
