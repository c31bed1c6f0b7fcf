"""Processes the benchmark watches (psutil): other VMs that would share the CPU with a boot, and the process tree
of a no-op rebuild, which must never start a VM or Packer."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import psutil

from infra.bench import Log

_GONE = (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess)


def process_name(proc: psutil.Process) -> str | None:
    """The executable basename of argv[0] (what the process was started as: a symlink named qemu-system-x86_64
    counts as QEMU), else psutil's name; None when the process is gone or unreadable."""
    try:
        argv = proc.cmdline()
        return os.path.basename(argv[0]) if argv and argv[0] else proc.name()
    except _GONE:
        return None


def is_qemu(name: str) -> bool:
    return name.startswith("qemu-system")


def is_bake(name: str) -> bool:
    """A process that means a bake started: Packer or a VM."""
    return name == "packer" or is_qemu(name)


def tree(pid: int) -> dict[int, str]:
    """pid -> name of ``pid`` itself (the command may exec into something else) and every process below it."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except _GONE:
        return {}
    found = {}
    for p in procs:
        name = process_name(p)
        if name is not None:
            found[p.pid] = name
    return found


def qemu_pids() -> list[int]:
    """Pids of every running qemu-system-* process."""
    found = []
    for p in psutil.process_iter():
        name = process_name(p)
        if name is not None and is_qemu(name):
            found.append(p.pid)
    return sorted(found)


def wait_for_quiet(log: Log, max_wait_s: float = 1800.0, own: Iterable[int] = ()) -> list[int]:
    """Wait until no other qemu-system process runs (another VM would steal the 2 cores); return those left.

    Gives up after ``max_wait_s`` and returns the still-running pids, which the sample then records.
    """
    mine = set(own)
    deadline = time.monotonic() + max_wait_s
    announced = False
    while True:
        others = [p for p in qemu_pids() if p not in mine]
        if not others or time.monotonic() > deadline:
            return others
        if not announced:
            log(f"bench: waiting for other QEMU processes to finish ({others}) so boots do not share the CPU")
            announced = True
        time.sleep(5)


def _running(procs: Iterable[psutil.Process]) -> list[psutil.Process]:
    """Those of ``procs`` still running; a zombie has ended (its parent reaps it: never reaped here, or the
    parent's ``Popen`` would lose the exit code)."""
    alive = []
    for p in procs:
        with contextlib.suppress(*_GONE):
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
    return alive


def stop_tree(pid: int, grace_s: float = 10.0) -> None:
    """SIGTERM ``pid`` and everything below it, SIGKILL what is left after ``grace_s``."""
    try:
        root = psutil.Process(pid)
        procs = [*root.children(recursive=True), root]
    except _GONE:
        return
    for signal_them, pause in ((psutil.Process.terminate, grace_s), (psutil.Process.kill, 0.0)):
        for p in _running(procs):
            with contextlib.suppress(*_GONE):
                signal_them(p)
        deadline = time.monotonic() + pause
        while _running(procs) and time.monotonic() < deadline:
            time.sleep(0.1)


def watch_process_tree(
    cmd: Sequence[str], cwd: Path, interval_s: float = 0.02, forbid: Callable[[str], bool] | None = None
) -> dict[str, Any]:
    """Run ``cmd``, sampling its process tree every ``interval_s``; report what ran below it and how long.

    A VM boot lasts minutes, so the sampling cannot miss one. When a process ``forbid`` matches appears (a bake
    starting, because the inputs changed under us), the whole tree is stopped at once and ``stopped`` says why.
    """
    seen: dict[int, str] = {}
    stopped = None
    started = time.monotonic()
    proc = subprocess.Popen(list(cmd), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out_chunks: list[str] = []
    reader = threading.Thread(target=lambda: out_chunks.append(proc.stdout.read() if proc.stdout else ""))
    reader.start()
    scans = 0
    while proc.poll() is None:
        seen.update(tree(proc.pid))
        scans += 1
        if forbid is not None and any(forbid(n) for n in seen.values()):
            stopped = f"stopped: {', '.join(sorted({n for n in seen.values() if forbid(n)}))} started"
            stop_tree(proc.pid)
            break
        time.sleep(interval_s)
    proc.wait()
    elapsed = time.monotonic() - started
    reader.join()
    names = sorted(set(seen.values()))
    return {
        "seconds": round(elapsed, 2),
        "exit_code": proc.returncode,
        "output": "".join(out_chunks)[-2000:],
        "process_names": names,
        "scans": scans,
        "qemu_seen": any(is_qemu(n) for n in names),
        "packer_seen": "packer" in names,
        "stopped": stopped,
    }
