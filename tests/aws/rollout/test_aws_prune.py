"""inv prune-amis: old AMIs go, with their snapshots; nothing a group may launch, nothing of anybody else, ever.

The property test runs random histories of bakes (this environment's, another one's, untagged, copies in a second
region), rollouts that succeed or are rolled back (an alarm, failing health checks), rollbacks and refreshes left
running, then prunes with a random --keep and checks every rule against what the emulator holds afterwards.
"""

from __future__ import annotations

import json
import urllib.request

import pytest
from front_door import FrontDoor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rollout_fixtures import ALARM, GROUP, ROOT, Captured, build_fleet, mutating

from infra.rollout import outcome
from infra.rollout.outcome import Refused
from infra.rollout.prune import prune
from infra.rollout.rollback import rollback
from infra.rollout.rollout import run
from render import tags as T

OTHER_REGION = "eu-west-1"


def pruned(fleet, report, keep=None, yes=True, dry_run=False, **overrides):
    return prune(fleet.settings(**{"ami.regions": [OTHER_REGION], **overrides}), keep=keep, yes=yes, dry_run=dry_run,
                 report=report)


def amis(fleet, region=None) -> dict[str, dict]:
    images = fleet.client("ec2", region).describe_images(Owners=["self"])["Images"]
    return {i["ImageId"]: {t["Key"]: t["Value"] for t in i.get("Tags", [])} for i in images}


def snapshots_of(fleet, image_ids, region=None) -> set[str]:
    found = fleet.client("ec2", region).describe_images(ImageIds=list(image_ids))["Images"] if image_ids else []
    return {m["Ebs"]["SnapshotId"] for i in found for m in i["BlockDeviceMappings"] if "Ebs" in m}


def existing_snapshots(fleet, ids, region=None) -> set[str]:
    ec2 = fleet.client("ec2", region)
    found = ec2.describe_snapshots(OwnerIds=["self"], Filters=[
        {"Name": "description", "Values": ["Created by CreateImage*"]}])["Snapshots"]
    return {s["SnapshotId"] for s in found} & set(ids)


@pytest.mark.slow
def test_without_yes_it_only_plans_and_with_yes_it_deletes_exactly_the_unused_old_builds(fleet, report, aws):
    running = fleet.images()[0]
    old = [fleet.bake() for _ in range(4)]
    prod, untagged = fleet.bake(env="prod"), fleet.bake(managed=False)
    before = fleet.state()
    verdict = pruned(fleet, report, keep=2, yes=False)
    assert (verdict.word, verdict.exit_code) == ("planned", outcome.OK)
    assert fleet.state() == before, "a plan deletes nothing"
    assert not [c for c in aws.calls if c[1] in ("DeregisterImage", "DeleteSnapshot")]
    verdict = pruned(fleet, report, keep=2, yes=True, dry_run=True)  # --dry-run wins over --yes
    assert (verdict.word, verdict.exit_code) == ("planned", outcome.OK)
    assert fleet.state() == before and mutating(aws.calls) == []
    doomed_snapshots = snapshots_of(fleet, old[:2])
    verdict = pruned(fleet, report, keep=2)
    assert verdict.word == "pruned", verdict.line()
    left = amis(fleet)
    assert set(old[:2]).isdisjoint(left), "the oldest unused builds are gone"
    assert {running, *old[2:], prod, untagged} <= set(left)
    assert existing_snapshots(fleet, doomed_snapshots) == set(), "their snapshots were deleted explicitly"
    assert "keep: launch template version 1" in report.text and "one of the newest 2 builds" in report.text


def test_a_bake_that_has_not_completed_is_left_to_sweep(fleet, report):
    """PURPOSE=bake is still on the AMIs of a bake in progress (or of one that died: sweep removes those by age)."""
    in_progress = fleet.bake(built="2020-01-01T00:00:00Z")
    fleet.client("ec2").create_tags(Resources=[in_progress], Tags=[{"Key": T.PURPOSE, "Value": T.PURPOSE_BAKE}])
    [fleet.bake() for _ in range(3)]
    pruned(fleet, report, keep=1)
    assert in_progress in amis(fleet) and in_progress not in report.text


