"""The stack in the emulator: what moto creates itself, what the CloudFormation double adds, and the whole first
deployment (foundation → database bootstrap → bake → test → group) with a second deploy-stack that is up to date.

Doubles, each standing in for what cannot run here:
- cfn_emulator.py: the parts of CloudFormation moto lacks (its docstring lists them);
- the bootstrap instance's cloud-init: the script from the instance's own user data runs on this machine, against
  a local PostgreSQL that plays RDS (an RDS-style master: CREATEROLE, CREATEDB, no SUPERUSER);
- ``inv build-ami`` and ``inv test-ami`` on AWS (another part of the project): an AMI registered with the tags a
  passed bake carries, and its build/<env>/manifest.json.
"""

from __future__ import annotations

import base64
import contextlib
import json
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from moto.cloudformation.parsing import get_model_map

from infra import build_record
from infra.aws.session import Aws
from infra.localtwin.instance import free_port
from infra.localtwin.services import ThrowawayPostgres
from infra.stack.bootstrap import PURPOSE_BOOTSTRAP, bootstrap_database, result_parameter
from infra.stack.deploy import Options, deploy_stack
from infra.stack.images import image_the_group_runs
from infra.stack.template import load_template, planned_resources, stack_parameters
from render import tags
from render.outputs import render_user_data
from render.settings import load_settings
from render.stack_settings import PROBE_RULE_PRIORITY

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from cfn_emulator import PROVIDED_TYPES  # noqa: E402
from emulator_process import serve_moto  # noqa: E402

ENV = "prod"


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """This module's emulator: moto's server started through cfn_emulator.py (the same API and the same ``aws``
    fixture on top; a conftest here would shadow the other directories' ``conftest`` modules)."""
    yield from serve_moto(tmp_path_factory, [sys.executable, str(HERE / "cfn_emulator.py")])

# Types moto's own CloudFormation creates (no double involved); if moto stops creating one, the test says so.
NATIVE = {
    "AWS::KMS::Key", "AWS::KMS::Alias", "AWS::EC2::VPC", "AWS::EC2::InternetGateway", "AWS::EC2::VPCGatewayAttachment",
    "AWS::EC2::Subnet", "AWS::EC2::RouteTable", "AWS::EC2::Route", "AWS::EC2::SubnetRouteTableAssociation",
    "AWS::EC2::EIP", "AWS::EC2::NatGateway", "AWS::EC2::VPCEndpoint", "AWS::EC2::FlowLog", "AWS::Logs::LogGroup",
    "AWS::IAM::Role", "AWS::IAM::InstanceProfile", "AWS::EC2::SecurityGroup", "AWS::EC2::SecurityGroupIngress",
    "AWS::S3::Bucket", "AWS::RDS::DBSubnetGroup", "AWS::RDS::DBParameterGroup", "AWS::RDS::DBInstance",
    "AWS::ElasticLoadBalancingV2::LoadBalancer", "AWS::ElasticLoadBalancingV2::TargetGroup",
    "AWS::ElasticLoadBalancingV2::Listener", "AWS::ElasticLoadBalancingV2::ListenerRule", "AWS::EC2::LaunchTemplate",
    "AWS::AutoScaling::AutoScalingGroup",
    "AWS::CloudWatch::Dashboard",
}
# Types moto's CloudFormation skips (reporting success anyway): created here by the double through their APIs.
DOUBLED = {
    "AWS::SecretsManager::Secret", "AWS::ElastiCache::SubnetGroup", "AWS::ElastiCache::ReplicationGroup",
    "AWS::CloudWatch::Alarm", "AWS::AutoScaling::ScalingPolicy", "AWS::S3::BucketPolicy",
    "AWS::EC2::SecurityGroupEgress",
}


