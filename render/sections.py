"""What every settings section shares, in one place for every module that defines sections.

Subclass :class:`Section` and a new section gets the rules every value must follow: unknown keys refused, no type
coercion, and no control character (line break, tab, NUL, escape) in any string of any field, list item or table
key. Use :func:`matching` for a pattern with a human message, and raise :class:`FieldProblems` from a model
validator for rules across fields, so each problem still names its own key.
"""

from __future__ import annotations

import re
from typing import Any, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationInfo, field_validator

from render.rules import control_character


def matching(pattern: str, requirement: str) -> AfterValidator:
    """A string rule with a human message: ``Annotated[str, matching(r"[a-z]+", "must be lowercase letters")]``."""
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(requirement)
        return value

    return AfterValidator(check)


class FieldProblems(ValueError):
    """Raised by a model validator for rules across fields: (field relative to that model, problem and fix) pairs."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{f}: {m}" for f, m in problems))


def _control_character_problem(value: Any) -> str | None:
    """The first control character anywhere in a value (strings, list items, table keys and values), described
    by where it is; iterative, so a value of any depth is safe."""
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            found = control_character(item)
            if found:
                return f"{where}contains {found}" if where else f"contains {found}"
        elif isinstance(item, list | tuple):
            stack.extend((child, f"{where}item {i} ") for i, child in reversed(list(enumerate(item, start=1))))
        elif isinstance(item, dict):
            for key, child in reversed(list(item.items())):
                stack.append((child, f"{where}the value of {str(key)[:40]!r} "))
                stack.append((key, f"{where}the key {str(key)[:40]!r} "))
    return None


class Section(BaseModel):
    """Base of every settings section: unknown keys refused, no coercion, and no control character in any value."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_control_characters(cls, value: Any, info: ValidationInfo) -> Any:
        annotation = cls.model_fields[info.field_name].annotation if info.field_name else None
        if any(isinstance(a, type) and issubclass(a, BaseModel) for a in (annotation, *get_args(annotation))):
            return value  # a section (or an optional one) checks its own fields, so each problem names its own key
        if isinstance(value, dict):
            # A table of free keys (tags): a bad value is named by its own dotted key, tags.owner, not by the table.
            problems = [(dotted_key(key), f"{problem}; {_NO_CONTROL}") for key, child in value.items()
                        if isinstance(key, str) and not control_character(key)
                        and (problem := _control_character_problem(child))]
            if problems:
                raise FieldProblems(problems[:1])
        problem = _control_character_problem(value)
        if problem:
            raise ValueError(f"{problem}; {_NO_CONTROL}")
        return value


_NO_CONTROL = ("a setting never holds control characters (line breaks, tabs, NUL, escape codes): remove it (a "
               "trailing newline often comes from `$(cat FILE)` or a multi-line string)")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def dotted_key(key: str) -> str:
    """A table key as it is written after the table's name in a dotted path: owner, or "cost center" quoted."""
    return key if _BARE_KEY.fullmatch(key) else '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'
