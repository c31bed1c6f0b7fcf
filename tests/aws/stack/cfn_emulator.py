"""moto's server with the parts of CloudFormation it lacks filled in: a test double for CloudFormation itself.

Run as ``python cfn_emulator.py -H 127.0.0.1 -p PORT`` (the same arguments as ``python -m moto.server``).

moto 5.2.5's CloudFormation falls short of AWS in ways the stack's first-deployment test would hit; each gap is
filled here as AWS documents the behaviour, and nothing else is changed:

1. Outputs and parameters: a stack created through a change set never gets its Outputs (moto builds them before
   the change set's template is applied), and keeps its first parameters, so an unchanged resubmission looks
   changed. AWS records both when the operation completes: they are set after ExecuteChangeSet.
2. Conditions and parameters on update: moto's change set diff ignores parameters, and its update never creates a
   resource whose Condition became true (or deletes one whose Condition became false). AWS evaluates Conditions
   with the new parameters: Add / Remove / Modify follow the resources whose conditions hold before and after.
   moto also adds new resources before it modifies existing ones, so a new group would read the launch template's
   old LatestVersionNumber; AWS follows the dependency graph. Here modifications run first, then additions: enough
   for this stack, whose added resources refer to modified ones and never the other way round.
3. Resource types moto's CloudFormation skips (and still reports success): the providers below create them the
   way CloudFormation's own providers do, by calling the service's API (which moto implements) from inside the
   server: Secrets Manager secrets (GenerateSecretString), ElastiCache subnet and replication groups (dynamic
   references ``{{resolve:secretsmanager:…}}`` resolved as CloudFormation does), CloudWatch alarms, target
   tracking policies, bucket policies, security group egress rules.
4. ``AWS::RDS::DBInstance`` with ManageMasterUserPassword: RDS creates the master secret; ``GetAtt
   MasterUserSecret.SecretArn`` answers its ARN.
5. ``Fn::Cidr``, which moto does not evaluate: the list of ``count`` subnets with ``bits`` host bits each.
6. Attributes moto's models lack: a target group's TargetGroupFullName / TargetGroupName and a load balancer's
   LoadBalancerFullName / CanonicalHostedZoneID (the full names from the ARNs, as AWS forms them; the zone is the
   ALB zone AWS publishes for eu-central-1); a DB parameter group's Ref is its name (moto hands over its model).
7. A security group's inline SecurityGroupEgress: moto ignores it and keeps the default allow-all egress; AWS
   replaces the default with the listed rules.

Which types moto creates itself and which come from here is what tests/aws/stack/test_stack_emulator.py lists.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import re
import secrets
import string
import sys
import traceback
import uuid
from typing import Any

import boto3
from moto.cloudformation import models as cfn_models
from moto.cloudformation import parsing
from moto.core.common_models import CloudFormationModel
from moto.rds import models as rds_models

_MODULE = "ncimage.cfn_emulator"
# The types this double provides (moto's CloudFormation has no model for them).
PROVIDED_TYPES: set[str] = set()
_DYNAMIC_SECRET = re.compile(r"\{\{resolve:secretsmanager:(?P<id>[^:}]+(?::[^:}]+){0,6}?):SecretString\}\}")


def _endpoint() -> str:
    return os.environ["NCIMAGE_CFN_EMULATOR_URL"]


def _client(service: str, region: str) -> Any:
    return boto3.client(
        service, region_name=region, endpoint_url=_endpoint(), aws_access_key_id="cloudformation",
        aws_secret_access_key="cloudformation",
    )


def _resolve_dynamic(value: Any, region: str) -> Any:
    """CloudFormation resolves ``{{resolve:secretsmanager:ARN:SecretString}}`` when it calls the provider."""
    if not isinstance(value, str) or "{{resolve:" not in value:
        return value

    def resolve(m: re.Match[str]) -> str:
        return _client("secretsmanager", region).get_secret_value(SecretId=m["id"])["SecretString"]

    return _DYNAMIC_SECRET.sub(resolve, value)


class _ApiResource(CloudFormationModel):
    """A resource CloudFormation creates through its service's API; subclasses say how."""
    __module__ = _MODULE  # moto's model metaclass wants a dotted module name

    TYPE = ""
    ATTRIBUTES: tuple[str, ...] = ()

    def __init__(self, physical_id: str, attributes: dict[str, Any] | None = None):
        self._physical_id = physical_id
        self._attributes = attributes or {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        PROVIDED_TYPES.add(cls.TYPE)

    @property
    def physical_resource_id(self) -> str:
        return self._physical_id

    @staticmethod
    def cloudformation_name_type() -> str:
        return ""

    @classmethod
    def cloudformation_type(cls) -> str:
        return cls.TYPE

    @classmethod
    def has_cfn_attr(cls, attr: str) -> bool:
        return attr in cls.ATTRIBUTES

    def get_cfn_attribute(self, attribute_name: str) -> Any:
        return self._attributes[attribute_name]

    @classmethod
    def create_from_cloudformation_json(  # type: ignore[override]
        cls, resource_name: str, cloudformation_json: dict[str, Any], account_id: str, region_name: str, **kwargs: Any
    ) -> _ApiResource:
        return cls.create(resource_name, cloudformation_json.get("Properties", {}), region_name)

    @classmethod
    def update_from_cloudformation_json(  # type: ignore[override]
        cls, original_resource: Any, new_resource_name: str, cloudformation_json: dict[str, Any], account_id: str,
        region_name: str,
    ) -> Any:
        return cls.update(original_resource, cloudformation_json.get("Properties", {}), region_name)

    @classmethod
    def delete_from_cloudformation_json(  # type: ignore[override]
        cls, resource_name: str, cloudformation_json: dict[str, Any], account_id: str, region_name: str
    ) -> None:
        return None

    @classmethod
    def create(cls, name: str, props: dict[str, Any], region: str) -> _ApiResource:
        raise NotImplementedError

    @classmethod
    def update(cls, original: _ApiResource, props: dict[str, Any], region: str) -> _ApiResource:
        return original


def _generate(spec: dict[str, Any]) -> str:
    """Secrets Manager's GetRandomPassword, as GenerateSecretString uses it."""
    alphabet = string.ascii_letters + string.digits
    if not spec.get("ExcludePunctuation"):
        alphabet += "!#$%&()*+,-.:;<=>?[]^_{|}~"
    excluded = set(spec.get("ExcludeCharacters", ""))
    alphabet = "".join(ch for ch in alphabet if ch not in excluded)
    return "".join(secrets.choice(alphabet) for _ in range(int(spec.get("PasswordLength", 32))))


class Secret(_ApiResource, CloudFormationModel):  # a direct subclass: moto lists only those
    __module__ = _MODULE  # moto's model metaclass wants a dotted module name
    TYPE = "AWS::SecretsManager::Secret"

    @classmethod
    def create(cls, name: str, props: dict[str, Any], region: str) -> _ApiResource:
        value = props.get("SecretString")
        if value is None:
            value = _generate(props.get("GenerateSecretString", {}))
        args = {"Name": props.get("Name") or name, "SecretString": value}
        if props.get("Description"):
            args["Description"] = props["Description"]
        arn = _client("secretsmanager", region).create_secret(**args)["ARN"]
        return cls(arn)


class CacheSubnetGroup(_ApiResource, CloudFormationModel):  # a direct subclass: moto lists only those
    __module__ = _MODULE  # moto's model metaclass wants a dotted module name
    TYPE = "AWS::ElastiCache::SubnetGroup"

    @classmethod
    def create(cls, name: str, props: dict[str, Any], region: str) -> _ApiResource:
        group = (props.get("CacheSubnetGroupName") or name).lower()
        _client("elasticache", region).create_cache_subnet_group(
            CacheSubnetGroupName=group, CacheSubnetGroupDescription=props["Description"],
            SubnetIds=list(props["SubnetIds"]),
        )
        return cls(group)


class ReplicationGroup(_ApiResource, CloudFormationModel):  # a direct subclass: moto lists only those
    __module__ = _MODULE  # moto's model metaclass wants a dotted module name
    TYPE = "AWS::ElastiCache::ReplicationGroup"
    ATTRIBUTES = ("PrimaryEndPoint.Address", "PrimaryEndPoint.Port")
    _ARGS = (
        "ReplicationGroupDescription", "Engine", "EngineVersion", "CacheNodeType", "NumNodeGroups",
        "ReplicasPerNodeGroup", "AutomaticFailoverEnabled", "MultiAZEnabled", "Port", "TransitEncryptionEnabled",
        "AtRestEncryptionEnabled", "KmsKeyId", "AuthToken", "CacheSubnetGroupName", "SecurityGroupIds",
        "SnapshotRetentionLimit", "AutoMinorVersionUpgrade",
    )
    _INTS = ("NumNodeGroups", "ReplicasPerNodeGroup", "Port", "SnapshotRetentionLimit")

    @classmethod
    def create(cls, name: str, props: dict[str, Any], region: str) -> _ApiResource:
        group_id = (props.get("ReplicationGroupId") or re.sub(r"[^a-z0-9-]", "", name.lower()))[:40].rstrip("-")
        args = {k: _resolve_dynamic(props[k], region) for k in cls._ARGS if k in props}
        for k in cls._INTS:
            if k in args:
                args[k] = int(args[k])
        for k in ("AutomaticFailoverEnabled", "MultiAZEnabled", "TransitEncryptionEnabled", "AtRestEncryptionEnabled",
                  "AutoMinorVersionUpgrade"):
            if k in args:
                args[k] = str(args[k]).lower() == "true"
        client = _client("elasticache", region)
        client.create_replication_group(ReplicationGroupId=group_id, **args)
        described = client.describe_replication_groups(ReplicationGroupId=group_id)["ReplicationGroups"][0]
        endpoint = described["NodeGroups"][0]["PrimaryEndpoint"]
        return cls(group_id, {"PrimaryEndPoint.Address": endpoint["Address"],
                              "PrimaryEndPoint.Port": str(endpoint["Port"])})


class Alarm(_ApiResource, CloudFormationModel):  # a direct subclass: moto lists only those
    __module__ = _MODULE  # moto's model metaclass wants a dotted module name
    TYPE = "AWS::CloudWatch::Alarm"
    _NUMBERS = {"Period": int, "EvaluationPeriods": int, "DatapointsToAlarm": int, "Threshold": float}

    @classmethod
    def create(cls, name: str, props: dict[str, Any], region: str) -> _ApiResource:
        args = dict(props)
        args.setdefault("AlarmName", name)
        for key, kind in cls._NUMBERS.items():
            if key in args:
                args[key] = kind(args[key])
        _client("cloudwatch", region).put_metric_alarm(**args)
        return cls(args["AlarmName"])

    @classmethod
    def update(cls, original: _ApiResource, props: dict[str, Any], region: str) -> _ApiResource:
        return cls.create(original.physical_resource_id, {**props, "AlarmName": original.physical_resource_id}, region)


class ScalingPolicy(_ApiResource, CloudFormationModel):  # a direct subclass: moto lists only those
    __module__ = _MODULE  # moto's model metaclass wants a dotted module name
    TYPE = "AWS::AutoScaling::ScalingPolicy"

    @classmethod
    def create(cls, name: str, props: dict[str, Any], region: str) -> _ApiResource:
        config = json.loads(json.dumps(props["TargetTrackingConfiguration"]))
        config["TargetValue"] = float(config["TargetValue"])
        client = _client("autoscaling", region)
        client.put_scaling_policy(
            AutoScalingGroupName=props["AutoScalingGroupName"], PolicyName=name, PolicyType=props["PolicyType"],
            TargetTrackingConfiguration=config,
        )  # moto's answer lacks PolicyARN: read it back
        (policy,) = client.describe_policies(AutoScalingGroupName=props["AutoScalingGroupName"],
                                             PolicyNames=[name])["ScalingPolicies"]
        return cls(policy["PolicyARN"])


class BucketPolicy(_ApiResource, CloudFormationModel):  # a direct subclass: moto lists only those
    __module__ = _MODULE  # moto's model metaclass wants a dotted module name
    TYPE = "AWS::S3::BucketPolicy"

    @classmethod
    def create(cls, name: str, props: dict[str, Any], region: str) -> _ApiResource:
        _client("s3", region).put_bucket_policy(Bucket=props["Bucket"], Policy=json.dumps(props["PolicyDocument"]))
        return cls(props["Bucket"])


class SecurityGroupEgress(_ApiResource, CloudFormationModel):  # a direct subclass: moto lists only those
    __module__ = _MODULE  # moto's model metaclass wants a dotted module name
    TYPE = "AWS::EC2::SecurityGroupEgress"

    @classmethod
    def create(cls, name: str, props: dict[str, Any], region: str) -> _ApiResource:
        permission: dict[str, Any] = {"IpProtocol": props["IpProtocol"]}
        for key in ("FromPort", "ToPort"):
            if key in props:
                permission[key] = int(props[key])
        if "DestinationSecurityGroupId" in props:
            permission["UserIdGroupPairs"] = [
                {"GroupId": props["DestinationSecurityGroupId"], "Description": props.get("Description", "")}
            ]
        if "CidrIp" in props:
            permission["IpRanges"] = [{"CidrIp": props["CidrIp"], "Description": props.get("Description", "")}]
        _client("ec2", region).authorize_security_group_egress(GroupId=props["GroupId"], IpPermissions=[permission])
        return cls(f"{props['GroupId']}|{name}")


# ---- 4. RDS's managed master secret --------------------------------------------------------------------------
_create_database = rds_models.DBInstance.create_from_cloudformation_json.__func__  # type: ignore[attr-defined]
_database_attribute = rds_models.DBInstance.get_cfn_attribute


def _create_database_with_managed_secret(cls: Any, resource_name: str, cloudformation_json: dict[str, Any],
                                         account_id: str, region_name: str, **kwargs: Any) -> Any:
    props = cloudformation_json.get("Properties", {})
    managed = str(props.get("ManageMasterUserPassword", "")).lower() == "true"
    if managed:  # RDS generates the password itself; moto's model wants one
        props.setdefault("MasterUserPassword", _generate({"PasswordLength": 32, "ExcludePunctuation": True}))
    group = props.get("DBParameterGroupName")
    if group is not None and not isinstance(group, str):  # moto's Ref hands over its model, RDS wants the name
        props["DBParameterGroupName"] = group.name
    database = _create_database(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs)
    if managed:
        secret = json.dumps({"username": props.get("MasterUsername", ""), "password": props["MasterUserPassword"]})
        database._managed_master_secret_arn = _client("secretsmanager", region_name).create_secret(
            Name=f"rds!db-{uuid.uuid4()}", SecretString=secret
        )["ARN"]
    return database


def _database_attribute_with_secret(self: Any, attribute_name: str) -> Any:
    if attribute_name == "MasterUserSecret.SecretArn" and getattr(self, "_managed_master_secret_arn", None):
        return self._managed_master_secret_arn
    return _database_attribute(self, attribute_name)


# ---- 2. conditions and parameters on update -----------------------------------------------------------------
def _active(resource_map: Any, template: dict[str, Any], conditions: Any) -> set[str]:
    return {
        name for name, res in template.get("Resources", {}).items()
        if "Condition" not in res or conditions[res["Condition"]]
    }


def _conditions_for(resource_map: Any, template: dict[str, Any], parameters: dict[str, Any]) -> Any:
    probe = parsing.ResourceMap(
        resource_map.stack_id, resource_map["AWS::StackName"], parameters, {}, account_id=resource_map._account_id,
        region_name=resource_map._region_name, template=template, cross_stack_resources={},
    )
    probe.load_mapping()
    probe.transform_mapping()
    probe.load_parameters()
    probe.load_conditions()
    return probe.lazy_condition_map


def _resource_diff(self: Any, other_template: dict[str, Any], parameters: dict[str, Any] | None = None) -> dict:
    if getattr(self, "_ncimage_phase", None):
        return {k: list(v) for k, v in self._ncimage_phase.items()}
    parameters = dict(self.input_parameters if parameters is None else parameters)
    old_template = self._template or {"Resources": self._resource_json_map}
    before = _active(self, old_template, self.lazy_condition_map) if self._resource_json_map else set()
    after = _active(self, other_template, _conditions_for(self, other_template, parameters))
    changed = [p for p in parameters if self.input_parameters.get(p) != parameters[p]]
    old, new = self._resource_json_map, other_template["Resources"]
    modify = []
    for name in sorted(before & after):
        refs = parsing.get_references_from_template(new[name])
        if new[name] != old.get(name) or any(p in refs for p in changed):
            modify.append(name)
    return {"Add": sorted(after - before), "Modify": modify, "Remove": sorted(before - after)}


_update = parsing.ResourceMap.update


def _update_modifications_first(self: Any, template: dict[str, Any], parameters: dict[str, Any] | None = None) -> None:
    diff = _resource_diff(self, template, parameters)
    phases = [diff]
    if diff["Add"] and diff["Modify"]:
        phases = [{"Add": [], "Modify": diff["Modify"], "Remove": diff["Remove"]},
                  {"Add": diff["Add"], "Modify": [], "Remove": []}]
    try:
        for phase in phases:
            self._ncimage_phase = phase
            _update(self, template, parameters)
    finally:
        self._ncimage_phase = None


def _change_set_diff(self: Any) -> list[Any]:
    rmap = self.stack.resource_map
    diff = _resource_diff(rmap, self.template_dict, self.parameters)
    changes = []
    for action, names in diff.items():
        for name in names:
            source = self.template_dict["Resources"] if action != "Remove" else rmap._resource_json_map
            changes.append(cfn_models.Change(action=action, logical_resource_id=name,
                                             resource_type=source[name]["Type"]))
    return changes


# ---- 5. Fn::Cidr --------------------------------------------------------------------------------------------
_clean_json = parsing.clean_json


def _clean_json_with_cidr(resource_json: Any, resources_map: Any) -> Any:
    if isinstance(resource_json, dict) and "Fn::Cidr" in resource_json:
        block, count, bits = (_clean_json_with_cidr(x, resources_map) for x in resource_json["Fn::Cidr"])
        network = ipaddress.ip_network(block)
        subnets = network.subnets(new_prefix=network.max_prefixlen - int(bits))
        return [str(net) for net in itertools.islice(subnets, int(count))]
    return _clean_json(resource_json, resources_map)


# ---- 1. outputs after a change set executes -----------------------------------------------------------------
_execute_change_set = cfn_models.CloudFormationBackend.execute_change_set


def _execute_change_set_with_outputs(self: Any, change_set_name: str, stack_name: str | None = None) -> None:
    try:
        _execute_change_set(self, change_set_name, stack_name)
    except Exception:
        traceback.print_exc()  # into the server's log: the 500 the client sees says nothing
        raise
    change_set = self.change_sets.get(change_set_name) or next(
        cs for cs in self.change_sets.values() if cs.change_set_name == change_set_name
    )
    stack = change_set.stack
    stack._parse_template()
    stack.output_map = stack._create_output_map()
    stack.parameters = dict(change_set.parameters)


# ---- 6. missing attributes ------------------------------------------------------------------------------------
def _target_group_attribute(self: Any, attribute_name: str) -> Any:
    full = self.arn.split(":", 5)[5]  # targetgroup/NAME/ID
    return {"TargetGroupFullName": full, "TargetGroupName": full.split("/")[1], "TargetGroupArn": self.arn}[
        attribute_name
    ]


_load_balancer_attribute: Any = None


def _load_balancer_attribute_full(self: Any, attribute_name: str) -> Any:
    if attribute_name == "LoadBalancerFullName":
        return self.arn.split(":", 5)[5].removeprefix("loadbalancer/")  # app/NAME/ID
    if attribute_name == "CanonicalHostedZoneID":
        return "Z215JYRZR1TBD5"
    return _load_balancer_attribute(self, attribute_name)


# ---- 7. inline egress rules ------------------------------------------------------------------------------------
_create_security_group: Any = None


def _create_security_group_with_egress(cls: Any, resource_name: str, cloudformation_json: dict[str, Any],
                                       account_id: str, region_name: str, **kwargs: Any) -> Any:
    group = _create_security_group(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs)
    rules = cloudformation_json.get("Properties", {}).get("SecurityGroupEgress")
    if rules:
        ec2 = _client("ec2", region_name)
        ec2.revoke_security_group_egress(GroupId=group.id, IpPermissions=[
            {"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
        for rule in rules:
            SecurityGroupEgress.create(resource_name, {**rule, "GroupId": group.id}, region_name)
    return group


def install() -> None:
    global _load_balancer_attribute, _create_security_group
    from moto.ec2.models import security_groups

    _create_security_group = security_groups.SecurityGroup.create_from_cloudformation_json.__func__
    security_groups.SecurityGroup.create_from_cloudformation_json = classmethod(_create_security_group_with_egress)
    from moto.elbv2 import models as elbv2_models

    elbv2_models.FakeTargetGroup.get_cfn_attribute = _target_group_attribute
    _load_balancer_attribute = elbv2_models.FakeLoadBalancer.get_cfn_attribute
    elbv2_models.FakeLoadBalancer.get_cfn_attribute = _load_balancer_attribute_full
    rds_models.DBInstance.create_from_cloudformation_json = classmethod(_create_database_with_managed_secret)
    rds_models.DBInstance.get_cfn_attribute = _database_attribute_with_secret
    parsing.clean_json = _clean_json_with_cidr
    parsing.ResourceMap.build_resource_diff = _resource_diff
    parsing.ResourceMap.update = _update_modifications_first
    cfn_models.ChangeSet.diff = _change_set_diff
    cfn_models.CloudFormationBackend.execute_change_set = _execute_change_set_with_outputs
    parsing.get_model_list.cache_clear()
    parsing.get_model_map.cache_clear()


if __name__ == "__main__":
    from moto import server

    install()
    server.main(sys.argv[1:])
