"""The documentation cannot drift from the tool or from itself.

- Every `inv …` command the README, every page under docs/ and the CI scripts show exists: its task names and every
  flag they use are checked against the real tasks (the tasks package's collection).
- The README stays a map: at most 150 lines, and its first two commands are the two a newcomer runs.
- Every relative link in the project's Markdown points to a file that exists and, with a `#fragment`, to a heading
  that file has (GitHub's anchors); every page under docs/ is reachable from docs/README.md.
"""

from __future__ import annotations

import importlib
import re
import subprocess
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS_DIR = ROOT / "docs"
README = ROOT / "README.md"
PAGES = sorted(DOCS_DIR.rglob("*.md"))
DOCS = [README, *PAGES, *sorted((ROOT / ".ci").glob("*")), *sorted((ROOT / ".github" / "workflows").glob("*.yml"))]
# Markdown the link check reads: the README, docs/ and the READMEs next to the code (never generated or vendored).
# The project's own Markdown: what git tracks or would add (never build/, .venv or a bake's root filesystem).
MARKDOWN = sorted(ROOT / line for line in subprocess.run(
    ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.md"], cwd=ROOT, capture_output=True,
    text=True, check=True).stdout.splitlines() if (ROOT / line).is_file())
README_MAX_LINES = 150
FIRST_COMMANDS = [
    "bash .ci/setup && .venv/bin/inv build-ami test-ami",
    "bash .ci/setup && .venv/bin/pytest",
]
INVOKE_CORE = {"--list", "-l", "--help", "-h", "--version", "-V"}
# An `inv` mention ends at the end of an inline code span, a comment, a pipe or a shell operator.
MENTION = re.compile(r"(?:^|[\s`(])(?:\.venv/bin/)?inv\s+([^`#|;&>]+)")
FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
CODE_SPAN = re.compile(r"(`+).*?\1")


def _collection():
    return importlib.import_module("tasks").ns


def _flags(task) -> set[str]:
    flags = set(INVOKE_CORE)
    for arg in task.get_arguments():
        for name in arg.names:
            flags.add(("--" if len(name) > 1 else "-") + name.replace("_", "-"))
        if arg.kind is bool and arg.default is True:  # invoke offers --no-<flag> for a True default
            flags |= {f"--no-{n.replace('_', '-')}" for n in arg.names if len(n) > 1}
    return flags


TASKS = {name: _flags(task) for name, task in _collection().tasks.items()}


def mentions_in(path: Path, text: str) -> list[tuple[str, int, str]]:
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for match in MENTION.finditer(line):
            found.append((f"{path.relative_to(ROOT)}:{number}", number, match[1].strip()))
    return found


def mentions() -> list[tuple[str, int, str]]:
    return [m for path in DOCS if path.is_file() for m in mentions_in(path, path.read_text())]


def problems_in_command(where: str, command: str) -> list[str]:
    """What is wrong with one documented `inv …` command: unknown tasks and flags, each named."""
    problems = []
    current = None
    for token in (t.strip("[]") for t in command.split()):
        if not token:
            continue
        if token.startswith("-"):
            flag = token.split("=", 1)[0]
            if current is None:
                if flag not in INVOKE_CORE:
                    problems.append(f"{where}: flag {flag} before any task in `inv {command}`")
            elif flag not in TASKS[current]:
                has = ", ".join(sorted(TASKS[current]))
                problems.append(f"{where}: `inv {current}` has no flag {flag} (it has {has})")
        elif re.fullmatch(r"[a-z][a-z0-9-]*", token) and current is None or token in TASKS:
            if token not in TASKS:
                problems.append(f"{where}: `inv {token}` is no task (tasks: {', '.join(sorted(TASKS))})")
                break
            current = token
        # anything else is a flag's value (E, prod, ami-…, 6h)
    return problems


def test_the_docs_mention_commands_at_all():
    assert len(mentions()) > 20


def test_every_page_under_docs_is_checked_and_shows_commands():
    """The command check reads every page; a page of commands that the regex misses would be checked by nothing."""
    assert PAGES, "no pages under docs/"
    for page in ("operations.md", "stack.md", "baking-on-aws.md", "benchmarks.md", "drills.md", "testing.md"):
        assert mentions_in(DOCS_DIR / page, (DOCS_DIR / page).read_text()), f"docs/{page} shows no `inv` command"


