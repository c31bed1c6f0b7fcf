"""The five drills of issue 15, each under a steady load through the balancer (load.py), each judged on its target,
and the saturation drill of issue 24 (saturation.py), under a load that grows until the fleet cannot serve it.

Every scenario takes the shared fleet (fleet.py), brings it to the size it starts from, runs its fault while the
load goes on, and returns a ScenarioResult: the load's numbers (for the whole run and for the windows that matter),
what the group did, and whether the target was met (with the reasons when it was not).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from infra.drill.fleet import Fleet, probe
from infra.drill.load import Load, LoadSummary, Outcome
from infra.drill.saturation import START_RATE, STEP_S, SaturationOptions, figures, judge, run_saturation
from infra.localtwin.test_ami import cluster_state

SETTLE_S = 5.0  # load kept on after the last action, so what follows it is measured too


@dataclass
class Options:
    rate: float = 5.0
    outage_s: float = 60.0  # how long the database or the cache stays away
    old_instances: int = 2  # rolling replacement: how many instances serve before it starts
    instances: int = 2  # fleet size for the failovers, the broken instance and the saturation drill
    storm: int = 3  # boot storm: instances started at once
    start_rate: float = START_RATE  # saturation: the ramp's first rate (requests per second)
    max_rate: float = 400.0  # saturation: the ramp's ceiling (requests per second)
    hold_s: float = 60.0  # saturation: how long the overload is held
    step_s: float = STEP_S  # saturation: how long each rate of the ramp is offered


@dataclass
class ScenarioResult:
    name: str
    target: str
    passed: bool = False
    problems: list[str] = field(default_factory=list)
    load: dict[str, Any] = field(default_factory=dict)
    windows: dict[str, dict[str, Any]] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    replaced: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    started_at: float = 0.0
    seconds: float = 0.0

    def judge(self, problems: Sequence[str]) -> ScenarioResult:
        self.problems = [p for p in problems if p]
        self.passed = not self.problems
        return self


def _window(outcomes: Sequence[Outcome], start: float, end: float | None = None) -> dict[str, Any]:
    return LoadSummary.of([o for o in outcomes if o.t >= start and (end is None or o.t < end)]).as_dict()


def _under_load(fleet: Fleet, result: ScenarioResult, opts: Options, action: Callable[[], None],
                cap_s: float = 3600) -> list[Outcome]:
    load = Load(fleet.balancer.port, rate=opts.rate, duration_s=cap_s, origin=fleet.origin)
    events_before = len(fleet.group.events)
    replaced_before = len(fleet.group.replaced)
    result.started_at = fleet.now()

    def during() -> None:
        action()
        time.sleep(SETTLE_S)

    outcomes = load.run(during)
    result.seconds = round(fleet.now() - result.started_at, 1)
    result.load = LoadSummary.of(outcomes).as_dict()
    result.events = fleet.group.events[events_before:]
    result.replaced = fleet.group.replaced[replaced_before:]
    fleet.log(f"drill {result.name}: {result.load}")
    return outcomes


def rolling_replacement(fleet: Fleet, opts: Options) -> ScenarioResult:
    """Launch a new instance, wait until the balancer routes to it, scale in an old one; for every old one."""
    r = ScenarioResult("rolling", "0 failed requests while every serving instance is replaced")
    old = fleet.ensure(opts.old_instances)
    steps: list[dict[str, Any]] = []

    def action() -> None:
        for name in old:
            new = fleet.group.launch().name
            fleet.group.wait_in_service(new)
            steps.append({"launched": new, "terminated": name, **fleet.group.terminate(name)})

    outcomes = _under_load(fleet, r, opts, action)
    r.details = {"steps": steps}
    return r.judge([f"{r.load['failed_total']} failed requests: {r.load['failed']}" if r.load["failed_total"] else "",
                    "" if LoadSummary.of(outcomes).sent else "no request was sent"])


def _service_failover(fleet: Fleet, opts: Options, name: str, service: Any, users_see: str) -> ScenarioResult:
    r = ScenarioResult(name, f"only 503s while {service.__class__.__name__.removeprefix('Throwaway')} is away, "
                             "no instance replaced, all serving again within seconds of its return")
    members = fleet.ensure(opts.instances)
    marks: dict[str, Any] = {}

    def action() -> None:
        time.sleep(SETTLE_S)
        marks["down"] = fleet.now()
        service.stop()
        time.sleep(opts.outage_s)
        service.start()
        marks["up"] = fleet.now()
        ready_at, in_service_at = {}, {}
        deadline = time.monotonic() + 180
        while (len(ready_at) < len(members) or len(in_service_at) < len(members)) and time.monotonic() < deadline:
            targets = fleet.balancer.targets()
            for m in members:
                if m not in ready_at and probe(fleet.members()[m].http_port, "/readyz", 5) == 200:
                    ready_at[m] = round(fleet.now() - marks["up"], 1)
                if m not in in_service_at and targets[m].in_service:
                    in_service_at[m] = round(fleet.now() - marks["up"], 1)
            time.sleep(0.5)
        marks["ready_after_return_s"], marks["in_service_after_return_s"] = ready_at, in_service_at
        marks["all_back"] = fleet.now()

    outcomes = _under_load(fleet, r, opts, action)
    down, back = marks["down"], marks.get("all_back", fleet.now())
    r.windows = {"before": _window(outcomes, 0, down), "away": _window(outcomes, down, marks["up"]),
                 "return": _window(outcomes, marks["up"], back), "after": _window(outcomes, back)}
    r.details = {"outage_s": opts.outage_s, "ready_after_return_s": marks["ready_after_return_s"],
                 "in_service_after_return_s": marks["in_service_after_return_s"], "users_see": users_see}
    failed = [o for o in outcomes if not o.ok]
    wrong_kind = sorted({o.kind for o in failed} - {"http_503"})
    outside = [o for o in failed if not down <= o.t <= back + 1]
    liveness_failures = [e for e in r.events if e["event"] == "liveness_failed"]
    slow = {m: s for m, s in marks["in_service_after_return_s"].items() if s > 3 * fleet.tg.interval_s}
    return r.judge([
        f"failures other than 503: {wrong_kind}" if wrong_kind else "",
        f"{len(outside)} requests failed outside the outage" if outside else "",
        f"the group replaced {r.replaced}" if r.replaced else "",
        f"liveness failed during the outage: {liveness_failures}" if liveness_failures else "",
        f"not back in service after the return: {sorted(set(members) - set(marks['in_service_after_return_s']))}"
        if len(marks["in_service_after_return_s"]) < len(members) else "",
        f"slow to serve again (s after the return): {slow}" if slow else "",
    ])


def database_failover(fleet: Fleet, opts: Options) -> ScenarioResult:
    return _service_failover(fleet, opts, "database", fleet.pg,
                             "while PostgreSQL is away every request gets 503 from the balancer once both targets "
                             "failed 2 readiness checks (before that the stand-in's page, which needs no database, "
                             "still answers); nothing is lost: sessions are in Redis, files in S3")


def cache_failover(fleet: Fleet, opts: Options) -> ScenarioResult:
    return _service_failover(fleet, opts, "cache", fleet.redis,
                             "while Redis is away every request gets 503 (readiness needs Redis); the twin's Redis "
                             "keeps no data, so after it returns every session is gone (users log in again) and "
                             "file locks held at the time are dropped; ElastiCache with a replica keeps both")


def broken_instance(fleet: Fleet, opts: Options) -> ScenarioResult:
    """Kill one instance's container and break its runtime secrets: liveness says so, the group replaces it."""
    r = ScenarioResult("broken", "the group replaces the broken instance, the other keeps serving; failures "
                                 "bounded by the health check's detection time")
    members = fleet.ensure(opts.instances)
    victim = members[0]
    marks: dict[str, Any] = {}

    def action() -> None:
        time.sleep(SETTLE_S)
        inst = fleet.members()[victim].instance
        marks["broken"] = fleet.now()
        # The container dies and its restarts fail: the runtime secrets it starts from are gone (nextcloud.service's
        # ExecStartPre checks for them; nextcloud-secrets.service ran once and does not run again).
        r = inst.ssh("sudo rm -f /run/nextcloud/runtime.env && sudo docker kill nextcloud", timeout=60)
        marks["break_exit"] = r.returncode
        deadline = time.monotonic() + fleet.grace_s + 4 * fleet.probe_interval_s + fleet.boot_timeout_s
        while victim in fleet.group.members and time.monotonic() < deadline:
            targets = fleet.balancer.targets()
            if "out_of_service" not in marks and victim in targets and not targets[victim].in_service:
                marks["out_of_service"] = round(fleet.now() - marks["broken"], 1)
            time.sleep(1)
        marks["replaced"] = round(fleet.now() - marks["broken"], 1)

    outcomes = _under_load(fleet, r, opts, action)
    detection = marks.get("out_of_service")
    bound = (fleet.tg.unhealthy_threshold + 1) * fleet.tg.interval_s + fleet.tg.timeout_s
    late = [o for o in outcomes if not o.ok and o.t > marks["broken"] + bound]
    r.details = {"victim": victim, "break_exit": marks.get("break_exit"), "balancer_out_of_service_after_s": detection,
                 "replaced_after_s": marks["replaced"], "detection_bound_s": bound,
                 "failed_requests": r.load["failed_total"]}
    return r.judge([
        "" if r.replaced else f"the group did not replace {victim}",
        f"{len(late)} requests failed after the detection bound of {bound} s" if late else "",
    ])


