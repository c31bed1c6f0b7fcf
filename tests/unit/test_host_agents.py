"""The instance's host-side AWS agents, run as the very files baked into the image (python3 -I, as their units run
them): the liveness watchdog (nextcloud-liveness.service) and the journal forwarder (nextcloud-logs.service).

Test doubles, each standing in for what cannot run here:
- a moto server on 127.0.0.1 stands in for Auto Scaling and CloudWatch Logs (it follows their API; it ignores
  ShouldRespectGracePeriod, so a recording proxy in front of it shows what was asked);
- the IMDSv2 stand-in of test_resolve_secrets (token required) gives the instance role and the instance id;
- a loopback HTTP server stands in for the container's /livez.
The journal is real: systemd-journal-remote writes journal files and the forwarder reads them with journalctl.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from test_resolve_secrets import FakeImds, aws_client, aws_endpoint  # noqa: F401 - aws_endpoint is a fixture

REPO = Path(__file__).resolve().parents[2]
LIBEXEC = REPO / "image" / "rootfs" / "usr" / "local" / "libexec" / "nextcloud-image"
WATCHDOG = LIBEXEC / "liveness-watchdog"
FORWARDER = LIBEXEC / "forward-journal"
JOURNAL_REMOTE = "/lib/systemd/systemd-journal-remote"
REGION = "eu-west-1"

sys.path.insert(0, str(REPO / "tests" / "aws"))
from iam_coverage import load_statements, missing  # noqa: E402

INSTANCE_ROLE_POLICY = load_statements(REPO / "infra" / "iam" / "instance-role")


class RecordingProxy:
    """Forwards every request to the emulator and keeps (action, form parameters) of each, for assertions."""

    def __init__(self, target: str) -> None:
        self.calls: list[tuple[str, dict[str, list[str]]]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                target_header = self.headers.get("X-Amz-Target")
                if target_header:
                    proxy.calls.append((target_header.rsplit(".", 1)[-1], json.loads(body or b"{}")))
                else:
                    form = urllib.parse.parse_qs(body.decode())
                    proxy.calls.append(((form.get("Action") or ["?"])[0], form))
                req = urllib.request.Request(target + self.path, data=body, method="POST",
                                             headers={k: v for k, v in self.headers.items() if k.lower() != "host"})
                try:
                    with urllib.request.urlopen(req, timeout=30) as resp:
                        status, data, headers = resp.status, resp.read(), resp.headers
                except urllib.error.HTTPError as exc:
                    status, data, headers = exc.code, exc.read(), exc.headers
                self.send_response(status)
                for key in ("Content-Type", "x-amzn-RequestId"):
                    if headers.get(key):
                        self.send_header(key, headers[key])
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def actions(self) -> list[str]:
        return [action for action, _ in self.calls]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy(aws_endpoint: str) -> Iterator[RecordingProxy]:  # noqa: F811
    p = RecordingProxy(aws_endpoint)
    yield p
    p.close()
    # Every call the instance made must be allowed by the instance role's policy.
    iam = {"SetInstanceHealth": "autoscaling", "CreateLogStream": "logs", "PutLogEvents": "logs"}
    calls = [(iam.get(action, "?"), action) for action in p.actions()]
    assert not missing(calls, INSTANCE_ROLE_POLICY), f"infra/iam/instance-role/ does not allow {calls}"


# --------------------------------------------------------------------------- liveness watchdog


class Livez:
    """Stand-in for the container's GET /livez: answers what the test sets (or nothing: 'down')."""

    def __init__(self) -> None:
        self.answer: tuple[int, dict[str, Any]] | None = (200, {"live": True})
        self.delay = 0.0  # seconds before answering: a CPU-starved instance
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                time.sleep(outer.delay)
                if outer.answer is None:
                    self.connection.close()
                    return
                status, doc = outer.answer
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/livez"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def group_instance(aws_endpoint: str) -> str:  # noqa: F811
    """An Auto Scaling group with one instance in the emulator; returns the instance's id."""
    ec2 = aws_client(aws_endpoint, "ec2", REGION)
    image = ec2.describe_images()["Images"][0]["ImageId"]
    ec2.create_launch_template(LaunchTemplateName="nextcloud-test", LaunchTemplateData={"ImageId": image})
    asg = aws_client(aws_endpoint, "autoscaling", REGION)
    name = f"nextcloud-test-{time.monotonic_ns()}"
    asg.create_auto_scaling_group(AutoScalingGroupName=name, MinSize=1, MaxSize=1, DesiredCapacity=1,
                                  LaunchTemplate={"LaunchTemplateName": "nextcloud-test"},
                                  AvailabilityZones=[f"{REGION}a"], HealthCheckType="EC2", HealthCheckGracePeriod=300)
    return asg.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"][0]["Instances"][0][
        "InstanceId"]


def health(endpoint: str, instance: str) -> str:
    asg = aws_client(endpoint, "autoscaling", REGION)
    return asg.describe_auto_scaling_instances(InstanceIds=[instance])["AutoScalingInstances"][0]["HealthStatus"]


