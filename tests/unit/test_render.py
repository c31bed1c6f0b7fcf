"""Rendering: deterministic, layered, and the fingerprint follows exactly what defines the image."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from render.outputs import (
    FINGERPRINT,
    NEXTCLOUD_ENV,
    PACKER_VARS,
    USER_DATA,
    fingerprint,
    render_all,
    render_nextcloud_env,
    write_outputs,
)
from render.settings import SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[2]


def settings(env="local", **kw):
    return load_settings(ROOT, env, environ={}, **kw).settings


def test_inv_render_twice_gives_identical_bytes(tmp_path):
    # In a copy of the project's front door: a test never writes into the user's build/<env>/ (an offline render
    # there would replace the fingerprint a bake of theirs recorded).
    shutil.copytree(ROOT / "tasks", tmp_path / "tasks", ignore=shutil.ignore_patterns("__pycache__"))
    for tree in ("render", "image", "packer", "infra", "environments"):
        (tmp_path / tree).symlink_to(ROOT / tree)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NCIMAGE_")}
    outputs = []
    for _ in range(2):
        subprocess.run([sys.executable, "-m", "invoke", "render", "--env", "local"], cwd=tmp_path, check=True,
                       capture_output=True, env=env)
        outputs.append({p.name: p.read_bytes() for p in sorted((tmp_path / "build" / "local").iterdir())
                        if p.name in {USER_DATA, PACKER_VARS, NEXTCLOUD_ENV, FINGERPRINT}})
    assert set(outputs[0]) == {USER_DATA, PACKER_VARS, NEXTCLOUD_ENV, FINGERPRINT}
    assert outputs[0] == outputs[1]


def test_user_data_is_private_and_passes_cloud_init_schema(tmp_path):
    write_outputs(tmp_path, render_all(ROOT, settings()))
    assert (tmp_path / USER_DATA).stat().st_mode & 0o777 == 0o600
    proc = subprocess.run(["cloud-init", "schema", "-c", str(tmp_path / USER_DATA)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_user_data_carries_only_role_and_secret_references():
    s = settings("example")
    text = render_all(ROOT, s)[USER_DATA]
    # Everything that belongs in the image stays out of the user data.
    for baked in (s.database.host, s.redis.host, s.s3.bucket, s.site.domain, s.nextcloud.image):
        assert baked not in text
    doc = json.loads(text.split("content: |\n", 1)[1].replace("\n      ", "\n"))
    assert doc["role"] == {"allow_install": True, "allow_upgrade": False}
    assert doc["secrets"]["NEXTCLOUD_DB_PASSWORD"].startswith("arn:aws:secretsmanager:")
    assert doc["secrets"]["NEXTCLOUD_INSTANCEID"] == "ssm:/nextcloud/example/instanceid"


def test_nextcloud_env_holds_no_secret():
    s = settings(overrides={"secrets.db_password": "literal:canary-db-7f3a"})
    env = render_nextcloud_env(s)
    assert "canary-db-7f3a" not in env
    assert "NEXTCLOUD_DB_HOST=10.0.2.2\n" in env
    assert all("=" in line for line in env.splitlines())


def test_layering_file_then_env_then_flags():
    assert settings().database.port == 55432
    by_env = load_settings(ROOT, "local", environ={"NCIMAGE_DATABASE__PORT": "6000"}).settings
    assert by_env.database.port == 6000
    by_flag = load_settings(ROOT, "local", environ={"NCIMAGE_DATABASE__PORT": "6000"},
                            sets=["database.port=7000"]).settings
    assert by_flag.database.port == 7000
    lists = load_settings(ROOT, "local", environ={"NCIMAGE_SITE__TRUSTED_PROXIES": '["10.1.0.0/16"]'}).settings
    assert lists.site.trusted_proxies == ["10.1.0.0/16"]


def test_defaults_fill_what_the_file_leaves_out():
    s = settings()
    assert s.rollout.checkpoint_percentages == [50, 100]
    assert s.launch_template.name is None


def test_fingerprint_changes_with_what_defines_the_image(tmp_path):
    base = settings()
    fp = render_all(ROOT, base)[FINGERPRINT]
    newer = settings(sets=["nextcloud.image=nextcloud-standin:34.0.4-apache", "nextcloud.version=34.0.4"])
    assert render_all(ROOT, newer)[FINGERPRINT] != fp
    other_db = settings(sets=["database.host=10.0.2.3"])
    assert render_all(ROOT, other_db)[FINGERPRINT] != fp, "the non-secret environment is baked into the image"


def test_fingerprint_ignores_boot_time_inputs():
    base = render_all(ROOT, settings())[FINGERPRINT]
    rotated = settings(overrides={"secrets.db_password": "literal:rotated", "cluster.allow_upgrade": True})
    assert render_all(ROOT, rotated)[FINGERPRINT] == base, "secrets and the role are user data, not image"


def test_fingerprint_follows_the_image_tree(tmp_path):
    for tree in ("image", "packer"):
        (tmp_path / tree).mkdir()
    (tmp_path / "image" / "install.sh").write_text("echo one\n")
    inputs = {"packer-vars.json": "{}"}
    first = fingerprint(tmp_path, inputs)
    assert fingerprint(tmp_path, inputs) == first
    (tmp_path / "image" / "install.sh").write_text("echo two\n")
    second = fingerprint(tmp_path, inputs)
    assert second != first
    (tmp_path / "image" / "install.sh").chmod(0o755)
    assert fingerprint(tmp_path, inputs) != second, "the executable bit changes the image too"
    (tmp_path / "image" / "__pycache__").mkdir()
    (tmp_path / "image" / "__pycache__" / "x.pyc").write_bytes(b"junk")
    third = fingerprint(tmp_path, inputs)
    (tmp_path / "image" / "__pycache__" / "x.pyc").write_bytes(b"other junk")
    assert fingerprint(tmp_path, inputs) == third


def test_render_of_a_copy_elsewhere_gives_the_same_fingerprint(tmp_path):
    """Absolute paths never enter the fingerprint: a second clone reuses the first one's artifact."""
    for tree in ("image", "packer"):
        if (ROOT / tree).exists():
            shutil.copytree(ROOT / tree, tmp_path / tree, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__"))
    s = settings()
    assert render_all(tmp_path, s)[FINGERPRINT] == render_all(ROOT, s)[FINGERPRINT]


def test_override_cannot_smuggle_a_literal_into_aws():
    with pytest.raises(SettingsError) as exc:
        load_settings(ROOT, "example", environ={}, overrides={"secrets.secret": "literal:oops"})
    assert "secrets.secret" in str(exc.value)


def _env(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line)


def test_aws_environment_ships_its_logs_to_its_log_group_and_reports_liveness_to_its_group():
    env = _env(render_nextcloud_env(settings("example")))
    assert env["NEXTCLOUD_LOG_DESTINATION"] == "cloudwatch"
    assert env["NEXTCLOUD_LOG_GROUP"] == "/nextcloud/example"
    assert env["NEXTCLOUD_AWS_REGION"] == "eu-central-1"
    assert env["NEXTCLOUD_LIVENESS_REPORT"] == "autoscaling"
    assert env["NEXTCLOUD_LOGLEVEL"] == "2"
    # The group is named from the environment unless set; the region is the environment's.
    other = _env(render_nextcloud_env(settings("example", sets=["logs.group_name=/ops/cloud", "region=eu-west-1",
                                                                "logs.nextcloud_loglevel=1"])))
    assert (other["NEXTCLOUD_LOG_GROUP"], other["NEXTCLOUD_AWS_REGION"], other["NEXTCLOUD_LOGLEVEL"]) == (
        "/ops/cloud", "eu-west-1", "1")
    unset = load_settings(ROOT, "example", environ={}).settings.model_copy(
        update={"name": "prod", "logs": settings("example").logs.model_copy(update={"group_name": None})})
    assert _env(render_nextcloud_env(unset))["NEXTCLOUD_LOG_GROUP"] == "/nextcloud/prod"


def test_local_twin_keeps_its_logs_in_the_journal_and_only_logs_liveness():
    env = _env(render_nextcloud_env(settings("local")))
    assert (env["NEXTCLOUD_LOG_DESTINATION"], env["NEXTCLOUD_LOG_GROUP"], env["NEXTCLOUD_LIVENESS_REPORT"]) == (
        "journal", "", "log")


@pytest.mark.parametrize(("key", "value", "message"), [
    ("logs.group_name", "'no spaces allowed'", "must be a CloudWatch Logs group name"),
    ("logs.nextcloud_loglevel", "7", "less than or equal to 4"),
])
def test_bad_log_settings_are_refused_naming_the_key(key, value, message):
    with pytest.raises(SettingsError) as err:
        settings("example", sets=[f"{key}={value}"])
    text = str(err.value)
    assert key in text and message in text, text
