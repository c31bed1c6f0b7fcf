"""The refresh's progress as the operator sees it: a live bar on a terminal, one line per change elsewhere."""

from __future__ import annotations

import io
import re

from rich.console import Console

from infra.rollout.report import ProgressView, Reporter

VIEWS = [
    ProgressView("Pending", 0, None),
    ProgressView("InProgress", 0, 4, "Waiting for 2 instance(s) to warm up"),
    ProgressView("InProgress", 50, 2, "Checkpoint 50% reached: waiting 300 seconds", checkpoint=50),
    ProgressView("InProgress", 50, 2, "Checkpoint 50% reached: waiting 300 seconds", checkpoint=50),
    ProgressView("Successful", 100, 0),
]


def shown(terminal: bool, views: list[ProgressView]) -> str:
    out = io.StringIO()
    reporter = Reporter(Console(file=out, width=120, force_terminal=terminal, color_system=None))
    for view in views:
        reporter.progress(view)
    reporter.end_progress()
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())  # the cursor movements of the live display


def test_a_terminal_gets_a_bar_with_percent_instances_left_checkpoint_and_reason():
    text = shown(True, VIEWS[:3])
    assert "━" in text, "a bar"
    last = [ln for ln in text.splitlines() if ln.strip()][-1]
    assert last.startswith("InProgress") and "50%" in last
    assert "2 left - checkpoint 50% - Checkpoint 50% reached: waiting 300 seconds" in last


def test_a_rollback_shows_no_instances_left():
    text = shown(True, [ProgressView("RollbackInProgress", 50, 2, "rolling back")])
    assert "left" not in text and "RollbackInProgress" in text and "rolling back" in text


def test_a_log_gets_one_line_per_change_and_no_bar():
    text = shown(False, VIEWS)
    assert text.splitlines() == [
        "  [  0%] Pending",
        "  [  0%] InProgress - 4 instance(s) left - Waiting for 2 instance(s) to warm up",
        "  [ 50%] InProgress - 2 instance(s) left - at checkpoint 50% - Checkpoint 50% reached: waiting 300 seconds",
        "  [100%] Successful - 0 instance(s) left",
    ]
