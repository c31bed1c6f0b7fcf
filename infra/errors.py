"""One base for every error the pipeline raises on purpose: the message says what is wrong and the fix, the class
(or the instance) carries the exit code, and the command line catches this one base in one place (tasks/cli.py),
printing the message as the verdict line and exiting with the code.

    PipelineError   exit 1  something failed (a bake, a boot, a registry, a tool)
    Refusal         exit 2  bad input or an unsafe situation; nothing was changed or run

A subclass that replaced a built-in base keeps it as a second base (``class BuildError(PipelineError,
RuntimeError)``), so code that catches the built-in one still does.
"""

from __future__ import annotations

FAILED = 1
REFUSED = 2
INTERRUPTED = 130  # Ctrl-C: 128 + SIGINT, as a shell reports it


class PipelineError(Exception):
    """An operation cannot go on; ``str(error)`` says why and what to do, ``exit_code`` how the command ends."""

    exit_code: int = FAILED

    def __init__(self, *args: object, exit_code: int | None = None):
        super().__init__(*args)
        if exit_code is not None:
            self.exit_code = exit_code

    @property
    def word(self) -> str:
        """The verdict's first word: ``refused`` for exit 2 (nothing was changed), else ``failed``."""
        return "refused" if self.exit_code == REFUSED else "failed"


class Refusal(PipelineError):
    """Bad input or an unsafe situation, found before anything was changed."""

    exit_code = REFUSED
