"""inv rollout against the emulator and the instance-refresh double: the production code end to end.

The refresh runs in the double's virtual time (a minute per progress poll), so an hour of AWS takes seconds here.
"""

from __future__ import annotations

import json

import botocore.stub
import pytest
from rollout_fixtures import ALARM, GROUP, ROOT, Captured, mutating, rollout

from infra.aws.session import Aws
from infra.rollout import outcome, records
from infra.rollout.amis import check_candidate
from infra.rollout.outcome import Refused
from infra.rollout.rollout import run
from render import tags as T


def test_a_happy_rollout_of_four_instances_pauses_at_the_checkpoint_and_moves_the_group(fleet, report, aws):
    old = fleet.images()[0]
    new = fleet.bake()
    verdict = rollout(fleet, report, new)
    assert (verdict.word, verdict.exit_code) == ("rolled out", outcome.OK), verdict.line()
    assert fleet.images() == [new] * 4, "every instance of the group runs the new image"
    group = fleet.group()
    assert group["LaunchTemplate"]["Version"] == "2", "AWS moved the group to the pinned version on success"
    assert {i["LaunchTemplate"]["Version"] for i in group["Instances"]} == {"2"}
    assert fleet.template()["DefaultVersionNumber"] == 2, "the template's default follows"
    # The refresh paused at the 50 % checkpoint for its delay (300 s of virtual time) and baked 300 s at the end.
    history = fleet.door.refresh.refreshes[-1].history
    reached = next(i for i, (_, status, pct) in enumerate(history) if (status, pct) == ("InProgress", 50))
    delay, warmup = 300, 120
    assert history[reached + 1][0] - history[reached][0] >= delay + warmup, history
    assert ("Baking", 100) in [(s, p) for _, s, p in history]
    assert "at checkpoint 50%" in report.text and "[100%] Successful" in report.text
    # The group was never switched before the refresh: the production code never updated it itself.
    assert ("autoscaling", "UpdateAutoScalingGroup") not in aws.calls
    assert mutating(aws.calls) == ["autoscaling:StartInstanceRefresh", "ec2:CreateLaunchTemplateVersion",
                                   "ec2:ModifyLaunchTemplate", "ssm:PutParameter"]
    # The new version is version 1 with only the image changed (SourceVersion inherited the rest).
    ec2 = fleet.client("ec2")
    v1, v2 = (ec2.describe_launch_template_versions(LaunchTemplateId=fleet.template_id, Versions=[v])[
        "LaunchTemplateVersions"][0]["LaunchTemplateData"] for v in ("1", "2"))
    assert v2.pop("ImageId") == new and v1.pop("ImageId") == old
    assert v1 == v2 and "UserData" in v2 and v2["MetadataOptions"]["HttpTokens"] == "required"
    release = fleet.client("ssm").get_parameter(Name="/nextcloud-image/example/release")["Parameter"]["Value"]
    release = json.loads(release)
    assert (release["version"], release["ami"]) == (2, new)
    assert release["previous"] == {"version": 1, "ami": old, "nextcloud_version": "33.0.8"}


@pytest.mark.slow
def test_new_instances_that_never_become_healthy_are_rolled_back_automatically(fleet, report):
    old = fleet.images()[0]
    bad = fleet.bake()
    fleet.door.refresh.unhealthy_images.add(bad)
    fleet.door.clock.step = 120  # AWS retries for an hour before it gives up: look every two minutes
    verdict = rollout(fleet, report, bad)
    assert (verdict.word, verdict.exit_code) == ("rolled back", outcome.ROLLED_BACK), verdict.line()
    assert "health checks" in verdict.detail and "launches version 1" in verdict.detail
    assert fleet.images() == [old] * 4, "the group runs the old image again"
    assert fleet.group()["LaunchTemplate"]["Version"] == "1"
    assert fleet.template()["DefaultVersionNumber"] == 1, "the default did not follow a failed rollout"
    statuses = [s for _, s, _ in fleet.door.refresh.refreshes[-1].history]
    assert statuses[-2:] == ["RollbackInProgress", "RollbackSuccessful"]


