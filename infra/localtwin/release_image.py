"""A base image carrying a REAL Nextcloud release, for the local twin and the lane, built from Nextcloud's signed
release archive or an unpacked release tree (the official distribution format, the same code the official
``nextcloud:*-apache`` image unpacks into ``/usr/src/nextcloud``).

Nothing of the release runs before its code signature is verified (``infra.release``: every ``signature.json``
against the certificate chain in ``resources/codesigning/``, whose root the project pins by fingerprint). A tree that
fails is refused with the files that differ; files missing from the tree are reported and named in the image's
record, never silently ignored.

The image has the stand-in's two layers, with the fixture's code swapped for the release:

1. the stand-in's root filesystem (``build-standin-rootfs.sh``: Debian 12, Apache 2.4 with mod_php, PHP 8.2 and the
   extensions Nextcloud needs), laid out like ``php:*-apache`` plus nextcloud/docker's additions;
2. ``/usr/src/nextcloud``: the verified release tree as its tarball unpacks (``nobody:nogroup``, directories 0755,
   files 0644, ``occ`` 0755), ``data/`` and ``custom_apps/`` created by root, as the official image does.

Which majors this serves is decided by PHP: Debian 12 ships PHP 8.2, which Nextcloud 30 to 34 accept
(``lib/versioncheck.php`` of each release: the build refuses a release whose minimum PHP is newer).

Cached under ``build/cache/release-image/<key>/``; the key hashes the release's signature files, the list of files
it lacks, and the stand-in's root filesystem inputs, so a different release or base builds a new image (a new digest,
a new twin fingerprint).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from infra.localtwin import standin

DEFAULT_CACHE = standin.REPO_ROOT / "build" / "cache" / "release-image"
FORMAT = 1
REPOSITORY = "nextcloud-release"
DEBIAN_PHP = (8, 2)

Log = Callable[[str], None]


class ReleaseImageError(RuntimeError):
    """The release cannot become a base image; the message says why and what to do."""


@dataclass(frozen=True)
class ReleaseTree:
    """A verified release tree: its root (the folder holding version.php), version and what it lacks."""

    root: Path
    version: str  # 34.0.1
    missing: tuple[str, ...]


_VERSION_STRING = re.compile(r"""\$OC_VersionString\s*=\s*'(\d+\.\d+\.\d+)'""")
_PHP_MIN = re.compile(r"PHP_VERSION_ID\s*<\s*(\d)0(\d)00\b")


def read_version(root: Path) -> str:
    """``$OC_VersionString`` of ``root/version.php``, read as text (release code never runs on the host)."""
    try:
        m = _VERSION_STRING.search((root / "version.php").read_text(errors="replace"))
    except OSError as exc:
        raise ReleaseImageError(f"{root}: no readable version.php ({exc.strerror}): not a Nextcloud release tree") \
            from None
    if not m:
        raise ReleaseImageError(f"{root / 'version.php'} holds no $OC_VersionString: not a Nextcloud release tree")
    return m.group(1)


def php_minimum(root: Path) -> tuple[int, int] | None:
    """The minimum PHP the release's ``lib/versioncheck.php`` demands (``PHP_VERSION_ID < 80200`` → (8, 2))."""
    try:
        m = _PHP_MIN.search((root / "lib" / "versioncheck.php").read_text(errors="replace"))
    except OSError:
        return None
    return (int(m.group(1)), int(m.group(2))) if m else None


def verified_tree(path: Path, workdir: Path, log: Log = print) -> ReleaseTree:
    """Verify the release at ``path`` (an archive or a tree) and return its tree; refuse anything that fails."""
    from infra.release import REFUSED, BadInput, UnsafeArchive, verify_release

    unpack_to = None
    if path.is_file():  # an archive: unpacked into a fresh folder, then verified there and used from there
        unpack_to = workdir / f"{path.name}-{time.strftime('%Y%m%d%H%M%S')}"
        shutil.rmtree(unpack_to, ignore_errors=True)
    try:
        report = verify_release(path, unpack_to=unpack_to)
    except (BadInput, UnsafeArchive) as exc:
        raise ReleaseImageError(f"nextcloud.release {path}: {exc}") from None
    missing = report.missing_files
    log(f"release: Nextcloud {report.version} at {report.tree}: {report.verdict} ({len(report.scopes)} signed scopes, "
        f"{len(missing)} files missing, {report.seconds:.1f}s)")
    for rel in missing:
        log(f"release: MISSING {rel}")
    if report.verdict == REFUSED:
        problems = report.problems
        shown = "\n  ".join(problems[:50]) + (f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else "")
        raise ReleaseImageError(f"nextcloud.release {path}: the release failed its code-signature check; nothing of it "
                                f"was run. Use an unmodified release from Nextcloud. What differs:\n  {shown}")
    root = Path(report.tree)
    version = read_version(root)
    minimum = php_minimum(root)
    if minimum is not None and minimum > DEBIAN_PHP:
        raise ReleaseImageError(f"Nextcloud {version} needs PHP {minimum[0]}.{minimum[1]} or newer; the twin's base "
                                f"is Debian 12 with PHP {DEBIAN_PHP[0]}.{DEBIAN_PHP[1]}")
    return ReleaseTree(root, version, tuple(missing))


