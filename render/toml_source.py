"""Read an environment file or an override value as TOML, refusing what the parser would choke on with the key named.

``tomllib`` reports a line and a column, not the key, and crashes (RecursionError) on deeply nested values; a
UTF-8 byte-order mark gets "Invalid statement". Each problem here is said in the user's terms: the line, the dotted
key it belongs to, what is wrong and what to write instead.
"""

from __future__ import annotations

import codecs
import re
import tomllib
from dataclasses import dataclass
from typing import Any

MAX_FILE_BYTES = 1024 * 1024
# No setting is deeper than a list or an inline table inside a section; ten levels is far past any real file and
# far below the depth at which tomllib runs out of stack.
MAX_NESTING = 10
_MAX_REPORTED = 5

# TOML allows no control character except tab, anywhere (strings and comments included); CR only before LF.
_RAW_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_RAW_NAMES = {"\x00": "a NUL byte", "\r": "a carriage return", "\x1b": "an escape character", "\x7f": "a DEL character"}

_BARE_OR_QUOTED = r"(?:[A-Za-z0-9_-]+|\"(?:[^\"\\]|\\.)*\"|'[^']*')"
_DOTTED = rf"{_BARE_OR_QUOTED}(?:\s*\.\s*{_BARE_OR_QUOTED})*"
_HEADER_LINE = re.compile(rf"\s*\[\[?\s*(?P<key>{_DOTTED})\s*\]\]?")
_KEY_LINE = re.compile(rf"\s*(?P<key>{_DOTTED})\s*(?P<eq>=)?")
_POSITION = re.compile(r"\s*\((?:at line (?P<line>\d+), column (?P<column>\d+)|at end of document)\)$")


class TomlProblem(Exception):
    """The text cannot be used; ``problems`` holds one line each: where, which key, what is wrong, what to write."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


def _split_key(key: str) -> list[str]:
    parts = re.findall(_BARE_OR_QUOTED, key)
    return [p[1:-1] if p[:1] in "\"'" else p for p in parts]


def _abbreviate(parts: list[str]) -> str:
    dotted = ".".join(parts)
    return dotted if len(parts) <= 4 else ".".join(parts[:3]) + f"….{parts[-1]} ({len(parts)} parts)"


@dataclass(frozen=True)
class _Line:
    key: str | None  # the dotted key the line sets or belongs to ("[table]" for a header or a line outside keys)
    starts: bool  # the line itself starts a key = value or a [table]


def line_keys(lines: list[str]) -> list[_Line]:
    """For each line, the dotted key it sets or belongs to: its own ``key =`` (or ``key`` alone, a missing "="),
    a value continued from the key above (an open array, table or multi-line string), else its table. One pass,
    approximate, used only to name keys in messages: never to accept or refuse anything."""
    result = []
    table: list[str] = []
    last_key: list[str] | None = None
    depth, in_multiline = 0, False
    for line in lines:
        stripped = line.lstrip()
        continuing = last_key is not None and (depth > 0 or in_multiline)
        header = _HEADER_LINE.match(line) if stripped.startswith("[") and not continuing else None
        m = _KEY_LINE.match(line) if stripped and not stripped.startswith("#") and not continuing else None
        if header:
            table, last_key, depth, in_multiline = _split_key(header["key"]), None, 0, False
            result.append(_Line("[" + _abbreviate(table) + "]", True))
            continue
        if m:
            last_key = _split_key(m["key"])
            value = line[m.end():]
            depth, in_multiline = 0, False
            result.append(_Line(_abbreviate(table + last_key), True))
        elif continuing:
            value = line
            assert last_key is not None
            result.append(_Line(_abbreviate(table + last_key), False))
        else:
            result.append(_Line("[" + _abbreviate(table) + "]" if table else None, False))
            continue
        depth += sum(value.count(c) for c in "[{") - sum(value.count(c) for c in "]}")
        if (value.count('"""') + value.count("\'\'\'")) % 2:
            in_multiline = not in_multiline
    return result


