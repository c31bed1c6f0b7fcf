"""The command-line layer every task goes through, so each task only parses its flags, calls one function and
prints.

- ``pipeline_task``: invoke's ``@task`` without automatic short flags, with the task's exit codes appended to its
  help, its numbers and durations parsed before it runs, and its end in ``finish``.
- ``finish``: the one verdict-and-exit-code path. A task returns a ``Verdict`` (or None: its output was the
  result); a ``PipelineError`` anywhere below (``Refusal``: exit 2) becomes the verdict ``refused``/``failed``
  with the error's exit code; Ctrl-C becomes ``interrupted`` (exit 130) with the task's own word on what is left.
  The verdict line goes to stdout, or to stderr when ``--json`` makes stdout a document.
- ``--yes`` means one thing everywhere: skip the confirmation question. Tasks that change something ask first on a
  terminal. Without a terminal and without --yes, rollout, rollback, upgrade and deploy-stack refuse (exit 2);
  sweep and prune-amis list or plan only (exit 0), which is their read-only use.
"""

from __future__ import annotations

import functools
import inspect
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from invoke import Context, Exit, task
from rich.console import Console
from rich.text import Text

from infra.errors import INTERRUPTED, PipelineError, Refusal
from infra.verdict import Verdict

ROOT = Path(__file__).resolve().parents[1]
# Defaults live here and only here; `invoke.yaml` or INVOKE_PIPELINE_* variables can override them.
DEFAULTS = {"pipeline": {"env": "local", "instances": 1, "bench_runs": 3}}

console = Console(stderr=False, highlight=False)
warnings_console = Console(stderr=True, highlight=False, soft_wrap=True)

ENV_HELP = "environment name: environments/<env>.toml (default: local, the QEMU twin that needs no AWS account)"
SET_HELP = "override one setting, e.g. --set database.port=5433 (repeatable; wins over NCIMAGE_* variables)"
DRY_RUN_HELP = "AWS: print what would be created, changed or deleted; make no call that changes anything"
YES_HELP = "skip the confirmation question (needed when stdin is not a terminal)"

# Exit codes every task shares; a task adds its own (``exit_codes=``) and they all appear in its --help.
COMMON_EXIT_CODES = {
    0: "done",
    1: "failed (the verdict line says what and where)",
    2: "refused: a bad flag or setting, or an unsafe situation; nothing was changed",
    INTERRUPTED: "interrupted by Ctrl-C",
}
AWS_EXIT_CODES = {70: "a dry run tried a call that changes something (a bug; nothing was sent)"}


def say(message: str) -> None:
    print(message, flush=True)  # plain: AWS messages hold brackets that rich would read as markup


def env_name(c: Context, env: str | None) -> str:
    return env or c.config.pipeline.env


def load(c: Context, env: str | None, sets: list[str] | None):
    """The environment's settings, or a refusal naming every bad key (nothing is written)."""
    from render.settings import SettingsError, load_settings

    try:
        loaded = load_settings(ROOT, env_name(c, env), sets=sets or [])
    except SettingsError as exc:
        raise Refusal(f"{exc}\nNothing was written.") from None
    for warning in loaded.warnings:  # e.g. the pinned Nextcloud is past its end of life: said, never fatal
        warnings_console.print(Text.assemble(("warning: ", "bold yellow"), warning))
    return loaded


def ask(question: str) -> bool:
    """The confirmation question on a terminal; without one, a refusal that says to pass --yes."""
    question = question.strip().removesuffix("[y/N]").rstrip()
    if not sys.stdin.isatty():
        raise Refusal(f"{question} not confirmed: stdin is not a terminal; pass --yes. Nothing was changed")
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def ask_on_terminal() -> Callable[[str], bool] | None:
    """``ask`` when there is a terminal to ask on, else None (the task then lists or plans only)."""
    return ask if sys.stdin.isatty() else None


