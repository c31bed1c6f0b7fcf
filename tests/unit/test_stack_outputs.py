"""The stack's outputs as a settings layer: values flow in without copying, a stale copy is an error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from infra.validate import _checkov
from render.settings import SettingsError, load_settings
from render.stack_outputs import PENDING_VALUES, outputs_document

ROOT = Path(__file__).resolve().parents[2]
ARN = "arn:aws:secretsmanager:eu-central-1:123456789012:secret:nextcloud/example/{}-AbCdEf"
OUTPUTS = {
    "DatabaseAddress": "nextcloud-example.c1a2b3.eu-central-1.rds.amazonaws.com", "DatabasePort": "5432",
    "CacheAddress": "master.nextcloud-example.abcdef.euc1.cache.amazonaws.com", "CachePort": "6379",
    "BucketName": "nextcloud-example-bucket-1a2b3c", "BucketRegion": "eu-central-1",
    "PublicSubnetCidrs": "10.0.0.0/20,10.0.16.0/20",
    "DatabasePasswordSecretArn": ARN.format("database-password"), "CacheAuthTokenSecretArn": ARN.format("cache"),
    "InstanceIdSecretArn": ARN.format("instanceid"), "PasswordSaltSecretArn": ARN.format("passwordsalt"),
    "SecretSecretArn": ARN.format("secret"), "AdminPasswordSecretArn": ARN.format("admin-password"),
    "LaunchTemplateName": "nextcloud-example", "GroupName": "nextcloud-example", "RolloutAlarmNames": "a,b",
    "PublicSubnetIds": "subnet-0a1b2c3d4e5f60001,subnet-0a1b2c3d4e5f60002", "LogGroupName": "/nextcloud/example",
}
# The lines of example.toml that hold what the stack provides (s3.region may stay: it agrees with the stack).
PROVIDED = ("host =", "port =", "tls =", "bucket =", "trusted_proxies =", "subnet_id =", "db_password =",
            "redis_password =", "instanceid =", "passwordsalt =", "secret =", "admin_password =")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "environments").mkdir()
    shutil.copy(ROOT / "environments" / "example.toml", tmp_path / "environments" / "example.toml")
    return tmp_path


def without_stack_values(root: Path) -> None:
    path = root / "environments" / "example.toml"
    lines = [ln for ln in path.read_text().splitlines() if not ln.startswith(PROVIDED)]
    path.write_text("\n".join(lines) + "\n")


def record(root: Path, outputs: dict[str, str]) -> None:
    (root / "build" / "example").mkdir(parents=True, exist_ok=True)
    (root / "build" / "example" / "stack-outputs.json").write_text(
        outputs_document("nextcloud-example", "arn:aws:cloudformation:eu-central-1:123456789012:stack/x/y", outputs,
                         "2026-12-01T12:00:00+00:00"))


def test_the_stacks_outputs_fill_the_settings_the_file_leaves_out(root, monkeypatch):
    monkeypatch.delenv("NCIMAGE_DATABASE__HOST", raising=False)
    without_stack_values(root)
    record(root, OUTPUTS)
    loaded = load_settings(root, "example", environ={})
    s = loaded.settings
    assert s.database.host == OUTPUTS["DatabaseAddress"] and s.database.port == 5432
    assert (s.redis.host, s.redis.port, s.redis.tls) == (OUTPUTS["CacheAddress"], 6379, True)
    assert s.s3.bucket == OUTPUTS["BucketName"] and s.s3.region == "eu-central-1"
    assert s.site.trusted_proxies == ["10.0.0.0/20", "10.0.16.0/20"]
    assert s.secrets.instanceid == OUTPUTS["InstanceIdSecretArn"]
    assert loaded.origins["secrets.db_password"] == "stack output DatabasePasswordSecretArn"
    # The refresh watches the stack's alarms: inv rollout's alarm specification comes from this output.
    assert s.rollout.alarm_names == ["a", "b"]
    assert loaded.origins["rollout.alarm_names"] == "stack output RolloutAlarmNames"


def test_alarm_names_copied_by_hand_must_agree_with_the_stacks(root):
    without_stack_values(root)
    record(root, OUTPUTS)
    path = root / "environments" / "example.toml"
    path.write_text(path.read_text().replace("[rollout]", '[rollout]\nalarm_names = ["a"]', 1))
    stale = r"rollout.alarm_names: .* says \['a'\] but the stack provides \['a', 'b'\]"
    with pytest.raises(SettingsError, match=stale):
        load_settings(root, "example", environ={})
    path.write_text(path.read_text().replace('alarm_names = ["a"]', 'alarm_names = ["a", "b"]'))
    assert load_settings(root, "example", environ={}).settings.rollout.alarm_names == ["a", "b"]


def test_a_value_the_file_copied_by_hand_that_went_stale_is_an_error_naming_both(root):
    record(root, OUTPUTS)  # example.toml still has its own database.host, bucket, secrets…
    with pytest.raises(SettingsError) as err:
        load_settings(root, "example", environ={})
    text = str(err.value)
    assert "database.host: environments/example.toml says 'nextcloud.abcdefghijkl.eu-central-1.rds.amazonaws.com'" \
        in text
    assert f"the stack provides '{OUTPUTS['DatabaseAddress']}'" in text and "delete the line" in text
    assert "build/example/stack-outputs.json" in text


def test_an_environment_variable_still_wins_for_a_test_or_an_emergency(root):
    without_stack_values(root)
    record(root, OUTPUTS)
    s = load_settings(root, "example", environ={"NCIMAGE_DATABASE__HOST": "db.override.example"}).settings
    assert s.database.host == "db.override.example"


def test_before_the_stack_exists_only_deploy_stack_gets_placeholders(root):
    without_stack_values(root)
    with pytest.raises(SettingsError, match="database.host: required field is missing"):
        load_settings(root, "example", environ={})
    s = load_settings(root, "example", environ={}, stack_pending=True).settings
    assert s.database.host == PENDING_VALUES["database.host"] and s.secrets.secret.startswith("ssm:/pending-stack/")


def test_a_damaged_outputs_file_is_refused_with_the_fix(root):
    (root / "build" / "example").mkdir(parents=True)
    (root / "build" / "example" / "stack-outputs.json").write_text("{not json")
    with pytest.raises(SettingsError, match="unreadable .*run `inv deploy-stack` again"):
        load_settings(root, "example", environ={})
    (root / "build" / "example" / "stack-outputs.json").write_text(json.dumps({"schema": 1, "outputs": []}))
    with pytest.raises(SettingsError, match="not a stack outputs file"):
        load_settings(root, "example", environ={})


@pytest.mark.slow
def test_checkov_in_validate_fails_on_a_template_with_a_failed_check(tmp_path):
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    bad = tmp_path / "bad.yaml"
    bad.write_text("Resources:\n  Open:\n    Type: AWS::S3::Bucket\n")
    check = _checkov(tmp_path, [bad])
    assert not check.ok and "CKV_AWS_" in check.detail and "Open" in check.detail
    good = _checkov(ROOT, [ROOT / "infra" / "stack" / "nextcloud.yaml"])
    assert good.ok and "skipped with a reason" in good.detail, good.detail