def test_a_snapshot_without_the_projects_tags_is_kept_and_said_so(fleet, report):
    image = fleet.bake(tag_snapshots=False)
    [fleet.bake() for _ in range(3)]
    snapshot = snapshots_of(fleet, [image])
    pruned(fleet, report, keep=2)
    assert image not in amis(fleet)
    assert existing_snapshots(fleet, snapshot) == snapshot
    assert "not tagged by this project" in report.text


def test_a_build_in_use_keeps_its_copies_in_every_region_and_an_unused_one_goes_everywhere(fleet, report):
    running = fleet.images()[0]
    tags = amis(fleet)[running]
    copy = fleet.bake(region=OTHER_REGION, fingerprint=tags[T.FINGERPRINT], built=tags[T.BUILD_TIME])
    unused = fleet.bake(built="2025-01-01T00:00:00Z", fingerprint="f" * 64)
    unused_copy = fleet.bake(region=OTHER_REGION, built="2025-01-01T00:00:00Z", fingerprint="f" * 64)
    [fleet.bake() for _ in range(2)]
    pruned(fleet, report, keep=2)
    assert copy in amis(fleet, OTHER_REGION) and running in amis(fleet)
    assert unused not in amis(fleet) and unused_copy not in amis(fleet, OTHER_REGION)


@pytest.mark.parametrize("how", ["$Latest", "$Default", "running refresh", "recent refresh", "instance",
                                 "rollback target"])
def test_every_way_an_old_image_may_still_launch_keeps_it(fleet, report, how):
    """An old image (not among the newest builds) that only one rule protects, each rule in turn."""
    old = fleet.bake()
    [fleet.bake() for _ in range(2)]
    ec2, asg = fleet.client("ec2"), fleet.client("autoscaling")

    def pin() -> str:
        return str(ec2.create_launch_template_version(LaunchTemplateId=fleet.template_id, SourceVersion="1",
                                                      LaunchTemplateData={"ImageId": old})[
            "LaunchTemplateVersion"]["VersionNumber"])

    if how == "$Latest":
        pin()
    elif how == "$Default":
        ec2.modify_launch_template(LaunchTemplateId=fleet.template_id, DefaultVersion=pin())
        ec2.create_launch_template_version(LaunchTemplateId=fleet.template_id, SourceVersion="1",
                                           LaunchTemplateData={"ImageId": fleet.images()[0]})
    elif how in ("running refresh", "recent refresh"):
        version = pin()
        ec2.create_launch_template_version(LaunchTemplateId=fleet.template_id, SourceVersion="1",
                                           LaunchTemplateData={"ImageId": fleet.images()[0]})
        asg.start_instance_refresh(AutoScalingGroupName=GROUP, DesiredConfiguration={"LaunchTemplate": {
            "LaunchTemplateId": fleet.template_id, "Version": version}}, Preferences={"InstanceWarmup": 3600})
        if how == "recent refresh":
            asg.cancel_instance_refresh(AutoScalingGroupName=GROUP)
            asg.describe_instance_refreshes(AutoScalingGroupName=GROUP)
        fleet.door.clock.step = 0
    elif how == "instance":
        ec2.run_instances(ImageId=old, MinCount=1, MaxCount=1)
    elif how == "rollback target":
        fleet.client("ssm").put_parameter(Name="/nextcloud-image/example/release", Type="String", Value=json.dumps(
            {"ami": fleet.images()[0], "previous": {"ami": old, "version": 9}}))
    pruned(fleet, report, keep=1)
    assert old in amis(fleet), f"{how} did not keep {old}:\n{report.text}"


def _pinned_then_superseded(fleet, image: str) -> str:
    """A launch template version holding ``image`` that is neither $Default nor $Latest: only what names it by
    number may launch it."""
    ec2 = fleet.client("ec2")
    version = str(ec2.create_launch_template_version(LaunchTemplateId=fleet.template_id, SourceVersion="1",
                                                     LaunchTemplateData={"ImageId": image})[
        "LaunchTemplateVersion"]["VersionNumber"])
    ec2.create_launch_template_version(LaunchTemplateId=fleet.template_id, SourceVersion="1",
                                       LaunchTemplateData={"ImageId": fleet.images()[0]})
    return version


