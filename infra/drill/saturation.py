"""The saturation drill (issue 24): a fleet loaded beyond what it serves queues or sheds at the balancer; it never
exhausts its database's connections or its instances' memory.

What it does, on the drill's fleet (fleet.py):
1. the budget: N instances x (Apache workers + 1 cron + 1 health check) + the reserve, with the workers that
   render/capacity.size_workers gives for the twin guest's memory (never more than the settings' instance type
   gives); PostgreSQL is restarted with exactly that ``max_connections``;
2. N instances in service behind HAProxy;
3. the ramp: an open-loop load that starts at ``--rate`` and grows by RAMP_FACTOR every STEP_S seconds until a step
   shows saturation (served < 90 % of offered, p95 latency 3 x the first step's and at least 250 ms, more than 1 %
   failed, or the client's in-flight limit reached); the best served rate is the fleet's capacity;
4. the overload: OVERLOAD x that capacity for ``--hold`` seconds, while PostgreSQL's client connections are sampled
   twice a second;
5. the evidence (evidence.py): "too many clients" in PostgreSQL's log and in the answers, OOM kills in each
   guest's kernel log and the container's OOMKilled flag, every answer classified (the balancer's own 503 carries no
   balancer.TARGET_HEADER, a node's answer does).

The load hits real Nextcloud pages when the twin runs a release (``nextcloud.release``): ``GET /status.php`` and a
WebDAV ``PROPFIND /remote.php/dav/files/<admin>/`` with the admin's basic auth, in turn. On the stand-in the same
two requests reach its status.php and its remote.php double, which holds a database connection for as long as a
typical Nextcloud request (infra/localtwin/standin/nextcloud/remote.php says which figure and where from).
"""

from __future__ import annotations

import base64
import subprocess
import urllib.parse
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from infra.drill.balancer import TARGET_HEADER
from infra.drill.evidence import (
    INSTANCE_FACTS,
    TOO_MANY_CLIENTS,
    ConnectionSampler,
    instance_facts,
    pg_connections,
    too_many_clients_in_log,
)
from infra.drill.load import Load, LoadSummary, Outcome, Request, percentile
from infra.errors import Refusal
from infra.localtwin.instance import Instance
from render import capacity

# The twin guest's memory: the fleet boots every instance with Instance's default.
TWIN_GUEST_MEMORY_MIB: int = Instance.memory_mb

STEP_S = 20.0  # one ramp step
# The ramp's first rate: below what one twin instance of real Nextcloud serves under TCG (about 0.2-0.4 requests/s
# measured: status.php and a PROPFIND), so that the first step is not saturated already; the stand-in's much higher
# capacity is reached a few steps later (x 1.5 every 20 s).
START_RATE = 0.1
# A step lasts at least this many requests (longer than STEP_S at low rates): one request answered just before or
# after a step's window is 1/N of what it served, and must stay well inside the 10 % the saturation rule allows (with
# 8, a run on Nextcloud 34.0.1 called its first step saturated for a single answer: 7 of 8, 0.09/s of 0.1/s).
MIN_STEP_REQUESTS = 20
RAMP_FACTOR = 1.5  # each step offers this much more than the one before
OVERLOAD = 1.5  # the hold offers this multiple of the measured capacity
RATE_CEILING = 1000.0  # the most the loopback client is asked to send
CLIENT_TIMEOUT_S = 75.0  # longer than HAProxy's 60 s server timeout: the balancer gives up first, and says so
MAX_IN_FLIGHT = 1024  # the client's own limit; beyond it a request is counted client_saturated, never hidden
WARM_UP_ROUNDS = 2  # before the ramp: each page this many times per instance, one at a time, not counted

# Saturation: a step is saturated when one of these holds.
SERVED_SHARE = 0.9  # served less than this share of what it was offered
LATENCY_FACTOR = 3.0  # p95 this multiple of the first step's ...
LATENCY_FLOOR_MS = 250.0  # ... and at least this
FAILED_SHARE = 0.01  # more than this share of the step's requests failed

