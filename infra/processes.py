"""Ending a child process the helpers on the host start (QEMU, HAProxy, docker-registry)."""

from __future__ import annotations

import subprocess


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