@pytest.mark.parametrize("where,_n,command", mentions(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_documented_command_is_a_real_task_with_real_flags(where, _n, command):
    assert not problems_in_command(where, command)


def test_a_made_up_flag_or_task_is_caught():
    """The checker itself: a flag no task has, or a task that does not exist, is reported with its place."""
    assert problems_in_command("x.md:1", "build-ami --env prod --no-such-flag") == [
        f"x.md:1: `inv build-ami` has no flag --no-such-flag (it has {', '.join(sorted(TASKS['build-ami']))})"]
    assert problems_in_command("x.md:2", "bake-it --env prod")[0].startswith("x.md:2: `inv bake-it` is no task")
    assert not problems_in_command("x.md:3", "deploy-stack --env prod --dry-run")
    found = mentions_in(README, "run `inv status --env prod --bogus` now\n")
    assert found == [("README.md:1", 1, "status --env prod --bogus")]


# ---- the README is a map ----------------------------------------------------------------------------------------
def test_the_readme_is_at_most_150_lines():
    lines = README.read_text().count("\n")
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines (at most {README_MAX_LINES}): move the detail to a page under docs/ and link it")


def test_the_readmes_first_commands_are_the_two_a_newcomer_runs():
    commands = []
    in_block = False
    for line in README.read_text().splitlines():
        if FENCE.match(line):
            if in_block:
                break
            in_block = True
            continue
        if in_block and line.strip():
            commands.append(line.split("#", 1)[0].strip())
    assert commands == FIRST_COMMANDS, f"README.md's first code block must be exactly {FIRST_COMMANDS}, not {commands}"


def test_the_readmes_tasks_table_has_one_line_per_task():
    rows = [line for line in README.read_text().splitlines() if line.startswith("| `inv ")]
    listed = [re.match(r"\| `inv ([a-z0-9-]+)", row)[1] for row in rows]
    assert sorted(listed) == sorted(TASKS), (
        f"README.md's tasks table lists {sorted(listed)}; `inv --list` has {sorted(TASKS)}: one line per task")


# ---- links ------------------------------------------------------------------------------------------------------
def slug(heading: str) -> str:
    """GitHub's anchor for a heading: link targets reduced to their text, lower case, punctuation dropped, spaces
    to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every anchor a Markdown text's headings make (a repeated heading gets -1, -2, … as on GitHub)."""
    seen: dict[str, int] = {}
    out = set()
    in_block = False
    for line in text.splitlines():
        if FENCE.match(line):
            in_block = not in_block
            continue
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if in_block or not heading:
            continue
        base = slug(heading[1])
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def links(path: Path, text: str) -> list[tuple[int, str]]:
    """The relative links of a Markdown text with their line numbers, outside code blocks and code spans."""
    found = []
    in_block = False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            in_block = not in_block
            continue
        if in_block:
            continue
        for match in LINK.finditer(CODE_SPAN.sub("", line)):
            target = match[1]
            if re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # https:, mailto: …
                continue
            found.append((number, target))
    return found


def broken_links(path: Path, text: str) -> list[str]:
    problems = []
    for number, target in links(path, text):
        where = f"{path.relative_to(ROOT)}:{number}: [{target}]"
        file_part, _, fragment = target.partition("#")
        if not file_part:  # a heading of this same text
            if fragment not in anchors(text):
                problems.append(f"{where}: no heading here with the anchor #{fragment}")
            continue
        dest = (path.parent / unquote(file_part)).resolve()
        name = dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest
        if not dest.exists():
            problems.append(f"{where}: no file {name}")
        elif fragment and dest.suffix == ".md" and fragment not in (have := anchors(dest.read_text())):
            problems.append(f"{where}: {name} has no heading with the anchor #{fragment} "
                            f"(it has: {', '.join(sorted(have))})")
    return problems


def test_markdown_files_are_found():
    names = {p.relative_to(ROOT).as_posix() for p in MARKDOWN}
    assert {"README.md", "docs/README.md", "image/nextcloud/README.md"} <= names


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_points_to_a_file_and_heading_that_exist(path):
    assert not broken_links(path, path.read_text())


def test_a_broken_link_or_anchor_is_caught():
    """The checker itself, on a made-up page in docs/: a missing file, a missing heading, and links that are fine."""
    text = ("[gone](no-such-page.md) [bad anchor](stack.md#no-such-heading) [ok](stack.md#first-deployment)\n"
            "[ok too](../README.md#tasks) [here](#a-heading) [not here](#no-heading) `[code](nowhere.md)`\n"
            "[web](https://example.org/x) ![picture](no-such.png)\n"
            "## A heading\n```\n[in a code block](nowhere.md)\n```\n")
    problems = broken_links(DOCS_DIR / "made-up.md", text)
    assert problems == [
        "docs/made-up.md:1: [no-such-page.md]: no file docs/no-such-page.md",
        f"docs/made-up.md:1: [stack.md#no-such-heading]: docs/stack.md has no heading with the anchor #no-such-heading "
        f"(it has: {', '.join(sorted(anchors((DOCS_DIR / 'stack.md').read_text())))})",
        "docs/made-up.md:2: [#no-heading]: no heading here with the anchor #no-heading",
        "docs/made-up.md:3: [no-such.png]: no file docs/no-such.png",
    ]


def test_slugs_follow_githubs_rules():
    assert slug("Rendering (`inv render --env E`)") == "rendering-inv-render---env-e"
    assert slug("Health: two questions, two endpoints") == "health-two-questions-two-endpoints"
    assert slug("The stack's outputs become settings") == "the-stacks-outputs-become-settings"
    assert slug("See [the stack](stack.md)") == "see-the-stack"


def test_every_page_under_docs_is_in_the_index():
    index = DOCS_DIR / "README.md"
    linked = {(index.parent / target.partition("#")[0]).resolve() for _, target in links(index, index.read_text())}
    missing = [p.relative_to(ROOT).as_posix() for p in PAGES if p != index and p.resolve() not in linked]
    assert not missing, f"docs/README.md does not link {', '.join(missing)}: a reader finds pages through the index"
