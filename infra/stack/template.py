"""The stack template and its parameters: what deploy-stack sends to CloudFormation for an environment."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from cfnlint.decode import cfn_yaml

from render import capacity
from render.settings import Settings

TEMPLATE = Path(__file__).with_name("nextcloud.yaml")
# CloudFormation refuses a TemplateBody larger than this (bytes); larger templates must come from S3.
TEMPLATE_BODY_LIMIT = 51_200

# Resources whose replacement or deletion loses data: the database, the bucket, the cache (sessions, locks), the
# secrets (the cluster identity: a new salt or secret logs every user out) and the key that encrypts them all.
DATA_BEARING_TYPES = frozenset(
    {
        "AWS::RDS::DBInstance",
        "AWS::S3::Bucket",
        "AWS::ElastiCache::ReplicationGroup",
        "AWS::SecretsManager::Secret",
        "AWS::KMS::Key",
    }
)


@lru_cache(maxsize=4)
def _load(path: Path, mtime: float) -> dict[str, Any]:
    return json.loads(json.dumps(cfn_yaml.load(str(path))))


def load_template(path: Path = TEMPLATE) -> dict[str, Any]:
    """The template as plain data, short-form tags (!Ref, !Sub…) in their long form (Ref, Fn::Sub…)."""
    return _load(path, path.stat().st_mtime)


def template_body(path: Path = TEMPLATE) -> str:
    """What CloudFormation receives: the template without what only labels it, in compact YAML (short-form tags).

    Dropped: Metadata (console layout and checkov's skip reasons) and the parameters' and outputs' descriptions (console
    labels); the resources' own descriptions stay. The rest goes out as YAML, a line per resource (parameter, output)
    in flow style with the short intrinsic forms (``!Ref X`` for ``{"Ref": "X"}``), which CloudFormation reads as it
    would read nextcloud.yaml: about 8% smaller than compact JSON, and what keeps the stack under TemplateBody's limit.
    Refuses to return a body that does not read back as the same template.
    """
    doc = json.loads(json.dumps(load_template(path)))
    doc.pop("Metadata", None)
    for resource in doc["Resources"].values():
        resource.pop("Metadata", None)
    # A parameter's or output's Description only labels it in the console; the resources' own stay.
    for section in ("Parameters", "Outputs"):
        for entry in doc.get(section, {}).values():
            entry.pop("Description", None)
    # Block style for the sections and their entries (a line each; a body that starts with "{" could be taken for
    # JSON), flow style below.
    wire = _Block({k: _Block({n: _short_forms(e) for n, e in v.items()}) if isinstance(v, dict) else v
                   for k, v in doc.items()})
    body = yaml.dump(wire, Dumper=_WireDumper, default_flow_style=True, sort_keys=False, width=float("inf"),
                     allow_unicode=True)
    if read_body(body) != doc:
        raise RuntimeError(f"the wire form of {path} does not read back as the template: fix _short_forms")
    return body


def read_body(body: str) -> dict[str, Any]:
    """A template body as CloudFormation reads it, short forms in their long form (as load_template gives them)."""
    return json.loads(json.dumps(cfn_yaml.loads(body)))


# Intrinsic functions written with their short-form tag on the wire. Only with a string or list argument: a tag
# cannot carry another tag (``!Base64 !Ref X``), and moto (the stack tests' CloudFormation) reads a tag's mapping
# argument wrongly. Fn::GetAtt only as ``!GetAtt Resource.Attribute`` with an attribute without dots (moto splits at
# every dot); "Condition" stays long: it is also a resource attribute's name.
_SHORT = {"Ref": "!Ref", "Fn::Sub": "!Sub", "Fn::If": "!If", "Fn::Join": "!Join", "Fn::Select": "!Select",
          "Fn::Cidr": "!Cidr", "Fn::GetAZs": "!GetAZs", "Fn::Split": "!Split", "Fn::Base64": "!Base64",
          "Fn::Equals": "!Equals", "Fn::Not": "!Not", "Fn::And": "!And", "Fn::Or": "!Or", "Fn::FindInMap": "!FindInMap",
          "Fn::ImportValue": "!ImportValue", "Fn::GetAtt": "!GetAtt"}


class _Tagged:
    def __init__(self, tag: str, value: str | list[Any]) -> None:
        self.tag, self.value = tag, value


def _short_forms(node: Any) -> Any:
    if isinstance(node, list):
        return [_short_forms(v) for v in node]
    if not isinstance(node, dict):
        return node
    if len(node) == 1:
        (fn, arg), = node.items()
        if fn == "Fn::GetAtt":
            if isinstance(arg, list) and len(arg) == 2 and all(isinstance(a, str) for a in arg) and "." not in arg[1]:
                return _Tagged("!GetAtt", f"{arg[0]}.{arg[1]}")
        elif fn in _SHORT and isinstance(arg, (str, list)):
            return _Tagged(_SHORT[fn], _short_forms(arg))
    return {k: _short_forms(v) for k, v in node.items()}


class _Block(dict):
    """A mapping written in block style."""


class _WireDumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:  # an anchor would save nothing and moto reads none
        return True

    def choose_scalar_style(self) -> str:
        # PyYAML quotes every scalar with an explicit tag; after a short-form tag, a plain one reads the same.
        if self.analysis is None:
            self.analysis = self.analyze_scalar(self.event.value)
        if (self.event.tag in _SHORT.values() and not self.event.style and not self.analysis.empty
                and self.analysis.allow_flow_plain):
            return ""
        return super().choose_scalar_style()


def _represent_tagged(dumper: yaml.SafeDumper, node: _Tagged) -> yaml.Node:
    if isinstance(node.value, list):
        return dumper.represent_sequence(node.tag, node.value, flow_style=True)
    return dumper.represent_scalar(node.tag, node.value)


_WireDumper.add_representer(_Tagged, _represent_tagged)
_WireDumper.add_representer(_Block, lambda dumper, node: dumper.represent_mapping(
    "tag:yaml.org,2002:map", node, flow_style=False))


def stack_parameters(s: Settings, *, image_id: str, user_data: str) -> dict[str, str]:
    """Every template parameter, from the settings (and the image the group runs, and the rendered user data)."""
    st = s.stack
    db = st.database
    free_storage_alarm = db.allocated_storage_gb * 1024**3 // 10  # 10% of the allocated storage
    # The connection budget's figures (render/capacity.py), so the database and the check agree.
    max_connections = capacity.planned_max_connections(s)
    if max_connections is None:
        raise ValueError(f"stack.database.instance_class {db.instance_class!r} has no known memory: set "
                         "stack.database.max_connections")
    params = {
        "EnvironmentName": s.name,
        "Production": _bool(st.production),
        "VpcCidr": st.vpc_cidr,
        "AvailabilityZoneCount": str(st.availability_zones),
        "NatGateways": st.nat_gateways,
        "InterfaceEndpoints": _bool(st.interface_endpoints),
        "DomainName": s.site.domain,
        "CertificateArn": st.certificate_arn or "",
        "HostedZoneId": st.hosted_zone_id or "",
        "AccessLogsBucket": st.access_logs_bucket or "",
        "RateLimits": _bool(st.web_acl()),
        "LoginRateLimit": str(st.waf.login_limit),
        "WebDavRateLimit": str(st.waf.webdav_limit),
        "ImageId": image_id,
        "UserData": user_data,
        "InstanceType": s.instance_type,
        "RootVolumeSize": str(s.ami.root_volume_size_gb),
        "LaunchTemplateName": s.launch_template.name or "",
        "GroupName": s.autoscaling.group_name or "",
        "MinSize": str(st.min_size),
        "MaxSize": str(st.max_size),
        "DesiredCapacity": str(st.desired_capacity),
        "HealthCheckGracePeriod": str(st.health_check_grace_seconds),
        "InstanceWarmup": str(s.rollout.instance_warmup_seconds),
        "TargetCpuUtilization": str(st.target_cpu_percent),
        "InstanceMaxHealthyPercentage": str(capacity.MAINTENANCE_MAX_HEALTHY_PERCENTAGE),
        "DatabaseName": s.database.name,
        "DatabaseEngineVersion": db.engine_version,
        "DatabaseInstanceClass": db.instance_class,
        "DatabaseAllocatedStorage": str(db.allocated_storage_gb),
        "DatabaseMaxAllocatedStorage": str(db.max_allocated_storage_gb),
        "DatabaseMultiAz": _bool(db.multi_az),
        "DatabaseBackupRetentionDays": str(db.backup_retention_days),
        "DatabaseFreeStorageAlarmBytes": str(free_storage_alarm),
        "DatabaseUser": s.database.user,
        "DatabaseMaxConnections": str(max_connections),
        "DatabaseProxyEnabled": _bool(db.proxy),
        "DatabaseProxyMaxConnectionsPercent": str(capacity.proxy_max_connections_percent(max_connections)),
        "CacheEngine": st.cache.engine,
        "CacheEngineVersion": st.cache.engine_version,
        "CacheNodeType": st.cache.node_type,
        "CacheReplicas": str(st.cache.replicas),
        "LogRetentionDays": str(st.log_retention_days),
        "AlarmTopicArn": st.alarm_topic_arn or "",
    }
    return params


def _bool(v: bool) -> str:
    return "true" if v else "false"


def evaluate_conditions(template: dict[str, Any], parameters: dict[str, str]) -> dict[str, bool]:
    """The template's Conditions for these parameters (Fn::Equals/Not/And/Or over parameter Refs, as ours use)."""
    conditions = template.get("Conditions", {})
    defaults = {k: str(v.get("Default", "")) for k, v in template.get("Parameters", {}).items()}
    values = {**defaults, **parameters}
    done: dict[str, bool] = {}

    def value(node: Any) -> str:
        if isinstance(node, dict) and "Ref" in node:
            return values[node["Ref"]]
        return str(node)

    def cond(node: Any) -> bool:
        if isinstance(node, dict):
            (fn, args), = node.items()
            if fn == "Fn::Equals":
                return value(args[0]) == value(args[1])
            if fn == "Fn::Not":
                return not cond(args[0])
            if fn == "Fn::And":
                return all(cond(a) for a in args)
            if fn == "Fn::Or":
                return any(cond(a) for a in args)
            if fn == "Condition":
                return named(args)
        raise ValueError(f"unsupported condition {node!r}")

    def named(name: str) -> bool:
        if name not in done:
            done[name] = cond(conditions[name])
        return done[name]

    return {name: named(name) for name in conditions}


def planned_resources(template: dict[str, Any], parameters: dict[str, str]) -> list[tuple[str, str]]:
    """(logical id, type) of the resources a new stack would get with these parameters."""
    conditions = evaluate_conditions(template, parameters)
    return [
        (logical, res["Type"])
        for logical, res in template["Resources"].items()
        if conditions.get(res.get("Condition", ""), True)
    ]