# What an answer may be under overload: served, or shed by the balancer. Anything else is a finding.
# balancer_504: a request that waited in a node's queue longer than the balancer's timeout (60 s, as an ALB's idle
# timeout): queueing seen through the balancer, not an error of the node. Under TCG real Nextcloud takes seconds per
# request, so a queue as long as the workers reaches that timeout; it is counted and reported apart from the 503s.
ALLOWED_KINDS = frozenset({"ok", "balancer_503", "balancer_504", "client_saturated"})
PROPFIND_BODY = (b'<?xml version="1.0" encoding="utf-8"?>\n<d:propfind xmlns:d="DAV:"><d:prop><d:resourcetype/>'
                 b"<d:getlastmodified/><d:getetag/><d:quota-used-bytes/></d:prop></d:propfind>\n")


class SaturationUsageError(Refusal, ValueError):
    """A saturation option is wrong; the message names the flag and the fix."""


# ---- the budget handed to PostgreSQL -----------------------------------------------------------------------------
@dataclass(frozen=True)
class TwinBudget:
    """The twin fleet's connections at its largest, and the max_connections PostgreSQL gets for it."""

    instances: int
    guest_memory_mib: int
    workers: int
    per_instance: int
    reserve: int
    max_connections: int

    @property
    def fleet(self) -> int:
        """Connections the application role may hold at most (every worker, cron and health check busy)."""
        return self.instances * self.per_instance


def twin_budget(settings: Any, instances: int, guest_memory_mib: int = TWIN_GUEST_MEMORY_MIB) -> TwinBudget:
    """The connection budget of ``instances`` twin guests, as render/capacity.py counts a fleet: workers from the
    guest's memory (capped by the settings' instance type and web.max_workers, as the boot-time sizing caps them),
    one cron and one health check each, plus the reserve; max_connections is exactly that, with no room to spare."""
    if instances < 1:
        raise SaturationUsageError(f"--instances {instances}: the saturation drill needs at least 1 instance")
    web = settings.web
    workers = capacity.size_workers(guest_memory_mib, worker_memory_mib=web.worker_memory_mb,
                                    max_workers=web.max_workers).workers
    rendered = capacity.instance_sizing(settings)
    if rendered is not None:
        workers = min(workers, rendered.workers)
    budget = capacity.Budget(max_size=instances, surge_percent=100, workers=workers, max_connections=0)
    return TwinBudget(instances=instances, guest_memory_mib=guest_memory_mib, workers=workers,
                      per_instance=budget.per_instance, reserve=budget.reserve, max_connections=budget.needed)


def apply_max_connections(pg: Any, max_connections: int) -> int:
    """Restart the twin's PostgreSQL with ``max_connections`` (a server-start setting); the value it then reports."""
    if max_connections < 1:
        raise SaturationUsageError(f"max_connections {max_connections}: must be at least 1")
    pg.psql(f"ALTER SYSTEM SET max_connections = {int(max_connections)};", dbname="postgres")
    pg.stop()
    pg.start()
    return int(pg.psql("SHOW max_connections;", dbname="postgres").strip())


# ---- answers -----------------------------------------------------------------------------------------------------
def answer_kind(status: int, headers: Mapping[str, str], body: bytes) -> str:
    """What an answer through the balancer was: ``ok``; ``too_many_clients`` (PostgreSQL's refusal, whatever the
    status); ``balancer_<status>`` (HAProxy's own: no TARGET_HEADER); ``node_<status>`` (an instance's error)."""
    text = body.decode("utf-8", "replace").lower()
    if any(marker in text for marker in TOO_MANY_CLIENTS):
        return "too_many_clients"
    if status < 400:
        return "ok"
    origin = "node" if TARGET_HEADER.lower() in {k.lower() for k in headers} else "balancer"
    return f"{origin}_{status}"


