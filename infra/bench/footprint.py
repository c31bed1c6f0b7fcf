"""The artifact's footprint, read offline: used bytes of its ext4 root filesystem and its Docker store's layers."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

from infra.bench import BenchError, now_iso
from infra.bench.inputs import Inputs

LAYERDB = "/var/lib/docker/image/overlay2/layerdb/sha256"


def parse_dumpe2fs(text: str) -> dict[str, int]:
    """Block count, free blocks and block size from ``dumpe2fs -h`` output, plus the bytes they imply.

    ``used_bytes`` = (block count - free blocks) x block size: everything allocated, file data and the
    filesystem's own metadata (journal, inode tables), so it is a little above what ``df`` shows as Used.
    """
    fields = {}
    for label, key in (("Block count", "block_count"), ("Free blocks", "free_blocks"), ("Block size", "block_size")):
        m = re.search(rf"^{label}:\s+(\d+)\s*$", text, re.MULTILINE)
        if not m:
            raise BenchError(f"dumpe2fs output has no '{label}:' line; is this an ext2/3/4 filesystem?")
        fields[key] = int(m.group(1))
    if fields["free_blocks"] > fields["block_count"]:
        raise BenchError("dumpe2fs output reports more free blocks than blocks")
    fields["size_bytes"] = fields["block_count"] * fields["block_size"]
    fields["used_bytes"] = (fields["block_count"] - fields["free_blocks"]) * fields["block_size"]
    return fields


def _debugfs(raw: Path, request: str) -> str:
    return subprocess.run(["debugfs", "-R", request, str(raw)], capture_output=True, text=True, check=False).stdout


def docker_layers_bytes(raw: Path) -> int | None:
    """Sum of the ``size`` files of every layer in the image's Docker store, read offline with debugfs.

    The store holds the base image and the derived image built on it, which shares the base's layers: the sum
    is the derived image's size as ``docker image inspect`` reports it. None when there is no Docker store.
    """
    listing = _debugfs(raw, f"ls -p {LAYERDB}")
    names = [f[4] for line in listing.splitlines() if len(f := line.strip("/").split("/")) > 4 and len(f[4]) == 64]
    sizes = [_debugfs(raw, f"cat {LAYERDB}/{n}/size").strip() for n in names]
    return sum(int(x) for x in sizes if x.isdigit()) if names else None


def filesystem_usage(qcow2: Path, workdir: Path) -> dict[str, int]:
    """Used bytes of the ext4 filesystem in ``qcow2`` (whole-disk ext4, no partition table), read offline; plus
    ``docker_layers_bytes`` (see :func:`docker_layers_bytes`) when the image has a Docker store."""
    raw = workdir / "footprint.raw"
    try:
        subprocess.run(["qemu-img", "convert", "-O", "raw", str(qcow2), str(raw)], check=True, capture_output=True)
        out = subprocess.run(["dumpe2fs", "-h", str(raw)], check=True, capture_output=True, text=True).stdout
        fs = parse_dumpe2fs(out)
        layers = docker_layers_bytes(raw)
        if layers is not None:
            fs["docker_layers_bytes"] = layers
    finally:
        raw.unlink(missing_ok=True)
    return fs


def measure_footprint(inputs: Inputs, workdir: Path, image_bytes: int | None, image_note: str) -> dict[str, Any]:
    """The artifact's used bytes, file size and the derived Nextcloud image's size (``image_bytes`` from a baked
    boot, else the Docker store's layers read offline)."""
    disk = inputs.artifact.disk
    fs = filesystem_usage(disk, workdir)
    st = disk.stat()
    if image_bytes is None and fs.get("docker_layers_bytes"):
        image_bytes = fs["docker_layers_bytes"]
        image_note = "sum of the Docker store's layer sizes, read offline from the artifact"
    return {
        "image_used_bytes": fs["used_bytes"],
        "fs_size_bytes": fs["size_bytes"],
        "dumpe2fs": fs,
        "artifact_file_bytes": st.st_size,
        "artifact_allocated_bytes": st.st_blocks * 512,
        "nextcloud_image_bytes": image_bytes,
        "nextcloud_image_note": image_note,
        "how": "qemu-img convert -O raw (sparse temp file) + dumpe2fs -h: (block count - free blocks) x block "
               "size, i.e. file data plus filesystem metadata (journal, inode tables)",
        "measured_at": now_iso(),
    }