def watchdog(tmp_path: Path, livez: Livez, imds: FakeImds, proxy_url: str, mode: str, **extra: str):
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "RUNTIME_DIRECTORY": str(tmp_path),
           "NEXTCLOUD_LIVENESS_URL": livez.url, "NEXTCLOUD_LIVENESS_REPORT": mode, "NEXTCLOUD_AWS_REGION": REGION,
           "AWS_ENDPOINT_URL": proxy_url, "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.endpoint,
           "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null", **extra}
    return subprocess.run([sys.executable, "-I", str(WATCHDOG)], env=env, capture_output=True, text=True, timeout=60)


def test_watchdog_reports_unhealthy_after_consecutive_failures_only(tmp_path, aws_endpoint, group_instance,  # noqa: F811
                                                                    proxy):
    livez, imds = Livez(), FakeImds(region=REGION)
    imds.documents["/latest/meta-data/instance-id"] = group_instance
    try:
        assert watchdog(tmp_path, livez, imds, proxy.url, "autoscaling").returncode == 0
        livez.answer = (503, {"live": False, "code": "secrets_missing", "reason": "NEXTCLOUD_DB_PASSWORD"})
        for n in (1, 2):
            r = watchdog(tmp_path, livez, imds, proxy.url, "autoscaling")
            assert r.returncode == 0 and f"liveness probe failed ({n}/3): " in r.stdout, r.stdout + r.stderr
            assert "secrets_missing" in r.stdout
        # A single good probe resets the count: flapping never adds up to a replacement.
        livez.answer = (200, {"live": True})
        assert "live again after 2 failed probe(s)" in watchdog(tmp_path, livez, imds, proxy.url, "autoscaling").stdout
        livez.answer = None  # Apache gone
        for _ in range(2):
            watchdog(tmp_path, livez, imds, proxy.url, "autoscaling")
        assert proxy.actions() == [] and health(aws_endpoint, group_instance) == "Healthy"
        r = watchdog(tmp_path, livez, imds, proxy.url, "autoscaling")
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"reported instance {group_instance} Unhealthy" in r.stdout
    finally:
        imds.close()
    assert health(aws_endpoint, group_instance) == "Unhealthy"
    (action, form), = proxy.calls
    assert action == "SetInstanceHealth"
    assert form["InstanceId"] == [group_instance] and form["HealthStatus"] == ["Unhealthy"]
    assert form["ShouldRespectGracePeriod"] == ["true"]  # the group's grace period covers a booting instance
    assert all(valid for method, _, valid in imds.requests if method == "GET"), "an IMDSv1 request was made"


def test_a_slow_answer_is_not_a_failure_but_no_answer_is(tmp_path, proxy):
    """A CPU-starved instance answers /livez late; that must never add up to a replacement. One slow probe is
    enough to show it: a probe that counted as failed would say "failed (1/3)" at once (the count is kept across
    runs, as the other tests show), so three 6 s probes in a row proved nothing one does not."""
    livez, imds = Livez(), FakeImds(region=REGION)
    livez.delay = 6  # longer than a naive 5 s timeout, well inside the watchdog's default
    try:
        r = watchdog(tmp_path, livez, imds, proxy.url, "log")
        assert r.returncode == 0 and "failed" not in r.stdout, r.stdout + r.stderr
        livez.delay = 1.5  # past the shortest timeout the watchdog accepts (1 s): no answer in time is a failure
        r = watchdog(tmp_path, livez, imds, proxy.url, "log", NEXTCLOUD_LIVENESS_TIMEOUT="1")
        assert "liveness probe failed (1/3): no answer" in r.stdout, r.stdout + r.stderr
    finally:
        imds.close()


def test_watchdog_without_an_auto_scaling_group_only_logs(tmp_path, proxy):
    livez, imds = Livez(), FakeImds(region=REGION)
    livez.answer = (503, {"live": False, "code": "code_missing"})
    try:
        for _ in range(4):
            r = watchdog(tmp_path, livez, imds, proxy.url, "log")
            assert r.returncode == 0, r.stderr
    finally:
        imds.close()
    assert "would be reported Unhealthy; no Auto Scaling group here" in r.stdout
    assert proxy.calls == [] and imds.requests == []  # decided from nextcloud.env, not by failing calls


def test_watchdog_refuses_a_half_configured_report(tmp_path, proxy):
    livez, imds = Livez(), FakeImds(region=REGION)
    try:
        r = watchdog(tmp_path, livez, imds, proxy.url, "autoscaling", NEXTCLOUD_AWS_REGION="")
    finally:
        imds.close()
    assert r.returncode == 2 and "NEXTCLOUD_AWS_REGION" in r.stdout


# --------------------------------------------------------------------------- journal forwarder

needs_journal_remote = pytest.mark.skipif(not Path(JOURNAL_REMOTE).exists(),
                                          reason="systemd-journal-remote not installed (bash .ci/setup installs it)")


