"""The stand-in Nextcloud base archive (test fixture) built on the host and cached.

Without a registry the local twin cannot pull ``nextcloud:*-apache``; the bake instead
``docker import``s a Debian root filesystem laid out like it (image/standin/README.md).
The archive is cached under ``build/cache/standin/<key>/standin.tar.gz`` where ``key``
hashes every file under image/standin/ (build script, hook, overlay, fake code tree).

Usage::

    from infra.localtwin.standin import ensure_standin_archive
    archive = ensure_standin_archive()   # Path to the .tar.gz
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
STANDIN_DIR = REPO_ROOT / "image" / "standin"
DEFAULT_CACHE = REPO_ROOT / "build" / "cache" / "standin"
BUILD_SCRIPT = STANDIN_DIR / "build-standin-archive.sh"
ARCHIVE_NAME = "standin.tar.gz"

Log = Callable[[str], None]


def standin_key(standin_dir: Path = STANDIN_DIR) -> str:
    """sha256 over the relative path, mode and content of every file under image/standin/."""
    if not (standin_dir / "nextcloud" / "version.php").is_file():
        raise RuntimeError(
            f"stand-in: {standin_dir / 'nextcloud' / 'version.php'} is missing; the fake Nextcloud "
            "tree (image/standin/nextcloud/) must exist before the stand-in archive can be built"
        )
    digest = hashlib.sha256()
    for path in sorted(p for p in standin_dir.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        rel = path.relative_to(standin_dir).as_posix()
        digest.update(f"{rel}\0{path.stat().st_mode & 0o777:o}\0".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def cached_standin_archive(cache: Path = DEFAULT_CACHE) -> Path | None:
    """The cached archive for the current inputs, or None when it has not been built."""
    archive = cache / standin_key() / ARCHIVE_NAME
    return archive if archive.is_file() else None


def build_standin_archive(cache: Path = DEFAULT_CACHE, log: Log = print) -> Path:
    """Build the archive for the current inputs (unconditionally) and return its path."""
    key = standin_key()
    entry = cache / key
    tmp = cache / f".tmp-{key}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    started = time.monotonic()
    try:
        proc = subprocess.run(
            [str(BUILD_SCRIPT), str(tmp / ARCHIVE_NAME)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        if proc.returncode != 0:
            tail = "\n".join(proc.stdout.splitlines()[-30:])
            raise RuntimeError(f"stand-in: {BUILD_SCRIPT.name} failed (exit {proc.returncode}):\n{tail}")
        archive = tmp / ARCHIVE_NAME
        info = {
            "key": key,
            "sha256": hashlib.sha256(archive.read_bytes()).hexdigest(),
            "size_bytes": archive.stat().st_size,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_seconds": round(time.monotonic() - started, 1),
            "note": "TEST FIXTURE: stand-in for nextcloud:*-apache, carries no Nextcloud code",
        }
        (tmp / "standin.json").write_text(json.dumps(info, indent=2) + "\n")
        shutil.rmtree(entry, ignore_errors=True)
        tmp.rename(entry)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return entry / ARCHIVE_NAME


def ensure_standin_archive(cache: Path = DEFAULT_CACHE, log: Log = print) -> Path:
    """Return the cached stand-in archive, building it first only when it is missing."""
    archive = cached_standin_archive(cache)
    if archive is not None:
        log(f"stand-in archive: reusing {archive}")
        return archive
    log("stand-in archive: building with mmdebstrap (about 2 min) ...")
    started = time.monotonic()
    archive = build_standin_archive(cache, log)
    size_mb = archive.stat().st_size / 1e6
    log(f"stand-in archive: built {archive} ({size_mb:.0f} MB) in {time.monotonic() - started:.0f}s")
    return archive


def main() -> int:
    """``python -m infra.localtwin.standin``: build (or reuse) the archive and print its path."""
    try:
        print(ensure_standin_archive(log=lambda m: print(m, file=sys.stderr)))
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