def _where(keys: list[_Line], lineno: int, column: int | None = None) -> str:
    key = keys[lineno - 1].key if 0 < lineno <= len(keys) else None
    place = f"line {lineno}" + (f", column {column}" if column else "")
    return f"{place} ({key})" if key else place


def _control_characters(lines: list[str], keys: list[_Line]) -> list[str]:
    problems = []
    for lineno, line in enumerate(lines, start=1):
        body = line[:-1] if line.endswith("\r") else line  # CRLF line endings are fine
        for m in _RAW_CONTROL.finditer(body):
            char = m.group()
            name = _RAW_NAMES.get(char, "a control character")
            problems.append(
                f"{_where(keys, lineno, m.start() + 1)}: {name} (U+{ord(char):04X}); TOML files hold no control "
                "characters except tabs (a stray byte from a copy-paste or an editor): delete it"
            )
            if len(problems) >= _MAX_REPORTED:
                return problems
    return problems


def _deepest_nesting(text: str) -> tuple[int, int] | None:
    """(line, depth) of the first place brackets or braces nest deeper than MAX_NESTING, outside strings and
    comments."""
    depth, lineno, i, n = 0, 1, 0, len(text)
    while i < n:
        c = text[i]
        if c == "\n":
            lineno += 1
        elif c == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        elif c in "\"'":
            quote = c * 3 if text.startswith(c * 3, i) else c
            j = i + len(quote)
            while j < n and not text.startswith(quote, j):
                if c == '"' and text[j] == "\\":
                    j += 1
                elif text[j] == "\n" and len(quote) == 1:
                    break  # unterminated: the parser reports it
                j += 1
            lineno += text.count("\n", i, j)
            i = j + len(quote)
            continue
        elif c in "[{":
            depth += 1
            if depth > MAX_NESTING:
                return lineno, depth
        elif c in "]}":
            depth = max(0, depth - 1)
        i += 1
    return None


def _deep_keys(lines: list[str], keys: list[_Line]) -> list[str]:
    for lineno, line in enumerate(lines, start=1):
        if line.lstrip().startswith("#"):
            continue
        m = _HEADER_LINE.match(line) if line.lstrip().startswith("[") else _KEY_LINE.match(line)
        if m and len(_split_key(m["key"])) > MAX_NESTING:
            return [
                f"{_where(keys, lineno)}: the key has {len(_split_key(m['key']))} dotted parts; settings are "
                "section.key (a table at most one level further): remove it or fix the key"
            ]
    return []


_DECODE_HINTS = (
    ("Cannot overwrite a value", "{key} is set twice{lines}", "keep one of them (in TOML a later line does not "
     "override an earlier one)"),
    ("Cannot declare", "the table {key} appears twice{lines}", "merge the two into one section"),
    ("Cannot mutate immutable namespace", "{key} adds to a table written inline (key = {{…}})",
     "write the whole table in one place"),
    ("Invalid value", "the value is not valid TOML", 'strings need quotes (domain = "cloud.example.com"), lists '
     'brackets (["a", "b"]), true/false are lowercase'),
    ("Expected '=' after a key", "the key has no value", 'write key = value, e.g. domain = "cloud.example.com"'),
    ("Invalid statement", "this is neither key = value nor a [section] header",
     "write key = value or [section]; comments start with #"),
    ("Expected newline or end of document", "more follows the value on the same line",
     "one key = value per line; quote strings"),
    ("Unterminated string", "a string is not closed", "close it with the same quote it opened with"),
)