def request_plan(settings: Any, admin_password: str) -> tuple[list[Request], str]:
    """The requests the load takes in turn, and what serves them (a real release, or the stand-in's pages)."""
    user = settings.cluster.admin_user
    token = base64.b64encode(f"{user}:{admin_password}".encode()).decode()
    propfind = Request("PROPFIND", f"/remote.php/dav/files/{urllib.parse.quote(user, safe='@')}/",
                       {"Authorization": f"Basic {token}", "Depth": "1",
                        "Content-Type": "application/xml; charset=utf-8"}, PROPFIND_BODY)
    pages = [Request("GET", "/status.php"), propfind]
    if settings.nextcloud.release:
        return pages, f"real Nextcloud {settings.nextcloud.version}: GET /status.php and PROPFIND of {user}'s files"
    return pages, ("the stand-in: GET /status.php (opens a database connection) and its remote.php double "
                   "(holds a database connection as long as a typical Nextcloud request)")


# ---- the ramp ----------------------------------------------------------------------------------------------------
@dataclass
class Step:
    """One rate of the ramp (or the hold): what was offered, what was served, how fast, what failed."""

    rate: float
    seconds: float
    sent: int
    offered_per_s: float  # requests the client put on the wire per second (not counting client_saturated)
    served_per_s: float  # successful answers completed per second within the step (from start + one answer's time)
    p50_ms: float | None
    p95_ms: float | None
    failed: dict[str, int]
    saturated: bool = False
    why: str = ""

    @classmethod
    def of(cls, rate: float, outcomes: Sequence[Outcome], start: float, end: float) -> Step:
        """The step that sent ``outcomes`` between ``start`` and ``end`` (the load's clock)."""
        seconds = max(end - start, 1e-9)
        on_wire = [o for o in outcomes if o.kind != "client_saturated"]
        ms = [o.latency_s * 1000 for o in outcomes if o.ok and o.latency_s is not None]
        p50, p95 = percentile(ms, 50), percentile(ms, 95)
        # Answers are counted from the step's start plus the time one takes (its median, at least 2 s, at most half
        # the step; a quarter of a step shorter than 8 s) to its end: a request sent in the last L seconds of a step
        # of answers taking L is answered after the step whether the fleet keeps up or not, and one sent in the first
        # L was answered within it; without the shift a fleet answering in seconds under TCG looked saturated at any
        # rate.
        warm = min(max(min(2.0, seconds / 4), (p50 or 0.0) / 1000), seconds / 2)
        done = [o for o in outcomes if o.ok and o.latency_s is not None and start + warm <= o.t + o.latency_s <= end]
        return cls(rate=rate, seconds=round(seconds, 1), sent=len(outcomes),
                   offered_per_s=round(len(on_wire) / seconds, 3),
                   served_per_s=round(len(done) / (seconds - warm), 3),
                   p50_ms=None if p50 is None else round(p50, 1), p95_ms=None if p95 is None else round(p95, 1),
                   failed=dict(sorted(Counter(o.kind for o in outcomes if not o.ok).items())))


def saturation_reason(step: Step, baseline_p95_ms: float | None) -> str:
    """Why ``step`` shows the fleet saturated ("" when it does not)."""
    reasons = []
    # One request of slack: at 20 requests a step, one answer at the window's edge and one more request sent are
    # already 10 % (a run on one instance stopped at 0.33/s on 0.307/s served of 0.346/s, then served 0.62/s).
    if step.served_per_s + 1 / step.seconds < SERVED_SHARE * step.offered_per_s:
        reasons.append(f"served {step.served_per_s}/s of {step.offered_per_s}/s offered")
    if step.p95_ms is not None and baseline_p95_ms is not None \
            and step.p95_ms > max(LATENCY_FACTOR * baseline_p95_ms, LATENCY_FLOOR_MS):
        reasons.append(f"p95 {step.p95_ms} ms against {baseline_p95_ms} ms at the first step")
    failed = sum(n for k, n in step.failed.items() if k != "client_saturated")
    if step.sent and failed > FAILED_SHARE * step.sent:
        reasons.append(f"{failed} of {step.sent} failed ({step.failed})")
    if step.failed.get("client_saturated"):
        reasons.append(f"{step.failed['client_saturated']} requests over the client's in-flight limit")
    return "; ".join(reasons)