def release_key(tree: ReleaseTree) -> str:
    """Identity of the image: the signature files (the verified hashes of every present file), what is missing,
    and the root filesystem's inputs."""
    digest = hashlib.sha256(f"release-image format {FORMAT} {tree.version}\n".encode())
    for sig in sorted(tree.root.glob("core/signature.json")) + sorted(tree.root.glob("apps/*/appinfo/signature.json")):
        digest.update(sig.relative_to(tree.root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(sig.read_bytes()).digest())
    digest.update("\n".join(sorted(tree.missing)).encode())
    digest.update(standin.rootfs_key().encode())
    return digest.hexdigest()


def _tree_entries(tree: ReleaseTree) -> Iterator[tuple[tarfile.TarInfo, object]]:
    """``/usr/src/nextcloud`` as the release tarball unpacks, then data/ and custom_apps/ made by root."""
    root_owner = (0, 0, "root", "root")

    def info(name: str, kind: bytes, mode: int, size: int = 0, owner: tuple = standin.CODE_OWNER) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(name)
        ti.type, ti.mode, ti.size, ti.mtime = kind, mode, size, standin.CODE_MTIME
        ti.uid, ti.gid, ti.uname, ti.gname = owner
        return ti

    yield info("usr", tarfile.DIRTYPE, 0o755, owner=root_owner), None
    yield info("usr/src", tarfile.DIRTYPE, 0o755, owner=root_owner), None
    yield info("usr/src/nextcloud", tarfile.DIRTYPE, 0o755), None
    # As the official image unpacks it: without updater/ (it removes it; nodes never update themselves).
    paths = sorted(p for p in tree.root.rglob("*")
                   if p.relative_to(tree.root).parts[0] not in ("data", "custom_apps", "updater"))
    for path in paths:
        rel = path.relative_to(tree.root).as_posix()
        name = f"usr/src/nextcloud/{rel}"
        if path.is_symlink():
            ti = info(name, tarfile.SYMTYPE, 0o777)
            ti.linkname = str(path.readlink())
            yield ti, None
        elif path.is_dir():
            yield info(name, tarfile.DIRTYPE, 0o755), None
        elif path.is_file():
            yield info(name, tarfile.REGTYPE, 0o755 if rel == "occ" else 0o644, path.stat().st_size), path
    for extra in ("data", "custom_apps"):
        yield info(f"usr/src/nextcloud/{extra}", tarfile.DIRTYPE, 0o755, owner=root_owner), None


def image_config(tree: ReleaseTree, layers: list[dict[str, object]]) -> dict[str, object]:
    """The stand-in's image configuration (the official image's start-up contract) for this release."""
    config = standin.image_config(tree.version, layers)
    config["config"]["Labels"] = {  # type: ignore[index]
        "org.opencontainers.image.description":
            f"Nextcloud {tree.version} from a signature-verified release on Debian 12 PHP 8.2 + Apache (local twin)",
        "org.nextcloud.release.missing-files": str(len(tree.missing)),
    }
    config["history"][1]["created_by"] = (  # type: ignore[index]
        f"Nextcloud {tree.version} release tree, signature verified ({len(tree.missing)} files missing)")
    return config


def cached_release_image(tree: ReleaseTree, cache: Path = DEFAULT_CACHE) -> standin.StandinImage | None:
    entry = cache / release_key(tree)
    try:
        info = json.loads((entry / "release-image.json").read_text())
    except (OSError, ValueError):
        return None
    if (entry / "oci" / "index.json").is_file():
        return standin.StandinImage(entry / "oci", REPOSITORY, info["tag"], info["digest"], tree.version)
    return None


def ensure_release_image(path: Path, cache: Path = DEFAULT_CACHE, log: Log = print) -> standin.StandinImage:
    """Verify the release at ``path``, then return its base image (built once, then read from the cache)."""
    cache.mkdir(parents=True, exist_ok=True)
    tree = verified_tree(path, cache / "unpacked", log)
    found = cached_release_image(tree, cache)
    if found is not None:
        log(f"release image: reusing {found.repository}:{found.tag}@{found.digest[:19]}")
        return found
    tag = f"{tree.version}-apache"
    entry = cache / release_key(tree)
    tmp = cache / f".tmp-{entry.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    blobs = tmp / "oci" / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    started = time.monotonic()
    log(f"release image: building Nextcloud {tree.version} on the Debian 12 PHP 8.2 root filesystem ...")
    try:
        layers = [standin.rootfs_layer(blobs, log), standin.write_layer(_tree_entries(tree), blobs)]
        digest = standin.write_oci_layout(tmp / "oci", tag, image_config(tree, layers), layers)
        (tmp / "release-image.json").write_text(json.dumps({
            "repository": REPOSITORY, "tag": tag, "version": tree.version, "digest": digest, "layers": layers,
            "release": str(path), "missing_files": list(tree.missing),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_seconds": round(time.monotonic() - started, 1),
        }, indent=2) + "\n")
        shutil.rmtree(entry, ignore_errors=True)
        tmp.rename(entry)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"release image: built {REPOSITORY}:{tag}@{digest[:19]} in {time.monotonic() - started:.0f}s")
    return standin.StandinImage(entry / "oci", REPOSITORY, tag, digest, tree.version)