def environment(aws, root: Path) -> Path:
    cert = aws.client("acm").request_certificate(DomainName="cloud.example.com")["CertificateArn"]
    (root / "environments").mkdir(parents=True, exist_ok=True)
    (root / "environments" / f"{ENV}.toml").write_text(f"""\
# An operator's file: nothing the stack creates is in it.
name = "{ENV}"
builder = "aws"
region = "eu-central-1"
account_id = "{aws.account}"
[base_image]
owner = "self"
name_filter = "debian-12-amd64-*"
[nextcloud]
image = "nextcloud:29.0.7-apache@sha256:{"a" * 64}"
version = "29.0.7"
[docker]
version = "5:27.3.1-1~debian.12~bookworm"
containerd_version = "1.7.22-1"
[site]
domain = "cloud.example.com"
[database]
ca_bundle_sha256 = "{"b" * 64}"   # the RDS CA bundle's pin (verify-full); the endpoint comes from the stack
[launch_template]
name = "nextcloud-{ENV}"
[autoscaling]
group_name = "nextcloud-{ENV}"
[stack]
certificate_arn = "{cert}"
min_size = 2
desired_capacity = 2
max_size = 6
[web]
max_workers = 24                # 12 instances x (24 + 2) + 9 = 321 <= 390 on db.t4g.medium (docs/capacity.md)
""")
    return root


@pytest.fixture(autouse=True)
def front_door(door):
    """Every test here reaches the emulator through the front door (tests/aws/front_door.py): deploy-stack asks
    whether an instance refresh runs on the group (moto: NotImplemented), and the rollout needs the refresh double;
    the door also checks every request and response against botocore's service model."""
    return door


def deploy(root: Path, **options):
    lines: list[str] = []
    verdict = deploy_stack(root, ENV, options=Options(yes=True, poll_seconds=0.05, **options), say=lines.append)
    return verdict, lines


def moto_itself(aws, service: str):
    """A client of moto itself, not through the front door: for the test's own look at answers where moto breaks
    the service model (the door would flag them; the production code never asks them)."""
    import boto3

    return boto3.client(service, region_name=aws.region, endpoint_url=aws.url)


def stack_resources(aws) -> dict[str, dict]:
    answer = moto_itself(aws, "cloudformation").describe_stack_resources(StackName=f"nextcloud-{ENV}")
    # moto lists its parameter and pseudo-parameter values among the resources, without ids: not resources.
    return {r["LogicalResourceId"]: r for r in answer["StackResources"] if "LogicalResourceId" in r}


def run_instances_requests(aws) -> list[dict[str, list[str]]]:
    """The RunInstances requests the emulator received (its request recording), as parsed query parameters."""
    found = []
    for req in aws.recorded_requests():
        body = req.get("body") or ""
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            body = base64.b64decode(body, validate=True).decode()
        query = urllib.parse.parse_qs(body)
        if query.get("Action") == ["RunInstances"]:
            found.append(query)
    return found


def outputs_of(root: Path) -> dict[str, str]:
    return json.loads((root / "build" / ENV / "stack-outputs.json").read_text())["outputs"]


