"""A Nextcloud release tree: where its signature scopes are, which version it claims, and the verdict over all of
them. Nothing of the tree is executed: ``version.php`` and ``core/shipped.json`` are read as text."""

from __future__ import annotations

import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from infra.release import signature
from infra.release.errors import BadInput
from infra.release.signature import CORE_EXCLUDED_FOLDERS, ScopeResult, TrustError

VERSION_STRING = re.compile(r"""^\s*\$OC_VersionString\s*=\s*'([0-9A-Za-z.+ -]+)'\s*;""", re.MULTILINE)
CORE_SIGNATURE = "core/signature.json"
APP_SIGNATURE = "appinfo/signature.json"
# Folders of the server root outside core's scope that a release ships: no signature covers them, as in Nextcloud
# (counted and shown, never verified). The other folders outside core's scope (data, assets, lost+found,
# _oc_upgrade) are made by a running instance: a release with files there is refused.
UNCOVERED = ("themes", "config", "updater")
NOT_IN_A_RELEASE = tuple(f for f in CORE_EXCLUDED_FOLDERS if f not in UNCOVERED and f != "apps")

VERIFIED = "verified"
VERIFIED_WITH_MISSING = "verified_with_missing"
REFUSED = "refused"


@dataclass
class ReleaseReport:
    """The outcome of verifying one release tree."""

    tree: Path
    version: str
    scopes: list[ScopeResult] = field(default_factory=list)
    unsigned_apps: list[str] = field(default_factory=list)
    missing_apps: list[str] = field(default_factory=list)
    stray_files: list[str] = field(default_factory=list)  # in the server root's apps/ but in no app folder
    instance_files: list[str] = field(default_factory=list)  # in data/, assets/, ... which no release has
    uncovered: dict[str, int] = field(default_factory=dict)
    trust_error: str | None = None
    seconds: float = 0.0
    archive: Path | None = None
    unpack_seconds: float = 0.0

    @property
    def missing_files(self) -> list[str]:
        """Every signed file that is absent, relative to the tree (``core/...`` for core, ``apps/<id>/...``)."""
        found = [_tree_path(scope, rel) for scope in self.scopes for rel in scope.missing]
        return sorted(found + [f"apps/{app}/" for app in self.missing_apps])

    @property
    def problems(self) -> list[str]:
        """Everything that refuses the tree, one line each, relative to the tree."""
        lines = [f"untrusted root: {self.trust_error}"] if self.trust_error else []
        for scope in self.scopes:
            if scope.bad_signature:
                lines.append(f"bad signature ({scope.name}): {scope.bad_signature}")
            lines += [f"INVALID {_tree_path(scope, f.path)}" for f in scope.invalid]
            lines += [f"EXTRA {_tree_path(scope, rel)}" for rel in scope.extra]
            lines += [f"UNSAFE {_tree_path(scope, rel)}" for rel in scope.unsafe]
        lines += [f"UNSIGNED app apps/{app}/ (no {APP_SIGNATURE})" for app in self.unsigned_apps]
        lines += [f"EXTRA {rel} (in apps/ but in no app)" for rel in self.stray_files]
        lines += [f"EXTRA {rel} (a release has no {rel.split('/')[0]}/ folder)" for rel in self.instance_files]
        return lines

    @property
    def verdict(self) -> str:
        if self.problems or not self.scopes:
            return REFUSED
        return VERIFIED_WITH_MISSING if self.missing_files else VERIFIED


def _tree_path(scope: ScopeResult, rel: str) -> str:
    return rel if scope.name == "core" else f"apps/{scope.name}/{rel}"


def find_tree(path: Path) -> Path:
    """The server root: ``path`` itself when it holds version.php, else ``path/nextcloud``."""
    if not path.exists():
        raise BadInput(f"{path}: no such file or directory")
    if not path.is_dir():
        raise BadInput(f"{path}: not a directory (a release archive ends in .tar.bz2, .tar.gz or .zip)")
    for candidate in (path, path / "nextcloud"):
        if (candidate / "version.php").is_file() and (candidate / CORE_SIGNATURE).is_file():
            return candidate
    raise BadInput(f"{path}: not a Nextcloud release tree (no version.php and {CORE_SIGNATURE} in it or in "
                      f"{path / 'nextcloud'}); pass the unpacked release's nextcloud/ folder or the archive")


