"""docs/operations.md shows the tool's real output: recorded again here, it must match but for the ids.

record_operator_guide.py runs the operator's `inv` commands against the emulator (and the doubles in front of
it); what AWS hands out differs from run to run (AMI, instance, template and snapshot ids, refresh ids, ARN
parts, the wall-clock times of a refresh), so each is replaced by its kind and the order it first appears in, on
both sides: the same id twice stays the same placeholder twice, and everything else must be identical.
"""

from __future__ import annotations

import difflib
import re
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from record_operator_guide import GUIDE, guide_copy  # noqa: E402

ID = re.compile(
    r"(?P<aws>\b(?:ami|lt|i|snap|sg|subnet|vpc)-[0-9a-f]{8,17}\b)"
    r"|(?P<uuid>\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b)"
    r"|(?P<time>\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\b)"
    r"|(?P<hex>\b[0-9a-f]{8,16}\b)"
)
BUILD_TIMES = "2026-01-01T"  # the fixture's bakes carry fixed build times: those must match exactly


def normalised(text: str) -> str:
    seen: dict[str, str] = {}

    def name(match: re.Match) -> str:
        token = match.group(0)
        kind = match.lastgroup or "?"
        if kind == "time" and token.startswith(BUILD_TIMES):
            return token
        if kind == "time":
            return "<time>"  # a refresh's start and end: the wall clock of the run
        if kind == "aws":
            kind = token.split("-", 1)[0]
        if token not in seen:
            seen[token] = f"<{kind}{sum(v.startswith(f'<{kind}') for v in seen.values()) + 1}>"
        return seen[token]

    return ID.sub(name, text)


@pytest.mark.slow
def test_the_operations_guide_shows_what_the_commands_print_now():
    proc = subprocess.run([sys.executable, str(HERE / "record_operator_guide.py")], capture_output=True, text=True,
                          timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    recorded, shown = normalised(proc.stdout.strip("\n") + "\n"), normalised(guide_copy(GUIDE.read_text()))
    diff = "\n".join(difflib.unified_diff(shown.splitlines(), recorded.splitlines(), "docs/operations.md",
                                          "recorded now", lineterm=""))
    assert recorded == shown, (
        "docs/operations.md's recorded runs are not what the commands print now; re-record them with "
        "`.venv/bin/python tests/aws/rollout/record_operator_guide.py --update-docs`:\n" + diff)


def test_ids_are_replaced_by_kind_and_order_and_nothing_else_changes():
    text = ("ami-0c7ee54edee90e4bc -> ami-09803db8ff6c88a72 (built 2026-01-01T06:00:00Z); ami-0c7ee54edee90e4bc; "
            "refresh 9a4cd515-f164-4a76-8532-8f21b325806d started 2026-12-02T00:04:22Z; listener/app/x/5609078b")
    assert normalised(text) == ("<ami1> -> <ami2> (built 2026-01-01T06:00:00Z); <ami1>; refresh <uuid1> started "
                                "<time>; listener/app/x/<hex1>")
    assert normalised("verdict: rolled out") != normalised("verdict: rolled back")
