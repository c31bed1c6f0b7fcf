"""Where a baked boot spends its time: the product's milestones, read from a booted twin instance.

The benchmark says how long a baked instance takes to become ready; this says what it waited on. One SSH command
after the boot reads systemd's own timestamps for the units on the way to readiness and the container's journal
lines that mark its phases, all on the guest's monotonic clock (0 = the kernel started, about a second after QEMU
did with the twin's direct kernel boot). Nothing here is timed from the host, so SSH latency does not enter.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Iterable
from typing import Any

# read(): ssh attempts while the guest's sshd restarts, and the pause between them.
SSH_ATTEMPTS = 4
SSH_RETRY_S = 3.0

# The units on the way from power-on to /readyz, in the order they normally finish.
UNITS = (
    "cloud-init-local.service",
    "containerd.service",
    "docker.service",
    "cloud-init.service",
    "ssh.service",
    "nextcloud-secrets.service",
    "nextcloud.service",
    "cloud-config.service",
    "cloud-final.service",
)
# Container output (journalctl -u nextcloud) that marks a phase: (milestone, text the line contains). The first
# matching line wins. The texts are the entrypoint's, Apache's and the cluster init's own log lines.
MARKERS = (
    ("entrypoint_started", "nextcloud-cluster-entrypoint: loaded runtime settings"),
    ("apache_started", "resuming normal operations"),
    ("cluster_ready", "ready: cluster "),
)
_PROPS = ("Id", "InactiveExitTimestampMonotonic", "ActiveEnterTimestampMonotonic")


def command() -> str:
    """The one shell command (run with sudo) whose output ``parse`` reads."""
    units = " ".join(shlex.quote(u) for u in UNITS)
    return (
        f"systemctl show --property={','.join(_PROPS)} {units}; echo '--journal--'; "
        "journalctl --no-pager -b -o json -u nextcloud.service --output-fields=MESSAGE"
    )


def _seconds(usec: str) -> float | None:
    try:
        value = int(usec)
    except ValueError:
        return None
    return round(value / 1e6, 1) if value > 0 else None


def parse_units(text: str) -> dict[str, dict[str, float | None]]:
    """``systemctl show`` blocks -> {unit: {"started_s": ..., "active_s": ...}} (None: did not happen)."""
    units: dict[str, dict[str, float | None]] = {}
    for block in text.strip().split("\n\n"):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if "Id" not in props:
            continue
        units[props["Id"]] = {
            "started_s": _seconds(props.get("InactiveExitTimestampMonotonic", "0")),
            "active_s": _seconds(props.get("ActiveEnterTimestampMonotonic", "0")),
        }
    return units


def parse_journal(lines: Iterable[str]) -> dict[str, float | None]:
    """``journalctl -o json`` lines -> {milestone: seconds} for each of MARKERS (None: no such line)."""
    found: dict[str, float | None] = {name: None for name, _ in MARKERS}
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        message = entry.get("MESSAGE")
        if not isinstance(message, str):
            continue  # journald stores non-UTF-8 messages as byte arrays: none of ours
        for name, text in MARKERS:
            if found[name] is None and text in message:
                found[name] = _seconds(str(entry.get("__MONOTONIC_TIMESTAMP", "0")))
    return found


def parse(output: str) -> dict[str, Any]:
    units_text, _, journal_text = output.partition("--journal--")
    return {"units": parse_units(units_text), "container": parse_journal(journal_text.splitlines())}


def summary(chain: dict[str, Any]) -> str:
    """One line for the log: each milestone's second, in the order they happened."""
    points: list[tuple[float, str]] = []
    for unit, t in chain.get("units", {}).items():
        name = unit.removesuffix(".service")
        if t.get("active_s") is not None:
            points.append((t["active_s"], f"{name} up"))
    for name, t in chain.get("container", {}).items():
        if t is not None:
            points.append((t, name.replace("_", " ")))
    return ", ".join(f"{what} {t:.1f}" for t, what in sorted(points))


def read(inst: Any) -> dict[str, Any]:
    """Read the chain from a booted instance (an infra.localtwin Instance) over SSH."""
    # Read right after /readyz answered, which is often while cloud-init's config stage restarts sshd
    # (set_passwords): a refused or reset connection (ssh exits 255) is tried again a few times.
    for attempt in range(SSH_ATTEMPTS):
        proc = inst.ssh(f"sudo sh -c {shlex.quote(command())}", timeout=120)
        if proc.returncode != 255 or attempt == SSH_ATTEMPTS - 1:
            break
        time.sleep(SSH_RETRY_S)
    if proc.returncode != 0:
        return {"error": f"reading the boot chain failed ({proc.returncode}): {proc.stderr.strip()[:200]}"}
    return parse(proc.stdout)
