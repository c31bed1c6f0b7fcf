"""inv upgrade: a newer Nextcloud, in maintenance, upgraded exactly once from the new image, resumable.

The emulated instances run nothing; what Nextcloud's cluster init would do on each of them (upgrade once under the
lock, wait, join, stay not ready) is the Nextcloud cluster double's (nextcloud_double.py), reached through the same
AWS calls the production code makes on AWS: the upgrade instance's console output for its readiness, the target
groups' health for the fleet's.
"""

from __future__ import annotations

import base64
import json

import pytest
from iam_coverage import load_statements, missing
from rollout_fixtures import ROOT, InterruptAt, mutating, rollout, upgrade_to

from infra.rollout import outcome
from infra.rollout.outcome import Refused
from infra.rollout.rollback import rollback
from render import tags as T

NEW = "34.0.3"


@pytest.fixture
def database(fleet):
    fleet.client("rds").create_db_instance(
        DBInstanceIdentifier="nextcloud-example", Engine="postgres", DBInstanceClass="db.t3.micro",
        AllocatedStorage=20, MasterUsername="nextcloud_admin", MasterUserPassword="not-a-real-password-1")
    return "nextcloud-example"


def upgrade_instances(fleet) -> list[dict]:
    found = fleet.client("ec2").describe_instances(Filters=[{"Name": f"tag:{T.PURPOSE}", "Values": ["upgrade"]}])
    return [i for r in found["Reservations"] for i in r["Instances"]]


def state(fleet) -> dict:
    return json.loads(fleet.client("ssm").get_parameter(Name="/nextcloud-image/example/upgrade")["Parameter"]["Value"])


def rules(fleet) -> list[dict]:
    return [r for r in fleet.client("elbv2").describe_rules(ListenerArn=fleet.listener)["Rules"] if not r["IsDefault"]]


def allow_upgrade(fleet, instance_id) -> bool:
    raw = fleet.client("ec2").describe_instance_attribute(InstanceId=instance_id, Attribute="userData")["UserData"]
    return '"allow_upgrade": true' in base64.b64decode(raw["Value"]).decode()


@pytest.mark.slow
def test_an_upgrade_runs_once_in_maintenance_then_refreshes_and_serves_the_new_version(fleet, report, database):
    old_images = fleet.images()
    new = fleet.bake(nextcloud=NEW)
    verdict = upgrade_to(fleet, report, new)
    assert (verdict.word, verdict.exit_code) == ("upgraded", outcome.OK), verdict.line() + "\n" + report.text
    nc = fleet.door.nextcloud
    assert [(v0, v1) for _, v0, v1 in nc.upgrades] == [("33.0.8", NEW)], "exactly one upgrade"
    upgrader = nc.upgrades[0][0]
    [instance] = upgrade_instances(fleet)
    assert instance["InstanceId"] == upgrader and instance["State"]["Name"] == "terminated"
    assert allow_upgrade(fleet, upgrader), "the upgrade instance, and only it, may upgrade"
    assert fleet.images() == [new] * 4 and old_images != fleet.images()
    assert not any(allow_upgrade(fleet, i["InstanceId"]) for i in fleet.group()["Instances"])
    assert fleet.group()["LaunchTemplate"]["Version"] == "2" and fleet.template()["DefaultVersionNumber"] == 2
    assert rules(fleet) == [], "maintenance is off again"
    # The order that never lets a half-upgraded cluster serve: maintenance on before the upgrade instance starts,
    # off only after the refresh, and the fleet's readiness checked in between.
    order = [op for _, op in fleet.door.seen]
    assert order.index("CreateRule") < order.index("RunInstances", order.index("CreateRule"))
    assert order.index("CreateRule") < order.index("StartInstanceRefresh") < order.index("DeleteRule")
    assert order.index("DescribeTargetHealth", order.index("StartInstanceRefresh")) < order.index("DeleteRule")
    # Its readiness came from its console output (the image has no SSM agent), which the rollout role may read.
    assert "GetConsoleOutput" in order and "SendCommand" not in order and "GetCommandInvocation" not in order
    rollout_role = [st for st in load_statements() if st["_file"] == "rollout.json"]
    assert not missing([("ec2", "GetConsoleOutput")], rollout_role)
    assert any("upgrading the cluster from 33.0.8" in line for line in report.text.splitlines()), report.text
    snapshot = fleet.client("rds").describe_db_snapshots(DBInstanceIdentifier=database, SnapshotType="manual")[
        "DBSnapshots"]
    assert len(snapshot) == 1 and snapshot[0]["DBSnapshotIdentifier"].startswith("nextcloud-example-before-34-0-3")
    assert state(fleet)["step"] == "done"
    # And the way back to the old image is closed: the database is newer than it.
    with pytest.raises(Refused, match="older than the cluster's 34.0.3"):
        rollback(fleet.settings(), ROOT, dry_run=False, yes=True, confirm=None, report=report, sleep=lambda _s: None)


