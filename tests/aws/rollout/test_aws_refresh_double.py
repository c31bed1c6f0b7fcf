"""The instance-refresh double against AWS's documented semantics (R1-R15 in refresh_double.py name the sources).

These drive the double with a plain boto3 client, as any caller would; the production code is not involved. Each
test looks at what the emulator's group really does: its instances, their images, its launch template version.
"""

from __future__ import annotations

import math

import botocore.exceptions
import pytest
from rollout_fixtures import ALARM, GROUP


def new_version(fleet, image=None) -> str:
    image = image or fleet.bake()
    version = fleet.client("ec2").create_launch_template_version(
        LaunchTemplateId=fleet.template_id, SourceVersion="1", LaunchTemplateData={"ImageId": image})
    return str(version["LaunchTemplateVersion"]["VersionNumber"])


def start(fleet, version=None, desired=True, **prefs):
    kwargs = {"AutoScalingGroupName": GROUP, "Preferences": {"InstanceWarmup": 60, **prefs}}
    if desired:
        kwargs["DesiredConfiguration"] = {"LaunchTemplate": {"LaunchTemplateId": fleet.template_id,
                                                             "Version": version or new_version(fleet)}}
    return fleet.client("autoscaling").start_instance_refresh(**kwargs)["InstanceRefreshId"]


def describe(fleet, refresh_id):
    return fleet.client("autoscaling").describe_instance_refreshes(
        AutoScalingGroupName=GROUP, InstanceRefreshIds=[refresh_id])["InstanceRefreshes"][0]


def run_to_end(fleet, refresh_id, polls=400, watch=None):
    """Poll until the refresh ends; ``watch(refresh, group)`` sees every step."""
    for _ in range(polls):
        r = describe(fleet, refresh_id)
        if watch:
            watch(r, fleet.group())
        if r["Status"] in ("Successful", "Failed", "Cancelled", "RollbackSuccessful", "RollbackFailed"):
            return r
    raise AssertionError(f"refresh {refresh_id} did not end: {r}")


def code_of(excinfo) -> str:
    return excinfo.value.response["Error"]["Code"]


def test_r1_r2_r15_one_refresh_at_a_time_pending_then_in_progress_then_successful_and_the_group_moves(fleet):
    version = new_version(fleet)
    rid = start(fleet, version)
    assert describe(fleet, rid)["Status"] in ("Pending", "InProgress")
    with pytest.raises(botocore.exceptions.ClientError) as err:
        start(fleet, version)
    assert code_of(err) == "InstanceRefreshInProgress"
    seen = []
    end = run_to_end(fleet, rid, watch=lambda r, g: seen.append(r["Status"]))
    assert end["Status"] == "Successful" and end["PercentageComplete"] == 100 and "EndTime" in end
    assert fleet.door.refresh.refreshes[-1].history[0][1] == "Pending"
    assert seen[0] == "InProgress" and set(seen) <= {"InProgress", "Successful"}
    assert fleet.group()["LaunchTemplate"]["Version"] == version
    image = fleet.client("ec2").describe_launch_template_versions(LaunchTemplateId=fleet.template_id, Versions=[
        version])["LaunchTemplateVersions"][0]["LaunchTemplateData"]["ImageId"]
    assert fleet.images() == [image] * 4
    assert {i["LaunchTemplate"]["Version"] for i in fleet.group()["Instances"]} == {version}


@pytest.mark.parametrize("case", ["no desired configuration", "$Latest desired", "group on $Default"])
def test_r3_auto_rollback_needs_a_pinned_desired_configuration_and_a_pinned_group(fleet, case):
    if case == "group on $Default":
        fleet.client("autoscaling").update_auto_scaling_group(AutoScalingGroupName=GROUP, LaunchTemplate={
            "LaunchTemplateId": fleet.template_id, "Version": "$Default"})
    with pytest.raises(botocore.exceptions.ClientError) as err:
        start(fleet, version="$Latest" if case == "$Latest desired" else None,
              desired=case != "no desired configuration", AutoRollback=True)
    assert code_of(err) == "ValidationError"
    if case == "no desired configuration":
        assert "AutoRollback parameter cannot be set to true when the DesiredConfiguration" in str(err.value)
    assert fleet.door.refresh.refreshes == []


def test_r4_rollback_needs_an_active_refresh_with_a_desired_configuration(fleet):
    asg = fleet.client("autoscaling")
    with pytest.raises(botocore.exceptions.ClientError) as err:
        asg.rollback_instance_refresh(AutoScalingGroupName=GROUP)
    assert code_of(err) == "ActiveInstanceRefreshNotFound"
    start(fleet, desired=False)
    with pytest.raises(botocore.exceptions.ClientError) as err:
        asg.rollback_instance_refresh(AutoScalingGroupName=GROUP)
    assert code_of(err) == "IrreversibleInstanceRefresh"


