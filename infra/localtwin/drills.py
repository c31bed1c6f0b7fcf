"""Shared-service outages on booted twin instances: what test-ami checks after the image suite passed.

The image suite runs on any host (a throwaway EC2 instance too); these checks need the twin's own services, which
only the local run controls. Each instance is asked the way each kind of caller asks it:
- through QEMU's forwarded port, as the load balancer would: the guest sees the host as 10.0.2.2, a non-loopback
  source; with and without an X-Forwarded-For header (the twin's trusted proxy range is 10.0.2.0/24);
- over SSH on the guest's own loopback, as an operator would.

For PostgreSQL, then Redis: stop it; every instance's readiness goes 503 with the code word only for the outside
caller (no host, port or instance id), with the details for the local one; liveness stays 200; the liveness watchdog
probes at least once during the outage and counts no failure; a background-jobs run does nothing; then the service
comes back and readiness returns to 200 by itself.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

from infra.localtwin.instance import Instance
from infra.localtwin.services import ThrowawayPostgres, ThrowawayRedis

Log = Callable[[str], None]
# What an outside caller must never be told: the services' address and ports, reasons, versions.
VERBOSE = re.compile(r"10\.0\.2\.2|5543\d|5637\d|reason|version")


class DrillError(AssertionError):
    """An outage drill saw the wrong behaviour; the message says which instance and what it saw."""


def _outside(inst: Instance, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    req = urllib.request.Request(inst.http_base + path, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def _local(inst: Instance, path: str) -> tuple[int, dict[str, Any]]:
    r = inst.ssh(f"curl -sS --max-time 10 -o - -w '\\n%{{http_code}}' http://127.0.0.1{path}", timeout=60)
    body, _, code = r.stdout.rpartition("\n")
    try:
        return int(code), json.loads(body)
    except ValueError as e:
        raise DrillError(f"{inst.name}: local GET {path} gave {r.stdout!r} {r.stderr!r}") from e


def _unit_runs(inst: Instance, unit: str) -> int:
    r = inst.ssh(f"systemctl show {unit} -p ExecMainExitTimestampMonotonic --value", timeout=30)
    return int(r.stdout.strip() or 0)


def check_outside_view(nodes: Sequence[Instance], canaries: dict[str, str], log: Log) -> None:
    """A caller through the forwarded port sees status codes and code words, no versions, no names."""
    instanceid = canaries["NEXTCLOUD_INSTANCEID"]
    for inst in nodes:
        for headers in ({}, {"X-Forwarded-For": "203.0.113.7"}):
            for path, expected in (("/readyz", {"ready": True}), ("/livez", {"live": True})):
                status, body, hdrs = _outside(inst, path, headers)
                if (status, json.loads(body)) != (200, expected):
                    raise DrillError(f"{inst.name}: outside GET {path} {headers} gave {status} {body!r}")
                if hdrs.get("Server") != "Apache" or "X-Powered-By" in hdrs:
                    raise DrillError(f"{inst.name}: response headers name versions: {hdrs}")
        status, body, _ = _outside(inst, "/no-such-page-here")
        if status != 404 or re.search(rb"Apache/\d|PHP/\d|Debian", body):
            raise DrillError(f"{inst.name}: the error page names the server's version: {body[:300]!r}")
        if instanceid.encode() in body:
            raise DrillError(f"{inst.name}: the error page names the instance id")
    log(f"drill: outside callers see only status codes and code words on {len(nodes)} instance(s)")


def outage(
    name: str,
    code: str,
    stop: Callable[[], None],
    start: Callable[[], None],
    nodes: Sequence[Instance],
    canaries: dict[str, str],
    count_cron_runs: Callable[[], int | None],
    log: Log,
    timeout: float = 120,
) -> None:
    """Stop one shared service, check what every kind of caller sees, start it, wait for readiness to return."""
    watchdog_before = {inst.name: _unit_runs(inst, "nextcloud-liveness.service") for inst in nodes}
    t0 = time.monotonic()
    stop()
    try:
        for inst in nodes:
            deadline = time.monotonic() + timeout
            while True:
                status, body, _ = _outside(inst, "/readyz")
                doc = json.loads(body)
                if status == 503 and doc == {"ready": False, "code": code}:
                    break
                text = body.decode()
                if status == 503 and (set(doc) != {"ready", "code"} or VERBOSE.search(text)
                                      or canaries["NEXTCLOUD_INSTANCEID"] in text):
                    raise DrillError(f"{inst.name}: an outside caller was told more than the code word: {body!r}")
                if time.monotonic() > deadline:
                    raise DrillError(f"{inst.name}: readiness never said {code} with {name} down: {status} {body!r}")
                time.sleep(2)
            for headers in ({"X-Forwarded-For": "203.0.113.7"}, {"X-Real-IP": "127.0.0.1"}):
                status, body, _ = _outside(inst, "/readyz", headers)
                if (status, json.loads(body)) != (503, {"ready": False, "code": code}):
                    raise DrillError(f"{inst.name}: a proxied caller ({headers}) got {status} {body!r}")
            local_status, local = _local(inst, "/readyz")
            if local_status != 503 or local.get("code") != code or "10.0.2.2" not in local.get("reason", ""):
                raise DrillError(f"{inst.name}: a local caller should get the details: {local_status} {local}")
            status, body, _ = _outside(inst, "/livez")
            if (status, json.loads(body)) != (200, {"live": True}):
                raise DrillError(f"{inst.name}: liveness failed with {name} down: {status} {body!r}")
        # A background-jobs run on a node that is not ready does nothing.
        cron_before = count_cron_runs()
        inst = nodes[0]
        inst.ssh("sudo systemctl start nextcloud-cron.service", timeout=120)
        journal = inst.ssh("sudo journalctl --no-pager -o cat -t nextcloud-cron -n 1", timeout=60).stdout
        if f"skipped: this node is not ready ({code}" not in journal:
            raise DrillError(f"{inst.name}: a cron run with {name} down did not skip: {journal[-500:]}")
        if cron_before is not None and count_cron_runs() != cron_before:
            raise DrillError(f"{inst.name}: cron.php ran on a node that was not ready")
        # Hold the outage until every watchdog has probed during it; none may count a failure.
        deadline = time.monotonic() + 90
        for inst in nodes:
            while _unit_runs(inst, "nextcloud-liveness.service") == watchdog_before[inst.name]:
                if time.monotonic() > deadline:
                    raise DrillError(f"{inst.name}: the liveness watchdog never ran during the {name} outage")
                time.sleep(3)
            since = int(time.monotonic() - t0) + 5
            probes = inst.ssh(f"sudo journalctl --no-pager -o cat -u nextcloud-liveness.service --since=-{since}s",
                              timeout=60).stdout
            if "liveness probe failed" in probes:
                raise DrillError(f"{inst.name}: the liveness watchdog counted a {name} outage as a failure: {probes}")
    finally:
        start()
    for inst in nodes:
        deadline = time.monotonic() + timeout
        while _outside(inst, "/readyz")[0] != 200:
            if time.monotonic() > deadline:
                raise DrillError(f"{inst.name}: readiness did not come back after {name} returned")
            time.sleep(2)
    log(f"drill: {name} outage: readiness 503 {code} (code word only from outside), liveness 200, watchdog quiet, "
        f"cron skipped; ready again {time.monotonic() - t0:.0f}s after the stop")


def run_drills(pg: ThrowawayPostgres, redis: ThrowawayRedis, nodes: Sequence[Instance], canaries: dict[str, str],
               log: Log) -> None:
    """Every drill, in order; raises DrillError at the first wrong behaviour."""

    def cron_runs() -> int | None:
        # When cron.php last finished (Nextcloud's own appconfig core/lastcron, which the stand-in's double sets as
        # the real one does): unchanged across a skipped run, on either base.
        if not pg.running:
            return None
        out = pg.psql("SELECT configvalue FROM oc_appconfig WHERE appid = 'core' AND configkey = 'lastcron';").strip()
        return int(out or 0)

    check_outside_view(nodes, canaries, log)
    outage("PostgreSQL", "db_unreachable", pg.stop, pg.start, nodes, canaries, cron_runs, log)
    outage("Redis", "redis_unreachable", redis.stop, redis.start, nodes, canaries, cron_runs, log)