@pytest.mark.parametrize(("version", "expected"), [
    ("35.0.2", r"skips 1 major.*33.0.8 -> 34.x \(its newest release\) -> 35.0.2"),
    ("33.0.8", "nothing to upgrade"),
    ("32.0.9", "older than the cluster's 33.0.8"),
])
def test_an_upgrade_that_nextcloud_cannot_do_is_refused_and_names_the_path(fleet, report, version, expected):
    image = fleet.bake(nextcloud=version)
    before = fleet.state()
    with pytest.raises(Refused, match=expected):
        upgrade_to(fleet, report, image)
    assert fleet.state() == before


def test_a_dry_run_of_an_upgrade_changes_nothing(fleet, report, aws):
    new = fleet.bake(nextcloud=NEW)
    before = fleet.state()
    verdict = upgrade_to(fleet, report, new, dry_run=True)
    assert verdict.word == "planned" and "33.0.8 -> 34.0.3" in report.text and "maintenance" in report.text
    assert fleet.state() == before and mutating(aws.calls) == []


def test_a_newer_nextcloud_is_never_rolled_out_blindly(fleet, report):
    with pytest.raises(Refused, match="that is an upgrade"):
        rollout(fleet, report, fleet.bake(nextcloud=NEW))


@pytest.mark.slow
@pytest.mark.parametrize("marker", ["upgrading: upgrading the cluster", "started instance refresh"])
def test_an_upgrade_interrupted_midway_is_resumed_from_its_recorded_state_and_still_upgrades_once(
        fleet, report, database, marker):
    new = fleet.bake(nextcloud=NEW)
    verdict = upgrade_to(fleet, InterruptAt(marker), new)
    assert (verdict.word, verdict.exit_code) == ("interrupted", outcome.INTERRUPTED), verdict.line()
    recorded = state(fleet)
    assert recorded["step"] in ("upgrading", "upgraded") and len(rules(fleet)) == 1, "still in maintenance"
    if recorded["step"] == "upgrading":
        # Meanwhile the old fleet is not ready (the cluster is busy upgrading): nothing half-upgraded serves.
        health = fleet.client("elbv2").describe_target_health(TargetGroupArn=fleet.target_group)
        assert {d["TargetHealth"]["State"] for d in health["TargetHealthDescriptions"]} == {"unhealthy"}
    with pytest.raises(Refused, match="unfinished"):
        rollout(fleet, report, fleet.bake())
    resumed = upgrade_to(fleet, report)  # a fresh run (another machine): no --ami, the state says everything
    assert (resumed.word, resumed.exit_code) == ("upgraded", outcome.OK), resumed.line() + report.text
    assert f"upgrade {recorded['id']} at step {recorded['step']}" in report.text
    assert len(fleet.door.nextcloud.upgrades) == 1 and len(upgrade_instances(fleet)) == 1
    assert fleet.images() == [new] * 4 and rules(fleet) == []


@pytest.mark.slow
def test_a_failed_upgrade_stays_in_maintenance_with_the_old_fleet_intact_and_resumes_once_fixed(
        fleet, report, database):
    old_images = fleet.images()
    new = fleet.bake(nextcloud=NEW)
    fleet.door.nextcloud.fail_upgrade = True
    verdict = upgrade_to(fleet, report, new)
    assert (verdict.word, verdict.exit_code) == ("upgrade failed", outcome.FAILED)
    assert "stays in maintenance" in verdict.detail and "nextcloud-example-before-34-0-3" in verdict.detail
    assert len(rules(fleet)) == 1, "maintenance stays on: the database may be partly upgraded"
    assert fleet.images() == old_images and fleet.group()["LaunchTemplate"]["Version"] == "1"
    assert state(fleet)["step"] == "upgrading" and fleet.door.nextcloud.upgrades == []
    fleet.door.nextcloud.fail_upgrade = False  # the operator fixed the cause
    resumed = upgrade_to(fleet, report)
    assert resumed.word == "upgraded", resumed.line() + report.text
    assert len(fleet.door.nextcloud.upgrades) == 1, "the interrupted upgrade was resumed, once"
    assert len(upgrade_instances(fleet)) == 2 and fleet.images() == [new] * 4 and rules(fleet) == []


def test_an_upgrade_that_never_started_switches_maintenance_off_and_the_old_fleet_serves_on(fleet, report):
    old_images = fleet.images()
    fleet.door.nextcloud.db_unreachable = True
    settings = fleet.settings(**{"upgrade.timeout_minutes": 5})
    verdict = upgrade_to(fleet, report, fleet.bake(nextcloud=NEW), settings=settings)
    assert (verdict.word, verdict.exit_code) == ("upgrade failed", outcome.FAILED), verdict.line()
    assert "database was not touched" in verdict.detail and "old fleet serves Nextcloud 33.0.8" in verdict.detail
    assert rules(fleet) == [] and fleet.images() == old_images
    assert state(fleet)["step"] == "aborted" and fleet.door.nextcloud.db.state == "installed"
    assert [i["State"]["Name"] for i in upgrade_instances(fleet)] == ["terminated"]


def test_an_upgrade_without_the_listener_is_refused_naming_the_setting(fleet, report):
    settings = fleet.settings(**{"upgrade.listener_arn": None})
    with pytest.raises(Refused, match="upgrade.listener_arn is not set"):
        upgrade_to(fleet, report, fleet.bake(nextcloud=NEW), settings=settings)