# ---- typed flags ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Number:
    """A numeric flag: whole or not, within [low, high]; a bad value is a refusal naming the flag."""

    low: float
    high: float
    whole: bool = False

    def parse(self, flag: str, value: Any) -> float | int:
        number: float | None
        try:
            number = int(str(value)) if self.whole else float(str(value))
        except ValueError:
            number = None
        if number is None or math.isnan(number) or not self.low <= number <= self.high:
            kind = "a whole number" if self.whole else "a number"
            raise Refusal(f"{flag} {value!r}: must be {kind} from {self.low:g} to {self.high:g}; nothing was run")
        return number


_DURATION = re.compile(r"(?P<n>\d+(?:\.\d+)?)(?P<unit>[smhdw]?)")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@dataclass(frozen=True)
class Duration:
    """A duration flag: seconds (``1800``) or with a unit (``90s``, ``30m``, ``2h``, ``1d``, ``1w``), parsed to
    seconds within [low, high]; a bad value is a refusal naming the flag."""

    low: float
    high: float

    def parse(self, flag: str, value: Any) -> float:
        m = _DURATION.fullmatch(str(value).strip())
        seconds = float(m["n"]) * _SECONDS[m["unit"]] if m else None
        if seconds is None or not self.low <= seconds <= self.high:
            raise Refusal(f"{flag} {value!r}: must be a duration from {format_duration(self.low)} to "
                          f"{format_duration(self.high)}: seconds or a number with a unit, e.g. 90s, 30m, 2h, 1d; "
                          "nothing was run")
        return seconds


def format_duration(seconds: float) -> str:
    """Seconds in the largest unit that divides them: 21600 -> 6h, 5400 -> 90m, 0 -> 0s."""
    for unit in ("w", "d", "h", "m"):
        if seconds and seconds % _SECONDS[unit] == 0:
            return f"{seconds / _SECONDS[unit]:g}{unit}"
    return f"{seconds:g}s"


# ---- the one way a task ends ------------------------------------------------------------------------------------
def finish(verdict: Verdict | None, *, to_stderr: bool = False) -> None:
    """Print the verdict line and end with its exit code (non-zero: invoke's Exit, without a second message)."""
    if verdict is None:
        return
    print(verdict.line(), file=sys.stderr if to_stderr else sys.stdout, flush=True)
    if not verdict.ok:
        raise Exit(code=verdict.exit_code)


def _exit_codes_text(codes: dict[int, str]) -> str:
    return "Exit codes:\n" + "\n".join(f"  {code:>3}  {what}" for code, what in sorted(codes.items()))


def pipeline_task(
    *,
    help: dict[str, str],
    iterable: list[str] | None = None,
    types: dict[str, Number | Duration] | None = None,
    exit_codes: dict[int, str] | None = None,
    interrupted: str = "stopped by Ctrl-C",
) -> Callable[[Callable[..., Verdict | None]], Any]:
    """``@task`` for this project: no automatic short flags, typed ``types`` flags, exit codes in the help, and
    every end (verdict, PipelineError, Ctrl-C) through ``finish``."""
    types = types or {}

    def decorate(body: Callable[..., Verdict | None]) -> Any:
        signature = inspect.signature(body)

        @functools.wraps(body)
        def run(c: Context, *args: Any, **kwargs: Any) -> None:
            call = signature.bind(c, *args, **kwargs)
            call.apply_defaults()  # a default such as older_than="6h" is parsed like a value given on the line
            to_stderr = bool(call.arguments.get("json"))  # with --json stdout is one document: the verdict goes aside
            try:
                for name, kind in types.items():
                    if call.arguments.get(name) is not None:
                        call.arguments[name] = kind.parse("--" + name.replace("_", "-"), call.arguments[name])
                verdict = body(*call.args, **call.kwargs)
            except PipelineError as exc:
                verdict = Verdict(exc.word, str(exc), exc.exit_code)
            except KeyboardInterrupt:
                verdict = Verdict("interrupted", interrupted, INTERRUPTED)
            finish(verdict, to_stderr=to_stderr)

        codes = {**COMMON_EXIT_CODES, **(exit_codes or {})}
        run.__doc__ = f"{(body.__doc__ or '').rstrip()}\n\n{_exit_codes_text(codes)}\n"
        return task(auto_shortflags=False, help=help, iterable=iterable if iterable is not None else ["set_"])(run)

    return decorate

