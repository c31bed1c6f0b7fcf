"""inv status on each state the other tasks leave, and the tasks themselves: flags, verdict lines, exit codes."""

from __future__ import annotations

import json

import pytest
from invoke import Context, Exit
from rollout_fixtures import ALARM, GROUP, InterruptAt, mutating, rollout, upgrade_to

import tasks
from infra.rollout.status import status


def look(fleet, report, as_json=False):
    verdict = status(fleet.settings(), as_json=as_json, report=report)
    assert verdict.ok, verdict.line()
    return report.text


def test_status_of_a_quiet_fleet_shows_versions_instances_and_health(fleet, report, aws):
    image = fleet.images()[0]
    text = look(fleet, report)
    assert "launch template versions" in text and image in text and "33.0.8" in text
    assert text.count("InService") == 4 and "healthy" in text
    assert "refresh: none" in text and "prune-amis would remove: nothing" in text
    assert mutating(aws.calls) == [], "status only reads"


def test_status_while_a_refresh_runs_shows_its_progress(fleet, report):
    new = fleet.bake()
    version = fleet.client("ec2").create_launch_template_version(
        LaunchTemplateId=fleet.template_id, SourceVersion="1", LaunchTemplateData={"ImageId": new})
    fleet.client("autoscaling").start_instance_refresh(AutoScalingGroupName=GROUP, DesiredConfiguration={
        "LaunchTemplate": {"LaunchTemplateId": fleet.template_id,
                           "Version": str(version["LaunchTemplateVersion"]["VersionNumber"])}},
        Preferences={"MinHealthyPercentage": 50, "InstanceWarmup": 60, "CheckpointPercentages": [50, 100],
                     "CheckpointDelay": 3600})
    for _ in range(6):
        fleet.client("autoscaling").describe_instance_refreshes(AutoScalingGroupName=GROUP)
    doc = json.loads(look(fleet, report, as_json=True))
    assert doc["refresh"]["status"] == "InProgress" and doc["refresh"]["percent_complete"] == 50
    assert doc["refresh"]["desired_version"] == "2" and doc["group"]["version"] == "1"
    by_version = sorted(i["launch_template_version"] for i in doc["instances"])
    assert by_version == ["1", "1", "2", "2"], "each instance reports the version it was launched from"
    assert doc["launch_template_versions"]["latest"]["image_id"] == new


@pytest.mark.slow
def test_status_after_an_automatic_rollback_names_the_alarm(fleet, report):
    fleet.door.refresh.alarm_at_percent[ALARM] = 50
    rollout(fleet, report, fleet.bake())
    doc = json.loads(look(fleet, type(report)(), as_json=True))
    assert doc["refresh"]["status"] == "RollbackSuccessful" and ALARM in doc["refresh"]["rollback_reason"]
    assert doc["launch_template_versions"]["group"]["version"] == 1
    assert [c["image_id"] for c in doc["prune_candidates"]] == [], "the failed image is still $Latest: kept"


@pytest.mark.slow
def test_status_of_an_unfinished_upgrade_says_how_to_resume(fleet, report):
    upgrade_to(fleet, InterruptAt("upgrading: upgrading the cluster"), fleet.bake(nextcloud="34.0.3"),
               settings=fleet.settings())
    text = look(fleet, report)
    assert "33.0.8 -> 34.0.3 unfinished at step upgrading" in text and "inv upgrade --env example" in text


def test_status_lists_what_prune_would_remove(fleet, report):
    old = [fleet.bake() for _ in range(5)]
    doc = json.loads(look(fleet, report, as_json=True))
    assert sorted(c["image_id"] for c in doc["prune_candidates"]) == sorted(old[:2])


# ---- the tasks ------------------------------------------------------------------------------------------------
def sets(fleet) -> list[str]:
    return ["rollout.poll_seconds=0", f'rollout.alarm_names=["{ALARM}"]', f'upgrade.listener_arn="{fleet.listener}"']


def test_inv_rollout_prints_the_verdict_and_exits_4_when_aws_rolled_it_back(fleet, capsys):
    bad = fleet.bake()
    fleet.door.refresh.alarm_at_percent[ALARM] = 50
    with pytest.raises(Exit) as exited:
        tasks.rollout(Context(), env="example", set_=sets(fleet), ami=bad, yes=True)
    assert exited.value.code == 4
    assert f"verdict: rolled back - Automatic rollback: CloudWatch alarm {ALARM}" in capsys.readouterr().out


def test_inv_rollout_refusals_exit_2_with_a_verdict_line_and_no_traceback(fleet, capsys):
    with pytest.raises(Exit) as exited:
        tasks.rollout(Context(), env="example", set_=sets(fleet), ami=fleet.bake(tested=None), yes=True)
    assert exited.value.code == 2
    out = capsys.readouterr()
    assert "verdict: refused - AMI" in out.out and "has not passed test-ami" in out.out
    assert "Traceback" not in out.out + out.err


def test_inv_rollout_succeeds_with_exit_0(fleet, capsys):
    tasks.rollout(Context(), env="example", set_=sets(fleet), ami=fleet.bake(), yes=True)
    assert "verdict: rolled out - the group launches nextcloud-example version 2" in capsys.readouterr().out


def test_inv_status_json_is_one_document_and_the_verdict_goes_to_stderr(fleet, capsys):
    tasks.status(Context(), env="example", set_=sets(fleet), json=True)
    out, err = capsys.readouterr()
    assert json.loads(out)["group"]["name"] == GROUP and err.startswith("verdict: status")


def test_inv_prune_amis_rejects_a_keep_that_is_not_a_number_with_the_verdict_line_of_every_refusal(fleet, capsys):
    before = fleet.state()
    with pytest.raises(Exit) as exited:
        tasks.prune_amis(Context(), env="example", set_=sets(fleet), keep="many")
    assert exited.value.code == 2
    out = capsys.readouterr()
    assert "verdict: refused - --keep 'many': must be a whole number" in out.out, out
    assert "Traceback" not in out.out + out.err and fleet.state() == before


def test_confirmation_is_required_when_stdin_is_not_a_terminal(fleet, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    image = fleet.bake()
    before = fleet.state()
    with pytest.raises(Exit) as exited:
        tasks.rollout(Context(), env="example", set_=sets(fleet), ami=image)
    assert exited.value.code == 2
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("verdict: refused - rollout ") and "not confirmed" in last and "pass --yes" in last, last
    assert fleet.state() == before