def test_an_alarm_that_fires_midway_rolls_back_and_the_verdict_names_it(fleet, report):
    old = fleet.images()[0]
    new = fleet.bake()
    fleet.door.refresh.alarm_at_percent[ALARM] = 50  # CloudWatch sees the new instances' 5xx once half are new
    verdict = rollout(fleet, report, new)
    assert (verdict.word, verdict.exit_code) == ("rolled back", outcome.ROLLED_BACK), verdict.line()
    assert ALARM in verdict.detail
    assert fleet.images() == [old] * 4 and fleet.group()["LaunchTemplate"]["Version"] == "1"
    release = fleet.client("ssm").get_parameters(Names=["/nextcloud-image/example/release"])["Parameters"]
    assert release == [], "a rolled back rollout is no release"


class CancelAtCheckpoint(Captured):
    """Somebody else cancels the refresh (`aws autoscaling cancel-instance-refresh`) while it pauses at 50 %."""

    def __init__(self, fleet):
        super().__init__()
        self.fleet, self.done = fleet, False

    def info(self, text: str) -> None:
        super().info(text)
        if "at checkpoint 50%" in text and not self.done:
            self.done = True
            self.fleet.client("autoscaling").cancel_instance_refresh(AutoScalingGroupName=GROUP)


def test_a_refresh_cancelled_by_somebody_else_ends_cancelled_with_exit_5(fleet):
    old, new = fleet.images()[0], fleet.bake()
    report = CancelAtCheckpoint(fleet)
    verdict = rollout(fleet, report, new)
    assert (verdict.word, verdict.exit_code) == ("cancelled", outcome.CANCELLED), report.text + verdict.line()
    assert "replaced so far stay replaced" in verdict.detail
    assert fleet.images() == sorted([old, old, new, new]), "what was replaced stays replaced"
    assert fleet.group()["LaunchTemplate"]["Version"] == "1" and fleet.template()["DefaultVersionNumber"] == 1
    assert "[ 50%] Cancelled - 2 instance(s) left" in report.text, "the progress shows where it stopped"


@pytest.mark.slow
def test_without_auto_rollback_a_failing_refresh_ends_failed_with_exit_1(fleet, report):
    old, bad = fleet.images()[0], fleet.bake()
    fleet.door.refresh.unhealthy_images.add(bad)
    fleet.door.clock.step = 120
    verdict = rollout(fleet, report, bad, settings=fleet.settings(**{"rollout.auto_rollback": False}))
    assert (verdict.word, verdict.exit_code) == ("failed", outcome.FAILED), verdict.line()
    assert fleet.group()["LaunchTemplate"]["Version"] == "1", "AWS moves the group only when the refresh succeeds"
    assert fleet.template()["DefaultVersionNumber"] == 1
    assert old in fleet.images(), "the old image still serves"
    assert fleet.client("ssm").get_parameters(Names=["/nextcloud-image/example/release"])["Parameters"] == []


def test_a_refresh_longer_than_the_wait_is_still_running_with_exit_6_and_goes_on(fleet, report):
    new = fleet.bake()
    settings = fleet.settings(**{"rollout.timeout_minutes": 2})
    verdict = run(settings, ROOT, ami_id=new, untested=False, dry_run=False, yes=True, confirm=None, report=report,
                  sleep=lambda _s: None, clock=lambda: fleet.door.clock.now)
    assert (verdict.word, verdict.exit_code) == ("still running", outcome.STILL_RUNNING), verdict.line()
    assert "`inv status`" in verdict.detail
    (active,) = [r for r in fleet.door.refresh.refreshes if r.status in ("Pending", "InProgress", "Baking")]
    assert fleet.group()["LaunchTemplate"]["Version"] == "1", "nothing moved the group before the refresh ends"
    assert active.desired["LaunchTemplate"]["Version"] == "2"