# ---- which types are really created ------------------------------------------------------------------------------
def test_the_emulator_creates_every_resource_type_and_says_which_it_created_itself(aws, tmp_path):
    root = environment(aws, tmp_path)
    verdict, _ = deploy(root)
    assert verdict.word == "created", verdict
    template = load_template()
    expected = dict(planned_resources(template, stack_parameters(load_settings(root, ENV).settings, image_id="",
                                                                  user_data="")))
    models = get_model_map()  # in this process: moto's own models (and the double's, which are not moto's)
    native_here = {t for t in set(expected.values()) if t in models and models[t].__module__.startswith("moto.")}
    assert native_here == NATIVE - {"AWS::AutoScaling::AutoScalingGroup"}, (
        "moto's CloudFormation changed what it implements: "
        f"now native {sorted(native_here ^ (NATIVE - {'AWS::AutoScaling::AutoScalingGroup'}))}"
    )
    assert set(expected.values()) - native_here == DOUBLED - {"AWS::AutoScaling::ScalingPolicy"}
    assert DOUBLED <= PROVIDED_TYPES
    created = stack_resources(aws)
    missing = sorted(set(expected) - set(created))
    assert not missing, f"planned but not created: {missing}"
    assert {r["ResourceType"] for r in created.values()} == set(expected.values())
    # The probes' 404 rule is on the HTTPS listener, as the load balancer holds it.
    elbv2 = aws.client("elbv2")
    (balancer,) = elbv2.describe_load_balancers()["LoadBalancers"]
    (https,) = [x for x in elbv2.describe_listeners(LoadBalancerArn=balancer["LoadBalancerArn"])["Listeners"]
                if x["Protocol"] == "HTTPS"]
    (rule,) = [r for r in elbv2.describe_rules(ListenerArn=https["ListenerArn"])["Rules"] if not r["IsDefault"]]
    assert rule["Priority"] == str(PROBE_RULE_PRIORITY)
    assert rule["Conditions"][0]["PathPatternConfig"]["Values"] == ["/readyz*", "/livez*"]
    assert rule["Actions"][0]["FixedResponseConfig"]["StatusCode"] == "404"

    # Spot checks through the services' own APIs: the resources exist as the template says.
    out = outputs_of(root)
    ec2 = aws.client("ec2")
    subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [out["VpcId"]]}])["Subnets"]
    assert len(subnets) == 9 and len({s["AvailabilityZone"] for s in subnets}) == 3
    assert len(ec2.describe_nat_gateways(Filters=[{"Name": "vpc-id", "Values": [out["VpcId"]]}])["NatGateways"]) == 3
    (db,) = aws.client("rds").describe_db_instances(DBInstanceIdentifier=f"nextcloud-{ENV}")["DBInstances"]
    assert db["Engine"] == "postgres" and db["StorageEncrypted"] and not db["PubliclyAccessible"]
    (cache,) = aws.client("elasticache").describe_replication_groups()["ReplicationGroups"]
    assert cache["TransitEncryptionEnabled"] and cache["AtRestEncryptionEnabled"] and cache["AuthTokenEnabled"]
    alarms = {a["AlarmName"] for a in aws.client("cloudwatch").describe_alarms()["MetricAlarms"]}
    assert set(out["AlarmNames"].split(",")) == alarms and len(alarms) == 6
    policy = json.loads(aws.client("s3").get_bucket_policy(Bucket=out["BucketName"])["Policy"])
    assert policy["Statement"][0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    sg = ec2.describe_security_groups(GroupIds=[out["InstanceSecurityGroupId"]])["SecurityGroups"][0]
    assert {(p.get("FromPort"), p.get("ToPort")) for p in sg["IpPermissionsEgress"]} == {(443, 443), (5432, 5432),
                                                                                          (6379, 6379)}
    assert [(p["FromPort"], p["UserIdGroupPairs"][0]["GroupId"]) for p in sg["IpPermissions"]] == [
        (80, created["LoadBalancerSecurityGroup"]["PhysicalResourceId"])]
    secrets = {s["Name"] for s in aws.client("secretsmanager").list_secrets()["SecretList"]}
    assert {f"nextcloud/{ENV}/{n}" for n in ("instanceid", "passwordsalt", "secret", "admin-password",
                                             "database-password", "cache-auth-token")} <= secrets
    instanceid = aws.client("secretsmanager").get_secret_value(SecretId=out["InstanceIdSecretArn"])["SecretString"]
    stack_uuid = aws.client("cloudformation").describe_stacks(StackName=f"nextcloud-{ENV}")["Stacks"][0][
        "StackId"].rsplit("/", 1)[1]
    assert instanceid == "oc" + stack_uuid.replace("-", "")


# ---- the first deployment, as docs/stack.md tells it -------------------------------------------------------------
class BootstrapInstanceDouble(threading.Thread):
    """Stands in for cloud-init on the bootstrap instance: runs the script and config from that instance's user
    data, as cloud-init's runcmd would, on this machine. The database endpoint in the config (RDS, unreachable
    here) is replaced by the local PostgreSQL, without TLS (the local server has none); everything else is the
    instance's own: its secrets (read from the emulator's Secrets Manager) and its report (SSM)."""

    def __init__(self, aws, pg: ThrowawayPostgres):
        super().__init__(daemon=True)
        self.aws, self.pg = aws, pg
        self.result: subprocess.CompletedProcess | None = None
        self.instance = ""
        self.described: dict = {}

    def run(self) -> None:
        ec2 = self.aws.client("ec2")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not self.instance:
            found = ec2.describe_instances(Filters=[{"Name": f"tag:{tags.PURPOSE}", "Values": [PURPOSE_BOOTSTRAP]},
                                                    {"Name": "instance-state-name", "Values": ["pending", "running"]}])
            running = [i for r in found["Reservations"] for i in r["Instances"]]
            if running:
                self.instance, self.described = running[0]["InstanceId"], running[0]
            time.sleep(0.1)
        data = ec2.describe_instance_attribute(InstanceId=self.instance, Attribute="userData")["UserData"]["Value"]
        cloud_config = yaml.safe_load(base64.b64decode(data))
        files = {f["path"]: f["content"] for f in cloud_config["write_files"]}
        ((script_path, config_path),) = cloud_config["runcmd"]
        work = Path(self.pg.workdir) / "bootstrap-instance"
        work.mkdir(exist_ok=True)
        (work / "script").write_text(files[script_path])
        config = json.loads(files[config_path]) | {"host": self.pg.host, "port": self.pg.port, "sslmode": "disable"}
        (work / "config.json").write_text(json.dumps(config))
        self.result = subprocess.run([sys.executable, str(work / "script"), str(work / "config.json")],
                                     capture_output=True, text=True, timeout=120)


def test_the_first_deployment_then_an_update_that_is_up_to_date(aws, tmp_path):
    root = environment(aws, tmp_path)
    ec2 = aws.client("ec2")
    # The source AMI the bootstrap instance (and the bake) starts from.
    debian = ec2.register_image(Name="debian-12-amd64-20261101-1234", RootDeviceName="/dev/xvda",
                                BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": 8}}])["ImageId"]

    # 1. foundation: no AMI yet, so no group; the outputs become settings.
    verdict, lines = deploy(root)
    assert verdict.word == "created", "\n".join(lines)
    assert "image: none yet, so no group" in "\n".join(lines)
    # The operator's file pins Nextcloud 29, past its end of life: said, as every task says it, and not fatal.
    assert any(line.startswith("warning: nextcloud.version 29.0.7: Nextcloud 29 reached its end of life")
               for line in lines), lines
    loaded = load_settings(root, ENV)
    out = outputs_of(root)
    assert loaded.settings.database.host == out["DatabaseAddress"]
    assert loaded.settings.secrets.db_password == out["DatabasePasswordSecretArn"]
    assert loaded.settings.redis.tls is True and loaded.settings.s3.bucket == out["BucketName"]
    assert loaded.origins["database.host"] == "stack output DatabaseAddress"
    assert aws.client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[f"nextcloud-{ENV}"])[
        "AutoScalingGroups"] == []

    # 2. the database bootstrap, from a one-shot instance (its cloud-init doubled, its database local).
    master = json.loads(aws.client("secretsmanager").get_secret_value(SecretId=out["DatabaseMasterSecretArn"])[
        "SecretString"])
    with ThrowawayPostgres(free_port(), master["password"], user=master["username"], dbname="nextcloud") as pg:
        pg.start()
        pg.psql(f"ALTER ROLE {master['username']} NOSUPERUSER CREATEROLE CREATEDB", dbname="postgres")
        instance = BootstrapInstanceDouble(aws, pg)
        instance.start()
        said: list[str] = []
        verdict = bootstrap_database(root, ENV, poll_seconds=0.1, timeout_seconds=60, say=said.append)
        instance.join(10)
        assert verdict.word == "bootstrapped", (verdict, said, instance.result)
        assert instance.result is not None and instance.result.returncode == 0, instance.result
        assert "role nextcloud created" in verdict.detail
        assert said[0].startswith("warning: nextcloud.version 29.0.7"), said  # the EOL warning, as everywhere
        assert f"{debian}" in said[1] and out["PrivateSubnetIds"].split(",")[0] in said[1]
        (started,) = [i for r in ec2.describe_instances(InstanceIds=[instance.instance])["Reservations"]
                      for i in r["Instances"]]
        assert started["State"]["Name"] in ("shutting-down", "terminated"), "the task removes its instance"
        ran = instance.described
        assert [g["GroupId"] for g in ran["SecurityGroups"]] == [out["BootstrapSecurityGroupId"]]
        assert ran["MetadataOptions"]["HttpTokens"] == "required" and ran["ImageId"] == debian
        # moto does not show the profile on the instance: read it from the request the task sent.
        (launch,) = [r for r in run_instances_requests(aws)]
        assert launch["IamInstanceProfile.Name"] == [out["BootstrapInstanceProfileName"]]
        assert launch["InstanceInitiatedShutdownBehavior"] == ["terminate"]
        app_password = aws.client("secretsmanager").get_secret_value(SecretId=out["DatabasePasswordSecretArn"])[
            "SecretString"]
        import psycopg

        psycopg.connect(host=pg.host, port=pg.port, dbname="nextcloud", user="nextcloud", password=app_password).close()
        # The passwords went from Secrets Manager to the instance's script only: not into the user data, the
        # task's output, the script's output, or the report.
        user_data = base64.b64decode(ec2.describe_instance_attribute(
            InstanceId=instance.instance, Attribute="userData")["UserData"]["Value"]).decode()
        report = aws.client("ssm").get_parameter(Name=result_parameter(ENV))["Parameter"]["Value"]
        seen = "\n".join([user_data, *said, verdict.detail, report, instance.result.stdout, instance.result.stderr])
        for value in (app_password, master["password"]):
            assert value not in seen
        again = bootstrap_database(root, ENV, poll_seconds=0.1)
        assert again.word == "up to date", "created once: a second bootstrap does nothing"
    assert aws.client("ssm").get_parameter(Name=result_parameter(ENV))["Parameter"]["Value"].startswith("done ")

    # 3 + 4. build-ami and test-ami (doubled: the AMI a passed bake leaves, and its manifest).
    baked = ec2.register_image(Name="nextcloud-prod-20261201-1200", RootDeviceName="/dev/xvda",
                               BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": 16}}])["ImageId"]
    ec2.create_tags(Resources=[baked], Tags=[{"Key": tags.MANAGED, "Value": "true"},
                                             {"Key": tags.ENVIRONMENT, "Value": ENV},
                                             {"Key": tags.TEST_VERDICT, "Value": tags.VERDICT_PASSED}])
    build_record.write(build_record.build_dir(root, ENV), {"artifact_id": f"eu-central-1:{baked}"})

    # 5. the group, with the tested AMI and the user data render makes.
    verdict, lines = deploy(root)
    text = "\n".join(lines)
    assert verdict.word == "updated", text
    assert f"image: {baked} (the tested bake in" in text
    assert [ln for ln in lines if ln.strip().startswith("+ add") and "Group " in ln + " "]
    (group,) = aws.client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[f"nextcloud-{ENV}"])[
        "AutoScalingGroups"]
    assert (group["MinSize"], group["DesiredCapacity"], group["MaxSize"]) == (2, 2, 6)
    assert group["HealthCheckType"] == "EC2"
    assert set(group["VPCZoneIdentifier"].split(",")) == set(out["PrivateSubnetIds"].split(","))
    assert group["TargetGroupARNs"] == [out["TargetGroupArn"]]
    runs = image_the_group_runs(Aws(region="eu-central-1"), f"nextcloud-{ENV}")
    assert runs is not None and runs.image_id == baked
    version = ec2.describe_launch_template_versions(LaunchTemplateId=runs.launch_template_id,
                                                    Versions=[runs.version])["LaunchTemplateVersions"][0]
    user_data = base64.b64decode(version["LaunchTemplateData"]["UserData"]).decode()
    assert user_data == render_user_data(load_settings(root, ENV).settings), "the stack carries render's user data"
    assert out["InstanceIdSecretArn"] in user_data and "literal:" not in user_data.replace('"literal:"', "")
    assert version["LaunchTemplateData"]["MetadataOptions"]["HttpTokens"] == "required"
    # moto's answer lacks a member the model requires (PredictiveScalingConfiguration.MetricSpecifications).
    assert [p for p in moto_itself(aws, "autoscaling").describe_policies(AutoScalingGroupName=f"nextcloud-{ENV}")[
        "ScalingPolicies"] if p["PolicyType"] == "TargetTrackingScaling"]

    # And right after: nothing to do.
    verdict, lines = deploy(root)
    assert (verdict.word, verdict.exit_code) == ("up to date", 0), "\n".join(lines)


def passed_bake(aws, n: int, nextcloud: str = "29.0.7") -> str:
    """An AMI as `inv build-ami` + `inv test-ami` leave it (the tags the rollout checks), standing in for both."""
    ec2 = aws.client("ec2")
    image = ec2.register_image(Name=f"nextcloud-{ENV}-{n:04d}", RootDeviceName="/dev/xvda",
                               BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": 16}}])["ImageId"]
    ec2.create_tags(Resources=[image], Tags=[{"Key": k, "Value": v} for k, v in {
        tags.MANAGED: "true", tags.ENVIRONMENT: ENV, tags.NEXTCLOUD_VERSION: nextcloud,
        tags.BUILD_TIME: f"2026-12-01T{n:02d}:00:00Z", tags.TEST_VERDICT: tags.VERDICT_PASSED}.items()])
    return image


def group_state(aws) -> tuple[dict, list[tuple[str, str]], dict]:
    """(the group's launch template spec, its instances with their AMIs, that version's launch data)."""
    (group,) = aws.client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[f"nextcloud-{ENV}"])[
        "AutoScalingGroups"]
    ids = [i["InstanceId"] for i in group["Instances"]]
    found = aws.client("ec2").describe_instances(InstanceIds=ids)["Reservations"]
    spec = group["LaunchTemplate"]
    data = aws.client("ec2").describe_launch_template_versions(
        LaunchTemplateId=spec["LaunchTemplateId"], Versions=[spec["Version"]])["LaunchTemplateVersions"][0]
    return spec, sorted((i["InstanceId"], i["ImageId"]) for r in found for i in r["Instances"]), data[
        "LaunchTemplateData"]


def roll_out(root: Path, image: str):
    """`inv rollout --env prod --ami IMAGE --yes`: the production function, its refresh run by the double."""
    from rollout_fixtures import Captured

    from infra.rollout.rollout import run

    settings = load_settings(root, ENV, overrides={"rollout.poll_seconds": 0}).settings
    report = Captured()
    verdict = run(settings, root, ami_id=image, untested=False, dry_run=False, yes=True, confirm=None, report=report,
                  sleep=lambda _s: None)
    return verdict, report.text


def test_deploy_stack_never_puts_an_old_ami_back_after_a_rollout(door, aws, tmp_path):
    """Issue 12 §6, end to end: the stack makes the group, `inv rollout` moves it to a new image through a pinned
    version and an instance refresh, the stack's next update keeps that image (and replaces no instance), and the
    next rollout starts from the version the stack made: neither undoes the other."""
    root = environment(aws, tmp_path)
    first, second, third = (passed_bake(aws, n) for n in (1, 2, 3))
    (root / "build" / ENV).mkdir(parents=True)
    build_record.write(build_record.build_dir(root, ENV), {"artifact_id": first})
    assert deploy(root)[0].ok and deploy(root)[0].ok  # foundation, then the group with the first image
    stack_spec, instances, stack_data = group_state(aws)
    assert {image for _, image in instances} == {first} and stack_spec["Version"].isdigit()
    # The refresh watches the stack's alarms: they reach the rollout through the stack's outputs.
    settings = load_settings(root, ENV).settings
    assert settings.rollout.alarm_names == outputs_of(root)["RolloutAlarmNames"].split(",") != []

    verdict, text = roll_out(root, second)
    assert (verdict.word, verdict.exit_code) == ("rolled out", 0), text + verdict.detail
    rolled_spec, instances, rolled_data = group_state(aws)
    assert {image for _, image in instances} == {second} and int(rolled_spec["Version"]) > int(stack_spec["Version"])
    assert rolled_data == {**stack_data, "ImageId": second}, "the rollout's version is the stack's, new image only"
    assert [r.desired["LaunchTemplate"]["Version"] for r in door.refresh.refreshes] == [rolled_spec["Version"]]

    # The stack's next update: the image the group runs now, on a version of the stack's own; nothing refreshed.
    verdict, lines = deploy(root)
    assert verdict.ok, "\n".join(lines)
    assert f"image: {second} (the group nextcloud-{ENV} launches it" in "\n".join(lines)
    after_spec, after_instances, after_data = group_state(aws)
    assert after_data == rolled_data, "the stack's update did not undo the rollout"
    assert after_instances == instances, "no instance was replaced, none with the old image"
    assert after_spec["Version"].isdigit(), "the group stays pinned to a number ($Latest would lose the rollback)"
    assert len(door.refresh.refreshes) == 1
    assert deploy(root)[0].word == "up to date"

    # The next rollout starts from whatever version the group launches now, the stack's included.
    verdict, text = roll_out(root, third)
    assert (verdict.word, verdict.exit_code) == ("rolled out", 0), text + verdict.detail
    assert f"version {after_spec['Version']} with image {third}" in text
    final_spec, final_instances, final_data = group_state(aws)
    assert final_data == {**after_data, "ImageId": third} and {i for _, i in final_instances} == {third}
    verdict, lines = deploy(root)
    assert verdict.ok and group_state(aws)[2]["ImageId"] == third, "\n".join(lines)


def test_deploy_stack_refuses_while_a_rollout_runs_and_changes_nothing(door, aws, tmp_path):
    """Until the refresh ends the group launches its old image: an update then would pin that under the refresh."""
    root = environment(aws, tmp_path)
    first, second = passed_bake(aws, 1), passed_bake(aws, 2)
    (root / "build" / ENV).mkdir(parents=True)
    build_record.write(build_record.build_dir(root, ENV), {"artifact_id": first})
    assert deploy(root)[0].ok and deploy(root)[0].ok
    # A rollout that an operator interrupted after the refresh started (it goes on in AWS).
    from rollout_fixtures import InterruptAt

    from infra.rollout.rollout import run

    report = InterruptAt("started instance refresh")
    verdict = run(load_settings(root, ENV, overrides={"rollout.poll_seconds": 0}).settings, root, ami_id=second,
                  untested=False, dry_run=False, yes=True, confirm=None, report=report, sleep=lambda _s: None)
    assert verdict.word == "interrupted", report.text
    cfn = aws.client("cloudformation")

    def what_deploy_stack_could_change():  # the refresh itself moves on meanwhile (its instances change)
        spec = group_state(aws)[0]
        versions = aws.client("ec2").describe_launch_template_versions(LaunchTemplateId=spec["LaunchTemplateId"])
        return (spec, sorted((v["VersionNumber"], v["LaunchTemplateData"]["ImageId"])
                             for v in versions["LaunchTemplateVersions"]),
                cfn.describe_stacks(StackName=f"nextcloud-{ENV}")["Stacks"][0]["StackStatus"],
                len(cfn.list_change_sets(StackName=f"nextcloud-{ENV}")["Summaries"]))

    before = what_deploy_stack_could_change()
    for dry_run in (True, False):
        verdict, _ = deploy(root, dry_run=dry_run)
        assert (verdict.word, verdict.exit_code) == ("refused", 3), verdict
        assert "an instance refresh is running on the group" in verdict.detail and first in verdict.detail
    assert what_deploy_stack_could_change() == before
    newest, image = before[1][-1]
    assert image == second and before[0]["Version"] != str(newest), "the refresh's version, not yet the group's"


def test_a_dry_run_changes_nothing(aws, tmp_path):
    root = environment(aws, tmp_path)
    cfn = aws.client("cloudformation")
    verdict, lines = deploy(root, dry_run=True)
    assert verdict.word == "planned" and verdict.ok
    assert "it would be created with" in "\n".join(lines) and "LaunchTemplate" in "\n".join(lines)
    assert cfn.list_stacks()["StackSummaries"] == [] and not (root / "build").exists()
    assert deploy(root)[0].ok
    before = (cfn.describe_stacks(StackName=f"nextcloud-{ENV}")["Stacks"][0]["StackStatus"],
              sorted(stack_resources(aws)), (root / "build" / ENV / "stack-outputs.json").read_bytes())
    verdict, _ = deploy(root, dry_run=True)
    assert verdict.word in ("planned", "up to date") and verdict.ok
    after = (cfn.describe_stacks(StackName=f"nextcloud-{ENV}")["Stacks"][0]["StackStatus"],
             sorted(stack_resources(aws)), (root / "build" / ENV / "stack-outputs.json").read_bytes())
    assert before == after
    # AWS drops a stack's change sets once one executes; moto keeps the executed one: nothing else may be left.
    left = cfn.list_change_sets(StackName=f"nextcloud-{ENV}")["Summaries"]
    assert [c["ChangeSetName"] for c in left if c["ExecutionStatus"] != "EXECUTE_COMPLETE"] == []


def test_the_first_group_gets_only_a_tested_ami_of_this_environment(aws, tmp_path):
    root = environment(aws, tmp_path)
    assert deploy(root)[0].ok
    ec2 = aws.client("ec2")
    image = ec2.register_image(Name="nextcloud-prod-untested", RootDeviceName="/dev/xvda")["ImageId"]
    ec2.create_tags(Resources=[image], Tags=[{"Key": tags.ENVIRONMENT, "Value": ENV}])
    build_record.write(build_record.build_dir(root, ENV), {"artifact_id": f"eu-central-1:{image}"})
    verdict, _ = deploy(root)
    assert (verdict.word, verdict.exit_code) == ("refused", 2)
    assert f"{image} is the last bake, but it has not been tested: run `inv test-ami --env {ENV}`" in verdict.detail
    ec2.create_tags(Resources=[image], Tags=[{"Key": tags.ENVIRONMENT, "Value": "staging"},
                                             {"Key": tags.TEST_VERDICT, "Value": tags.VERDICT_PASSED}])
    verdict, _ = deploy(root)
    assert verdict.word == "refused" and "belongs to environment 'staging'" in verdict.detail
    assert aws.client("autoscaling").describe_auto_scaling_groups()["AutoScalingGroups"] == []
