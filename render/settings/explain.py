"""Pydantic's validation errors as one line each: the dotted field, where the value came from, the fix."""

from __future__ import annotations

import difflib
import reprlib
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from render.secret_refs import FORMS_HELP
from render.sections import FieldProblems
from render.settings.common import ENV_PREFIX
from render.settings.model import _model_for

_SHORT = reprlib.Repr()  # keyword arguments only from Python 3.12
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother, _SHORT.maxlist, _SHORT.maxdict = 3, 80, 80, 6, 6


def _shown(loc: tuple[Any, ...], value: Any) -> str:
    """A bad value as a message may show it: shortened, and never the value of a secret."""
    if loc and loc[0] == "secrets":
        return type(value).__name__
    return f"{type(value).__name__} {_SHORT.repr(value)}"


def _env_name_hint(origin: str | None) -> str:
    """For NCIMAGE_DATABASE_PORT: the double-underscore spelling of a variable whose key is unknown."""
    if not origin or not origin.startswith(ENV_PREFIX) or "__" in origin:
        return ""
    words = origin[len(ENV_PREFIX) :].split("_")
    for i in range(1, len(words)):
        section, key = "_".join(words[:i]).lower(), "_".join(words[i:]).lower()
        model = _model_for((section,))
        if model is not None and key in model.model_fields:
            return f" (NCIMAGE_ variables separate section and key with a double underscore: {ENV_PREFIX}" \
                   f"{'_'.join(words[:i])}__{'_'.join(words[i:])})"
    return " (NCIMAGE_ variables separate section and key with a double underscore: NCIMAGE_SECTION__KEY)"


def _quote_hint(loc: tuple[Any, ...], origin: str | None, value: Any) -> str:
    """A number, boolean or date where a string belongs (34.0, 123456789012): say how to write it as a string."""
    if isinstance(value, str | dict | list):
        return ""
    if loc and loc[0] == "secrets":
        return f"; write the reference as a quoted string: {FORMS_HELP}"
    if origin and origin.startswith((ENV_PREFIX, "--set")):
        return f"; the value was read as TOML: quote it to keep a string, e.g. {origin}='\"{value}\"'"
    if not loc or origin:
        return ""
    return f'; quote it to make it a string: "{value}"' if isinstance(loc[-1], int) else (
        f'; quote it to make it a string: {loc[-1]} = "{value}"'
    )


def _explain(exc: ValidationError, data: Mapping[str, Any], origins: Mapping[str, str]) -> list[str]:
    """Turn pydantic's errors into one line each: field, problem, fix."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        ctx_error = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_error, FieldProblems):
            prefix = "".join(f"{p}." for p in loc)
            lines.extend(f"{prefix}{f}: {m}" for f, m in ctx_error.problems)
            continue
        item = next((p for p in loc if isinstance(p, int)), None)
        dotted = ".".join(str(p) for p in loc if not isinstance(p, int)) or "(file)"
        origin = origins.get(dotted)
        if item is not None:
            dotted += f" (item {item + 1})"
        where = f" (from {origin})" if origin else ""
        kind = err["type"]
        if kind == "missing":
            parent = ".".join(str(p) for p in loc[:-1])
            section = f"under [{parent}]" if parent else "at the top of the file"
            lines.append(
                f"{dotted}: required field is missing; add `{loc[-1]} = …` {section} (see environments/example.toml)"
            )
        elif kind == "extra_forbidden":
            parent_model = _model_for(loc[:-1])
            known = sorted(parent_model.model_fields) if parent_model else []
            guess = difflib.get_close_matches(str(loc[-1]), known, n=1)
            hint = f"did you mean {guess[0]!r}? " if guess else ""
            lines.append(
                f"{dotted}{where}: unknown key; {hint}remove it (known keys here: {', '.join(known)})"
                + _env_name_hint(origin)
            )
        elif kind == "model_type":
            lines.append(
                f"{dotted}{where}: must be a table ([{dotted}] section), not {type(err['input']).__name__}"
            )
        elif kind == "literal_error":
            lines.append(
                f"{dotted}{where}: {err['msg'].replace('Input should be', 'must be')}; got {_shown(loc, err['input'])}"
            )
        elif kind == "value_error":
            lines.append(f"{dotted}{where}: {str(ctx_error or err['msg']).removeprefix('Value error, ')}")
        elif kind.endswith("_type") or kind.endswith("_parsing"):
            want = err["msg"].replace("Input should be", "must be")
            hint = _quote_hint(loc, origin, err["input"]) if kind == "string_type" else ""
            lines.append(f"{dotted}{where}: {want}; got {_shown(loc, err['input'])}{hint}")
        else:
            want = err["msg"].replace("Input should be", "must be")
            lines.append(f"{dotted}{where}: {want}; got {_shown(loc, err['input'])}")
    return lines
