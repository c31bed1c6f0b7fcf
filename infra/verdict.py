"""The last line of every AWS operation: one word an operator (or a workflow) can branch on, and the detail.

    verdict: rolled back - the alarm nextcloud-prod-5xx went into ALARM at 40%; the group runs lt-0ab…:7 again

The exit code goes with it: 0 for the outcomes that are a success (built, reused, rolled out, up to date, …),
non-zero otherwise, so `inv … && next-step` does the right thing.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Verdict:
    word: str
    detail: str
    exit_code: int = 0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def line(self) -> str:
        return f"verdict: {self.word} - {self.detail}"
