"""deploy-stack's change-set display and its refusal to destroy data, with realistic AWS answers.

The emulator's change sets carry no Replacement and no Details, so AWS's answers are written here the way the
CloudFormation API documents them (ResourceChange.Action Add/Modify/Remove, Replacement True/False/Conditional,
Details[].Target.RequiresRecreation Always/Conditionally/Never) and botocore's Stubber validates every request
and every response against botocore's service model. The code under test is exactly deploy-stack's.
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from infra.aws.session import Aws
from infra.rollout.refresh import ACTIVE
from infra.stack.changes import parse_changes, render_diff
from infra.stack.deploy import DRY_RUN_ALLOWED, Options, deploy_stack
from render.outputs import render_user_data
from render.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
REGION, ACCOUNT = "eu-central-1", "123456789012"
STACK = "nextcloud-example"
STACK_ID = f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/{STACK}/5f0e7d10-8a1b-11ef-9c3a-0a8b2c4d6e10"
CHANGE_SET = f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:changeSet/deploy-20261201-120000/0b1c2d3e-4f50-6172-8394"
CERT = f"arn:aws:acm:{REGION}:{ACCOUNT}:certificate/0f5a4c3e-2b1d-4e6f-8a7b-9c0d1e2f3a4b"
GROUP_AMI = "ami-0feedfacecafe1234"


def _secret(name: str) -> str:
    return f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:nextcloud/example/{name}-AbCdEf"


OUTPUTS = {
    "DatabaseAddress": "nextcloud-example.c1a2b3c4d5e6.eu-central-1.rds.amazonaws.com", "DatabasePort": "5432",
    "CacheAddress": "master.nextcloud-example.abcdef.euc1.cache.amazonaws.com", "CachePort": "6379",
    "BucketName": "nextcloud-example-bucket-1a2b3c4d5e6f", "BucketRegion": REGION,
    "PublicSubnetCidrs": "10.0.0.0/20,10.0.16.0/20,10.0.32.0/20",
    "DatabasePasswordSecretArn": _secret("database-password"), "CacheAuthTokenSecretArn": _secret("cache-auth-token"),
    "InstanceIdSecretArn": _secret("instanceid"), "PasswordSaltSecretArn": _secret("passwordsalt"),
    "SecretSecretArn": _secret("secret"), "AdminPasswordSecretArn": _secret("admin-password"),
    "LaunchTemplateName": "nextcloud-example", "GroupName": "nextcloud-example",
    "LaunchTemplateId": "lt-0a1b2c3d4e5f60718",
}


def change(action: str, logical: str, rtype: str, replacement: str | None = None,
           details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    rc: dict[str, Any] = {"Action": action, "LogicalResourceId": logical, "ResourceType": rtype}
    if action != "Add":
        rc["PhysicalResourceId"] = f"physical-{logical.lower()}"
    if action == "Modify":
        rc["Replacement"] = replacement or "False"
        rc["Scope"] = ["Properties"]
        rc["Details"] = details or []
    return {"Type": "Resource", "ResourceChange": rc}


def detail(name: str, recreation: str, source: str = "DirectModification", entity: str | None = None) -> dict:
    d: dict[str, Any] = {"Target": {"Attribute": "Properties", "Name": name, "RequiresRecreation": recreation},
                         "Evaluation": "Static", "ChangeSource": source}
    if entity:
        d["CausingEntity"] = entity
    return d


REPLACE_DATABASE = change("Modify", "Database", "AWS::RDS::DBInstance", "True",
                          [detail("DBInstanceIdentifier", "Always", "ParameterReference", "EnvironmentName")])
MAYBE_REPLACE_CACHE = change("Modify", "Cache", "AWS::ElastiCache::ReplicationGroup", "Conditional",
                             [detail("CacheSubnetGroupName", "Conditionally", "ResourceReference", "CacheSubnetGroup")])
REMOVE_BUCKET = change("Remove", "Bucket", "AWS::S3::Bucket")
REGENERATE_SALT = change("Modify", "PasswordSaltSecret", "AWS::SecretsManager::Secret", "False",
                         [detail("GenerateSecretString", "Never")])
NEW_IMAGE_IN_TEMPLATE = change("Modify", "LaunchTemplate", "AWS::EC2::LaunchTemplate", "False",
                               [detail("LaunchTemplateData", "Never", "ParameterReference", "UserData")])
REPLACE_TARGET_GROUP = change("Modify", "TargetGroup", "AWS::ElasticLoadBalancingV2::TargetGroup", "True",
                              [detail("Port", "Always")])
ADD_ALARM = change("Add", "LatencyAlarm", "AWS::CloudWatch::Alarm")


def described(changes: list[dict], status: str = "CREATE_COMPLETE", reason: str | None = None) -> dict:
    answer = {
        "ChangeSetName": "deploy-20261201-120000", "ChangeSetId": CHANGE_SET, "StackId": STACK_ID, "StackName": STACK,
        "Status": status, "ExecutionStatus": "AVAILABLE" if status == "CREATE_COMPLETE" else "UNAVAILABLE",
        "Capabilities": ["CAPABILITY_IAM"], "Changes": changes,
        "CreationTime": dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC),
    }
    if reason:
        answer["StatusReason"] = reason
    return answer


def stack(status: str = "UPDATE_COMPLETE") -> dict:
    return {"Stacks": [{
        "StackId": STACK_ID, "StackName": STACK, "StackStatus": status,
        "CreationTime": dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
        "Outputs": [{"OutputKey": k, "OutputValue": v} for k, v in OUTPUTS.items()],
    }]}


def event(n: int, logical: str, status: str, rtype: str, reason: str | None = None) -> dict:
    e = {"StackId": STACK_ID, "EventId": f"event-{n}", "StackName": STACK, "LogicalResourceId": logical,
         "ResourceType": rtype, "ResourceStatus": status,
         "Timestamp": dt.datetime(2026, 12, 1, 12, 0, n, tzinfo=dt.UTC)}
    if reason:
        e["ResourceStatusReason"] = reason
    return e


class FakeAws:
    """AWS's documented answers, in the order deploy-stack asks; Stubber checks the shapes against botocore."""

    def __init__(self, dry_run: bool = False):
        session = boto3.session.Session(aws_access_key_id="a", aws_secret_access_key="b", region_name=REGION)
        self.aws = Aws(region=REGION, session=session, dry_run=dry_run, allow_in_dry_run=frozenset(DRY_RUN_ALLOWED))
        self.stubs = {svc: Stubber(self.aws.client(svc)) for svc in ("sts", "cloudformation", "autoscaling", "ec2")}
        self.sent: dict[str, dict] = {}
        self.aws.client("cloudformation").meta.events.register(
            "before-parameter-build.cloudformation.*", self._capture
        )
        self.stubs["sts"].add_response("get_caller_identity", {
            "Account": ACCOUNT, "Arn": f"arn:aws:iam::{ACCOUNT}:user/operator", "UserId": "AIDAEXAMPLE"})

    def _capture(self, params: dict, model: Any, **_: Any) -> None:
        self.sent[model.name] = dict(params)

    def existing_stack_with_group(self, refreshes: list[dict] | None = None) -> FakeAws:
        """A stack whose group launches GROUP_AMI; ``refreshes``: the group's instance refreshes (none by default)."""
        cfn = self.stubs["cloudformation"]
        cfn.add_response("describe_stacks", stack(), {"StackName": STACK})
        self.stubs["autoscaling"].add_response("describe_auto_scaling_groups", {"AutoScalingGroups": [{
            "AutoScalingGroupName": "nextcloud-example", "MinSize": 2, "MaxSize": 4, "DesiredCapacity": 2,
            "DefaultCooldown": 300, "AvailabilityZones": ["eu-central-1a"], "HealthCheckType": "EC2",
            "CreatedTime": dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
            "LaunchTemplate": {"LaunchTemplateId": "lt-0a1b2c3d4e5f60718", "LaunchTemplateName": "nextcloud-example",
                               "Version": "7"},
        }]}, {"AutoScalingGroupNames": ["nextcloud-example"]})
        self.stubs["ec2"].add_response("describe_launch_template_versions", {"LaunchTemplateVersions": [{
            "LaunchTemplateId": "lt-0a1b2c3d4e5f60718", "LaunchTemplateName": "nextcloud-example",
            "VersionNumber": 7, "LaunchTemplateData": {"ImageId": GROUP_AMI, "InstanceType": "t3.medium"},
        }]}, {"LaunchTemplateId": "lt-0a1b2c3d4e5f60718", "Versions": ["7"]})
        self.stubs["autoscaling"].add_response("describe_instance_refreshes", {
            "InstanceRefreshes": refreshes or []}, {"AutoScalingGroupName": "nextcloud-example"})
        if not any(r["Status"] in ACTIVE for r in refreshes or []):
            cfn.add_response("create_change_set", {"Id": CHANGE_SET, "StackId": STACK_ID})
        return self

    def change_set(self, changes: list[dict]) -> FakeAws:
        cfn = self.stubs["cloudformation"]
        cfn.add_response("describe_change_set", described(changes))  # the waiter
        cfn.add_response("describe_change_set", described(changes), {"ChangeSetName": CHANGE_SET, "StackName": STACK})
        return self

    def deleted(self) -> FakeAws:
        self.stubs["cloudformation"].add_response("delete_change_set", {},
                                                  {"ChangeSetName": CHANGE_SET, "StackName": STACK})
        return self

    def executed(self, events: list[dict], final: str) -> FakeAws:
        cfn = self.stubs["cloudformation"]
        old = [event(0, STACK, "UPDATE_COMPLETE", "AWS::CloudFormation::Stack")]
        cfn.add_response("describe_stack_events", {"StackEvents": old}, {"StackName": STACK})
        cfn.add_response("execute_change_set", {}, {"ChangeSetName": CHANGE_SET, "StackName": STACK})
        cfn.add_response("describe_stack_events", {"StackEvents": list(reversed(events)) + old}, {"StackName": STACK})
        cfn.add_response("describe_stacks", stack(final), {"StackName": STACK})
        return self

    def __enter__(self) -> FakeAws:
        for stub in self.stubs.values():
            stub.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        for stub in self.stubs.values():
            stub.deactivate()

    def assert_all_asked(self) -> None:
        for stub in self.stubs.values():
            stub.assert_no_pending_responses()


