"""The pure parts of the rollout: the one preferences function and Nextcloud's upgrade path."""

from __future__ import annotations

from pathlib import Path

import botocore.session
import pytest

from infra.rollout import versions
from infra.rollout.preferences import refresh_preferences
from render.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]


def settings(**overrides):
    return load_settings(ROOT, "example", environ={}, overrides=overrides).settings


def _validate(prefs):
    """StartInstanceRefresh's input as botocore's model validates it (the client would refuse it otherwise)."""
    from botocore.validate import ParamValidator

    model = botocore.session.get_session().get_service_model("autoscaling").operation_model("StartInstanceRefresh")
    report = ParamValidator().validate({"AutoScalingGroupName": "g", "Preferences": prefs}, model.input_shape)
    assert not report.has_errors(), report.generate_report()


def test_rollout_preferences_carry_every_setting_explicitly():
    prefs = refresh_preferences(settings(**{"rollout.alarm_names": ["a", "b"]}))
    assert prefs == {
        "MinHealthyPercentage": 90, "MaxHealthyPercentage": 150, "InstanceWarmup": 120, "SkipMatching": True,
        "AutoRollback": True, "CheckpointPercentages": [50, 100], "CheckpointDelay": 300, "BakeTime": 300,
        "ScaleInProtectedInstances": "Refresh", "StandbyInstances": "Ignore",
        "AlarmSpecification": {"Alarms": ["a", "b"]},
    }
    _validate(prefs)


def test_upgrade_preferences_never_roll_back_watch_alarms_or_pause():
    prefs = refresh_preferences(settings(**{"rollout.alarm_names": ["a"]}), "upgrade")
    assert prefs["AutoRollback"] is False and prefs["BakeTime"] == 0
    assert "AlarmSpecification" not in prefs and "CheckpointPercentages" not in prefs
    assert (prefs["MinHealthyPercentage"], prefs["MaxHealthyPercentage"]) == (0, 100)
    _validate(prefs)


def test_no_checkpoints_means_no_checkpoint_delay_either():
    prefs = refresh_preferences(settings(**{"rollout.checkpoint_percentages": []}))
    assert "CheckpointPercentages" not in prefs and "CheckpointDelay" not in prefs  # AWS refuses a lone delay


@pytest.mark.parametrize(("current", "target", "problem"), [
    ("29.0.7", "29.0.8", None),
    ("29.0.7", "30.0.1", None),
    ("29.0.7", "31.0.0", "29.0.7 -> 30.x (its newest release) -> 31.0.0"),
    ("27.1.11", "30.0.0", "27.1.11 -> 28.x (its newest release) -> 29.x (its newest release) -> 30.0.0"),
    ("29.0.7", "29.0.7", "nothing to upgrade"),
    ("29.0.7", "28.0.14", "cannot downgrade"),
])
def test_nextcloud_upgrades_one_major_at_a_time(current, target, problem):
    found = versions.upgrade_path_problem(current, target)
    assert (found is None) if problem is None else (problem in found), found


def test_versions_compare_numerically_not_as_text():
    assert versions.compare("29.0.10", "29.0.9") == 1 and versions.compare("29.0", "29.0.0") == 0
    with pytest.raises(ValueError, match="not a Nextcloud version"):
        versions.parse("29.x")


@pytest.mark.parametrize(("key", "value", "message"), [
    ("rollout.alarm_names", [f"a{i}" for i in range(11)], "at most 10 alarms"),
    ("rollout.standby_instances", "Kill", "must be 'Terminate', 'Ignore' or 'Wait'"),
    ("rollout.state_prefix", "/aws/x", "not under /aws"),
    ("upgrade.listener_arn", "arn:aws:elasticloadbalancing:eu-central-1:123456789012:loadbalancer/app/x/1",
     "listener ARN"),
    ("upgrade.max_healthy_percentage", 200, "at most 100"),
])
def test_rollout_and_upgrade_settings_refuse_bad_values_naming_the_key(key, value, message):
    from render.settings import SettingsError

    with pytest.raises(SettingsError) as err:
        settings(**{key: value})
    assert key.split(".")[0] in str(err.value) and message in str(err.value)


@pytest.mark.parametrize("status, reason, word", [
    ("Failed", "An instance failed to launch.", "failed"),
    ("Cancelled", "Cancelled due to user request.", "cancelled"),
    ("RollbackFailed", "Rollback failed.", "rollback failed"),
    ("RollbackSuccessful", "Automatic rollback triggered.", "rolled back"),
])
def test_a_refresh_verdict_reads_as_one_sentence_whatever_punctuation_aws_ends_its_reason_with(status, reason, word):
    from infra.rollout.refresh import verdict

    v = verdict({"Status": status, "StatusReason": reason})
    assert v.word == word and reason.rstrip(".") in v.detail, v.line()
    assert ".;" not in v.line() and "..;" not in v.line(), v.line()
