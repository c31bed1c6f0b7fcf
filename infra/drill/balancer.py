"""The load balancer's part in the drills: HAProxy on loopback, configured like the stack's target group.

Stands in for the Application Load Balancer and its target group (infra/stack/nextcloud.yaml, TargetGroup): health
checks on readiness with the same path, interval, timeout and thresholds (render/haproxy.py writes the config from
the template), least outstanding requests, no retry on another target. Registering and deregistering a target
goes through HAProxy's runtime API on a private unix socket: a target is one of a fixed number of server slots
that gets the instance's forwarded port. Deregistration puts the slot in maintenance (no new request reaches it,
sticky clients included, in-flight requests finish), as a target group's ``draining`` state does; the group
stand-in (asg.py) then waits until the target's sessions end or the deregistration delay passes.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import io
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from infra.errors import PipelineError
from infra.localtwin.instance import free_port
from infra.localtwin.processes import ManagedProcess
from render.haproxy import TargetGroupHealth, render_haproxy_cfg

BACKEND = "nextcloud"
_PR_SET_PDEATHSIG = 1
# Every answer that came from a target carries this header, naming the slot; HAProxy's own answers (503 when no
# target is in service or a connection to one failed, 504 when one did not answer in time) never do: the drills tell
# the balancer's 503 from a node's by it.
TARGET_HEADER = "X-Drill-Target"


class BalancerError(PipelineError, RuntimeError):
    """HAProxy did not start or refused a runtime command; the message carries its answer."""


def stack_target_group() -> TargetGroupHealth:
    """The TargetGroup's health settings as the stack template declares them."""
    from infra.stack.template import load_template

    return TargetGroupHealth.from_properties(load_template()["Resources"]["TargetGroup"]["Properties"])


def mark_target_answers(cfg: str) -> str:
    """The rendered config with the backend adding TARGET_HEADER to the answers of its servers (``http-response``
    rules never run on HAProxy's own answers)."""
    section = f"\nbackend {BACKEND}\n"
    if section not in cfg:
        raise BalancerError(f"the rendered haproxy.cfg has no 'backend {BACKEND}' section to mark answers in")
    rule = ("    # infra/drill/balancer.py: a target's answer names it; HAProxy's own answers do not\n"
            f"    http-response set-header {TARGET_HEADER} %s\n")
    return cfg.replace(section, section + rule, 1)


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class TargetState:
    """One registered target as HAProxy reports it (``show stat``)."""

    name: str
    status: str  # UP, DOWN, MAINT, "UP 1/2", "DOWN 1/2", ...
    sessions: int
    check: str  # last check's status, e.g. L7OK, L7STS, L4CON, L4TOUT

    @property
    def in_service(self) -> bool:
        return self.status.startswith("UP")


