"""What a run measures: the baked artifact of the environment, its build record, and the base disk it was baked
from (the source-AMI stand-in)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra import build_record
from infra.bench import BenchError
from infra.bench.boots import BootTarget


@dataclass(frozen=True)
class Inputs:
    root: Path
    settings: Any
    artifact: BootTarget
    artifact_record: dict[str, Any]
    base: BootTarget
    fingerprint: str

    @property
    def build_dir(self) -> Path:
        return build_record.build_dir(self.root, self.settings.name)

    def packer_vars(self) -> dict[str, Any]:
        """The rendered Packer variables of the environment (root volume size, the Nextcloud image, ...)."""
        return json.loads((self.build_dir / "packer-vars.json").read_text())

    def nextcloud_image(self) -> str:
        return str(self.packer_vars()["nextcloud_image"])


def load_inputs(root: Path, settings: Any) -> Inputs:
    """The artifact from build/<env>/manifest.json and the base disk it was baked from."""
    from infra.localtwin import base_disk
    from infra.localtwin.test_ami import TestAmiError, local_artifact, read_record

    manifest_path = build_record.manifest_path(root, settings.name)
    try:
        record = read_record(manifest_path)
        art = local_artifact(record, manifest_path, root)
    except TestAmiError as e:
        raise BenchError(str(e)) from None
    key = record.get("base_disk_key") or base_disk.base_disk_key()
    entry = base_disk.DEFAULT_CACHE / key
    base = BootTarget(entry / "disk.raw", entry / "vmlinuz", entry / "initrd.img")
    if not all(p.is_file() for p in (base.disk, base.kernel, base.initrd)):
        raise BenchError(
            f"the base disk the artifact was baked from ({entry}) is not in the cache: run "
            "`python -m infra.localtwin.base_disk` (or re-bake with `inv build-ami --force`)"
        )
    return Inputs(
        root=root, settings=settings, artifact=BootTarget(art.disk, art.kernel, art.initrd),
        artifact_record=record, base=base, fingerprint=str(record.get("fingerprint", "")),
    )
