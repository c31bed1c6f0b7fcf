"""The saturation drill's evidence (saturation.py): PostgreSQL's refusals in its log, the OOM killer's kills and the
container's state on each instance, and PostgreSQL's client connections sampled while the load runs."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

TOO_MANY_CLIENTS = ("too many clients", "remaining connection slots are reserved")
SAMPLE_INTERVAL_S = 0.5


def too_many_clients_in_log(text: str) -> int:
    """PostgreSQL's refusals for want of a connection slot in its log."""
    return sum(1 for line in text.splitlines() if any(m in line.lower() for m in TOO_MANY_CLIENTS))


_KILLED = re.compile(r"(Out of memory|Memory cgroup out of memory)[^\n]*: Killed process \d+")


def oom_kills(kernel_log: str) -> list[str]:
    """The OOM killer's kills in a kernel log (the 'Killed process' line it writes for each)."""
    return [line.strip() for line in kernel_log.splitlines() if _KILLED.search(line)]


INSTANCE_FACTS = ("sudo journalctl -k -b --no-pager -o cat; echo @@oomkilled@@; "
                  "sudo docker inspect -f '{{.State.OOMKilled}} {{.RestartCount}}' nextcloud; echo @@workers@@; "
                  "sudo docker exec nextcloud nextcloud-size-workers 2>/dev/null")


def instance_facts(output: str) -> dict[str, Any]:
    """What INSTANCE_FACTS printed: the kernel's OOM kills, the container's OOMKilled flag and restarts, and the
    workers its Apache runs (nextcloud-size-workers's answer)."""
    kernel, _, rest = output.partition("@@oomkilled@@")
    docker, _, workers = rest.partition("@@workers@@")
    flag, _, restarts = docker.strip().partition(" ")
    found = re.search(r"^NEXTCLOUD_APACHE_MAX_WORKERS=(\d+)$", workers, re.M)
    return {"oom_kills": oom_kills(kernel), "container_oom_killed": flag == "true",
            "container_restarts": int(restarts) if restarts.strip().isdigit() else None,
            "workers": int(found.group(1)) if found else None, "read": bool(rest)}


@dataclass
class ConnectionSampler:
    """Samples (application role's, all) client connections every ``interval_s`` with ``query``; keeps the peaks."""

    query: Callable[[], tuple[int, int]]
    interval_s: float = SAMPLE_INTERVAL_S
    samples: int = 0
    peak_app: int = 0
    peak_total: int = 0
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def sample(self) -> None:
        try:
            app, total = self.query()
        except Exception as exc:  # noqa: BLE001 - a failed sample is recorded, the drill goes on
            if len(self.errors) < 5:
                self.errors.append(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            return
        self.samples += 1
        self.peak_app, self.peak_total = max(self.peak_app, app), max(self.peak_total, total)

    def __enter__(self) -> ConnectionSampler:
        def loop() -> None:
            while True:
                self.sample()
                if self._stop.wait(self.interval_s):
                    return

        self._thread = threading.Thread(target=loop, name="drill-connections", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def as_dict(self) -> dict[str, Any]:
        return {"samples": self.samples, "peak_application_role": self.peak_app, "peak_all_clients": self.peak_total,
                "sample_errors": self.errors}


def pg_connections(pg: Any) -> Callable[[], tuple[int, int]]:
    """A query for ConnectionSampler: client backends of the application role, and all of them but its own."""
    role = pg.user.replace("'", "''")
    sql = (f"SELECT count(*) FILTER (WHERE usename = '{role}'), count(*) FROM pg_stat_activity "
           "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid();")

    def query() -> tuple[int, int]:
        app, total = pg.psql(sql, dbname="postgres").strip().split("|")
        return int(app), int(total)

    return query