def test_a_second_rollout_while_one_runs_is_refused_and_changes_nothing(fleet, report, aws):
    first, second = fleet.bake(), fleet.bake()
    asg, ec2 = fleet.client("autoscaling"), fleet.client("ec2")
    version = ec2.create_launch_template_version(LaunchTemplateId=fleet.template_id, SourceVersion="1",
                                                 LaunchTemplateData={"ImageId": first})["LaunchTemplateVersion"]
    asg.start_instance_refresh(AutoScalingGroupName=GROUP, DesiredConfiguration={"LaunchTemplate": {
        "LaunchTemplateId": fleet.template_id, "Version": str(version["VersionNumber"])}},
        Preferences={"MinHealthyPercentage": 90, "InstanceWarmup": 600})
    asg.describe_instance_refreshes(AutoScalingGroupName=GROUP)  # it is InProgress now
    before = fleet.state()
    with pytest.raises(Refused, match="already running on nextcloud-example"):
        rollout(fleet, report, second)
    after = fleet.state()
    before.pop("refreshes"), after.pop("refreshes")
    assert after == before
    assert mutating(aws.calls) == []


def test_a_dry_run_prints_the_plan_and_changes_nothing(fleet, report, aws):
    old, new = fleet.images()[0], fleet.bake(nextcloud="33.0.8")
    before = fleet.state()
    verdict = rollout(fleet, report, new, dry_run=True)
    assert (verdict.word, verdict.exit_code) == ("planned", outcome.OK)
    assert fleet.state() == before
    assert mutating(aws.calls) == [], "a dry run makes no call that changes anything"
    for expected in (GROUP, "1 -> 2", old, new, "Nextcloud 33.0.8", "checkpoints 50 %, 100 % (pause 300 s)", ALARM,
                     "auto rollback", "healthy 90-150 %", "4 on " + old):
        assert expected in report.text, expected


@pytest.mark.slow
def test_an_untested_ami_is_refused_and_untested_overrides_with_a_warning(fleet, report):
    untested, failed = fleet.bake(tested=None), fleet.bake(tested=False)
    before = fleet.state()
    with pytest.raises(Refused, match="has not passed test-ami .test-ami has not tested it"):
        rollout(fleet, report, untested)
    with pytest.raises(Refused, match="test-ami said failed"):
        rollout(fleet, report, failed)
    assert fleet.state() == before
    verdict = rollout(fleet, report, untested, untested=True)
    assert verdict.word == "rolled out" and "warning: rolling out AMI" in report.text
    assert fleet.images() == [untested] * 4


@pytest.mark.parametrize("kind", ["other environment", "not this project", "missing", "other region", "newer",
                                  "older", "unfinished bake"])
def test_an_ami_that_must_not_run_here_is_refused_and_nothing_changes(fleet, report, kind):
    image = {
        "other environment": lambda: fleet.bake(env="prod"),
        "not this project": lambda: fleet.bake(managed=False),
        "missing": lambda: "ami-0123456789abcdef0",
        "other region": lambda: fleet.bake(region="eu-west-1"),
        "newer": lambda: fleet.bake(nextcloud="34.0.3"),
        "older": lambda: fleet.bake(nextcloud="32.0.9"),
        "unfinished bake": lambda: unfinished(fleet),
    }[kind]()
    expected = {
        "other environment": "belongs to environment 'prod'", "not this project": "was not made by this project",
        "missing": "does not exist in eu-central-1", "other region": "it exists in eu-west-1",
        "newer": "that is an upgrade.*inv upgrade", "older": "older than the cluster's 33.0.8",
        "unfinished bake": "from a bake that never completed",
    }[kind]
    settings = fleet.settings(**({"ami.regions": ["eu-west-1"]} if kind == "other region" else {}))
    before = fleet.state()
    with pytest.raises(Refused, match=expected):
        rollout(fleet, report, image, settings=settings)
    assert fleet.state() == before


def unfinished(fleet) -> str:
    """An AMI whose bake has not finished: the bake removes PURPOSE=bake only when every step is done."""
    image = fleet.bake()
    fleet.client("ec2").create_tags(Resources=[image], Tags=[{"Key": T.PURPOSE, "Value": T.PURPOSE_BAKE}])
    return image


