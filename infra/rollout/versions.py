"""Nextcloud versions as the rollout needs them: compare, and Nextcloud's one-major-at-a-time upgrade rule.

Nextcloud upgrades one major version at a time (occ refuses "Updates between multiple major versions"): from 27 to
29 goes through 28, and its admin manual recommends the newest release of each major on the way.
"""

from __future__ import annotations

import re

_VERSION = re.compile(r"^\d+(\.\d+){1,3}$")


def parse(version: str) -> tuple[int, ...]:
    """"29.0.7" -> (29, 0, 7); ValueError for anything else."""
    if not _VERSION.match(version or ""):
        raise ValueError(f"{version!r} is not a Nextcloud version such as 29.0.7")
    return tuple(int(p) for p in version.split("."))


def compare(a: str, b: str) -> int:
    """-1, 0 or 1 as version a is older than, the same as, or newer than b."""
    pa, pb = parse(a), parse(b)
    width = max(len(pa), len(pb))
    pa, pb = pa + (0,) * (width - len(pa)), pb + (0,) * (width - len(pb))
    return (pa > pb) - (pa < pb)


def major(version: str) -> int:
    return parse(version)[0]


def upgrade_path_problem(current: str, target: str) -> str | None:
    """Why ``current`` cannot be upgraded to ``target`` in one step (None when it can)."""
    cmp = compare(target, current)
    if cmp == 0:
        return f"the image carries Nextcloud {target}, which the cluster already runs: nothing to upgrade (inv rollout)"
    if cmp < 0:
        return (f"Nextcloud {target} is older than the cluster's {current}: Nextcloud cannot downgrade a database; "
                "restore a database snapshot taken before the upgrade instead")
    jump = major(target) - major(current)
    if jump > 1:
        path = " -> ".join([current, *(f"{m}.x (its newest release)" for m in range(major(current) + 1, major(target))),
                            target])
        return (f"Nextcloud {current} -> {target} skips {jump - 1} major version(s); Nextcloud upgrades one major at a "
                f"time. Take the path {path}: bake and `inv upgrade` an image of each major in turn")
    return None