def test_r5_cancel_stops_where_it_is_and_leaves_what_was_replaced(fleet):
    asg = fleet.client("autoscaling")
    with pytest.raises(botocore.exceptions.ClientError) as err:
        asg.cancel_instance_refresh(AutoScalingGroupName=GROUP)
    assert code_of(err) == "ActiveInstanceRefreshNotFound"
    old = fleet.images()[0]
    rid = start(fleet, MinHealthyPercentage=50, CheckpointPercentages=[50, 100], CheckpointDelay=3600)
    for _ in range(10):
        if describe(fleet, rid)["PercentageComplete"] == 50:
            break
    asg.cancel_instance_refresh(AutoScalingGroupName=GROUP)
    assert describe(fleet, rid)["Status"] == "Cancelled"  # Cancelling -> Cancelled on the next look
    assert [s for _, s, _ in fleet.door.refresh.refreshes[-1].history][-2:] == ["Cancelling", "Cancelled"]
    images = fleet.images()
    assert images.count(old) == 2 and len(set(images)) == 2, "half replaced, and it stays so"
    assert fleet.group()["LaunchTemplate"]["Version"] == "1", "a cancelled refresh does not move the group"


def test_r6_checkpoints_pause_for_their_delay_and_are_not_overshot(fleet):
    with pytest.raises(botocore.exceptions.ClientError) as err:
        start(fleet, CheckpointDelay=60)
    assert code_of(err) == "ValidationError"
    rid = start(fleet, MinHealthyPercentage=0, CheckpointPercentages=[25, 100], CheckpointDelay=600)
    samples = []
    run_to_end(fleet, rid, watch=lambda r, g: samples.append((fleet.door.clock.now, r["PercentageComplete"])))
    assert 50 not in [p for _, p in samples] or min(t for t, p in samples if p > 25) > min(
        t for t, p in samples if p == 25), samples
    at = [t for t, p in samples if p == 25]
    assert at and max(at) - min(at) >= 600 - fleet.door.clock.step, "paused at 25 % for the delay"
    only_percentages = start(fleet, version="1", CheckpointPercentages=[50, 100])
    assert describe(fleet, only_percentages)["Preferences"]["CheckpointDelay"] == 3600  # the documented default


def test_r7_r8_healthy_bounds_and_warmup_hold_at_every_step(fleet):
    with pytest.raises(botocore.exceptions.ClientError) as err:
        start(fleet, MaxHealthyPercentage=150)
    assert code_of(err) == "ValidationError"
    with pytest.raises(botocore.exceptions.ClientError) as err:
        start(fleet, MinHealthyPercentage=10, MaxHealthyPercentage=150)
    assert code_of(err) == "ValidationError"
    rid = start(fleet, MinHealthyPercentage=75, MaxHealthyPercentage=125, InstanceWarmup=300)
    launched: dict[str, float] = {}
    counted: list[tuple[float, int]] = []

    def watch(r, group):
        now = fleet.door.clock.now
        healthy = [i for i in group["Instances"]
                   if i["LifecycleState"] == "InService" and i["HealthStatus"] == "Healthy"]
        assert len(healthy) >= math.ceil(4 * 0.75), group["Instances"]
        assert len(group["Instances"]) <= math.floor(4 * 1.25), group["Instances"]
        for i in group["Instances"]:
            launched.setdefault(i["InstanceId"], now)
        counted.append((now, r["PercentageComplete"]))

    assert run_to_end(fleet, rid, watch=watch)["Status"] == "Successful"
    first_progress = next(t for t, p in counted if p > 0)
    assert first_progress - counted[0][0] >= 300 - fleet.door.clock.step, "nothing counts before its warm-up"


def test_r9_skip_matching_replaces_nothing_that_already_matches(fleet):
    before = sorted(i["InstanceId"] for i in fleet.group()["Instances"])
    rid = start(fleet, version="1", SkipMatching=True)
    end = run_to_end(fleet, rid)
    assert end["Status"] == "Successful" and sorted(i["InstanceId"] for i in fleet.group()["Instances"]) == before


def test_r10_protected_instances_wait_an_hour_then_the_refresh_fails(fleet):
    ids = sorted(i["InstanceId"] for i in fleet.group()["Instances"])
    fleet.client("autoscaling").set_instance_protection(AutoScalingGroupName=GROUP, InstanceIds=[ids[0]],
                                                        ProtectedFromScaleIn=True)
    fleet.door.clock.step = 300
    end = run_to_end(fleet, start(fleet, MinHealthyPercentage=50, ScaleInProtectedInstances="Wait"))
    assert end["Status"] == "Failed" and "protected" in end["StatusReason"]
    assert ids[0] in [i["InstanceId"] for i in fleet.group()["Instances"]]
    ignored = run_to_end(fleet, start(fleet, MinHealthyPercentage=50, ScaleInProtectedInstances="Ignore"))
    assert ignored["Status"] == "Successful" and ids[0] in [i["InstanceId"] for i in fleet.group()["Instances"]]