@pytest.mark.parametrize("by", ["LaunchTemplateId", "LaunchTemplateName"])
def test_an_image_a_mixed_instances_override_launches_is_kept(fleet, report, by):
    """AWS launches an override's instance type from the override's own LaunchTemplateSpecification."""
    old = fleet.bake()
    [fleet.bake() for _ in range(2)]
    version = _pinned_then_superseded(fleet, old)
    template = {"LaunchTemplateId": fleet.template_id} if by == "LaunchTemplateId" else \
        {"LaunchTemplateName": fleet.template()["LaunchTemplateName"]}
    fleet.client("autoscaling").create_auto_scaling_group(
        AutoScalingGroupName="nextcloud-example-mixed", MinSize=0, MaxSize=2, DesiredCapacity=0,
        VPCZoneIdentifier=",".join(fleet.subnets), MixedInstancesPolicy={"LaunchTemplate": {
            "LaunchTemplateSpecification": {"LaunchTemplateId": fleet.template_id, "Version": "$Latest"},
            "Overrides": [{"InstanceType": "t3.medium"}, {
                "InstanceType": "m6g.large", "LaunchTemplateSpecification": {**template, "Version": version}}],
        }})
    pruned(fleet, report, keep=1)
    assert old in amis(fleet), f"the override's version {version} launches {old}:\n{report.text}"
    assert "mixed instances override for m6g.large" in report.text, report.text


def test_an_image_a_refresh_to_a_mixed_instances_policy_launches_is_kept(fleet, report, monkeypatch):
    """A refresh's DesiredConfiguration may be a MixedInstancesPolicy (the refresh double takes a LaunchTemplate
    only, so DescribeInstanceRefreshes' answer is given here, in the shape botocore's model defines)."""
    import botocore.session

    from infra.rollout import refresh

    old, overridden = fleet.bake(), fleet.bake()
    [fleet.bake() for _ in range(2)]
    top = _pinned_then_superseded(fleet, old)
    override = _pinned_then_superseded(fleet, overridden)
    answer = {"InstanceRefreshId": "0f6ea6a0-5e63-4b1a-9d5b-6f1c2a0e7d11", "AutoScalingGroupName": GROUP,
              "Status": "InProgress", "DesiredConfiguration": {"MixedInstancesPolicy": {"LaunchTemplate": {
                  "LaunchTemplateSpecification": {"LaunchTemplateId": fleet.template_id, "Version": top},
                  "Overrides": [{"InstanceType": "m6g.large", "LaunchTemplateSpecification": {
                      "LaunchTemplateId": fleet.template_id, "Version": override}}]}}}}
    shape = botocore.session.get_session().get_service_model("autoscaling").shape_for("InstanceRefresh")
    mixed = shape.members["DesiredConfiguration"].members["MixedInstancesPolicy"].members["LaunchTemplate"]
    assert {"LaunchTemplateSpecification", "Overrides"} <= set(mixed.members)
    assert "LaunchTemplateSpecification" in mixed.members["Overrides"].member.members
    monkeypatch.setattr(refresh, "refreshes", lambda aws, name, region=None: [answer] if name == GROUP else [])
    pruned(fleet, report, keep=1)
    assert {old, overridden} <= set(amis(fleet)), report.text


def test_without_yes_prune_asks_on_a_terminal_and_only_a_yes_deletes(fleet, report, aws):
    """--yes skips the question; without it a terminal is asked (no: nothing changes, exit 2), and without a
    terminal (no ``confirm``) the plan is the result."""
    old = fleet.bake(built="2020-01-01T00:00:00Z")
    [fleet.bake() for _ in range(2)]
    settings = fleet.settings()
    before = fleet.state()
    questions: list[str] = []
    verdict = prune(settings, keep=2, yes=False, dry_run=False, report=report,
                    confirm=lambda q: questions.append(q) or False)
    assert (verdict.word, verdict.exit_code) == ("not confirmed", outcome.REFUSED), verdict.line()
    assert questions == ["deregister 1 AMI(s) and delete their snapshots?"] and fleet.state() == before
    verdict = prune(settings, keep=2, yes=False, dry_run=False, report=report, confirm=lambda _q: True)
    assert verdict.word == "pruned" and old not in amis(fleet), verdict.line()


def test_keep_must_be_at_least_one(fleet, report):
    verdict = pruned(fleet, report, keep=0)
    assert verdict.exit_code == outcome.REFUSED and "--keep" in verdict.detail


