"""The scheduled rebuild's job summary (GitHub's `$GITHUB_STEP_SUMMARY`, Markdown), from what the steps left.

`.ci/rebuild` keeps, per environment under ``build/ci/<env>/``: ``updates.json`` (check-updates --json),
``<step>.log`` and ``<step>.rc`` for check, bake, test and rollout. The bake's manifest
(``build/<env>/manifest.json``) says which AMI, built from what. Every step's verdict is the ``verdict:`` line it
printed last; a step that did not run says so. Nothing here calls AWS: the summary must render even when the
credentials or a step failed.

    python -m infra.ci_summary --env staging --dir build/ci/staging --manifest build/staging/manifest.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from infra import build_record

CHECK_RESULTS = {"0": "up to date", "10": "bake due", "11": "settings update available"}  # infra/aws/updates.py
STEPS = (("check", "check for updates"), ("bake", "bake"), ("test", "canary test"), ("rollout", "rollout"))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        return build_record.read(path)
    except build_record.RecordError:
        return None


def last_verdict(log: str) -> str | None:
    """The detail of the last ``verdict: <word> - <detail>`` line a task printed (progress bars may precede it
    on the same line after a carriage return)."""
    found = None
    for line in log.splitlines():
        line = line.rsplit("\r", 1)[-1].strip()
        if line.startswith("verdict: "):
            found = line.removeprefix("verdict: ")
    return found


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ") or "-"


def step_rows(directory: Path) -> list[tuple[str, str, str]]:
    """(step, result, verdict) for each step of the rebuild, in order."""
    rows = []
    for name, title in STEPS:
        rc_file = directory / f"{name}.rc"
        if not rc_file.exists():
            rows.append((title, "not run", "-"))
            continue
        rc = rc_file.read_text().strip()
        log = (directory / f"{name}.log").read_text(encoding="utf-8", errors="replace") \
            if (directory / f"{name}.log").exists() else ""
        verdict = last_verdict(log)
        if name == "check":
            result = CHECK_RESULTS.get(rc, f"error (exit {rc})")
        else:
            result = "ok" if rc == "0" else f"failed (exit {rc})"
        rows.append((title, result, verdict or "no verdict printed: see the step's log"))
    return rows


def render_summary(environment: str, directory: Path, manifest_path: Path) -> str:
    updates = _read_json(directory / "updates.json")
    rows = step_rows(directory)
    baked = (directory / "bake.rc").exists()
    manifest = _read_record(manifest_path) if baked else None
    lines = [f"## Rebuild of {environment}", ""]

    check_rc = (directory / "check.rc").read_text().strip() if (directory / "check.rc").exists() else None
    if check_rc in ("0", "11") and not baked:
        headline = "**Up to date**: nothing new to bake; the group keeps running its AMI"
        if updates and updates.get("group_image"):
            headline += f" `{updates['group_image']}`"
        lines += [headline + ".", ""]
    failed = [title for title, result, _ in rows if result.startswith(("failed", "error"))]
    if failed:
        lines += [f"**Failed**: {', '.join(failed)}.", ""]

    lines += ["| step | result | verdict |", "| --- | --- | --- |"]
    lines += [f"| {_cell(t)} | {_cell(r)} | {_cell(v)} |" for t, r, v in rows]
    lines.append("")

    if manifest:
        lines += ["### Image", "", "| | |", "| --- | --- |"]
        amis = manifest.get("amis") or {manifest.get("region", "?"): manifest.get("artifact_id")}
        for key, value in (
            ("AMI", ", ".join(f"{region}: `{ami}`" for region, ami in amis.items())),
            ("reused", "yes (same fingerprint, nothing baked)" if manifest.get("reused") else "no (baked now)"),
            ("Nextcloud", f"{manifest.get('nextcloud_version', '?')} (`{manifest.get('nextcloud_image', '?')}`)"),
            ("source AMI", f"`{manifest.get('base_image', '?')}` {manifest.get('base_image_name', '')}"),
            ("Docker", manifest.get("docker_version")),
            ("fingerprint", f"`{manifest.get('fingerprint', '?')}`"),
            ("commit", f"`{manifest.get('git_sha', '?')}`"),
            ("built at", manifest.get("built_at")),
        ):
            lines.append(f"| {key} | {_cell(value)} |")
        lines.append("")

    if updates and updates.get("checks"):
        lines += ["### Updates", "", "| check | current | available | update | taken by a bake |",
                  "| --- | --- | --- | --- | --- |"]
        for c in updates["checks"]:
            taken = "yes" if c.get("bake") else "no: change the settings"
            lines.append(f"| {_cell(c.get('name'))} | {_cell(c.get('current'))} | {_cell(c.get('available'))} | "
                         f"{'yes' if c.get('update') else 'no'} | {taken} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render the scheduled rebuild's job summary (Markdown).")
    parser.add_argument("--env", required=True, help="the environment the rebuild ran for")
    parser.add_argument("--dir", required=True, type=Path, help="where .ci/rebuild kept the steps' output")
    parser.add_argument("--manifest", required=True, type=Path, help="the bake's build/<env>/manifest.json")
    args = parser.parse_args(argv)
    sys.stdout.write(render_summary(args.env, args.dir, args.manifest))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