@pytest.fixture
def root(tmp_path, monkeypatch) -> Path:
    for name in list(__import__("os").environ):
        if name.startswith(("AWS_", "NCIMAGE_")):
            monkeypatch.delenv(name)
    (tmp_path / "environments").mkdir()
    shutil.copy(ROOT / "environments" / "example.toml", tmp_path / "environments" / "example.toml")
    # The operator's file without the values the stack provides (they come from its outputs), plus a certificate.
    text = (tmp_path / "environments" / "example.toml").read_text()
    keep = [line for line in text.splitlines() if not line.startswith(
        ("host =", "port =", "tls =", "bucket =", "trusted_proxies =", "db_password =", "redis_password =",
         "instanceid =", "passwordsalt =", "secret =", "admin_password ="))]
    text = "\n".join(keep).replace("# certificate_arn = ", f'certificate_arn = "{CERT}"  # was: ', 1)
    (tmp_path / "environments" / "example.toml").write_text(text + "\n")
    return tmp_path


def run(root: Path, fake: FakeAws, confirm=None, **options) -> tuple[Any, list[str]]:
    lines: list[str] = []
    with fake:
        verdict = deploy_stack(root, "example", options=Options(poll_seconds=0, **options), say=lines.append,
                               confirm=confirm, aws=fake.aws)
    fake.assert_all_asked()
    return verdict, lines