def read_version(tree: Path) -> str:
    """``$OC_VersionString`` from version.php, read as text (the release is not trusted yet: never executed)."""
    text = (tree / "version.php").read_text(encoding="utf-8", errors="replace")
    match = VERSION_STRING.search(text)
    if not match:
        raise BadInput(f"{tree / 'version.php'}: no $OC_VersionString = '<version>'; line")
    return match.group(1)


def shipped_apps(tree: Path) -> list[str]:
    """The apps core/shipped.json says the release ships (that file is itself in core's signature)."""
    try:
        data = json.loads((tree / "core/shipped.json").read_text(encoding="utf-8"))
        apps = data["shippedApps"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [a for a in apps if isinstance(a, str)] if isinstance(apps, list) else []


def app_folders(tree: Path) -> tuple[list[str], list[str]]:
    """(app folders, other entries) directly under apps/; symbolic links count as other entries."""
    folders: list[str] = []
    others: list[str] = []
    apps = tree / "apps"
    if not apps.is_dir():
        return folders, others
    with os.scandir(apps) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.is_dir(follow_symlinks=False):
                folders.append(entry.name)
            else:
                others.append(f"apps/{entry.name}")
    return folders, others


def _count_files(folder: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(folder)) if folder.is_dir() else 0


def _files_below(tree: Path, folder: str) -> list[str]:
    """Every entry but folders below tree/folder (links and special files included), relative to the tree."""
    found = []
    for base, dirs, files in os.walk(tree / folder):
        links = [d for d in dirs if os.path.islink(os.path.join(base, d))]
        found += [Path(base, name).relative_to(tree).as_posix() for name in files + links]
    return sorted(found)


def verify_tree(path: Path, *, pins: frozenset[str] | None = None, workers: int | None = None) -> ReleaseReport:
    """Verify every scope of the release tree at ``path`` (the server root or its parent)."""
    started = time.monotonic()
    tree = find_tree(path)
    report = ReleaseReport(tree=tree, version=read_version(tree))
    try:
        trust = signature.load_trust(tree, pins)
    except TrustError as exc:
        report.trust_error = str(exc)
        report.seconds = time.monotonic() - started
        return report
    folders, report.stray_files = app_folders(tree)
    signed_apps = [app for app in folders if (tree / "apps" / app / APP_SIGNATURE).is_file()]
    report.unsigned_apps = [app for app in folders if app not in signed_apps]
    report.missing_apps = sorted(set(shipped_apps(tree)) - set(folders))
    report.uncovered = {name: _count_files(tree / name) for name in UNCOVERED if (tree / name).exists()}
    report.instance_files = [rel for folder in NOT_IN_A_RELEASE for rel in _files_below(tree, folder)]
    # hashlib releases the GIL on large buffers: threads overlap reading and hashing.
    with ThreadPoolExecutor(max_workers=workers or min(8, (os.cpu_count() or 1) * 2)) as pool:
        report.scopes.append(signature.verify_scope(
            "core", tree, tree / CORE_SIGNATURE, trust,
            excluded_folders=CORE_EXCLUDED_FOLDERS, unchecked_prefixes=("updater/",), htaccess_rule=True,
            executor=pool))
        for app in signed_apps:
            folder = tree / "apps" / app
            report.scopes.append(signature.verify_scope(app, folder, folder / APP_SIGNATURE, trust, executor=pool))
    tail = htaccess_tail(tree)
    if tail:
        report.scopes[0].unsafe.append(f".htaccess ({tail} bytes after the marker line, which no signature covers)")
    report.seconds = time.monotonic() - started
    return report


def htaccess_tail(tree: Path) -> int:
    """Bytes after the root .htaccess's marker line. Nextcloud hashes only what precedes the marker, because
    its installer writes below it; a release has nothing there (34.0.1's has no marker at all), so anything
    there is unsigned Apache configuration (``php_value auto_prepend_file`` would run any file) and is refused."""
    try:
        parts = (tree / ".htaccess").read_bytes().split(signature.HTACCESS_MARKER)
    except OSError:
        return 0
    return len(parts[1]) if len(parts) == 2 and parts[1].strip() else 0
