"""The settings warn (never fail) when the pinned Nextcloud major is past, or close to, its end of life."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path

import pytest

from render.nextcloud_releases import SOON_DAYS, STALE_DAYS, load_table, support_warnings
from render.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
CHECKED = date(2026, 12, 1)  # the day the shipped environments' releases were checked against the table
TABLE = load_table()


def test_the_table_is_complete_and_ordered():
    majors = sorted(TABLE.end_of_life)
    assert majors == list(range(majors[0], majors[-1] + 1)), "no major may be missing between the oldest and newest"
    dates = [TABLE.end_of_life[m] for m in majors]
    assert dates == sorted(dates), "a newer major never reaches its end of life before an older one"
    assert TABLE.source.startswith("https://github.com/nextcloud/server/wiki/Maintenance-and-Release-Schedule")
    assert TABLE.as_of <= CHECKED


@pytest.mark.parametrize("env", ["local", "example"])
def test_the_shipped_environments_pin_a_supported_release(env):
    loaded = load_settings(ROOT, env, environ={}, today=CHECKED)
    assert loaded.warnings == ()
    major = int(loaded.settings.nextcloud.version.split(".")[0])
    assert TABLE.end_of_life[major] > CHECKED


def test_a_major_past_its_end_of_life_is_warned_about_with_the_supported_ones():
    (warning,) = support_warnings("29.0.7", CHECKED)
    assert "Nextcloud 29 reached its end of life on 2025-04-30" in warning
    assert "34 until 2027-06-30" in warning and "33 until 2027-02-28" in warning
    assert "32 until" not in warning, "32 ended on 2026-09-30"
    assert "render/nextcloud_releases.toml" in warning


def fresh(today: date):
    """The table as if its data were read on ``today`` (so only the release's own dates speak)."""
    return replace(TABLE, as_of=today)


def test_the_last_supported_day_is_still_supported():
    eol = TABLE.end_of_life[33]
    assert not any("reached its end of life" in w for w in support_warnings("33.0.2", eol, fresh(eol)))
    after = eol + timedelta(days=1)
    assert any("reached its end of life" in w for w in support_warnings("33.0.2", after, fresh(after)))


def test_an_end_of_life_coming_soon_is_warned_about():
    eol = TABLE.end_of_life[34]
    soon = eol - timedelta(days=SOON_DAYS)
    (warning,) = support_warnings("34.0.3", soon, fresh(soon))
    assert f"in {SOON_DAYS} days" in warning and "plan the upgrade" in warning
    earlier = soon - timedelta(days=1)
    assert support_warnings("34.0.3", earlier, fresh(earlier)) == []


def test_a_major_unknown_to_the_table_asks_for_the_table_to_be_updated():
    newer = max(TABLE.end_of_life) + 1
    (warning,) = support_warnings(f"{newer}.0.0", CHECKED)
    assert "not in the release table" in warning and "add its end-of-life date" in warning
    (warning,) = support_warnings("12.0.0", CHECKED)
    assert "older than every release in the table" in warning


def test_a_stale_table_says_so():
    late = TABLE.as_of + timedelta(days=STALE_DAYS + 1)
    assert any("days old" in w for w in support_warnings("34.0.3", late))
    assert not any("days old" in w for w in support_warnings("34.0.3", TABLE.as_of + timedelta(days=STALE_DAYS)))


def test_tasks_show_the_warning_and_still_succeed(tmp_path):
    """Through the front door: `inv render` on an end-of-life pin prints the warning, exits 0 and renders."""
    shutil.copytree(ROOT / "tasks", tmp_path / "tasks", ignore=shutil.ignore_patterns("__pycache__"))
    for tree in ("render", "image", "packer", "infra", "environments"):
        (tmp_path / tree).symlink_to(ROOT / tree)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NCIMAGE_")}
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "render", "--env", "local",
         "--set", "nextcloud.version=29.0.7", "--set", "nextcloud.image=nextcloud-standin:29.0.7-apache"],
        cwd=tmp_path, capture_output=True, text=True, env=env, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "warning: nextcloud.version 29.0.7: Nextcloud 29 reached its end of life on 2025-04-30" in proc.stderr
    assert (tmp_path / "build" / "local" / "fingerprint").is_file()


def test_the_local_twins_stand_in_carries_the_pinned_version():
    """The stand-in's version.php is what the twin's image suite and cluster init read as "the code's version"."""
    (version_php,) = [p for p in ROOT.glob("**/standin/nextcloud/version.php") if "build" not in p.parts]
    text = version_php.read_text()
    pinned = load_settings(ROOT, "local", environ={}, today=CHECKED).settings.nextcloud.version
    assert f"$OC_VersionString = '{pinned}';" in text
    assert f"$OC_Version = array({', '.join(pinned.split('.'))}, " in text