def test_r11_an_alarm_in_alarm_rolls_back_with_auto_rollback_and_fails_without(fleet):
    old = fleet.images()[0]
    fleet.door.refresh.alarm_at_percent[ALARM] = 25
    end = run_to_end(fleet, start(fleet, AutoRollback=True, MinHealthyPercentage=75,
                                  AlarmSpecification={"Alarms": [ALARM]}))
    assert end["Status"] == "RollbackSuccessful" and ALARM in end["RollbackDetails"]["RollbackReason"]
    assert fleet.images() == [old] * 4 and fleet.group()["LaunchTemplate"]["Version"] == "1"
    end = run_to_end(fleet, start(fleet, MinHealthyPercentage=75, AlarmSpecification={"Alarms": [ALARM]}))
    assert end["Status"] == "Failed" and ALARM in end["StatusReason"]


def test_r12_replacements_failing_health_checks_fail_the_refresh_after_an_hour(fleet):
    bad = fleet.bake()
    fleet.door.refresh.unhealthy_images.add(bad)
    fleet.door.clock.step = 300
    rid = start(fleet, new_version(fleet, bad), MinHealthyPercentage=75)
    end = run_to_end(fleet, rid)
    assert end["Status"] == "Failed" and "health checks" in end["StatusReason"]
    history = fleet.door.refresh.refreshes[-1].history
    assert history[-1][0] - history[1][0] >= 3600


def test_r13_a_rollback_brings_the_percentage_back_to_zero_and_the_old_configuration_back(fleet):
    old = fleet.images()[0]
    rid = start(fleet, MinHealthyPercentage=50, CheckpointPercentages=[50, 100], CheckpointDelay=3600)
    for _ in range(10):
        if describe(fleet, rid)["PercentageComplete"] == 50:
            break
    fleet.client("autoscaling").rollback_instance_refresh(AutoScalingGroupName=GROUP)
    percents = []
    end = run_to_end(fleet, rid, watch=lambda r, g: percents.append(r["PercentageComplete"]))
    assert end["Status"] == "RollbackSuccessful"
    details = end["RollbackDetails"]
    assert details["PercentageCompleteOnRollback"] == 50 and "Manual rollback" in details["RollbackReason"]
    assert percents == sorted(percents, reverse=True) and end["PercentageComplete"] == 0
    assert fleet.images() == [old] * 4 and fleet.group()["LaunchTemplate"]["Version"] == "1"


def test_r14_bake_time_keeps_the_refresh_baking_before_it_succeeds(fleet):
    rid = start(fleet, MinHealthyPercentage=0, BakeTime=900)
    seen = []
    run_to_end(fleet, rid, watch=lambda r, g: seen.append((fleet.door.clock.now, r["Status"])))
    baking = [t for t, s in seen if s == "Baking"]
    assert baking and max(baking) - min(baking) >= 900 - 2 * fleet.door.clock.step
    assert seen[-1][1] == "Successful"


def test_the_front_door_inherits_source_version_as_aws_documents_it(fleet):
    ec2 = fleet.client("ec2")
    snap_image = fleet.bake()
    ec2.create_launch_template_version(LaunchTemplateId=fleet.template_id, SourceVersion="1", LaunchTemplateData={
        "BlockDeviceMappings": [{"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": 16, "SnapshotId": "snap-0123"}}]})
    third = ec2.create_launch_template_version(LaunchTemplateId=fleet.template_id, SourceVersion="2",
                                               LaunchTemplateData={"ImageId": snap_image})["LaunchTemplateVersion"]
    data = third["LaunchTemplateData"]
    assert data["ImageId"] == snap_image and data["SecurityGroupIds"] == [fleet.security_group]
    assert "UserData" in data and data["MetadataOptions"]["HttpTokens"] == "required"
    assert "SnapshotId" not in data["BlockDeviceMappings"][0]["Ebs"], "inherited snapshot ids are dropped"
    fleet.door.inherit_source_version = False  # what moto does on its own
    raw = ec2.create_launch_template_version(LaunchTemplateId=fleet.template_id, SourceVersion="1",
                                             LaunchTemplateData={"ImageId": snap_image})["LaunchTemplateVersion"]
    assert set(raw["LaunchTemplateData"]) == {"ImageId"}