class Journal:
    """A real journal file, written by systemd-journal-remote from export-format entries."""

    BOOT = "0123456789abcdef0123456789abcdef"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.n = 0

    def append(self, *entries: dict[str, str]) -> None:
        lines = []
        for fields in entries:
            self.n += 1
            lines += [f"__REALTIME_TIMESTAMP={int(time.time() * 1e6) + self.n}", f"__MONOTONIC_TIMESTAMP={self.n}",
                      f"_BOOT_ID={self.BOOT}", *(f"{k}={v}" for k, v in fields.items()), ""]
        export = self.path.with_suffix(f".{self.n}.export")
        export.write_text("\n".join(lines) + "\n")
        subprocess.run([JOURNAL_REMOTE, f"--output={self.path}", str(export)], check=True, capture_output=True)


def events(endpoint: str, group: str, stream: str) -> list[dict[str, Any]]:
    logs = aws_client(endpoint, "logs", REGION)
    got = logs.get_log_events(logGroupName=group, logStreamName=stream, startFromHead=True)["events"]
    return [json.loads(e["message"]) for e in got]


def start_forwarder(tmp_path: Path, journal: Journal, proxy_url: str, imds: FakeImds, group: str):
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "STATE_DIRECTORY": str(state),
           "NEXTCLOUD_LOG_DESTINATION": "cloudwatch", "NEXTCLOUD_LOG_GROUP": group, "NEXTCLOUD_AWS_REGION": REGION,
           "NEXTCLOUD_JOURNAL_FILE": str(journal.path), "NEXTCLOUD_LOG_FLUSH_SECONDS": "0.3",
           "AWS_ENDPOINT_URL": proxy_url, "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.endpoint,
           "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}
    return subprocess.Popen([sys.executable, "-I", str(FORWARDER)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait_for(predicate, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


@needs_journal_remote
def test_forwarder_ships_each_journal_entry_once_across_a_restart(tmp_path, aws_endpoint, proxy):  # noqa: F811
    group = f"/nextcloud/test-{time.monotonic_ns()}"
    aws_client(aws_endpoint, "logs", REGION).create_log_group(logGroupName=group)  # the stack's job
    imds = FakeImds(region=REGION)
    imds.documents["/latest/meta-data/instance-id"] = "i-0123456789abcdef0"
    journal = Journal(tmp_path / "system.journal")
    nextcloud_entry = {"reqId": "r1", "level": 2, "app": "core", "message": "a Nextcloud warning"}
    journal.append(
        {"MESSAGE": "nextcloud-cluster-init[7]: ready", "_SYSTEMD_UNIT": "nextcloud.service", "PRIORITY": "6",
         "SYSLOG_IDENTIFIER": "nextcloud", "_PID": "7"},
        {"MESSAGE": json.dumps(nextcloud_entry), "SYSLOG_IDENTIFIER": "nextcloud", "PRIORITY": "4",
         "_SYSTEMD_UNIT": "docker-abc.scope"},
    )
    proc = start_forwarder(tmp_path, journal, proxy.url, imds, group)
    try:
        wait_for(lambda: len(events(aws_endpoint, group, "i-0123456789abcdef0")) == 2
                 if "PutLogEvents" in proxy.actions() else False)
        journal.append({"MESSAGE": "sshd: accepted key", "_SYSTEMD_UNIT": "ssh.service", "PRIORITY": "6"})
        wait_for(lambda: len(events(aws_endpoint, group, "i-0123456789abcdef0")) == 3)
        proc.terminate()
        proc.wait(timeout=10)
        # Entries written while it was down are sent after the restart; nothing is sent twice.
        journal.append({"MESSAGE": "while the forwarder was down", "_SYSTEMD_UNIT": "cron.service"})
        proc = start_forwarder(tmp_path, journal, proxy.url, imds, group)
        wait_for(lambda: len(events(aws_endpoint, group, "i-0123456789abcdef0")) >= 4)
        time.sleep(1.5)
    finally:
        proc.terminate()
        out = proc.communicate(timeout=10)[0]
        imds.close()
    got = events(aws_endpoint, group, "i-0123456789abcdef0")
    assert [e["message"] for e in got] == ["nextcloud-cluster-init[7]: ready", nextcloud_entry, "sshd: accepted key",
                                           "while the forwarder was down"], out
    assert got[0]["unit"] == "nextcloud.service" and got[0]["priority"] == 6
    assert got[1]["message"]["reqId"] == "r1"  # Nextcloud's JSON entry stays JSON, fields queryable
    assert proxy.actions().count("CreateLogStream") == 2  # once per start; the second finds it there


def test_forwarder_stays_out_of_the_way_where_logs_stay_in_the_journal(tmp_path):
    r = subprocess.run([sys.executable, "-I", str(FORWARDER)], capture_output=True, text=True, timeout=30,
                       env={"PATH": os.environ["PATH"], "NEXTCLOUD_LOG_DESTINATION": "journal"})
    assert r.returncode == 0 and "the logs stay in the journal" in r.stderr
