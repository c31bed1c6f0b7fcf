"""A steady, bounded load through the drill's balancer: a fixed request rate, a hard stop, loopback only.

Open loop, like users who do not wait for each other: request ``i`` is sent at ``start + i / rate`` whatever the
earlier ones are doing, each on a new connection, at most ``max_in_flight`` at once (a request that would exceed it
is not sent and counted as ``client_saturated``, so a slow fleet cannot make the client hide its own backlog). The
run stops sending after ``duration_s`` and gives up on what is still in flight ``timeout_s`` later: it always ends.

The client can only reach 127.0.0.1: it takes a port, never a host or URL, and the path must be a plain
origin-form path; redirects are not followed (http.client does not follow them).
"""

from __future__ import annotations

import http.client
import math
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from infra.errors import Refusal

LOOPBACK = "127.0.0.1"
_PATH = re.compile(r"/(?!/)[A-Za-z0-9._~%!$&'()*+,;=:@/?-]*")
_TARGET = re.compile(r"127\.0\.0\.1:(\d{1,5})")


class LoadError(Refusal, ValueError):
    """A load setting is wrong; the message names it, says why and what to pass instead."""


def loopback_port(target: str | int) -> int:
    """The port of a ``127.0.0.1:PORT`` target (or a bare port); anything that is not loopback is refused."""
    text = str(target).strip()
    match = _TARGET.fullmatch(text) or re.fullmatch(r"(\d{1,5})", text)
    if not match:
        raise LoadError(f"load target {text!r}: only 127.0.0.1:PORT is allowed (the drills never leave loopback)")
    port = int(match.group(1))
    if not 0 < port < 65536:
        raise LoadError(f"load target {text!r}: port must be 1-65535")
    return port