@dataclass
class Balancer(ManagedProcess):
    """HAProxy in front of the drill's instances; a context manager (stopped and its directory removed on exit)."""

    error = BalancerError

    tg: TargetGroupHealth
    slots: int = 6
    progress: Callable[[str], None] = print
    port: int = field(default=0, init=False)
    workdir: Path | None = field(default=None, init=False)
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _slot_of: dict[str, str] = field(default_factory=dict, init=False)

    @property
    def socket_path(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "admin.sock"

    @property
    def log_path(self) -> Path | None:
        return self.workdir / "haproxy.log" if self.workdir is not None else None

    def start(self) -> None:
        if shutil.which("haproxy") is None:
            raise BalancerError("haproxy is not installed: apt-get install haproxy (.ci/setup installs it)")
        self.workdir = Path(tempfile.mkdtemp(prefix="drill-haproxy-"))
        self.port = free_port()
        cfg = self.workdir / "haproxy.cfg"
        cfg.write_text(mark_target_answers(
            render_haproxy_cfg(self.tg, port=self.port, socket_path=self.socket_path, slots=self.slots)))
        check = subprocess.run(["haproxy", "-c", "-q", "-f", str(cfg)], capture_output=True, text=True)
        if check.returncode:
            raise BalancerError(f"haproxy refused its config: {check.stdout}{check.stderr}")
        self.launch(["haproxy", "-db", "-f", str(cfg)], log=self.log_path,
                    preexec_fn=_die_with_parent)  # noqa: PLW1509
        self.wait_until(self.socket_path.exists, timeout=10, interval=0.05,
                        exited="haproxy did not start (exit status {status})", timed_out="haproxy did not start")
        self.progress(f"balancer: HAProxy on 127.0.0.1:{self.port}, health check GET {self.tg.path} every "
                      f"{self.tg.interval_s} s (timeout {self.tg.timeout_s} s, {self.tg.unhealthy_threshold} fail / "
                      f"{self.tg.healthy_threshold} recover)")

    def stop(self) -> None:
        super().stop()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    # ---- the runtime API -------------------------------------------------------------------------------------
    def command(self, line: str) -> str:
        """One runtime API command; its answer (raises BalancerError when HAProxy says it failed)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(str(self.socket_path))
            s.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        answer = b"".join(chunks).decode(errors="replace")
        if any(word in answer for word in ("Unknown command", "No such", "Require", "invalid", "Invalid")):
            raise BalancerError(f"haproxy refused {line!r}: {answer.strip()}")
        return answer

    def register(self, name: str, port: int) -> None:
        """Put ``127.0.0.1:port`` in a free slot; it gets traffic once ``rise`` health checks pass."""
        if name in self._slot_of:
            raise BalancerError(f"{name} is already registered")
        used = set(self._slot_of.values())
        free = [f"slot{n}" for n in range(1, self.slots + 1) if f"slot{n}" not in used]
        if not free:
            raise BalancerError(f"all {self.slots} balancer slots are taken")
        slot = free[0]
        server = f"{BACKEND}/{slot}"
        self.command(f"set server {server} addr 127.0.0.1 port {port}")
        # A new target starts unhealthy and must pass the healthy threshold, as in a target group.
        self.command(f"set server {server} state ready")
        self.command(f"set server {server} health down")
        self._slot_of[name] = slot
        self.progress(f"balancer: registered {name} (127.0.0.1:{port}) as {slot}")

    def deregister(self, name: str) -> None:
        """No new request for ``name`` (maintenance); requests in flight finish."""
        self.command(f"set server {BACKEND}/{self._slot_of[name]} state maint")
        self.progress(f"balancer: deregistering {name}: no new requests, in-flight ones finish")

    def release(self, name: str) -> None:
        """Forget ``name`` (after its instance is gone): its slot stays in maintenance for the next target."""
        slot = self._slot_of.pop(name, None)
        if slot:
            with contextlib.suppress(BalancerError, OSError):
                self.command(f"set server {BACKEND}/{slot} state maint")

    def targets(self) -> dict[str, TargetState]:
        """Every registered target's state, keyed by instance name."""
        rows = csv.DictReader(io.StringIO(self.command("show stat").lstrip("# ")))
        by_slot = {r["svname"]: r for r in rows if r.get("pxname") == BACKEND}
        out = {}
        for name, slot in self._slot_of.items():
            r = by_slot.get(slot, {})
            out[name] = TargetState(name, r.get("status", "?"), int(r.get("scur") or 0), r.get("check_status", ""))
        return out

    def wait_in_service(self, name: str, timeout: float) -> float:
        """Seconds until HAProxy routes to ``name``; raises BalancerError after ``timeout``."""
        t0 = time.monotonic()
        while not (state := self.targets()[name]).in_service:
            if time.monotonic() - t0 > timeout:
                raise BalancerError(f"{name} was not in service after {timeout:.0f} s: {state}")
            time.sleep(0.5)
        return time.monotonic() - t0

    def wait_drained(self, name: str, delay_s: float) -> float:
        """Wait until ``name`` has no session left or ``delay_s`` passed (the deregistration delay); seconds waited."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < delay_s and self.targets()[name].sessions > 0:
            time.sleep(0.2)
        return time.monotonic() - t0
