"""`inv sweep` against the emulator: a bake and a canary that die midway (SIGKILL: no cleanup of their own) leave
tagged resources; the sweep removes exactly those, and never another environment's, an untagged resource, a
finished AMI, or (by age) a run younger than --older-than."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from bake_support import (
    COPY_REGION,
    REGION,
    ROOT,
    emulator_state,
    make_group,
    ours,
    register_ami,
    settings_for,
)

from infra.aws import throwaway
from infra.aws.session import Aws, AwsError
from infra.aws.sweep import find_leftovers, parse_age, sweep_environment
from render import tags as T

DIES_IN_THE_MIDDLE = r"""
import json, os, signal, sys
from pathlib import Path
from render.settings import load_settings

overrides = json.loads(os.environ["SWEEP_TEST_OVERRIDES"])
settings = load_settings(Path("."), "example", environ={}, overrides=overrides).settings
log = lambda m: print(m, flush=True)
death = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)  # like a power cut: no cleanup runs
if sys.argv[1] == "bake":
    from infra.aws import ami, bake
    ami.finish_images = death                    # after Packer registered and copied the AMI
    bake.build_aws_image(Path("."), settings, log=log, build_root=Path(os.environ["SWEEP_TEST_BUILD"]))
else:
    from infra.aws import canary
    from infra.host_keys import HostKey

    class DiesOnSsh:
        # Stands in for SSH to the canary (the emulator's address belongs to nobody); the process dies there.
        def __init__(self, target): pass
        wait_ssh = staticmethod(death)
    # The emulator's console shows no host keys: stand in for those cloud-init prints, so the run gets to SSH.
    canary.wait_for_host_keys = lambda *a, **k: [HostKey("ssh-ed25519", "AAAAC3NzaC1lZDI1NTE5")]
    canary.test_aws_image(Path("."), settings, ami=sys.argv[2], access_factory=DiesOnSsh, log=log)
"""


def die_midway(kind: str, settings_overrides: dict, tmp_path, *args: str) -> str:
    """Run a bake or a canary in its own process that is SIGKILLed midway; returns the run id it printed."""
    env = {**os.environ, "SWEEP_TEST_OVERRIDES": json.dumps(settings_overrides), "SWEEP_TEST_BUILD": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", DIES_IN_THE_MIDDLE, kind, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    run_line = next(line for line in proc.stdout.splitlines() if f"{kind} run " in line)
    return run_line.split(f"{kind} run ", 1)[1].split(":", 1)[0]


def overrides_of(settings) -> dict:
    return {"bake.subnet_id": settings.bake.subnet_id, "bake.communicator": "none",
            "bake.ssh_source_cidrs": list(settings.bake.ssh_source_cidrs), "ami.regions": list(settings.ami.regions),
            "account_id": settings.account_id}


def live(state: dict) -> dict:
    return {region: {**kinds, "instances": {i: v for i, v in kinds["instances"].items() if v[0] != "terminated"}}
            for region, kinds in state.items()}


def all_ids(state: dict) -> set[str]:
    return {f"{region}/{rid}" for region, kinds in state.items() for kind, items in kinds.items()
            if kind != "parameters" for rid in items}


@pytest.mark.skipif(shutil.which("packer") is None, reason="packer not installed")
def test_sweep_removes_exactly_what_the_dead_runs_left(aws, tmp_path):
    settings = settings_for(aws, ami__regions=[COPY_REGION])
    finished = register_ami(aws, settings)  # a finished AMI of this environment: never a leftover
    make_group(aws, settings, finished[REGION], desired=0)

    bake_run = die_midway("bake", overrides_of(settings), tmp_path, "bake")
    canary_run = die_midway("canary", overrides_of(settings), tmp_path, finished[REGION])

    # Untagged look-alikes, and another environment's leftovers (as old as the dead runs).
    ec2 = aws.client("ec2")
    vpc = ec2.describe_subnets(SubnetIds=[settings.bake.subnet_id])["Subnets"][0]["VpcId"]
    ec2.create_key_pair(KeyName="nextcloud-image-bake-example-by-hand")
    ec2.create_security_group(GroupName="nextcloud-image-bake-example-by-hand", Description="x", VpcId=vpc)
    ec2.run_instances(ImageId=finished[REGION], MinCount=1, MaxCount=1, SubnetId=settings.bake.subnet_id)
    untagged_image = ec2.register_image(Name="nextcloud-example-by-hand", RootDeviceName="/dev/xvda")["ImageId"]
    other = settings_for(aws, name="staging")
    aws_ctx = Aws(region=REGION)
    created = throwaway.Created()
    other_run = throwaway.new_run_id()
    throwaway.create_security_group(aws_ctx, other, vpc_id=vpc, run_id=other_run, purpose=T.PURPOSE_BAKE,
                                    ssh_cidrs=[], created=created, log=lambda _m: None)

    before = live(emulator_state(aws))
    dead = ours(before, bake_run)
    crashed_canary = ours(before, canary_run)
    # What each dead run left: the bake its key pair, group, AMIs and snapshots in both regions; the canary its
    # key pair, group, instance and volume.
    assert {k: len(v) for k, v in dead.items()} == {"key_pairs": 1, "security_groups": 1, "images": 2,
                                                    "snapshots": 2}
    assert {k: len(v) for k, v in crashed_canary.items()} == {"instances": 1, "volumes": 1, "key_pairs": 1,
                                                              "security_groups": 1}
    expected_gone = set().union(*dead.values(), *crashed_canary.values())

    listed = []
    verdict = sweep_environment(settings, older_than="0s", remove=False, log=listed.append)
    assert verdict.word == "listed" and live(emulator_state(aws)) == before  # listing changes nothing
    assert len([line for line in listed if line.startswith("  eu-")]) == 8  # the 8 leftovers (snapshots with AMIs)

    lines: list[str] = []
    verdict = sweep_environment(settings, older_than="0s", remove=True, log=lines.append)
    assert verdict.word == "swept" and verdict.ok, (verdict.line(), lines)
    # The count removed and the count it is "of" are the same resources: an AMI's snapshots are counted in both.
    assert f"removed {len(expected_gone)} of {len(expected_gone)} " in verdict.detail, verdict.line()
    after = live(emulator_state(aws))
    assert all_ids(before) - all_ids(after) == expected_gone
    survivors = all_ids(after)
    for region_id in (f"{REGION}/{finished[REGION]}", f"{COPY_REGION}/{finished[COPY_REGION]}",
                      f"{REGION}/{untagged_image}", f"{REGION}/nextcloud-image-bake-example-by-hand"):
        assert region_id in survivors
    assert ours(after, other_run)


def test_only_what_is_older_than_the_age_is_a_leftover(aws, tmp_path):
    """Ages come from AWS's creation times (instances, volumes, key pairs) or, where AWS keeps none (security
    groups), from the run id's start time; both are read from real emulator resources here."""
    settings = settings_for(aws)
    aws_ctx = Aws(region=REGION)
    run_id = throwaway.new_run_id()
    created = throwaway.Created()
    with tempfile.TemporaryDirectory() as tmp:
        throwaway.import_key_pair(aws_ctx, settings, run_id=run_id, purpose=T.PURPOSE_CANARY, workdir=Path(tmp),
                                  created=created, log=lambda _m: None)
    vpc = aws.client("ec2").describe_subnets(SubnetIds=[settings.bake.subnet_id])["Subnets"][0]["VpcId"]
    throwaway.create_security_group(aws_ctx, settings, vpc_id=vpc, run_id=run_id, purpose=T.PURPOSE_CANARY,
                                    ssh_cidrs=[], created=created, log=lambda _m: None)
    now = datetime.now(UTC)
    kinds = lambda found: sorted(i.kind for i in found)  # noqa: E731
    assert kinds(find_leftovers(aws_ctx, "example", [REGION], older_than=parse_age("6h"),
                                now=now + timedelta(hours=5))) == []
    assert kinds(find_leftovers(aws_ctx, "example", [REGION], older_than=parse_age("6h"),
                                now=now + timedelta(hours=7))) == ["key-pair", "security-group"]
    assert kinds(find_leftovers(aws_ctx, "staging", [REGION], older_than=parse_age("0s"), now=now)) == []


