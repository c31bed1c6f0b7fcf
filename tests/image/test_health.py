"""Liveness and readiness on the instance: two questions, two endpoints, and what each caller may learn.

/livez (what the Auto Scaling group follows, through the liveness watchdog) and /readyz (what the load balancer
follows) both answer 200 on a healthy instance; from this machine's loopback they give details, and neither the
responses nor Apache's own pages name a software version.
"""

from __future__ import annotations

import json
import time

import pytest

pytestmark = [pytest.mark.nextcloud, pytest.mark.live]


def _get(host, path: str, *curl_args: str) -> tuple[int, str, str]:
    out = host.run(f"curl -sS --max-time 20 -D /dev/stderr -o - -w '\\n%{{http_code}}' {' '.join(curl_args)} "
                   f"http://127.0.0.1{path}")
    assert out.rc == 0, f"curl {path} failed: {out.stderr.strip()}"
    body, _, code = out.stdout.rpartition("\n")
    return int(code), body, out.stderr


def test_liveness_endpoint_from_loopback(host):
    code, body, _ = _get(host, "/livez")
    assert (code, json.loads(body)) == (200, {"live": True, "code": "live", "reason": ""}), body


def test_readiness_details_for_a_local_caller_only(host):
    code, body, _ = _get(host, "/readyz")
    doc = json.loads(body)
    assert code == 200 and doc["ready"] is True and "version" in doc, body
    # The same request as if it had come through the load balancer: no version, no details.
    code, body, _ = _get(host, "/readyz", "-H 'X-Forwarded-For: 203.0.113.7'")
    assert (code, json.loads(body)) == (200, {"ready": True}), body


def test_no_version_in_headers_or_error_pages(host):
    _, _, headers = _get(host, "/livez")
    lines = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in headers.splitlines()[1:]) if v}
    assert lines.get("server") == "Apache", f"Server header: {lines.get('server')!r}"
    assert "x-powered-by" not in lines, f"X-Powered-By: {lines['x-powered-by']}"
    code, body, _ = _get(host, "/no-such-page-here")
    assert code == 404
    assert "Apache/" not in body and "Debian" not in body and "PHP/" not in body, body[:300]


def test_container_health_follows_liveness(host):
    out = host.run("docker inspect --format '{{json .Config.Healthcheck.Test}}' nextcloud")
    assert out.rc == 0, out.stderr
    assert "/livez" in out.stdout and "/readyz" not in out.stdout, out.stdout


@pytest.mark.parametrize("unit", ["nextcloud-liveness.timer", "nextcloud-cron.timer",
                                  "nextcloud-admin-password.socket", "nextcloud-admin-seal.socket"])
def test_runtime_units_are_active(host, unit):
    out = host.run(f"systemctl is-active {unit}")
    assert out.stdout.strip() == "active", f"{unit}: {out.stdout.strip() or out.stderr.strip()}"


def test_liveness_watchdog_probes_and_counts_no_failure_on_a_live_instance(host):
    # The timer's first probe comes 60 s after boot, or at once when the timer starts later (a slow boot); give a
    # run that is due or under way one period (30 s) plus its probe's timeout (20 s) to finish.
    deadline = time.monotonic() + 60
    while True:
        props = dict(line.split("=", 1) for line in host.check_output(
            "systemctl show nextcloud-liveness.service -p ExecMainExitTimestampMonotonic -p ExecMainStatus"
        ).splitlines())
        if props["ExecMainExitTimestampMonotonic"] != "0" or time.monotonic() > deadline:
            break
        time.sleep(5)
    assert props["ExecMainExitTimestampMonotonic"] != "0", "the liveness watchdog never ran: " + host.run(
        "systemctl status --no-pager nextcloud-liveness.timer nextcloud-liveness.service; systemctl list-jobs"
    ).stdout[-1500:]
    assert props["ExecMainStatus"] == "0", props
    # Probes during boot may fail before Apache is up (the group's grace period covers them); now the count is 0.
    state = json.loads(host.file("/run/nextcloud-liveness/state.json").content_string)
    assert state == {"failures": 0, "busy": 0}, state
    env = host.file("/etc/nextcloud/nextcloud.env").content_string.splitlines()
    if "NEXTCLOUD_LIVENESS_REPORT=log" in env:  # no Auto Scaling group: it could only ever log
        log = host.run("journalctl -b --no-pager -o cat -u nextcloud-liveness.service").stdout
        assert "reported instance" not in log, log[-1000:]


def test_upgrade_readiness_reporter_runs_only_on_the_upgrade_instance(host):
    # `inv upgrade` reads its upgrade instance's readiness from the console output, which only that instance
    # (role.allow_upgrade) writes; on any other instance the enabled unit is skipped by its ExecCondition.
    unit = "nextcloud-upgrade-readiness.service"
    assert host.run(f"systemctl is-enabled {unit}").stdout.strip() == "enabled"
    role = json.loads(host.file("/etc/nextcloud/instance.json").content_string).get("role", {})
    props = dict(line.split("=", 1) for line in host.check_output(
        f"systemctl show {unit} -p ActiveState -p ExecMainStartTimestampMonotonic").splitlines())
    if role.get("allow_upgrade") is True:
        assert props["ActiveState"] == "active", props
    else:
        assert props["ActiveState"] != "active" and props["ExecMainStartTimestampMonotonic"] == "0", props
        assert host.run("/usr/local/libexec/nextcloud-image/upgrade-readiness-console "
                        "--is-upgrade-instance").rc == 1