@pytest.mark.parametrize(
    ("risky", "what"),
    [
        (REPLACE_DATABASE, "Database (AWS::RDS::DBInstance) would be replaced by a new, empty one: "
                           "DBInstanceIdentifier (parameter EnvironmentName), new resource"),
        (MAYBE_REPLACE_CACHE, "Cache (AWS::ElastiCache::ReplicationGroup) would be possibly replaced"),
        (REMOVE_BUCKET, "Bucket (AWS::S3::Bucket) would be deleted"),
        (REGENERATE_SALT, "PasswordSaltSecret (AWS::SecretsManager::Secret) would be given a new value"),
    ],
    ids=["replace-database", "conditional-cache", "remove-bucket", "regenerate-identity"],
)
def test_a_change_set_that_would_destroy_data_is_shown_loudly_and_refused(root, risky, what):
    fake = FakeAws().existing_stack_with_group().change_set([ADD_ALARM, risky, NEW_IMAGE_IN_TEMPLATE]).deleted()
    verdict, lines = run(root, fake, yes=True)
    text = "\n".join(lines)
    assert verdict.word == "refused" and verdict.exit_code == 3, verdict
    assert "--allow-data-loss" in verdict.detail and "nothing was executed" in verdict.detail
    assert "DATA LOSS" in text and what in text, text
    assert "ExecuteChangeSet" not in fake.sent