def boot_storm(fleet: Fleet, opts: Options) -> ScenarioResult:
    """Start instances at once against an empty database with install allowed."""
    r = ScenarioResult("boot_storm", "exactly one install, all serving, no failed request once routed to")
    if fleet.group.members:
        return r.judge(["the boot storm needs an empty fleet and database: run it first"])
    marks: dict[str, Any] = {}

    def action() -> None:
        names = [fleet.group.launch().name for _ in range(opts.storm)]
        deadline = time.monotonic() + fleet.boot_timeout_s
        while not any(t.in_service for t in fleet.balancer.targets().values()) and time.monotonic() < deadline:
            time.sleep(0.2)
        marks.update(names=names, first_in_service=fleet.now())  # the balancer routes from here on
        for name in names:
            fleet.group.wait_in_service(name)

    outcomes = _under_load(fleet, r, opts, action)
    first = marks["first_in_service"]
    rows = cluster_state(fleet.pg)
    installs = {}
    for name in marks["names"]:
        out = fleet.members()[name].instance.ssh(
            "sudo journalctl --no-pager -o cat -u nextcloud.service | grep -c 'installed Nextcloud ' || true").stdout
        installs[name] = int(out.strip() or 0)
    r.windows = {"before_first_target": _window(outcomes, 0, first), "routed": _window(outcomes, first)}
    r.details = {"installs": installs, "cluster_rows": len(rows), "first_in_service_s": round(first - r.started_at, 1)}
    routed_failed = r.windows["routed"]["failed_total"]
    return r.judge([
        f"{sum(installs.values())} installs, expected exactly one: {installs}" if sum(installs.values()) != 1 else "",
        f"{len(rows)} cluster rows, expected one" if len(rows) != 1 else "",
        f"{routed_failed} requests failed once the balancer routed: {r.windows['routed']['failed']}"
        if routed_failed else "",
    ])


