"""The build record: where a bake's files live, the commit it was baked from, and ``build/<env>/manifest.json``.

A bake (``inv build-ami``: infra/localtwin/build.py for the twin, infra/aws/bake.py for AWS) writes one record of
what it made, from Packer's manifest entry of that run (``packer_run_uuid == last_run_uuid``, infra/packer.py):
the artifact (a qcow2, or an AMI per region), the fingerprint, the git sha, the base image, the inputs. Everything
downstream (test-ami, the drills, deploy-stack, rollout, upgrade, the CI summary) reads it here, so there is one
place that knows its path and what an unreadable one means.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from infra.errors import PipelineError

REPO_ROOT = Path(__file__).resolve().parents[1]
MANIFEST = "manifest.json"
PACKER_MANIFEST = "packer-manifest.json"
# A change under these makes a bake's commit "-dirty": they are what the image is made of.
IMAGE_SOURCES = ("packer", "image", "infra")


class RecordError(PipelineError):
    """The build record exists but cannot be read; ``reason`` says why (each reader adds what to do)."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def build_dir(root: Path, env: str, build_root: Path | None = None) -> Path:
    """``build/<env>/`` (under ``build_root`` instead of ``root/build`` when given): the rendered files and the
    record of the last bake."""
    return (build_root or root / "build") / env


def manifest_path(root: Path, env: str, build_root: Path | None = None) -> Path:
    """``build/<env>/manifest.json``: the record of the environment's last bake."""
    return build_dir(root, env, build_root) / MANIFEST


def read(path: Path) -> dict[str, Any] | None:
    """The record at ``path``; None when there is none; RecordError when it is not a JSON object."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RecordError(path, f"unreadable ({exc})") from None
    try:
        record = json.loads(text)
    except ValueError as exc:
        raise RecordError(path, f"not JSON ({exc})") from None
    if not isinstance(record, dict):
        raise RecordError(path, f"not a JSON object but {type(record).__name__}")
    return record


def write(build_directory: Path, record: dict[str, Any], *, sort_keys: bool = False) -> Path:
    """Write ``record`` as ``<build_directory>/manifest.json`` in one step (a reader never sees half of it)."""
    build_directory.mkdir(parents=True, exist_ok=True)
    path = build_directory / MANIFEST
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=sort_keys) + "\n")
    tmp.replace(path)
    return path


def git_sha(root: Path = REPO_ROOT) -> str:
    """The commit ``root`` is at, with ``-dirty`` when the image's sources (packer/, image/, infra/) have changes;
    ``unknown`` outside a git checkout."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False).stdout.strip()

    sha = git("rev-parse", "HEAD") or "unknown"
    return f"{sha}-dirty" if git("status", "--porcelain", "--", *IMAGE_SOURCES) else sha
