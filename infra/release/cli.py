"""``python -m infra.release PATH [--unpack-to DIR] [--all]``: verify a Nextcloud release and say so.

Prints a table of the signature scopes, the missing files, what refuses the release (at most LIST_LIMIT lines and
a count), then ``verdict: <verified|verified_with_missing|refused> - <detail>``. Exit 0 when verified (missing
files listed), 1 when refused, 2 when the path is not a release at all.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from infra.release import REFUSED, BadInput, ReleaseReport, UnsafeArchive, verify_release
from infra.release.signature import ScopeResult
from infra.verdict import Verdict

LIST_LIMIT = 50


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m infra.release", description=__doc__.splitlines()[0])
    parser.add_argument("path", help="a release archive (.tar.bz2, .tar.gz, .zip) or its unpacked tree")
    parser.add_argument("--unpack-to", type=Path, metavar="DIR",
                        help="for an archive: a new or empty folder to unpack into and keep (default: a temporary "
                             "folder, removed afterwards)")
    parser.add_argument("--all", action="store_true", help="one table row per app, also for apps that match")
    return parser


def _row(scope: ScopeResult) -> list[str]:
    status = "bad signature" if scope.bad_signature else "refused" if scope.refused else \
        "missing files" if scope.missing else "ok"
    return [scope.name, scope.signer or "-", str(scope.signed), str(scope.checked), str(len(scope.missing)),
            str(len(scope.extra)), str(len(scope.invalid)), str(len(scope.unsafe)), status]


def scope_table(report: ReleaseReport, show_all: bool = False):
    """A rich Table: core, every app with a finding (every app with ``show_all``), the matching apps summed."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(f"Nextcloud {report.version} - {report.tree}"))
    for column in ("scope", "signer", "signed", "checked", "missing", "extra", "invalid", "unsafe", "status"):
        table.add_column(column, justify="left" if column in ("scope", "signer", "status") else "right")
    quiet = []
    for scope in report.scopes:
        if show_all or scope.name == "core" or scope.refused or scope.missing:
            table.add_row(*(escape(cell) for cell in _row(scope)))
        else:
            quiet.append(scope)
    if quiet:
        table.add_row(f"{len(quiet)} other apps", ", ".join(sorted({s.signer for s in quiet})),
                      str(sum(s.signed for s in quiet)), str(sum(s.checked for s in quiet)),
                      "0", "0", "0", "0", "ok")
    return table


def _limited(lines: list[str]) -> list[str]:
    shown = [f"  {line}" for line in lines[:LIST_LIMIT]]
    if len(lines) > LIST_LIMIT:
        shown.append(f"  ... and {len(lines) - LIST_LIMIT} more")
    return shown


def release_verdict(report: ReleaseReport) -> Verdict:
    """The report's verdict word, a one-line detail and the exit code (1 for refused)."""
    if report.verdict == REFUSED:
        count = len(report.problems)
        return Verdict(REFUSED, f"Nextcloud {report.version}: {count} problem{'s' * (count != 1)} (listed above)", 1)
    missing = len(report.missing_files)
    checked = sum(s.checked for s in report.scopes)
    detail = f"; {missing} signed file{'s' * (missing != 1)} missing (listed above)" if missing else ""
    return Verdict(report.verdict, f"Nextcloud {report.version}: {checked} files in {len(report.scopes)} "
                                   f"signature scopes match{detail}")


def check(path: Path, unpack_to: Path | None = None, show_all: bool = False, console=None) -> Verdict:
    """Verify ``path``, print the table and the lists, return the verdict (bad input: exit 2)."""
    from rich.console import Console

    console = console or Console(highlight=False, width=None if sys.stdout.isatty() else 120)
    try:
        report = verify_release(path, unpack_to=unpack_to)
    except BadInput as exc:
        return Verdict("refused", str(exc), 2)
    except OSError as exc:
        return Verdict("refused", f"{path}: cannot be read ({exc})", 2)
    except UnsafeArchive as exc:
        print(f"refused archive {path}: {exc}")
        return Verdict(REFUSED, f"unsafe archive: {exc}", 1)
    if report.archive:
        print(f"archive {report.archive}, unpacked in {report.unpack_seconds:.1f} s to "
              f"{unpack_to or 'a temporary folder (removed)'}")
    if report.scopes:
        console.print(scope_table(report, show_all))
    if report.uncovered:
        folders = ", ".join(f"{name}/ {count} files" for name, count in report.uncovered.items())
        console.print(f"not covered by any signature (as in Nextcloud; never verified): {folders}")
    if report.missing_files:
        console.print(f"missing ({len(report.missing_files)}): signed, absent from the tree:")
        print("\n".join(f"  {rel}" for rel in report.missing_files))
    if report.problems:
        console.print(f"refused because of ({len(report.problems)}):")
        print("\n".join(_limited(report.problems)))
    files = sum(s.checked for s in report.scopes)
    console.print(f"{files} files hashed in {report.seconds:.1f} s")
    return release_verdict(report)


def main(argv: Sequence[str] | None = None) -> int:
    """Verify the release named on the command line; the exit code is the verdict (0, 1) or bad input (2)."""
    args = _parser().parse_args(argv)
    verdict = check(args.path, args.unpack_to, args.all)
    if verdict.exit_code == 2:
        print(f"error: {verdict.detail}", file=sys.stderr)
        return 2
    print(verdict.line())
    return verdict.exit_code