@dataclass(frozen=True)
class Outcome:
    """One request: when it was sent (seconds since the drill's clock origin), how long it took, what came back."""

    t: float
    latency_s: float | None
    kind: str  # "ok", "http_503", "timeout", "refused", "reset", "client_saturated", ...
    status: int | None = None

    @property
    def ok(self) -> bool:
        return self.kind == "ok"


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0-100) of ``values``; None when there are none."""
    if not values:
        return None
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p}: must be 0-100")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


@dataclass
class LoadSummary:
    """Counts and latencies of a set of outcomes."""

    sent: int
    ok: int
    failed: dict[str, int]
    p50_ms: float | None
    p99_ms: float | None
    p95_ms: float | None = None

    @classmethod
    def of(cls, outcomes: Sequence[Outcome]) -> LoadSummary:
        latencies = [o.latency_s for o in outcomes if o.ok and o.latency_s is not None]
        failed = Counter(o.kind for o in outcomes if not o.ok)
        ms = [v * 1000 for v in latencies]

        def rounded(v: float | None) -> float | None:
            return None if v is None else round(v, 1)

        return cls(sent=len(outcomes), ok=len(latencies), failed=dict(sorted(failed.items())),
                   p50_ms=rounded(percentile(ms, 50)), p99_ms=rounded(percentile(ms, 99)),
                   p95_ms=rounded(percentile(ms, 95)))

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())

    def as_dict(self) -> dict[str, object]:
        return {"sent": self.sent, "ok": self.ok, "failed": self.failed, "failed_total": self.failed_total,
                "p50_ms": self.p50_ms, "p95_ms": self.p95_ms, "p99_ms": self.p99_ms}


@dataclass(frozen=True)
class Request:
    """One kind of request the load sends (they take turns): method, plain path, extra headers, body."""

    method: str = "GET"
    path: str = "/index.php"
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = None

    def check(self) -> Request:
        if not _PATH.fullmatch(self.path):
            raise LoadError(f"load path {self.path!r}: must be a plain path such as /index.php (no scheme, host, "
                            "'//' or spaces)")
        if not re.fullmatch(r"[A-Z]{3,12}", self.method):
            raise LoadError(f"load method {self.method!r}: an HTTP method in capitals, e.g. GET or PROPFIND")
        bad = [k for k, v in self.headers.items() if k.lower() in ("host", "connection", "content-length")
               or not re.fullmatch(r"[A-Za-z0-9-]+", k) or "\r" in v or "\n" in v]
        if bad:
            raise LoadError(f"load header(s) {bad}: a plain header name and a one-line value; Host, Connection and "
                            "Content-Length are the load's own")
        return self


# (status, headers, the first bytes of the body) -> the outcome's kind; the default: "ok" below 400, else http_<n>.
Answer = Callable[[int, Mapping[str, str], bytes], str]
ANSWER_BYTES = 4096  # what a classifier sees of a body (an error page's signature is at its start)


def status_kind(status: int, headers: Mapping[str, str], body: bytes) -> str:
    """The plain classification: "ok" below 400, else ``http_<status>``."""
    return "ok" if status < 400 else f"http_{status}"


def classify(exc: BaseException) -> str:
    """A failure kind for an exception raised while sending or reading a request."""
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, (ConnectionResetError, http.client.RemoteDisconnected, BrokenPipeError)):
        return "reset"
    return type(exc).__name__


@dataclass
class Load:
    """GET ``path`` on 127.0.0.1:``port`` at ``rate`` per second for ``duration_s``; use ``start()``/``join()``."""

    port: int
    rate: float = 5.0
    duration_s: float = 60.0
    path: str = "/index.php"
    host_header: str = "localhost"
    timeout_s: float = 30.0
    max_in_flight: int = 64
    origin: float = field(default_factory=time.monotonic)
    requests: Sequence[Request] = ()  # taken in turn; empty: GET ``path``
    answer: Answer = status_kind
    rate_ceiling: float = 200.0  # the drills' --rate limit; the saturation ramp raises it
    _outcomes: list[Outcome] = field(default_factory=list, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)
    _workers: list[threading.Thread] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        self.port = loopback_port(self.port)
        self.requests = [r.check() for r in self.requests] or [Request("GET", self.path).check()]
        if not 0 < self.rate <= self.rate_ceiling:
            raise LoadError(f"--rate {self.rate}: must be more than 0 and at most {self.rate_ceiling:g} requests per "
                            "second")
        if not 0 < self.duration_s <= 3600:
            raise LoadError(f"--duration {self.duration_s}: must be more than 0 and at most 3600 seconds")
        if not re.fullmatch(r"[A-Za-z0-9.-]+(:\d+)?", self.host_header):
            raise LoadError(f"host header {self.host_header!r}: a host name, e.g. localhost")

    def now(self) -> float:
        return time.monotonic() - self.origin

    def _one(self, scheduled: float, slots: threading.BoundedSemaphore, request: Request) -> None:
        t = time.monotonic()
        conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=self.timeout_s)
        try:
            conn.request(request.method, request.path, body=request.body,
                         headers={**request.headers, "Host": self.host_header, "Connection": "close"})
            response = conn.getresponse()
            body = response.read()
            status = response.status
            headers = {k.lower(): v for k, v in response.getheaders()}
            outcome = Outcome(scheduled, time.monotonic() - t, self.answer(status, headers, body[:ANSWER_BYTES]),
                              status)
        except Exception as exc:  # noqa: BLE001 - every failure is a counted outcome, never a crash of the drill
            outcome = Outcome(scheduled, time.monotonic() - t, classify(exc))
        finally:
            conn.close()
            slots.release()
        with self._lock:
            self._outcomes.append(outcome)

    def _run(self) -> None:
        slots = threading.BoundedSemaphore(self.max_in_flight)
        start = time.monotonic()
        i = 0
        while not self._stop.is_set():
            due = start + i / self.rate
            if due - start >= self.duration_s:
                break
            delay = due - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                break
            scheduled = due - self.origin
            if slots.acquire(blocking=False):
                request = self.requests[i % len(self.requests)]
                worker = threading.Thread(target=self._one, args=(scheduled, slots, request), daemon=True)
                self._workers.append(worker)
                worker.start()
            else:
                with self._lock:
                    self._outcomes.append(Outcome(scheduled, None, "client_saturated"))
            i += 1

    def start(self) -> Load:
        self._thread = threading.Thread(target=self._run, name="drill-load", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sending now (requests in flight still finish within ``timeout_s``)."""
        self._stop.set()

    def join(self) -> list[Outcome]:
        """Wait for the end of the run and of what is in flight (at most ``timeout_s`` more); the outcomes so far,
        the requests still unanswered counted as timeouts."""
        assert self._thread is not None, "start() first"
        self._thread.join()
        deadline = time.monotonic() + self.timeout_s + 1
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            outcomes = sorted(self._outcomes, key=lambda o: o.t)
            hung = sum(1 for w in self._workers if w.is_alive())
        outcomes += [Outcome(self.now(), None, "timeout")] * hung
        return outcomes

    def run(self, during: Callable[[], None] | None = None) -> list[Outcome]:
        """Start, run ``during()`` (the fault) while the load goes on and stop when it returns; without ``during``,
        run for ``duration_s``. Then join."""
        self.start()
        if during is None:
            return self.join()
        try:
            during()
        finally:
            self.stop()
        return self.join()
