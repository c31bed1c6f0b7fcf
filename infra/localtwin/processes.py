"""The child processes the twin starts on the host (PostgreSQL, Redis, docker-registry, HAProxy, Podman, QEMU).

``ManagedProcess`` is the one shape they share: a context manager that starts on enter (``start()`` then
``wait()``), ends on every way out of the block (``close()``: ``stop()`` plus whatever the service removes), can be
restarted (``restart()``: "the database goes away, then comes back"), and puts the tail of its log into the error
when it does not come up. ``end()`` ends one child: SIGTERM, a grace period, SIGKILL.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self

from infra.errors import PipelineError


def end(proc: subprocess.Popen | None, timeout: float) -> None:
    """SIGTERM, ``timeout`` seconds to exit, then SIGKILL; nothing when it is gone already. Reaps it either way."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def log_tail(path: Path | None, chars: int = 2000) -> str:
    """The last ``chars`` characters of a log file; empty when there is none (yet)."""
    if path is None:
        return ""
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


class ManagedProcess:
    """A server the twin runs for the length of a ``with`` block.

    A subclass implements ``start()`` (launch with ``launch()``, then ``wait_until()`` it serves) and may extend
    ``stop()`` (keeps what a restart needs) and ``close()`` (stop, then remove its private files). ``error`` is the
    class it raises, ``stop_timeout`` the grace period between SIGTERM and SIGKILL, ``log_path`` the log whose tail a
    failure carries.
    """

    error: ClassVar[type[PipelineError]] = PipelineError
    stop_timeout: ClassVar[float] = 10.0
    _proc: subprocess.Popen[bytes] | None = None

    # ---- the context manager -------------------------------------------------------------------------------------
    def __enter__(self) -> Self:
        try:
            self.start()
            self.wait()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ---- the lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> None:  # pragma: no cover - every subclass has its own
        raise NotImplementedError

    def wait(self) -> None:
        """Wait until the server serves; most ``start()``s already do, a VM's boot is waited for here."""

    def stop(self) -> None:
        """End the process (SIGTERM, ``stop_timeout`` s, SIGKILL); nothing when it is not running."""
        proc, self._proc = self._proc, None
        end(proc, timeout=self.stop_timeout)

    def close(self) -> None:
        """Stop, and remove what the server keeps only for a restart (subclasses with private files extend it)."""
        self.stop()

    def restart(self) -> None:
        """Stop, then start again with the same data (e.g. "DB down then up")."""
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # ---- helpers for start() ---------------------------------------------------------------------------------------
    @property
    def log_path(self) -> Path | None:
        """The log a failure quotes (None: none)."""
        return None

    def log_tail(self, chars: int = 2000) -> str:
        return log_tail(self.log_path, chars)

    def launch(self, argv: list[str], *, log: Path | None = None, **popen: Any) -> subprocess.Popen[bytes]:
        """Start ``argv`` with no stdin and its output appended to ``log`` (discarded without one)."""
        if log is None:
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, **popen)
        else:
            with log.open("wb") as out:
                self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                              **popen)
        return self._proc

    def wait_until(self, ready: Callable[[], bool], *, timeout: float, interval: float, exited: str,
                   timed_out: str, tail: int = 2000) -> None:
        """Poll ``ready()`` every ``interval`` s until it is true. When the process ends first: ``error`` with
        ``exited`` (``{status}`` is its exit status) and the log's tail; after ``timeout`` s: stopped, then ``error``
        with ``timed_out`` and the tail."""
        deadline = time.monotonic() + timeout
        while not ready():
            proc = self._proc
            if proc is not None and proc.poll() is not None:
                self._proc = None
                raise self.error(f"{exited.format(status=proc.returncode)}:\n{self.log_tail(tail)}".rstrip())
            if time.monotonic() > deadline:
                log = self.log_tail(tail)  # before stop(): a service may remove its directory with the process
                self.stop()
                raise self.error(f"{timed_out}\n{log}".rstrip())
            time.sleep(interval)