def _decode_problem(exc: tomllib.TOMLDecodeError, lines: list[str], keys: list[_Line]) -> str:
    message = str(exc)
    pos = _POSITION.search(message)
    what = message[: pos.start()] if pos else message
    if pos and pos["line"]:
        lineno, column = int(pos["line"]), int(pos["column"])
    else:  # "at end of document": the last line with content
        lineno = max((i for i, line in enumerate(lines, start=1) if line.strip()), default=1)
        column = None
    key = keys[lineno - 1].key if 0 < lineno <= len(keys) else None
    for prefix, problem, fix in _DECODE_HINTS:
        if what.startswith(prefix):
            same = [i for i, k in enumerate(keys, start=1) if key and k.starts and k.key == key]
            shown = f" (lines {', '.join(map(str, same))})" if len(same) > 1 else ""
            return f"{_where(keys, lineno, column)}: {problem.format(key=key or 'a key', lines=shown)}; {fix}"
    return (
        f"{_where(keys, lineno, column)}: not valid TOML ({what}); fix the syntax there "
        "(see environments/example.toml)"
    )


def parse_file(raw: bytes) -> dict[str, Any]:
    """Parse an environment file's bytes; raise TomlProblem naming line, key, problem and fix."""
    if len(raw) > MAX_FILE_BYTES:
        raise TomlProblem(
            [
                f"the file is {len(raw) / 1024 / 1024:.1f} MiB; a settings file is a few KiB: is this the right file? "
                "(start from environments/example.toml)"
            ]
        )
    if raw.startswith(codecs.BOM_UTF8):
        raise TomlProblem(
            [
                "line 1: the file starts with a UTF-8 byte-order mark (BOM), which TOML does not allow; save it as "
                "UTF-8 without BOM (e.g. `sed -i '1s/^\\xEF\\xBB\\xBF//' FILE`, or your editor's \"UTF-8\" encoding)"
            ]
        )
    for bom, name in ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
                      (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16")):
        if raw.startswith(bom):
            raise TomlProblem([f"the file is {name} text (it starts with a {name} byte-order mark); save it as UTF-8"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        keys = line_keys(raw.decode("utf-8", "replace").split("\n"))
        lineno = raw[: exc.start].count(b"\n") + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise TomlProblem(
            [
                f"{_where(keys, lineno, column)}: not UTF-8 text (byte 0x{raw[exc.start]:02X}, perhaps Latin-1); "
                "save the file as UTF-8"
            ]
        ) from None
    if not text.strip():
        raise TomlProblem(["the file is empty; start from environments/example.toml"])
    lines = text.split("\n")
    keys = line_keys(lines)
    problems = _control_characters(lines, keys) or _deep_keys(lines, keys)
    deep = _deepest_nesting(text)
    if not problems and deep:
        problems = [
            f"{_where(keys, deep[0])}: the value is nested more than {MAX_NESTING} levels deep; no setting is more "
            "than a list or a table: flatten it (see environments/example.toml for the shape of each setting)"
        ]
    if problems:
        raise TomlProblem(problems)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TomlProblem([_decode_problem(exc, lines, keys)]) from None
    except RecursionError:  # pragma: no cover - the nesting check above refuses such files first
        raise TomlProblem([f"values nest too deeply to parse (over {MAX_NESTING} levels); flatten them"]) from None


def parse_value(raw: str, where: str) -> Any:
    """An override's value the way TOML reads it (numbers, booleans, arrays, quoted strings); else the string itself.

    ``where`` names the override (``ami.regions (from NCIMAGE_AMI__REGIONS)``) for the one refusal: nesting too deep.
    """
    deep = _deepest_nesting(raw)
    if deep:
        raise TomlProblem(
            [
                f"{where}: the value is nested more than {MAX_NESTING} levels deep; no setting is more than a list "
                'or a table: flatten it, e.g. ["eu-west-1"]'
            ]
        )
    try:
        doc = tomllib.loads(f"v = {raw}")
    except (tomllib.TOMLDecodeError, RecursionError):
        return raw
    # A value that parses into more than the one key (it holds a line break) is not TOML for this key: keep it
    # whole, so the settings' own rules see (and refuse) the line break.
    return doc["v"] if list(doc) == ["v"] else raw
