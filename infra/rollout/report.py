"""What the operator sees: plans as tables, notes and warnings, and the progress of a refresh.

On a terminal the progress is a live bar (percent complete, instances left, status, checkpoint pause, reason);
anywhere else (CI logs, the recorded runs in docs/operations.md) one line per change, so a log shows the whole story.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn
from rich.table import Table


@dataclass(frozen=True)
class ProgressView:
    """One look at a running refresh."""

    status: str
    percent: int
    instances_left: int | None
    reason: str = ""
    checkpoint: int | None = None  # the checkpoint the refresh is pausing at, if it is

    def line(self) -> str:
        parts = [f"[{self.percent:3d}%] {self.status}"]
        # During a rollback InstancesToUpdate counts what the refresh never replaced: not work left.
        if self.instances_left is not None and not self.status.startswith("Rollback"):
            parts.append(f"{self.instances_left} instance(s) left")
        if self.checkpoint is not None:
            parts.append(f"at checkpoint {self.checkpoint}%")
        if self.reason:
            parts.append(self.reason)
        return " - ".join(parts)


class Reporter:
    """Console output for the rollout tasks (tests pass their own Console to capture it)."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(highlight=False)
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._last: str | None = None

    def info(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def warn(self, text: str) -> None:
        self.console.print(f"warning: {text}", style="yellow", markup=False, highlight=False, soft_wrap=True)

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        table = Table(title=title, title_justify="left", show_header=any(columns))
        for col in columns:
            table.add_column(col, overflow="fold")
        for row in rows:
            table.add_row(*row)
        self.console.print(table)

    def progress(self, view: ProgressView) -> None:
        if not self.console.is_terminal:
            line = view.line()
            if line != self._last:
                self.info(f"  {line}")
                self._last = line
            return
        if self._progress is None:
            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TextColumn("{task.fields[note]}"),
                console=self.console, transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(view.status, total=100, note="")
        note = " - ".join(p for p in (
            f"{view.instances_left} left" if view.instances_left is not None and not view.status.startswith(
                "Rollback") else "",
            f"checkpoint {view.checkpoint}%" if view.checkpoint is not None else "",
            view.reason,
        ) if p)
        assert self._task is not None
        self._progress.update(self._task, completed=view.percent, description=view.status, note=note)

    def end_progress(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        self._last = None
