"""Refusals and exit codes shared by rollout, rollback, upgrade, prune-amis and status.

Exit codes (the verdict line says the same in words):
  0  success: rolled out, rolled back (when asked to), upgraded, pruned, up to date, planned (dry run)
  1  failed: the refresh failed, the rollback failed, the upgrade failed
  2  refused: bad input or an unsafe situation, nothing was changed
  4  rolled back: a rollout that AWS rolled back (an alarm, failing health checks); the old version serves
  5  cancelled: somebody cancelled the refresh
  6  still running: the wait timed out; the refresh goes on in AWS (`inv status` follows it)
  130 interrupted (Ctrl-C); what runs in AWS goes on, and the message says how to follow or resume it
"""

from __future__ import annotations

from infra.aws.session import AwsError

OK = 0
FAILED = 1
REFUSED = 2
ROLLED_BACK = 4
CANCELLED = 5
STILL_RUNNING = 6
INTERRUPTED = 130


class Refused(AwsError):
    """The operation cannot go ahead; nothing was changed. The message says why and what to do."""

    def __init__(self, message: str):
        super().__init__(message, exit_code=REFUSED)