def test_with_allow_data_loss_it_executes_and_shows_the_events(root):
    events = [event(1, "Database", "UPDATE_IN_PROGRESS", "AWS::RDS::DBInstance", "Requested update requires the "
                    "creation of a new physical resource; hence creating one."),
              event(2, "Database", "UPDATE_COMPLETE", "AWS::RDS::DBInstance"),
              event(3, STACK, "UPDATE_COMPLETE", "AWS::CloudFormation::Stack")]
    fake = FakeAws().existing_stack_with_group().change_set([REPLACE_DATABASE]).executed(events, "UPDATE_COMPLETE")
    verdict, lines = run(root, fake, yes=True, allow_data_loss=True)
    assert verdict.word == "updated" and verdict.ok, verdict
    assert [ln for ln in lines if "Database" in ln and "UPDATE_IN_PROGRESS" in ln and "new physical" in ln]
    assert (root / "build" / "example" / "stack-outputs.json").is_file()


def test_a_failed_execution_names_the_resource_and_its_reason(root):
    events = [event(1, "Cache", "UPDATE_IN_PROGRESS", "AWS::ElastiCache::ReplicationGroup"),
              event(2, "Cache", "UPDATE_FAILED", "AWS::ElastiCache::ReplicationGroup",
                    "Cache node type cache.t4g.huge is not supported (Service: ElastiCache, Status Code: 400)"),
              event(3, STACK, "UPDATE_ROLLBACK_COMPLETE", "AWS::CloudFormation::Stack")]
    fake = FakeAws().existing_stack_with_group().change_set([ADD_ALARM]).executed(events, "UPDATE_ROLLBACK_COMPLETE")
    verdict, _ = run(root, fake, yes=True)
    assert verdict.word == "failed" and verdict.exit_code == 1
    assert "UPDATE_ROLLBACK_COMPLETE" in verdict.detail
    assert "Cache (AWS::ElastiCache::ReplicationGroup): Cache node type cache.t4g.huge is not supported" in (
        verdict.detail)


def test_a_replacement_of_a_resource_without_data_asks_and_a_no_executes_nothing(root):
    asked: list[str] = []
    fake = FakeAws().existing_stack_with_group().change_set([REPLACE_TARGET_GROUP]).deleted()
    verdict, lines = run(root, fake, confirm=lambda prompt: asked.append(prompt) or False)
    assert asked == [f"execute these 1 changes on {STACK}? [y/N] "]
    assert verdict.word == "cancelled" and verdict.exit_code == 1
    assert "DATA LOSS" not in "\n".join(lines)
    assert [ln for ln in lines if ln.startswith("  ! REPLACE") and "TargetGroup" in ln and "Port (template)" in ln]


def test_no_changes_is_up_to_date_and_exit_0(root):
    fake = FakeAws().existing_stack_with_group()
    reason = "The submitted information didn't contain changes. Submit different information to create a change set."
    fake.stubs["cloudformation"].add_response("describe_change_set", described([], "FAILED", reason))  # the waiter
    fake.stubs["cloudformation"].add_response("describe_change_set", described([], "FAILED", reason))
    fake.deleted()
    verdict, _ = run(root, fake, yes=True)
    assert (verdict.word, verdict.exit_code) == ("up to date", 0)


