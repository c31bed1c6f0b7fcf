"""Every `inv …` command the README, the runbook and the CI scripts show exists: its task names and every flag
they use are checked against the real tasks (the tasks package's collection), so the docs cannot drift from the tool."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / ".ci").glob("*")),
        *sorted((ROOT / ".github" / "workflows").glob("*.yml"))]
INVOKE_CORE = {"--list", "-l", "--help", "-h", "--version", "-V"}
# An `inv` mention ends at the end of an inline code span, a comment, a pipe or a shell operator.
MENTION = re.compile(r"(?:^|[\s`(])(?:\.venv/bin/)?inv\s+([^`#|;&>]+)")


def _collection():
    return importlib.import_module("tasks").ns


def _flags(task) -> set[str]:
    flags = set(INVOKE_CORE)
    for arg in task.get_arguments():
        for name in arg.names:
            flags.add(("--" if len(name) > 1 else "-") + name.replace("_", "-"))
        if arg.kind is bool and arg.default is True:  # invoke offers --no-<flag> for a True default
            flags |= {f"--no-{n.replace('_', '-')}" for n in arg.names if len(n) > 1}
    return flags


TASKS = {name: _flags(task) for name, task in _collection().tasks.items()}


def mentions() -> list[tuple[str, int, str]]:
    found = []
    for path in DOCS:
        if not path.is_file():
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for match in MENTION.finditer(line):
                found.append((f"{path.relative_to(ROOT)}:{number}", number, match[1].strip()))
    return found


def test_the_docs_mention_commands_at_all():
    assert len(mentions()) > 20


@pytest.mark.parametrize("where,_n,command", mentions(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_documented_command_is_a_real_task_with_real_flags(where, _n, command):
    tokens = [t.strip("[]") for t in command.split()]
    current = None
    for token in tokens:
        if not token:
            continue
        if token.startswith("-"):
            flag = token.split("=", 1)[0]
            if current is None:
                assert flag in INVOKE_CORE, f"{where}: flag {flag} before any task in `inv {command}`"
                continue
            assert flag in TASKS[current], (
                f"{where}: `inv {current}` has no flag {flag} (it has {', '.join(sorted(TASKS[current]))})"
            )
        elif re.fullmatch(r"[a-z][a-z0-9-]*", token) and current is None or token in TASKS:
            assert token in TASKS, f"{where}: `inv {token}` is no task (tasks: {', '.join(sorted(TASKS))})"
            current = token
        # anything else is a flag's value (E, prod, ami-…, 6h)
