"""`inv validate`: check an environment's settings and run every linter that applies, each reported by name."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from render.outputs import PACKER_VARS, USER_DATA, render_all, write_outputs
from render.settings import Settings

_SKIP_DIRS = {".git", ".venv", "build", "__pycache__", ".pytest_cache", ".ruff_cache", "node_modules"}


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    skipped: bool = False


def _files(root: Path, dirs: tuple[str, ...]) -> Iterator[Path]:
    for d in dirs:
        base = root / d
        if base.is_file():
            yield base
            continue
        if not base.is_dir():
            continue
        for p in sorted(base.rglob("*")):
            if p.is_file() and not (_SKIP_DIRS & set(p.relative_to(root).parts)):
                yield p


def _shebang(path: Path) -> str:
    try:
        with path.open("rb") as fh:
            first = fh.readline(200)
    except OSError:
        return ""
    return first.decode("utf-8", "replace").strip() if first.startswith(b"#!") else ""


def shell_scripts(root: Path) -> list[Path]:
    """Shell scripts by extension or shebang, wherever the project keeps them."""
    found = []
    for p in _files(root, ("image", "packer", "infra", "tests", ".ci", "render")):
        bang = _shebang(p)
        if p.suffix == ".sh" or (bang and ("bash" in bang or bang.endswith("/sh") or " sh" in bang)):
            found.append(p)
    return found


def php_files(root: Path) -> list[Path]:
    return [p for p in _files(root, ("image", "tests")) if p.suffix == ".php" or "php" in _shebang(p)]


def _run(cmd: list[str], cwd: Path) -> tuple[bool, str]:
    if shutil.which(cmd[0]) is None:
        return False, f"{cmd[0]} is not installed (run `bash .ci/setup`)"
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    out = (proc.stdout + proc.stderr).strip()
    return proc.returncode == 0, out


def _tool(name: str, root: Path) -> str:
    venv = root / ".venv" / "bin" / name
    return str(venv) if venv.exists() else name


CHECKOV = Path(".venv") / "tools" / "checkov" / "bin" / "checkov"


def _checkov(root: Path, stacks: list[Path]) -> Check:
    """checkov on the stack templates: no failed check; skips only where the template justifies them."""
    tool = root / CHECKOV
    if not tool.exists():
        return Check("checkov", False, f"{CHECKOV} is not installed (run `bash .ci/setup`)")
    cmd = [str(tool), "--framework", "cloudformation", "--compact", "--quiet", "--skip-download", "--output", "json"]
    for stack in stacks:
        cmd += ["--file", str(stack)]
    # --skip-download and BC_SKIP_MAPPING keep checkov offline (it would fetch guidelines from its vendor).
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env={**os.environ, "BC_SKIP_MAPPING": "TRUE"})
    try:
        reports = json.loads(proc.stdout or "[]")
    except json.JSONDecodeError:
        return Check("checkov", False, (proc.stdout + proc.stderr).strip()[-2000:] or f"exit {proc.returncode}")
    reports = reports if isinstance(reports, list) else [reports]
    failed, passed, skipped = [], 0, 0
    for report in reports:
        summary = report.get("summary", {})
        passed += summary.get("passed", 0)
        skipped += summary.get("skipped", 0)
        if summary.get("parsing_errors"):
            failed.append(f"checkov could not parse {summary['parsing_errors']} template(s)")
        for chk in report.get("results", {}).get("failed_checks", []):
            failed.append(f"{chk['check_id']} {chk['resource']}: {chk['check_name']} ({chk['file_path']})")
    if failed or proc.returncode not in (0, 1):
        return Check("checkov", False, "\n".join(failed) or (proc.stderr.strip()[-2000:] or f"exit {proc.returncode}"))
    return Check("checkov", True, f"{passed} checks passed, {skipped} skipped with a reason in the template")


def run_checks(
    root: Path, settings: Settings, packer_validate: Callable[[Path, Path], tuple[bool, str]] | None = None
) -> list[Check]:
    """Run every applicable check; nothing is written outside a temporary directory."""
    checks = [Check("settings", True, f"environment {settings.name!r} ({settings.builder}) is valid")]
    with tempfile.TemporaryDirectory(prefix="ncimage-validate-") as tmp:
        out = Path(tmp)
        write_outputs(out, render_all(root, settings))
        checks.append(Check("render", True, f"rendered {len(list(out.iterdir()))} files"))

        ok, text = _run(["cloud-init", "schema", "-c", str(out / USER_DATA)], root)
        checks.append(Check("cloud-init schema (user data)", ok, text.splitlines()[-1] if text else ""))

        scripts = shell_scripts(root)
        if scripts:
            ok, text = _run(["shellcheck", "--severity=style", *map(str, scripts)], root)
            checks.append(Check("shellcheck", ok, text or f"{len(scripts)} scripts clean"))
        else:
            checks.append(Check("shellcheck", True, "no shell scripts yet", skipped=True))

        php = php_files(root)
        failures = []
        for f in php:
            ok, text = _run(["php", "-l", str(f)], root)
            if not ok:
                failures.append(text)
        checks.append(Check("php -l", not failures, "\n".join(failures) or f"{len(php)} files clean", skipped=not php))

        ok, text = _run([_tool("ruff", root), "check", "--quiet", "--output-format=concise", "."], root)
        checks.append(Check("ruff", ok, text or "clean"))

        hcl = sorted((root / "packer").glob("*.pkr.hcl")) if (root / "packer").is_dir() else []
        if hcl:
            ok, text = _run(["packer", "fmt", "-check", "-diff", "packer"], root)
            checks.append(Check("packer fmt -check", ok, text or "formatted"))
            if packer_validate is not None:
                ok, text = packer_validate(root, out / PACKER_VARS)
            else:
                ok, text = _run(["packer", "validate", f"-var-file={out / PACKER_VARS}", "packer"], root)
            checks.append(Check("packer validate", ok, text))
        else:
            checks.append(Check("packer fmt/validate", True, "no packer template yet", skipped=True))

        stacks = sorted((root / "infra" / "stack").glob("*.y*ml")) if (root / "infra" / "stack").is_dir() else []
        if stacks:
            ok, text = _run([_tool("cfn-lint", root), *map(str, stacks)], root)
            checks.append(Check("cfn-lint", ok, text or f"{len(stacks)} templates clean"))
            checks.append(_checkov(root, stacks))
        else:
            checks.append(Check("cfn-lint", True, "no stack template yet", skipped=True))
    return checks
