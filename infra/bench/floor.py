"""The floor the bare boot measures: the base disk with the image's product-independent boot settings.

What the baked image changes about booting that has nothing to do with Nextcloud. Without them the bare boot
generates RSA 3072 and DSA host keys the baked image no longer does (~10 s under TCG) and the ratio flatters the
product; with them the ratio measures only what the product adds. Paths are in image/rootfs.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from infra.bench import BenchError, Log, log_to_stderr
from infra.bench.boots import BootTarget

FLOOR_FILES = (
    "etc/cloud/cloud.cfg.d/50-nextcloud-image.cfg",
    "etc/systemd/journald.conf.d/50-nextcloud-image.conf",
    "etc/systemd/system/cloud-config.service.d/50-nextcloud-image.conf",
    "etc/systemd/system/cloud-final.service.d/50-nextcloud-image.conf",
)
FLOOR_CACHE = Path("build") / "cache" / "floor"


def _debugfs_write(disk: Path, requests: Sequence[str]) -> None:
    proc = subprocess.run(["debugfs", "-w", "-f", "-", str(disk)], input="\n".join(requests) + "\n",
                          capture_output=True, text=True, check=False)
    # mkdir of a directory that exists is expected (parents are created on the way); anything else is an error.
    bad = [line for line in proc.stderr.splitlines() if line.strip() and "already exists" not in line
           and not line.startswith("debugfs ")]
    if proc.returncode != 0 or bad:
        raise BenchError(f"debugfs could not write the floor settings into {disk}: {'; '.join(bad)[:400]}")


def floor_disk(root: Path, base: BootTarget, log: Log = log_to_stderr) -> BootTarget:
    """The base disk with FLOOR_FILES written in (a private copy, cached by content; the base disk is untouched)."""
    sources = [root / "image" / "rootfs" / rel for rel in FLOOR_FILES]
    key_src = [str(base.disk.resolve()), str(base.disk.stat().st_size), str(base.disk.stat().st_mtime_ns)]
    key_src += [f"{rel}\0{p.read_text()}" for rel, p in zip(FLOOR_FILES, sources, strict=True)]
    key = hashlib.sha256("\n".join(key_src).encode()).hexdigest()
    entry = root / FLOOR_CACHE / key
    disk = entry / "floor.raw"
    if not disk.is_file():
        log(f"bench: writing the floor disk (base disk + {', '.join(FLOOR_FILES)}) ...")
        entry.mkdir(parents=True, exist_ok=True)
        tmp = entry / f".floor-{os.getpid()}.raw"
        subprocess.run(["cp", "--sparse=always", str(base.disk), str(tmp)], check=True)
        requests = []
        for rel, src in zip(FLOOR_FILES, sources, strict=True):
            parts = rel.split("/")[:-1]
            requests += [f"mkdir /{'/'.join(parts[:i])}" for i in range(1, len(parts) + 1)]
            requests += [f"write {src} /{rel}", f"sif /{rel} mode 0100644", f"sif /{rel} uid 0", f"sif /{rel} gid 0"]
        _debugfs_write(tmp, requests)
        tmp.rename(disk)
    return BootTarget(disk, base.kernel, base.initrd)
