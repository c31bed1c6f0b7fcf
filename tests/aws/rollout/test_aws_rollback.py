"""inv rollback: a running refresh is rolled back; with none, the AMI the group ran before comes back."""

from __future__ import annotations

import pytest
from rollout_fixtures import GROUP, ROOT, mutating, rollout

from infra.rollout import outcome
from infra.rollout.outcome import Refused
from infra.rollout.rollback import rollback


def roll_back(fleet, report, **kwargs):
    return rollback(fleet.settings(), ROOT, dry_run=kwargs.pop("dry_run", False), yes=True, confirm=None,
                    report=report, sleep=lambda _s: None)


def test_a_running_refresh_is_rolled_back_and_the_old_version_serves_again(fleet, report):
    old = fleet.images()[0]
    new = fleet.bake()
    ec2, asg = fleet.client("ec2"), fleet.client("autoscaling")
    version = ec2.create_launch_template_version(LaunchTemplateId=fleet.template_id, SourceVersion="1",
                                                 LaunchTemplateData={"ImageId": new})["LaunchTemplateVersion"]
    rid = asg.start_instance_refresh(AutoScalingGroupName=GROUP, DesiredConfiguration={"LaunchTemplate": {
        "LaunchTemplateId": fleet.template_id, "Version": str(version["VersionNumber"])}}, Preferences={
        "MinHealthyPercentage": 50, "InstanceWarmup": 60, "CheckpointPercentages": [50, 100],
        "CheckpointDelay": 3600})["InstanceRefreshId"]
    for _ in range(10):
        if asg.describe_instance_refreshes(AutoScalingGroupName=GROUP)["InstanceRefreshes"][0][
                "PercentageComplete"] == 50:
            break
    assert fleet.images().count(new) == 2
    verdict = roll_back(fleet, report)
    assert (verdict.word, verdict.exit_code) == ("rolled back", outcome.OK), verdict.line()
    assert "launches version 1" in verdict.detail and rid in report.text
    assert fleet.images() == [old] * 4 and fleet.group()["LaunchTemplate"]["Version"] == "1"


def test_a_dry_run_of_a_rollback_changes_nothing(fleet, report, aws):
    fleet.client("autoscaling").start_instance_refresh(AutoScalingGroupName=GROUP, DesiredConfiguration={
        "LaunchTemplate": {"LaunchTemplateId": fleet.template_id, "Version": "1"}},
        Preferences={"InstanceWarmup": 600})
    fleet.client("autoscaling").describe_instance_refreshes(AutoScalingGroupName=GROUP)
    fleet.door.clock.step = 0  # freeze the refresh: what changes now is the dry run's doing
    before = fleet.state()
    verdict = roll_back(fleet, report, dry_run=True)
    assert verdict.word == "planned" and "would roll back" in verdict.detail
    after = fleet.state()
    assert [s for _, s in after["refreshes"]] == ["InProgress"]
    assert after == before and mutating(aws.calls) == []


@pytest.mark.slow
def test_with_nothing_running_the_previous_release_is_rolled_out_again(fleet, report):
    old = fleet.images()[0]
    new = fleet.bake()
    assert rollout(fleet, report, new).word == "rolled out"
    verdict = roll_back(fleet, report)
    assert (verdict.word, verdict.exit_code) == ("rolled back", outcome.OK), verdict.line()
    assert fleet.images() == [old] * 4
    assert fleet.group()["LaunchTemplate"]["Version"] == "3", "a new version with the old image, pinned"
    assert "rolling back to the AMI the group ran before" in report.text
    again = roll_back(fleet, report)  # and back to the newer one: the record says what ran before
    assert again.word == "rolled back" and fleet.images() == [new] * 4


def test_with_nothing_running_and_no_release_recorded_it_refuses_with_the_fix(fleet, report):
    before = fleet.state()
    with pytest.raises(Refused, match="no earlier release is recorded.*inv rollout --env example --ami"):
        roll_back(fleet, report)
    assert fleet.state() == before