def saturation(fleet: Fleet, opts: Options) -> ScenarioResult:
    """PostgreSQL with the fleet's connection budget as max_connections, a load ramped past what the fleet serves."""
    r = ScenarioResult("saturation", "0 'too many clients', 0 OOM kills, overload queued or answered 503 by the "
                                     "balancer, never an error from a node")
    events_before, replaced_before = len(fleet.group.events), len(fleet.group.replaced)
    r.started_at = fleet.now()
    facts = run_saturation(fleet, SaturationOptions(instances=opts.instances, start_rate=opts.start_rate,
                                                    max_rate=opts.max_rate, hold_s=opts.hold_s,
                                                    step_s=opts.step_s))
    r.seconds = round(fleet.now() - r.started_at, 1)
    r.load = facts["load"]
    r.windows = {"overload": facts["overload"]}
    r.details = {**facts, "figures": figures(facts)}
    r.events = fleet.group.events[events_before:]
    r.replaced = fleet.group.replaced[replaced_before:]
    fleet.log(f"drill saturation: {r.details['figures']}")
    return r.judge([*judge(facts), f"the group replaced {r.replaced} under the load" if r.replaced else ""])


# Run order: the boot storm needs the empty database, so it goes first; the rolling replacement, which swaps the
# whole fleet, after the faults; the saturation drill last: it restarts PostgreSQL with the budget's max_connections.
SCENARIOS: dict[str, Callable[[Fleet, Options], ScenarioResult]] = {
    "boot_storm": boot_storm,
    "database": database_failover,
    "cache": cache_failover,
    "broken": broken_instance,
    "rolling": rolling_replacement,
    "saturation": saturation,
}
