"""The Auto Scaling group's part in the drills: launch, scale-in, and replacing what liveness says is broken.

Stands in for the group in infra/stack/nextcloud.yaml (HealthCheckType EC2, fed by each instance's liveness
watchdog through autoscaling:SetInstanceHealth) together with that watchdog's rule, which on the twin only logs
what it would report (NEXTCLOUD_LIVENESS_REPORT=log):
- launch: boot an instance and register it with the load balancer at once (an instance is InService, and its
  target registered, as soon as it runs; the target group's health check decides when it gets traffic);
- scale-in (``terminate``): deregister the target, wait until its requests end or the deregistration delay
  passes, then shut the instance down the way EC2 termination does (an orderly OS shutdown: systemd stops
  nextcloud.service, ``docker stop`` gives Apache 30 s to finish);
- health: probe GET /livez every ``probe_interval_s`` (the watchdog's timer, 30 s) with ``probe_timeout_s`` (its
  20 s); after ``failures`` (3) in a row the instance is Unhealthy; failures within ``grace_s`` of its launch are
  ignored (the group's HealthCheckGracePeriod; the watchdog reports with ShouldRespectGracePeriod). An Unhealthy
  instance is replaced launch-before-terminate: the replacement is in service before the broken one is taken
  out. (The stack's group has no InstanceMaintenancePolicy, so on AWS it terminates first; the README says so.)
The group's readiness never counts: a database failover takes targets out of the balancer, never replaces them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


class Member(Protocol):
    """What the group needs from an instance (infra/drill/fleet.py wraps a twin Instance)."""

    name: str
    http_port: int

    def shutdown(self) -> float: ...  # orderly OS shutdown, then gone; seconds it took


class Targets(Protocol):
    """What the group needs from the load balancer (infra/drill/balancer.py)."""

    def register(self, name: str, port: int) -> None: ...
    def deregister(self, name: str) -> None: ...
    def wait_drained(self, name: str, delay_s: float) -> float: ...
    def wait_in_service(self, name: str, timeout: float) -> float: ...
    def release(self, name: str) -> None: ...


@dataclass
class LivenessRule:
    """The watchdog's rule: Unhealthy after ``failures`` failed probes in a row, not within ``grace_s`` of launch."""

    failures: int = 3
    grace_s: float = 300.0
    _streak: dict[str, int] = field(default_factory=dict)

    def observe(self, name: str, live: bool, age_s: float) -> bool:
        """Record one probe of ``name`` (``age_s`` since its launch); True when it is now Unhealthy."""
        if live:
            self._streak[name] = 0
            return False
        self._streak[name] = self._streak.get(name, 0) + 1
        return self._streak[name] >= self.failures and age_s >= self.grace_s

    def forget(self, name: str) -> None:
        self._streak.pop(name, None)


@dataclass
class Group:
    """The group stand-in; ``launcher(name)`` starts an instance (without waiting) and returns it."""

    launcher: Callable[[str], Member]
    targets: Targets
    probe: Callable[[Member, float], bool]  # (member, timeout) -> live?
    deregistration_delay_s: float = 60.0
    rule: LivenessRule = field(default_factory=LivenessRule)
    probe_interval_s: float = 30.0
    probe_timeout_s: float = 20.0
    in_service_timeout_s: float = 1200.0
    log: Callable[[str], None] = print
    clock: Callable[[], float] = time.monotonic
    members: dict[str, Member] = field(default_factory=dict, init=False)
    launched_at: dict[str, float] = field(default_factory=dict, init=False)
    events: list[dict[str, Any]] = field(default_factory=list, init=False)
    replaced: list[dict[str, Any]] = field(default_factory=list, init=False)
    _counter: int = field(default=0, init=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, init=False, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)
    origin: float = field(default=0.0)

    def _event(self, event: str, name: str, **detail: Any) -> None:
        self.events.append({"t": round(self.clock() - self.origin, 1), "event": event, "instance": name, **detail})

    def next_name(self) -> str:
        with self._lock:
            self._counter += 1
            return f"nc-drill-{self._counter}"

    def launch(self, name: str | None = None) -> Member:
        """Start one instance and register its target (it gets traffic once its readiness checks pass)."""
        name = name or self.next_name()
        member = self.launcher(name)
        with self._lock:
            self.members[name] = member
            self.launched_at[name] = self.clock()
        self.targets.register(name, member.http_port)
        self._event("launched", name, port=member.http_port)
        return member

    def wait_in_service(self, name: str) -> float:
        waited = self.targets.wait_in_service(name, self.in_service_timeout_s)
        self._event("in_service", name, seconds_since_launch=round(self.clock() - self.launched_at[name], 1))
        return waited

    def terminate(self, name: str) -> dict[str, float]:
        """Scale-in: deregister, wait out the drain (requests done or the delay), shut the instance down."""
        with self._lock:
            member = self.members[name]
        self.targets.deregister(name)
        self._event("deregistering", name)
        drained = self.targets.wait_drained(name, self.deregistration_delay_s)
        self._event("drained", name, seconds=round(drained, 1))
        shutdown = member.shutdown()
        self.targets.release(name)
        with self._lock:
            self.members.pop(name, None)
            self.rule.forget(name)
        self._event("terminated", name, shutdown_s=round(shutdown, 1))
        self.log(f"group: terminated {name} (drained {drained:.1f} s, shutdown {shutdown:.1f} s)")
        return {"drain_s": round(drained, 1), "shutdown_s": round(shutdown, 1)}

    def replace(self, name: str, why: str) -> str:
        """Launch a replacement, wait until it is in service, then terminate ``name``; the replacement's name."""
        self.log(f"group: {name} is Unhealthy ({why}): launching its replacement first")
        self._event("unhealthy", name, why=why)
        new = self.launch().name
        self.wait_in_service(new)
        self.terminate(name)
        self.replaced.append({"instance": name, "replacement": new, "why": why,
                              "t": round(self.clock() - self.origin, 1)})
        return new

    def check_health_once(self) -> list[str]:
        """One probe round over every member; replaces (in order) the ones the rule says are Unhealthy."""
        with self._lock:
            members = list(self.members.items())
        unhealthy = []
        for name, member in members:
            live = self.probe(member, self.probe_timeout_s)
            if not live:
                self._event("liveness_failed", name)
            if self.rule.observe(name, live, self.clock() - self.launched_at[name]):
                unhealthy.append(name)
        for name in unhealthy:
            self.replace(name, f"liveness failed {self.rule.failures} times in a row")
        return unhealthy

    def start_health_checks(self) -> None:
        def loop() -> None:
            while not self._stop.wait(self.probe_interval_s):
                try:
                    self.check_health_once()
                except Exception as e:  # noqa: BLE001 - a thread has nobody to raise to
                    if self._stop.is_set():  # torn down mid-replacement (the drill ended or was interrupted)
                        return
                    self._event("health_check_error", "-", error=f"{type(e).__name__}: {e}")
                    self.log(f"group: a health check round failed: {type(e).__name__}: {e}")

        self._thread = threading.Thread(target=loop, name="drill-group-health", daemon=True)
        self._thread.start()

    def stop_health_checks(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.in_service_timeout_s)