# ---- the property ---------------------------------------------------------------------------------------------
# A rollout bakes its image first; "leave running" bakes one and starts a refresh nobody waits for; "new version"
# puts the oldest image into a launch template version nothing launches yet ($Latest); "default latest" makes
# that the template's default (an operator's console click).
ACTIONS = st.sampled_from(["bake", "bake prod", "bake untagged", "bake copy", "rollout", "rollout", "rollout alarm",
                           "rollout unhealthy", "rollback", "leave running", "new version", "default latest"])


def _reset(moto_url: str) -> None:
    """A fresh emulator for each history (as the aws fixture does once per test)."""
    for path in ("/moto-api/reset", "/moto-api/recorder/reset-recording", "/moto-api/recorder/start-recording"):
        req = urllib.request.Request(moto_url + path, data=b"", method="POST")
        urllib.request.urlopen(req, timeout=30).read()  # noqa: S310 - loopback emulator


def _apply(fleet, report, action: str, baked: list[str]) -> None:
    quick = fleet.settings(**{"rollout.checkpoint_percentages": [], "rollout.bake_time_seconds": 0,
                              "rollout.instance_warmup_seconds": 0, "rollout.min_healthy_percentage": 50})
    door = fleet.door
    if action == "bake":
        baked.append(fleet.bake())
    elif action == "bake prod":
        fleet.bake(env="prod")
    elif action == "bake untagged":
        fleet.bake(managed=False)
    elif action == "bake copy" and baked:
        tags = amis(fleet).get(baked[-1])
        if tags:
            fleet.bake(region=OTHER_REGION, fingerprint=tags[T.FINGERPRINT], built=tags[T.BUILD_TIME])
    elif action.startswith("rollout"):
        image = fleet.bake()
        baked.append(image)
        if action == "rollout alarm":
            door.refresh.alarm_at_percent[ALARM] = 50
        if action == "rollout unhealthy":
            door.refresh.unhealthy_images.add(image)
        try:
            run(quick, ROOT, ami_id=image, untested=False, dry_run=False, yes=True, confirm=None, report=report,
                sleep=lambda _s: None)
        except Refused as refused:  # a refresh left running earlier in the history
            assert "already running" in str(refused), refused
        finally:
            door.refresh.unhealthy_images.discard(image)
            fleet.client("cloudwatch").set_alarm_state(AlarmName=ALARM, StateValue="OK", StateReason="reset")
            door.refresh.alarm_at_percent.clear()
    elif action == "rollback":
        try:
            rollback(quick, ROOT, dry_run=False, yes=True, confirm=None, report=report, sleep=lambda _s: None)
        except Exception as exc:  # noqa: BLE001 - a refused rollback (nothing recorded) is part of the history
            assert "no earlier release is recorded" in str(exc) or "older" in str(exc), exc
    elif action == "new version":  # pins the oldest image baked so far: not protected by being new
        image = baked[0] if baked else fleet.bake()
        baked.append(image)
        fleet.client("ec2").create_launch_template_version(LaunchTemplateId=fleet.template_id, SourceVersion="1",
                                                           LaunchTemplateData={"ImageId": image})
    elif action == "default latest":
        latest = fleet.template()["LatestVersionNumber"]
        fleet.client("ec2").modify_launch_template(LaunchTemplateId=fleet.template_id, DefaultVersion=str(latest))
    elif action == "leave running" and not fleet.door.refresh._active(fleet.region, GROUP):
        baked.append(fleet.bake())
        version = fleet.client("ec2").create_launch_template_version(
            LaunchTemplateId=fleet.template_id, SourceVersion=str(fleet.template()["DefaultVersionNumber"]),
            LaunchTemplateData={"ImageId": baked[-1]})["LaunchTemplateVersion"]["VersionNumber"]
        fleet.client("autoscaling").start_instance_refresh(AutoScalingGroupName=GROUP, DesiredConfiguration={
            "LaunchTemplate": {"LaunchTemplateId": fleet.template_id, "Version": str(version)}},
            Preferences={"InstanceWarmup": 3600, "MinHealthyPercentage": 100})


