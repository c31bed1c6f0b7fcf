"""Loading one environment: read its file, layer the stack's outputs, variables, flags and overrides, validate."""

from __future__ import annotations

import os
import re
import reprlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from render import nextcloud_releases
from render.settings.common import ENV_PREFIX, SettingsError
from render.settings.explain import _explain
from render.settings.model import Settings, has_setting
from render.stack_outputs import StackOutputsError, outputs_path, read_outputs, stack_layer
from render.toml_source import TomlProblem, parse_file
from render.toml_source import parse_value as _parse_toml_value

ENVIRONMENTS_DIR = "environments"


@dataclass(frozen=True)
class Loaded:
    """Validated settings plus where they came from (for messages and provenance) and warnings to show the user."""

    settings: Settings
    path: Path
    origins: Mapping[str, str]
    warnings: tuple[str, ...] = ()


def environment_path(root: Path, env: str) -> Path:
    return root / ENVIRONMENTS_DIR / f"{env}.toml"


def available_environments(root: Path) -> list[str]:
    return sorted(p.stem for p in (root / ENVIRONMENTS_DIR).glob("*.toml"))


def parse_value(raw: str, where: str = "value") -> Any:
    """Parse an override the way TOML would (numbers, booleans, arrays, quoted strings); else keep the string.

    Raises SettingsError (naming ``where``) only for a value nested too deeply to parse.
    """
    try:
        return _parse_toml_value(raw, where)
    except TomlProblem as exc:
        raise SettingsError(where, exc.problems) from None


def _how_to_write(origin: str) -> str:
    if origin.startswith(ENV_PREFIX):
        return "write NCIMAGE_SECTION__KEY=value, e.g. NCIMAGE_DATABASE__PORT=5433"
    if origin.startswith("--set"):
        return "write --set section.key=value, e.g. --set database.port=5433"
    return "use a dotted section.key"


def _set_path(data: dict[str, Any], dotted: str, value: Any, origin: str, origins: dict[str, str]) -> None:
    parts = dotted.split(".")
    if not all(parts):
        raise SettingsError(origin, [f"{dotted!r} (from {origin}): empty key segment; {_how_to_write(origin)}"])
    node = data
    for depth, part in enumerate(parts[:-1], start=1):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            section = ".".join(parts[:depth])
            raise SettingsError(
                origin,
                [f"{dotted} (from {origin}): {section} is a value, not a section; set {section} itself, "
                 f"or fix the key path ({_how_to_write(origin)})"],
            )
        node = child
    node[parts[-1]] = value
    origins[dotted] = origin


def env_overrides(environ: Mapping[str, str]) -> list[tuple[str, Any, str]]:
    """NCIMAGE_SECTION__KEY=value → ('section.key', parsed value, 'NCIMAGE_SECTION__KEY')."""
    found = []
    for name in sorted(environ):
        if name.startswith(ENV_PREFIX) and len(name) > len(ENV_PREFIX):
            dotted = name[len(ENV_PREFIX) :].lower().replace("__", ".")
            found.append((dotted, parse_value(environ[name], f"{dotted} (from {name})"), name))
    return found


def flag_overrides(items: Iterable[str]) -> list[tuple[str, Any, str]]:
    """--set section.key=value → ('section.key', parsed value, '--set section.key')."""
    found = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            shown = reprlib.repr(item)
            raise SettingsError("--set", [f"{shown}: expected section.key=value, e.g. --set database.port=5433"])
        origin = f"--set {key.strip()}"
        found.append((key.strip(), parse_value(raw, f"{key.strip()} (from {origin})"), origin))
    return found


def load_settings(
    root: Path,
    env: str,
    *,
    environ: Mapping[str, str] | None = None,
    sets: Iterable[str] = (),
    overrides: Mapping[str, Any] | None = None,
    stack_pending: bool = False,
    today: date | None = None,
) -> Loaded:
    """Load and validate environment ``env`` from ``root/environments``, layering env vars, flags and overrides.

    ``overrides`` (dotted key → value) is for programs, e.g. test-ami's canary secrets; it wins over everything.
    ``stack_pending`` is for deploy-stack before the stack exists: what the stack will provide gets placeholders.
    ``today`` dates the end-of-life check of the pinned Nextcloud (default: the system date).
    Raises SettingsError naming each bad field and its fix; never writes anything.
    """
    path = environment_path(root, env)
    source = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
    if not re.fullmatch(r"[a-z][a-z0-9-]{0,31}", env):
        raise SettingsError(
            "--env",
            [f"{reprlib.repr(env)} is not an environment name; use one of: {', '.join(available_environments(root))}"],
        )
    if not path.is_file():
        known = ", ".join(available_environments(root)) or "none"
        raise SettingsError(
            source,
            [
                f"no such environment file; known environments: {known} "
                f"(copy environments/example.toml to {source} to create one)"
            ],
        )
    try:
        data = parse_file(path.read_bytes())
    except TomlProblem as exc:
        raise SettingsError(source, exc.problems) from None

    origins: dict[str, str] = {}
    stack_file = outputs_path(root, env)
    try:
        stack = stack_layer(read_outputs(stack_file), data, source=source, outputs_source=_rel(stack_file, root),
                            known=has_setting, pending=stack_pending)
    except StackOutputsError as exc:
        raise SettingsError(source, exc.problems) from None
    layered = [*stack, *env_overrides(environ if environ is not None else os.environ), *flag_overrides(sets)]
    layered += [(k, v, "override") for k, v in (overrides or {}).items()]
    for dotted, value, origin in layered:
        _set_path(data, dotted, value, origin, origins)

    name = data.get("name")
    if isinstance(name, str) and name != env and "name" not in origins:
        raise SettingsError(source, [f"name: is {reprlib.repr(name)} but the file is {env}.toml; make them match"])
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise SettingsError(source, _explain(exc, data, origins)) from None
    warnings = nextcloud_releases.support_warnings(settings.nextcloud.version, today or date.today())
    return Loaded(settings=settings, path=path, origins=origins, warnings=tuple(warnings))


def _rel(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