def find_saturation(measure: Callable[[float], Step], *, start_rate: float, max_rate: float,
                    factor: float = RAMP_FACTOR) -> tuple[list[Step], Step | None]:
    """Offer ``start_rate``, then ``factor`` times more each step, until a step is saturated or ``max_rate`` is
    passed. Returns every step and the saturated one (None: the fleet served everything up to ``max_rate``)."""
    if not 0 < start_rate <= max_rate:
        raise SaturationUsageError(f"--rate {start_rate} / --max-rate {max_rate}: the ramp needs 0 < rate <= max-rate")
    if factor <= 1:
        raise SaturationUsageError(f"ramp factor {factor}: must be more than 1")
    steps: list[Step] = []
    rate = start_rate
    while rate <= max_rate * (1 + 1e-9):
        step = measure(rate)
        steps.append(step)
        why = saturation_reason(step, steps[0].p95_ms if len(steps) > 1 else None)
        if why:
            step.saturated, step.why = True, why
            return steps, step
        rate = round(rate * factor, 2)  # two decimals: a ramp from 0.1 must grow (0.15, 0.23, ...)
    return steps, None


def capacity_of(steps: Sequence[Step]) -> float:
    """The most the fleet served in any step: its capacity once a step saturated it."""
    return max((s.served_per_s for s in steps), default=0.0)


# ---- the verdict -------------------------------------------------------------------------------------------------
def judge(facts: Mapping[str, Any]) -> list[str]:
    """The saturation target's problems ([] when met), from the facts the run recorded (see run_saturation)."""
    problems = []
    budget = facts["budget"]
    if facts["saturated_at"] is None:
        problems.append(f"no saturation up to {facts['max_rate']}/s: the fleet served everything it was offered; "
                        "raise --max-rate")
    refused = facts["too_many_clients"]
    if refused["postgres_log"] or refused["answers"]:
        problems.append(f"PostgreSQL refused connections (too many clients): {refused['postgres_log']} in its log, "
                        f"{refused['answers']} in the answers; max_connections {budget['max_connections']}")
    killed = {name: len(f["oom_kills"]) + f["container_oom_killed"] for name, f in facts["instances"].items()
              if f["oom_kills"] or f["container_oom_killed"]}
    if killed:
        problems.append(f"OOM kills: {killed}")
    unread = sorted(name for name, f in facts["instances"].items() if not f["read"])
    if unread:
        problems.append(f"could not read the kernel log and container state of {unread}: OOM kills unknown")
    kinds = facts["errors"]
    node = {k: n for k, n in kinds.items() if k.startswith("node_")}
    if node:
        problems.append(f"errors answered by a node, not the balancer: {node}")
    other = {k: n for k, n in kinds.items() if k not in ALLOWED_KINDS and k not in node and k != "too_many_clients"}
    if other:
        problems.append(f"failures that are neither queueing nor the balancer's 503 (or its 504 after queueing): "
                        f"{other}")
    hold, served = facts["overload"], facts["capacity_per_s"]
    if hold["offered_per_s"] <= served:
        problems.append(f"the overload offered {hold['offered_per_s']}/s, not more than the {served}/s the fleet "
                        "serves: the client could not exceed it (see client_saturated)")
    conns = facts["connections"]
    if not conns["samples"]:
        problems.append(f"no sample of PostgreSQL's connections: {conns['sample_errors']}")
    elif conns["peak_application_role"] > budget["fleet"]:
        problems.append(f"{conns['peak_application_role']} application connections at peak, more than the budget's "
                        f"{budget['fleet']} ({budget['instances']} x {budget['per_instance']}): the workers are not "
                        "sized as counted")
    return problems


def figures(facts: Mapping[str, Any]) -> dict[str, Any]:
    """The serving figures bench records next to the boot figures."""
    budget, hold = facts["budget"], facts["overload"]
    n = budget["instances"]
    return {
        "pages": facts["pages"],
        "instances": n,
        "workers_per_instance": budget["workers"],
        "workers_on_instances": {name: f["workers"] for name, f in facts["instances"].items()},
        "max_connections": budget["max_connections"],
        "capacity_per_s": facts["capacity_per_s"],
        "requests_per_s_at_saturation": hold["served_per_s"],
        "requests_per_s_per_instance": round(hold["served_per_s"] / n, 3),
        "p50_ms": hold["p50_ms"],
        "p95_ms": hold["p95_ms"],
        "errors": facts["errors"],
        "connections_peak": facts["connections"]["peak_application_role"],
        "connections_budget": budget["fleet"],
        "connections_peak_all_clients": facts["connections"]["peak_all_clients"],
        "connections_refused": facts["too_many_clients"]["postgres_log"],
        "oom_kills": sum(len(f["oom_kills"]) for f in facts["instances"].values()),
    }