def _must_stay(fleet) -> dict[str, str]:
    """What the rules protect, read from the emulator independently of the production code."""
    ec2, asg = fleet.client("ec2"), fleet.client("autoscaling")
    keep: dict[str, str] = {}

    def image_of(version: str) -> str:
        return ec2.describe_launch_template_versions(LaunchTemplateId=fleet.template_id, Versions=[version])[
            "LaunchTemplateVersions"][0]["LaunchTemplateData"]["ImageId"]

    keep[image_of(fleet.group()["LaunchTemplate"]["Version"])] = "group"
    keep[image_of("$Default")] = "$Default"
    keep[image_of("$Latest")] = "$Latest"
    for r in asg.describe_instance_refreshes(AutoScalingGroupName=GROUP)["InstanceRefreshes"]:
        keep[image_of(r["DesiredConfiguration"]["LaunchTemplate"]["Version"])] = f"refresh {r['Status']}"
    for image in fleet.images():
        keep[image] = "an instance runs it"
    params = fleet.client("ssm").get_parameters(Names=["/nextcloud-image/example/release"])["Parameters"]
    if params:
        record = json.loads(params[0]["Value"])
        keep[record["ami"]] = "release"
        if record.get("previous"):
            keep[record["previous"]["ami"]] = "rollback target"
    return keep


@pytest.mark.slow
@settings(max_examples=12, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(history=st.lists(ACTIONS, min_size=2, max_size=6), keep=st.integers(min_value=1, max_value=3))
def test_prune_never_deletes_what_may_launch_or_is_not_its_own_over_random_histories(aws, monkeypatch, history,
                                                                                      keep):
    _reset(aws.url)
    door = FrontDoor(aws.url, aws.region, step_seconds=600)
    monkeypatch.setenv("AWS_ENDPOINT_URL", door.url)
    try:
        fleet = build_fleet(door, aws.region, desired=2)
        report = Captured()
        baked: list[str] = []
        for action in history:
            _apply(fleet, report, action, baked)
        door.clock.step = 0  # freeze what runs, so the protected set is the one prune saw
        protected = _must_stay(fleet)
        home_before, other_before = amis(fleet), amis(fleet, OTHER_REGION)
        snaps_before = {i: snapshots_of(fleet, [i]) for i in home_before}
        verdict = pruned(fleet, report, keep=keep)
        assert verdict.exit_code == outcome.OK, verdict.line()
        home_after, other_after = amis(fleet), amis(fleet, OTHER_REGION)
        for image, why in protected.items():
            assert image in home_after, f"prune deleted {image}, which is {why}"
        for image, tags in {**home_before, **other_before}.items():
            if tags.get(T.MANAGED) != "true" or tags.get(T.ENVIRONMENT) != "example":
                assert image in home_after or image in other_after, f"prune deleted {image}, not its own: {tags}"
        ours = sorted((t[T.BUILD_TIME] for t in home_before.values()
                       if t.get(T.MANAGED) == "true" and t.get(T.ENVIRONMENT) == "example"), reverse=True)
        newest = set(ours[:keep])
        for image, tags in home_before.items():
            if tags.get(T.BUILD_TIME) in newest and tags.get(T.ENVIRONMENT) == "example":
                assert image in home_after, f"prune deleted {image}, one of the newest {keep}"
        gone = set(home_before) - set(home_after)
        for image in gone:
            assert existing_snapshots(fleet, snaps_before[image]) == set(), f"{image}'s snapshots stayed"
        for image, tags in home_before.items():  # and prune does prune: what no rule protects is gone
            if (tags.get(T.MANAGED) == "true" and tags.get(T.ENVIRONMENT) == "example" and image not in protected
                    and tags[T.BUILD_TIME] not in newest):
                assert image in gone, f"{image} is protected by no rule but was kept"
        kept_builds = {(t.get(T.FINGERPRINT), t.get(T.BUILD_TIME)) for i, t in home_before.items() if i in home_after}
        for image, tags in other_before.items():  # a build goes or stays as a whole, in every region
            build = (tags.get(T.FINGERPRINT), tags.get(T.BUILD_TIME))
            if tags.get(T.ENVIRONMENT) == "example" and tags.get(T.MANAGED) == "true":
                assert (image in other_after) == (build in kept_builds), f"copy {image} of {build}"
        assert not door.violations, door.violations
    finally:
        door.close()