def test_sweep_refuses_a_bad_age_and_a_dry_run_removes_nothing(aws):
    settings = settings_for(aws)
    with pytest.raises(AwsError, match=r"--older-than '6 hours'.*e\.g\. 6h"):
        sweep_environment(settings, older_than="6 hours", remove=True, log=lambda _m: None)
    run_id = throwaway.new_run_id()
    vpc = aws.client("ec2").describe_subnets(SubnetIds=[settings.bake.subnet_id])["Subnets"][0]["VpcId"]
    throwaway.create_security_group(Aws(region=REGION), settings, vpc_id=vpc, run_id=run_id, purpose="bake",
                                    ssh_cidrs=[], created=throwaway.Created(), log=lambda _m: None)
    before = emulator_state(aws)
    verdict = sweep_environment(settings, older_than="0s", remove=True, dry_run=True, log=lambda _m: None)
    assert verdict.word == "listed" and "dry run" in verdict.detail
    assert emulator_state(aws) == before


def test_without_yes_sweep_asks_on_a_terminal_and_only_a_yes_removes(aws):
    """--yes skips the question; without it, a terminal is asked (no: nothing removed, exit 2) and without a
    terminal (no ``confirm``) sweep only lists."""
    settings = settings_for(aws)
    vpc = aws.client("ec2").describe_subnets(SubnetIds=[settings.bake.subnet_id])["Subnets"][0]["VpcId"]
    throwaway.create_security_group(Aws(region=REGION), settings, vpc_id=vpc, run_id=throwaway.new_run_id(),
                                    purpose="bake", ssh_cidrs=[], created=throwaway.Created(), log=lambda _m: None)
    before = emulator_state(aws)
    listed = sweep_environment(settings, older_than="0s", remove=False, log=lambda _m: None)
    assert (listed.word, listed.exit_code) == ("listed", 0) and "--yes" in listed.detail
    questions: list[str] = []
    declined = sweep_environment(settings, older_than="0s", remove=False, log=lambda _m: None,
                                 confirm=lambda q: questions.append(q) or False)
    assert (declined.word, declined.exit_code) == ("not confirmed", 2) and emulator_state(aws) == before
    assert questions == ["remove these 1 leftover(s) of example?"]
    swept = sweep_environment(settings, older_than="0s", remove=False, log=lambda _m: None, confirm=lambda _q: True)
    assert swept.word == "swept" and "removed 1 of 1 leftover(s)" in swept.detail, swept.line()
    assert emulator_state(aws) != before


@pytest.mark.parametrize(("text", "seconds"), [("6h", 21600), ("90m", 5400), ("2d", 172800), ("1w", 604800),
                                               ("0s", 0)])
def test_ages(text, seconds):
    assert parse_age(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "6", "h", "-1h", "6 h", "1y", "6h30m"])
def test_bad_ages(text):
    with pytest.raises(ValueError, match="e.g. 6h"):
        parse_age(text)