def test_a_dry_run_shows_the_risk_deletes_the_change_set_and_cannot_execute(root):
    fake = FakeAws(dry_run=True).existing_stack_with_group().change_set([REPLACE_DATABASE]).deleted()
    verdict, lines = run(root, fake, dry_run=True, yes=True, allow_data_loss=True)
    assert (verdict.word, verdict.exit_code) == ("planned", 0)
    assert "DATA LOSS" in "\n".join(lines)
    assert not (root / "build" / "example" / "stack-outputs.json").exists(), "a dry run writes nothing"


def test_the_image_parameter_is_the_one_the_group_runs_and_the_user_data_is_renders(root):
    fake = FakeAws().existing_stack_with_group().change_set([]).deleted()
    run(root, fake, dry_run=False, confirm=lambda _: False)
    params = {p["ParameterKey"]: p["ParameterValue"] for p in fake.sent["CreateChangeSet"]["Parameters"]}
    assert params["ImageId"] == GROUP_AMI, "deploy-stack never changes the AMI the group runs"
    assert params["UserData"] == render_user_data(load_settings(root, "example").settings)
    assert OUTPUTS["DatabasePasswordSecretArn"] in params["UserData"]
    assert fake.sent["CreateChangeSet"]["Capabilities"] == ["CAPABILITY_IAM"]


def refresh(status: str, percent: int) -> dict:
    return {"InstanceRefreshId": f"0e1d2c3b-{status.lower()[:4]:0<4}-4a5b-8c7d-6e5f4a3b2c1d",
            "AutoScalingGroupName": "nextcloud-example", "Status": status, "PercentageComplete": percent,
            "StartTime": dt.datetime(2026, 12, 1, 11, 0, tzinfo=dt.UTC)}


@pytest.mark.parametrize("status", ["Pending", "InProgress", "Baking", "RollbackInProgress", "Cancelling"])
@pytest.mark.parametrize("dry_run", [False, True], ids=["apply", "dry-run"])
def test_while_an_instance_refresh_runs_it_refuses_and_creates_no_change_set(root, status, dry_run):
    """The group still launches its old image until the refresh ends: an update then would pin that under it."""
    fake = FakeAws(dry_run=dry_run).existing_stack_with_group([refresh(status, 50), refresh("Successful", 100)])
    verdict, _ = run(root, fake, yes=True, dry_run=dry_run)
    assert (verdict.word, verdict.exit_code) == ("refused", 3), verdict
    assert f"{status} at 50%" in verdict.detail and GROUP_AMI in verdict.detail
    assert "`inv rollback --env example`" in verdict.detail and "nothing was changed" in verdict.detail
    assert "CreateChangeSet" not in fake.sent


def test_a_finished_refresh_does_not_stop_an_update(root):
    fake = FakeAws().existing_stack_with_group([refresh("Successful", 100), refresh("RollbackSuccessful", 0)])
    fake.change_set([]).deleted()
    verdict, _ = run(root, fake, confirm=lambda _: False)
    assert verdict.word == "cancelled" and "CreateChangeSet" in fake.sent


def test_the_diff_lists_each_change_with_its_verb_and_marks_the_data():
    lines = render_diff(parse_changes([ADD_ALARM, REPLACE_DATABASE, REMOVE_BUCKET, NEW_IMAGE_IN_TEMPLATE]))
    assert lines[0].split()[:3] == ["-", "REMOVE", "Bucket"] and lines[0].endswith("[data]")
    assert lines[1].split()[:3] == ["!", "REPLACE", "Database"] and "[data]" in lines[1]
    assert lines[2].split()[:3] == ["~", "modify", "LaunchTemplate"]
    assert "LaunchTemplateData (parameter UserData)" in lines[2]
    assert lines[3].split()[:3] == ["+", "add", "LatencyAlarm"] and "[data]" not in lines[3]
