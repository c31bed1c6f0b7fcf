"""Verifying a Nextcloud release (an archive or an unpacked tree) against Nextcloud's code signatures before any of
its code runs, as Nextcloud's integrity checker would, pinned to Nextcloud's code signing root.

- ``signature``: one scope's ``signature.json`` (certificate chain to the pinned root, revocation, RSA-PSS) and its
  files (missing, extra, invalid, unsafe);
- ``tree``: the scopes of a tree (core and every app), the version read from version.php as text, the verdict;
- ``archive``: unpacking an official release archive without trusting it;
- ``cli``: ``python -m infra.release PATH``, a table and a ``verdict:`` line (exit 0 verified, 1 refused, 2 bad
  input).

Verdicts: ``verified`` (every signed file present and matching), ``verified_with_missing`` (only absent files;
every present one matches), ``refused`` (an invalid hash, an extra, unsigned or unsafe file, a bad signature or
certificate, or a root.crt other than the pinned one).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from infra.release.archive import is_archive, unpack_release
from infra.release.errors import BadInput, UnsafeArchive
from infra.release.tree import REFUSED, VERIFIED, VERIFIED_WITH_MISSING, ReleaseReport, verify_tree

__all__ = ["REFUSED", "VERIFIED", "VERIFIED_WITH_MISSING", "BadInput", "ReleaseReport", "UnsafeArchive",
           "verify_release"]


def verify_release(path: Path | str, *, unpack_to: Path | None = None,
                   pins: frozenset[str] | None = None) -> ReleaseReport:
    """Verify the release at ``path``: an archive, a server root (holding version.php) or its parent.

    An archive is unpacked into ``unpack_to`` (a new or empty folder; the verified tree is then
    ``report.tree``, to be used as it is, by nobody changed in between) or, without it, into a temporary folder
    removed afterwards. Raises BadInput for a path that is not a release at all and UnsafeArchive for an
    archive holding entries no release has; a release that fails verification is a report whose verdict is
    ``refused``.
    """
    path = Path(path)
    if path.is_file() and is_archive(path):
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="nextcloud-release-") as scratch:
            tree = unpack_release(path, unpack_to if unpack_to is not None else Path(scratch) / "unpacked")
            unpacked = time.monotonic() - started
            report = verify_tree(tree, pins=pins)
        report.archive, report.unpack_seconds = path, unpacked
        return report
    if path.is_file():
        raise BadInput(f"{path}: not a release archive (expected a name ending in "
                          ".tar.bz2, .tar.gz, .tgz or .zip) nor a release folder")
    return verify_tree(path, pins=pins)