def overload_rate(capacity: float, saturated_rate: float, start_rate: float, fleet_workers: int,
                  hold_s: float) -> float:
    """The hold's rate: OVERLOAD x the capacity, at least the rate that saturated the ramp, and at least enough
    that the excess over the capacity queues more requests than the fleet has workers within ``hold_s`` - so every
    worker is busy, and holds its database connection, before the hold ends (else a slow fleet is never
    overloaded: real Nextcloud under TCG serves about 0.1 requests/s, and 1.5 x that for 60 s is 9 requests)."""
    fill = capacity + fleet_workers / max(hold_s, 1.0)
    return round(min(RATE_CEILING, max(OVERLOAD * capacity, saturated_rate, start_rate, fill)), 3)


# ---- the run -----------------------------------------------------------------------------------------------------
def one_request(port: int, request: Request, origin: float) -> Outcome:
    """``request`` once through the balancer on ``port``, waiting for its answer (the load client, one request)."""
    return Load(port, rate=1 / CLIENT_TIMEOUT_S, duration_s=1e-3, requests=[request], answer=answer_kind,
                timeout_s=CLIENT_TIMEOUT_S, origin=origin).run()[0]


@dataclass
class SaturationOptions:
    instances: int = 2
    start_rate: float = START_RATE
    max_rate: float = 400.0
    hold_s: float = 60.0
    step_s: float = STEP_S

    def check(self) -> SaturationOptions:
        if not 0 < self.max_rate <= RATE_CEILING:
            raise SaturationUsageError(f"--max-rate {self.max_rate}: must be more than 0 and at most "
                                       f"{RATE_CEILING:g} requests per second")
        if not 0 < self.start_rate <= self.max_rate:
            raise SaturationUsageError(f"--rate {self.start_rate}: the ramp's first rate must be more than 0 and at "
                                       f"most --max-rate ({self.max_rate:g})")
        if self.hold_s <= 0:
            raise SaturationUsageError(f"--hold {self.hold_s}: must be more than 0 seconds")
        if self.step_s <= 0:
            raise SaturationUsageError(f"ramp step {self.step_s} s: must be more than 0 seconds")
        return self