def test_an_ami_that_is_not_available_is_refused(fleet):
    """moto registers every AMI as available at once; the DescribeImages answer of a pending image is stubbed
    (botocore's Stubber checks it against the service model)."""
    settings = fleet.settings()
    aws = Aws.for_settings(settings)
    stub = botocore.stub.Stubber(aws.client("ec2"))
    stub.add_response("describe_images", {"Images": [{"ImageId": "ami-0aaaaaaaaaaaaaaaa", "State": "pending", "Tags": [
        {"Key": "nextcloud-image:managed", "Value": "true"}]}]}, {"ImageIds": ["ami-0aaaaaaaaaaaaaaaa"]})
    with stub, pytest.raises(Refused, match="is pending, not available"):
        check_candidate(aws, settings, "ami-0aaaaaaaaaaaaaaaa", untested=False)


def test_the_same_ami_again_is_up_to_date_and_changes_nothing(fleet, report):
    before = fleet.state()
    verdict = rollout(fleet, report, fleet.images()[0])
    assert (verdict.word, verdict.exit_code) == ("up to date", outcome.OK)
    assert fleet.state() == before


def test_a_group_on_latest_is_refused_with_the_fix(fleet, report):
    fleet.client("autoscaling").update_auto_scaling_group(AutoScalingGroupName=GROUP, LaunchTemplate={
        "LaunchTemplateId": fleet.template_id, "Version": "$Latest"})
    with pytest.raises(Refused, match=r"\$Latest: pin a version number"):
        rollout(fleet, report, fleet.bake())


def test_an_alarm_already_in_alarm_or_missing_is_refused(fleet, report):
    new = fleet.bake()
    with pytest.raises(Refused, match="do not exist"):
        rollout(fleet, report, new, settings=fleet.settings(**{"rollout.alarm_names": ["no-such-alarm"]}))
    fleet.client("cloudwatch").set_alarm_state(AlarmName=ALARM, StateValue="ALARM", StateReason="test")
    with pytest.raises(Refused, match="in ALARM already"):
        rollout(fleet, report, new)
    assert fleet.images() == [fleet.images()[0]] * 4


def test_an_endpoint_that_ignores_source_version_is_caught_before_anything_launches(fleet, report):
    """What moto does without the front door's fix-up: the new version would lose the user data, the security
    group and the instance settings. The rollout must stop before the refresh."""
    fleet.door.inherit_source_version = False
    old = fleet.images()[0]
    with pytest.raises(Refused, match="differs from version 1 in more than the image"):
        rollout(fleet, report, fleet.bake())
    assert fleet.door.refresh.refreshes == [] and fleet.images() == [old] * 4
    assert fleet.group()["LaunchTemplate"]["Version"] == "1"


@pytest.mark.slow
def test_scale_in_protected_and_standby_instances_are_handled_as_the_settings_say(fleet, report):
    asg = fleet.client("autoscaling")
    ids = sorted(i["InstanceId"] for i in fleet.group()["Instances"])
    asg.set_instance_protection(AutoScalingGroupName=GROUP, InstanceIds=[ids[0]], ProtectedFromScaleIn=True)
    asg.enter_standby(AutoScalingGroupName=GROUP, InstanceIds=[ids[1]], ShouldDecrementDesiredCapacity=True)
    old, new = fleet.images()[0], fleet.bake()
    verdict = rollout(fleet, report, new)  # the defaults: protected -> Refresh, standby -> Ignore
    assert verdict.word == "rolled out", verdict.line()
    assert "scale-in protected" in report.text and "standby" in report.text
    by_id = dict(zip(sorted(i["InstanceId"] for i in fleet.group()["Instances"]), fleet.images(), strict=False))
    ec2 = fleet.client("ec2")
    image = {i["InstanceId"]: i["ImageId"] for r in ec2.describe_instances(
        InstanceIds=list(by_id))["Reservations"] for i in r["Instances"]}
    assert image[ids[1]] == old, "the standby instance was left alone (Ignore)"
    assert ids[0] not in image, "the protected instance was replaced (Refresh)"
    assert sorted(v for k, v in image.items() if k != ids[1]) == [new] * 3


def test_records_are_plain_json_parameters(fleet, report):
    settings = fleet.settings()
    rollout(fleet, report, fleet.bake())
    aws = Aws.for_settings(settings)
    assert records.read(aws, records.release_name(settings))["environment"] == "example"
