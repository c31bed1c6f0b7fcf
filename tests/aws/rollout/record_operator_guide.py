#!/usr/bin/env python3
"""Record the operations guide's runs (docs/operations.md): real `inv` commands against the AWS emulator.

    .venv/bin/python tests/aws/rollout/record_operator_guide.py > build/operator-guide.md
    .venv/bin/python tests/aws/rollout/record_operator_guide.py --update-docs   # rewrite docs/operations.md's copy

Starts moto on loopback, the front door with its doubles in front of it (the instance refresh, SourceVersion,
the Nextcloud cluster on the emulated instances: tests/aws/front_door.py), builds the `example` environment's
fleet in it (4 instances of one AMI, tests/aws/rollout_fixtures.py), then runs the operator's commands as
subprocesses through AWS_ENDPOINT_URL and prints each with its output. The values the stack's outputs
would provide (the alarm, the listener) come as NCIMAGE_* variables. Time in the refresh double is virtual, so a
refresh that takes half an hour on AWS takes seconds here; nothing reaches beyond loopback.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path[:0] = [str(HERE), str(HERE.parent), str(ROOT)]

from front_door import FrontDoor  # noqa: E402
from rollout_fixtures import ALARM, build_fleet  # noqa: E402

from infra.localtwin.instance import free_port  # noqa: E402

REGION = "eu-central-1"
GUIDE = ROOT / "docs" / "operations.md"
# The recorded runs sit in docs/operations.md between these two lines (the first one's section is the first recorded).
BEGIN = "\n#### A rollout\n"
END = "\n<!-- end of the recorded runs"


def guide_copy(text: str) -> str:
    """The recorded runs as docs/operations.md holds them."""
    start, end = text.index(BEGIN), text.index(END)
    return text[start:end].strip("\n") + "\n"


def with_recording(text: str, recording: str) -> str:
    """docs/operations.md's text with ``recording`` in place of its copy."""
    start, end = text.index(BEGIN), text.index(END)
    return text[:start] + "\n" + recording.strip("\n") + "\n" + text[end:]


def start_moto(log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(url + "/moto-api/data.json", timeout=5).read()  # noqa: S310 - loopback
            return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"moto did not start: {log.read_text()}")


def main() -> None:
    if sys.argv[1:] == ["--update-docs"]:
        import contextlib
        import io

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            record()
        GUIDE.write_text(with_recording(GUIDE.read_text(), out.getvalue()))
        return
    record()


def record() -> None:
    work = Path(tempfile.mkdtemp(prefix="operator-guide-"))
    moto, moto_url = start_moto(work / "moto.log")
    os.environ.update(AWS_ACCESS_KEY_ID="demo", AWS_SECRET_ACCESS_KEY="demo", AWS_DEFAULT_REGION=REGION,
                      AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null",
                      AWS_EC2_METADATA_DISABLED="true")
    door = FrontDoor(moto_url, REGION)
    os.environ["AWS_ENDPOINT_URL"] = door.url
    try:
        fleet = build_fleet(door, REGION)
        env = {**os.environ, "COLUMNS": "118", "NCIMAGE_ROLLOUT__POLL_SECONDS": "0",
               "NCIMAGE_ROLLOUT__ALARM_NAMES": f'["{ALARM}"]', "NCIMAGE_UPGRADE__LISTENER_ARN": fleet.listener}

        def inv(*args: str) -> None:
            proc = subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, env=env, capture_output=True,
                                  text=True, timeout=600)
            print(f"$ inv {' '.join(args)}")
            print("\n".join(line.rstrip() for line in (proc.stdout + proc.stderr).rstrip().splitlines()))
            print(f"$ echo $?\n{proc.returncode}")

        def section(title: str, *commands: tuple[str, ...]) -> None:
            print(f"\n#### {title}\n```")
            for command in commands:
                inv(*command)
            print("```")

        for _ in range(3):
            fleet.bake()  # older builds, for prune
        section("A rollout", ("rollout", "--env", "example", "--ami", fleet.bake(), "--yes"))
        bad = fleet.bake()
        door.refresh.alarm_at_percent[ALARM] = 50  # CloudWatch sees the new image's 5xx once half the fleet runs it
        section("A rollout that an alarm rolls back", ("rollout", "--env", "example", "--ami", bad, "--yes"))
        fleet.client("cloudwatch").set_alarm_state(AlarmName=ALARM, StateValue="OK", StateReason="fixed")
        section("A rollback (no refresh running: the AMI the group ran before)", ("rollback", "--env", "example",
                                                                               "--yes"))
        newer = fleet.bake(nextcloud="34.0.3")
        section("An upgrade", ("rollout", "--env", "example", "--ami", newer, "--yes"),
                ("upgrade", "--env", "example", "--ami", newer, "--yes"))
        section("A prune", ("prune-amis", "--env", "example", "--keep", "2", "--yes"))
        section("Status", ("status", "--env", "example"))
    finally:
        door.close()
        moto.terminate()
        moto.wait(timeout=10)


if __name__ == "__main__":
    main()