def run_saturation(fleet: Any, opts: SaturationOptions) -> dict[str, Any]:
    """The drill on ``fleet`` (fleet.Fleet): budget, PostgreSQL restarted with it, N in service, ramp, hold; the
    recorded facts (judge() and figures() read them)."""
    opts.check()
    budget = twin_budget(fleet.settings, opts.instances)
    members = fleet.ensure(opts.instances)
    took = apply_max_connections(fleet.pg, budget.max_connections)
    fleet.log(f"saturation: PostgreSQL max_connections {took} = {budget.instances} x ({budget.workers} workers + "
              f"{capacity.CRON_CONNECTIONS} cron + {capacity.HEALTH_CHECK_CONNECTIONS} health) + {budget.reserve}")
    for name in members:  # the restart took them out of service; the ramp starts with all of them back
        fleet.balancer.wait_in_service(name, fleet.boot_timeout_s)
    requests, pages = request_plan(fleet.settings, fleet.canaries["NEXTCLOUD_ADMIN_PASSWORD"])
    log_path = Path(fleet.pg.logfile)
    log_offset = log_path.stat().st_size if log_path.exists() else 0
    outcomes: list[Outcome] = []

    def load(rate: float, seconds: float) -> tuple[list[Outcome], float, float]:
        run = Load(fleet.balancer.port, rate=rate, duration_s=seconds, requests=requests, answer=answer_kind,
                   rate_ceiling=RATE_CEILING, timeout_s=CLIENT_TIMEOUT_S, max_in_flight=MAX_IN_FLIGHT,
                   origin=fleet.origin)
        start = fleet.now()
        got = run.run()
        outcomes.extend(got)
        return got, start, start + seconds

    # Warm-up, not counted: each page a few times on every instance (the balancer takes turns), one at a time, so
    # that the ramp's first step does not pay for a cold PHP opcache and Nextcloud's first-request caches (a first
    # PROPFIND after boot took 37 s under TCG where the next took 2).
    warm_up = [one_request(fleet.balancer.port, request, fleet.origin)
               for _ in range(WARM_UP_ROUNDS * len(members)) for request in requests]
    fleet.log(f"saturation: warm-up {sum(o.ok for o in warm_up)} of {len(warm_up)} answered, one at a time "
              f"(not counted)")

    def measure(rate: float) -> Step:
        step = Step.of(rate, *load(rate, max(opts.step_s, MIN_STEP_REQUESTS / rate)))
        fleet.log(f"saturation: {rate}/s offered -> served {step.served_per_s}/s, p95 {step.p95_ms} ms, "
                  f"failed {step.failed}")
        return step

    with ConnectionSampler(pg_connections(fleet.pg)) as sampler:
        steps, saturated_at = find_saturation(measure, start_rate=opts.start_rate, max_rate=opts.max_rate)
        served = capacity_of(steps)
        hold_rate = overload_rate(served, saturated_at.rate if saturated_at else 0.0, opts.start_rate,
                                  budget.instances * budget.workers, opts.hold_s)
        fleet.log(f"saturation: capacity {served}/s; holding {hold_rate}/s for {opts.hold_s:g} s")
        hold = Step.of(hold_rate, *load(hold_rate, opts.hold_s))
        why = saturation_reason(hold, steps[0].p95_ms)
        hold.saturated, hold.why = bool(why), why
    log_text = log_path.read_bytes()[log_offset:].decode(errors="replace") if log_path.exists() else ""
    inst = {}
    for name, member in fleet.members().items():
        try:
            r = member.instance.ssh(INSTANCE_FACTS, timeout=60)
            out = r.stdout if r.returncode == 0 else ""
        except (OSError, subprocess.SubprocessError) as exc:
            fleet.log(f"saturation: could not read {name}'s kernel log: {exc}")
            out = ""
        inst[name] = instance_facts(out)  # unread: judged as "OOM kills unknown", never as none
    errors = Counter(o.kind for o in outcomes if not o.ok)
    return {
        "pages": pages,
        "warm_up": LoadSummary.of(warm_up).as_dict(),
        "budget": {**asdict(budget), "fleet": budget.fleet, "max_connections_took": took},
        "max_rate": opts.max_rate,
        "steps": [asdict(s) for s in steps],
        "saturated_at": None if saturated_at is None else saturated_at.rate,
        "capacity_per_s": served,
        "overload": {**asdict(hold), "factor": OVERLOAD},
        "load": LoadSummary.of(outcomes).as_dict(),
        "errors": dict(sorted(errors.items())),
        "too_many_clients": {"postgres_log": too_many_clients_in_log(log_text),
                             "answers": errors.get("too_many_clients", 0)},
        "connections": sampler.as_dict(),
        "instances": inst,
    }


def serving_figures(root: Path, settings: Any, *, instances: int = 1, opts: SaturationOptions | None = None,
                    log: Callable[[str], None] = print) -> dict[str, Any]:
    """For bench: boot a drill fleet of ``instances`` from the baked artifact, run the saturation measurement and
    return its serving figures (requests/s per instance at saturation, the connections that took, ...), with
    ``passed`` and ``problems`` from the drill's verdict. Everything it started is gone when it returns."""
    from infra.drill.fleet import Fleet

    opts = opts or SaturationOptions(instances=instances)
    opts.instances = instances
    with Fleet(root, settings, log=log) as fleet:
        facts = run_saturation(fleet, opts)
    problems = judge(facts)
    return {**figures(facts), "passed": not problems, "problems": problems}
