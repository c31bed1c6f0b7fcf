"""The drill's fleet: the twin's services, its load balancer, the group stand-in and a monitor, in one context.

On enter: random canary secrets (as test-ami does), PostgreSQL and Redis on the host's loopback (RDS and ElastiCache;
the guests see them at 10.0.2.2), user data rendered with the canaries, HAProxy (balancer.py), the group stand-in
(asg.py) launching twin instances from the baked artifact, and a monitor that samples every instance's liveness and
readiness and the balancer's view of it. On exit, whatever happened: every instance, HAProxy, the services, gone.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra import build_record
from infra.drill.asg import Group, LivenessRule
from infra.drill.balancer import Balancer, BalancerError, stack_target_group
from infra.localtwin.instance import Instance
from infra.localtwin.services import ThrowawayPostgres, ThrowawayRedis
from infra.localtwin.test_ami import (
    _check_service_settings,
    local_artifact,
    make_canaries,
    read_record,
    render_user_data_with_secrets,
    secret_variables,
)

Log = Callable[[str], None]
TWIN_GRACE_S = 600.0


def probe(port: int, path: str, timeout: float) -> int | None:
    """Status of GET 127.0.0.1:port/path (None: no answer in time)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, ValueError):
        return None


WATCHDOG = "/usr/local/libexec/nextcloud-image/liveness-watchdog"


def guest_busy(instance: Instance) -> dict[str, Any]:
    """The watchdog's busy evidence from inside the guest ({"busy": False, "detail": why} when it cannot be had)."""
    try:
        r = instance.ssh(f"sudo {WATCHDOG} --busy-check", timeout=60)
        doc = json.loads(r.stdout) if r.returncode == 0 else {"busy": False, "detail": r.stderr.strip()[-200:]}
    except (OSError, ValueError, subprocess.TimeoutExpired) as e:
        doc = {"busy": False, "detail": f"{type(e).__name__}: {e}"}
    return doc if isinstance(doc, dict) else {"busy": False, "detail": "not a JSON object"}


@dataclass
class TwinMember:
    """A group member: one twin instance, booted in the background."""

    instance: Instance
    boot_error: str | None = None
    _thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.instance.name

    @property
    def http_port(self) -> int:
        return self.instance.http_port

    def boot(self) -> TwinMember:
        self.instance.start()

        def wait() -> None:
            try:
                self.instance.wait()
            except Exception as exc:  # noqa: BLE001 - recorded; the balancer's health check keeps it out
                self.boot_error = str(exc).splitlines()[0]

        self._thread = threading.Thread(target=wait, name=f"boot-{self.name}", daemon=True)
        self._thread.start()
        return self

    def shutdown(self) -> float:
        """An orderly OS shutdown as EC2 termination does it (systemd stops every unit), then the VM is gone."""
        t = time.monotonic()
        if self.instance.workdir is not None:
            with contextlib.suppress(Exception):
                self.instance.ssh("sudo systemctl poweroff", timeout=30)
            self.instance.wait_exited(timeout=120)
        self.instance.stop()
        return time.monotonic() - t


