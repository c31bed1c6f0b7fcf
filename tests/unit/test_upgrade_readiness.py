"""How `inv upgrade` learns its upgrade instance's readiness without an agent: the instance prints marked lines on
its serial console (image/rootfs/usr/local/libexec/nextcloud-image/upgrade-readiness-console, run as the very file
baked into the image), the caller reads the last whole one out of EC2's console output
(infra/rollout/upgrade_instance.py). A loopback HTTP server stands in for the container's /readyz; a file stands in
for /dev/console.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from infra.aws.console import console_text
from infra.rollout.upgrade_instance import MARK, console_readiness

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "image" / "rootfs" / "usr" / "local" / "libexec" / "nextcloud-image" / "upgrade-readiness-console"
UNIT = REPO / "image" / "rootfs" / "etc" / "systemd" / "system" / "nextcloud-upgrade-readiness.service"

BOOT = "[    0.000000] Linux version 6.1.0-28-cloud-amd64\r\nCloud-init v. 22.4.2 running 'modules:final'\r\n"


def marked(doc: dict[str, Any]) -> str:
    return MARK + json.dumps(doc) + "\r\n"


# --------------------------------------------------------------------------- the caller's parser


def test_the_last_marked_line_wins():
    text = BOOT + marked({"ready": False, "code": "upgrading", "reason": "occ upgrade"}) + "[  42.1] noise\n" \
        + marked({"ready": True, "version": "34.0.1"})
    assert console_readiness(text) == {"ready": True, "version": "34.0.1"}


def test_no_marked_line_is_no_answer_yet():
    assert console_readiness("") is None
    assert console_readiness(BOOT) is None


@pytest.mark.parametrize("last", [
    MARK + '{"ready": true, "vers',  # the console buffer's edge or interleaved output cut it short
    MARK + "not json at all",
    MARK + '["ready", true]',
    MARK + '{"code": "upgrading"}',  # no boolean ready: not cluster-init's answer
    MARK + '{"ready": "yes"}',
])
def test_a_cut_or_foreign_last_line_falls_back_to_the_whole_one_before(last):
    text = BOOT + marked({"ready": False, "code": "upgrading", "reason": "occ upgrade"}) + last
    assert console_readiness(text) == {"ready": False, "code": "upgrading", "reason": "occ upgrade"}
    assert console_readiness(BOOT + last) is None


def test_a_kernel_message_before_the_mark_on_the_same_line_does_not_hide_it():
    text = BOOT + "[  61.2] eth0: link up" + marked({"ready": False, "code": "db_unreachable", "reason": "x"})
    assert console_readiness(text) == {"ready": False, "code": "db_unreachable", "reason": "x"}


# --------------------------------------------------------------------------- the image's reporter


class Readyz:
    """Stand-in for the container's GET /readyz: answers what the test sets (None: no answer, a bad body: bytes)."""

    def __init__(self) -> None:
        self.answer: tuple[int, Any] = (503, {"ready": False, "code": "upgrading", "reason": "occ upgrade"})
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                status, doc = outer.answer
                body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/readyz"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def readyz() -> Iterator[Readyz]:
    r = Readyz()
    yield r
    r.server.shutdown()
    r.server.server_close()


def run(tmp_path: Path, *args: str, url: str) -> tuple[subprocess.CompletedProcess[str], str]:
    console = tmp_path / "console"
    env = {"PATH": os.environ["PATH"], "NEXTCLOUD_UPGRADE_READINESS_URL": url,
           "NEXTCLOUD_UPGRADE_READINESS_CONSOLE": str(console),
           "NEXTCLOUD_INSTANCE_JSON": str(tmp_path / "instance.json")}
    out = subprocess.run(["python3", "-I", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=30)
    return out, console.read_text() if console.exists() else ""


def test_the_reporter_prints_one_marked_line_the_caller_reads(tmp_path, readyz):
    out, console = run(tmp_path, "--once", url=readyz.url)
    assert out.returncode == 0, out.stderr
    assert console.startswith(MARK) and console.count("\n") == 1
    assert console_readiness(BOOT + console) == {"ready": False, "code": "upgrading", "reason": "occ upgrade"}
    readyz.answer = (200, {"ready": True, "version": "34.0.1"})
    run(tmp_path, "--once", url=readyz.url)
    assert console_readiness(BOOT + (tmp_path / "console").read_text()) == {"ready": True, "version": "34.0.1"}


def test_the_reporter_prints_only_what_the_caller_reads_and_a_short_reason(tmp_path, readyz):
    readyz.answer = (503, {"ready": False, "code": "db_unreachable", "reason": "timeout\nexpired " + "x" * 2000,
                           "instance": "i-0abc", "database": {"host": "db.internal", "port": 5432}})
    out, console = run(tmp_path, "--once", url=readyz.url)
    assert out.returncode == 0, out.stderr
    doc = console_readiness(console)
    assert doc is not None and set(doc) == {"ready", "code", "reason"}
    assert doc["reason"].startswith("timeout expired x") and len(doc["reason"]) == 300
    assert len(console) < 400 and "db.internal" not in console


@pytest.mark.parametrize("answer", [None, (200, b"<html>it works</html>"), (503, {"code": "upgrading"})])
def test_no_readiness_answer_prints_nothing(tmp_path, readyz, answer):
    url = readyz.url
    if answer is None:
        readyz.server.shutdown()
        readyz.server.server_close()
        url = "http://127.0.0.1:9/readyz"
    else:
        readyz.answer = answer
    out, console = run(tmp_path, "--once", url=url)
    assert out.returncode == 1 and console == "" and "Traceback" not in out.stderr


@pytest.mark.parametrize(("instance_json", "rc"), [
    ({"role": {"allow_install": False, "allow_upgrade": True}}, 0),
    ({"role": {"allow_install": True, "allow_upgrade": False}}, 1),
    ({"role": {"allow_upgrade": "true"}}, 1),
    ({}, 1),
    (None, 1),  # no instance.json
    ("{not json", 1),
])
def test_only_the_upgrade_instance_passes_the_units_condition(tmp_path, instance_json, rc):
    if instance_json is not None:
        (tmp_path / "instance.json").write_text(
            instance_json if isinstance(instance_json, str) else json.dumps(instance_json))
    out, console = run(tmp_path, "--is-upgrade-instance", url="http://127.0.0.1:9/readyz")
    assert out.returncode == rc and console == "" and "Traceback" not in out.stderr


def test_the_unit_is_enabled_and_conditioned_on_the_role():
    text = UNIT.read_text()
    assert "ExecCondition=/usr/local/libexec/nextcloud-image/upgrade-readiness-console --is-upgrade-instance" in text
    assert "WantedBy=multi-user.target" in text and "DeviceAllow=/dev/console w" in text
    assert os.access(SCRIPT, os.X_OK)


# --------------------------------------------------------------------------- EC2's answer, as botocore hands it over


def test_the_console_text_is_read_once_decoded_as_botocore_hands_it_over():
    # GetConsoleOutput's Output is base64 on the wire; botocore decodes it itself, so the reader must not again.
    ec2 = boto3.client("ec2", region_name="eu-west-1", aws_access_key_id="x", aws_secret_access_key="x")
    text = BOOT + marked({"ready": True, "version": "34.0.1"})
    with Stubber(ec2) as stub:
        stub.add_response("get_console_output", {"InstanceId": "i-0abc", "Output": base64.b64encode(
            text.encode()).decode()}, {"InstanceId": "i-0abc", "Latest": True})
        got = console_text(ec2, "i-0abc", [True])
    assert got == text and console_readiness(got) == {"ready": True, "version": "34.0.1"}