@dataclass
class Monitor:
    """Samples every member's /livez and /readyz (through its forwarded port) and the balancer's state of it;
    keeps the changes, per instance, as (t, live, ready, balancer)."""

    group: Group
    balancer: Balancer
    interval_s: float = 5.0
    origin: float = 0.0
    timeline: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def sample(self) -> None:
        try:
            lb = {n: s.status for n, s in self.balancer.targets().items()}
        except (BalancerError, OSError):
            lb = {}
        for name, member in list(self.group.members.items()):
            if not member.http_port:
                continue
            live, ready = probe(member.http_port, "/livez", 5), probe(member.http_port, "/readyz", 5)
            state = {"live": live, "ready": ready, "balancer": lb.get(name, "?")}
            history = self.timeline.setdefault(name, [])
            if not history or {k: history[-1][k] for k in state} != state:
                history.append({"t": round(time.monotonic() - self.origin, 1), **state})

    def start(self) -> None:
        def loop() -> None:
            while not self._stop.wait(self.interval_s):
                self.sample()

        self._thread = threading.Thread(target=loop, name="drill-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)


class Fleet(contextlib.AbstractContextManager):
    """Services + balancer + group + monitor for one drill run (see the module docstring)."""

    def __init__(self, root: Path, settings: Any, *, log: Log, deregistration_delay_s: float | None = None,
                 probe_interval_s: float = 30.0, grace_s: float | None = None, boot_timeout_s: float = 1500.0):
        _check_service_settings(settings)
        self.root, self.settings, self.log = root, settings, log
        self.manifest = build_record.manifest_path(root, settings.name)
        self.build = read_record(self.manifest)
        self.artifact = local_artifact(self.build, self.manifest, root)
        self.tg = stack_target_group()
        self.deregistration_delay_s = self.tg.deregistration_delay_s if deregistration_delay_s is None \
            else deregistration_delay_s
        self.probe_interval_s = probe_interval_s
        # The group's grace period covers a boot; under TCG a boot (three at once on two cores) takes minutes that EC2
        # takes seconds, so the twin's default is the longer of the stack's and TWIN_GRACE_S (the record says which).
        self.stack_grace_s = settings.stack.health_check_grace_seconds
        self.grace_s = max(self.stack_grace_s, TWIN_GRACE_S) if grace_s is None else grace_s
        self.boot_timeout_s = boot_timeout_s
        self.origin = time.monotonic()
        self._stack = contextlib.ExitStack()

    def now(self) -> float:
        return time.monotonic() - self.origin

    def __enter__(self) -> Fleet:
        try:
            self._enter()
        except BaseException:
            self._stack.close()
            raise
        return self

    def _enter(self) -> None:
        self.canaries = make_canaries(list(secret_variables().values()))
        self.user_data = render_user_data_with_secrets(self.settings, self.canaries)
        db, rd = self.settings.database, self.settings.redis
        self.pg = self._stack.enter_context(
            ThrowawayPostgres(db.port, self.canaries["NEXTCLOUD_DB_PASSWORD"], dbname=db.name, user=db.user))
        self.redis = self._stack.enter_context(ThrowawayRedis(rd.port, self.canaries["NEXTCLOUD_REDIS_PASSWORD"]))
        self.log(f"fleet: PostgreSQL 127.0.0.1:{db.port}, Redis 127.0.0.1:{rd.port}, artifact {self.artifact.disk}")
        self.balancer = self._stack.enter_context(Balancer(self.tg, progress=self.log))
        self.group = Group(self._launch, self.balancer, self._probe_live,
                           deregistration_delay_s=self.deregistration_delay_s,
                           rule=LivenessRule(grace_s=self.grace_s), probe_interval_s=self.probe_interval_s,
                           in_service_timeout_s=self.boot_timeout_s, log=self.log, origin=self.origin)
        self._stack.callback(self._stop_members)
        self.monitor = Monitor(self.group, self.balancer, origin=self.origin)
        self.monitor.start()
        self._stack.callback(self.monitor.stop)
        self.group.start_health_checks()
        self._stack.callback(self.group.stop_health_checks)

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _launch(self, name: str) -> TwinMember:
        a = self.artifact
        inst = Instance(a.disk, a.kernel, a.initrd, self.user_data, name=name, timeout_s=self.boot_timeout_s,
                        progress=self.log)
        return TwinMember(inst).boot()

    def _probe_live(self, member: TwinMember, timeout: float) -> bool:
        """The instance's liveness watchdog's rule: GET /livez answered 200 in ``timeout``; or no answer while the
        node is busy, not hung (connections queued and Apache using CPU), asked of the watchdog itself in the guest
        (``--busy-check``). Its limit on busy probes in a row (10 minutes) is longer than any drill's overload."""
        status = probe(member.http_port, "/livez", timeout)
        if status == 200:
            return True
        if status is not None:
            return False
        busy = guest_busy(member.instance)
        if busy.get("busy"):
            self.log(f"group: {member.name} gave no /livez answer in {timeout:.0f} s but is busy, not hung "
                     f"({busy['detail']}): not counted, as the watchdog does")
            return True
        return False

    def _stop_members(self) -> None:
        for member in list(self.group.members.values()):
            member.instance.stop()

    # ---- what scenarios use ------------------------------------------------------------------------------------
    def ensure(self, count: int) -> list[str]:
        """Bring the group to ``count`` members in service: launch the missing ones at once, scale in the extra."""
        members = list(self.group.members)
        while len(members) > count:
            self.group.terminate(members.pop(0))
        new = [self.group.launch().name for _ in range(count - len(members))]
        for name in new:
            self.group.wait_in_service(name)
        return list(self.group.members)

    def members(self) -> dict[str, TwinMember]:
        return dict(self.group.members)  # type: ignore[arg-type]

    def record(self) -> dict[str, Any]:
        """What the run saw: the group's events and replacements, each instance's states over time."""
        self.monitor.sample()
        return {"events": list(self.group.events), "replaced": list(self.group.replaced),
                "timeline": json.loads(json.dumps(self.monitor.timeline))}
