"""The hash-locked requirement files (requirements/*.txt, written by `bash .ci/lock`) agree with pyproject.toml's
pins, carry a sha256 for every requirement, and are what .ci/setup installs, with --require-hashes and --no-deps."""

import re
import shlex
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
REQS = ROOT / "requirements"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
REGENERATE = "pin changed without regenerating the lock: run `bash .ci/lock` and commit requirements/"


def parse_lock(path: Path) -> dict[str, tuple[str, list[str]]]:
    """{canonical name: (version, [sha256 hashes])} of a pip-compile --generate-hashes file; any line that is not a
    `name==version` requirement with hashes fails the test that reads it."""
    text = re.sub(r"\\\n", " ", path.read_text())  # join continuation lines: one requirement per line
    locked: dict[str, tuple[str, list[str]]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        words = shlex.split(line)
        assert not words[0].startswith("-"), f"{path.name}:{number}: option line in a lock: {line}"
        req = Requirement(words[0])
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"{path.name}:{number}: {req} is not pinned with =="
        assert req.url is None, f"{path.name}:{number}: {req} installs from a URL"
        hashes = [w.removeprefix("--hash=sha256:") for w in words[1:] if w.startswith("--hash=sha256:")]
        assert hashes, f"{path.name}:{number}: {req.name} has no --hash=sha256: line"
        assert len(hashes) == len(words) - 1, f"{path.name}:{number}: {req.name}: something other than sha256 hashes"
        assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), f"{path.name}:{number}: malformed hash"
        name = canonicalize_name(req.name)
        assert name not in locked, f"{path.name}: {req.name} locked twice"
        locked[name] = (specs[0].version, hashes)
    return locked


def direct_pins(lines: list[str]) -> dict[str, str]:
    pins = {}
    for line in lines:
        req = Requirement(line)
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"pyproject.toml: {line} is not an exact pin"
        pins[canonicalize_name(req.name)] = specs[0].version
    return pins


def assert_pins_locked(pins: dict[str, str], lock: Path) -> None:
    locked = parse_lock(lock)
    for name, version in pins.items():
        assert name in locked, f"{name} is pinned but missing from {lock.name}: {REGENERATE}"
        assert locked[name][0] == version, (
            f"{name}: pinned {version}, locked {locked[name][0]} in {lock.name}: {REGENERATE}")


LOCKS = sorted(REQS.glob("*.txt"))


def test_the_locks_exist():
    assert {p.name for p in LOCKS} >= {"bootstrap.txt", "dev.txt", "tools-checkov.txt", "tools-parliament.txt"}


@pytest.mark.parametrize("lock", LOCKS, ids=lambda p: p.name)
def test_every_requirement_in_a_lock_is_pinned_and_hashed(lock):
    assert parse_lock(lock)


def test_the_projects_pins_are_the_versions_in_the_dev_lock():
    project = PYPROJECT["project"]
    assert_pins_locked(direct_pins(project["dependencies"] + project["optional-dependencies"]["dev"]),
                       REQS / "dev.txt")


@pytest.mark.parametrize("tool", ["checkov", "parliament"])
def test_each_scanners_pin_is_the_version_in_its_lock(tool):
    assert_pins_locked(direct_pins(PYPROJECT["project"]["optional-dependencies"][tool]),
                       REQS / f"tools-{tool}.txt")


def test_pip_and_the_build_backend_are_locked_and_satisfy_the_build_system():
    bootstrap_in = [line for line in (REQS / "bootstrap.in").read_text().splitlines()
                    if line.strip() and not line.startswith("#")]
    pins = direct_pins(bootstrap_in)
    assert set(pins) == {"pip", "setuptools"}
    assert_pins_locked(pins, REQS / "bootstrap.txt")
    for line in PYPROJECT["build-system"]["requires"]:
        req = Requirement(line)
        assert req.specifier.contains(pins[canonicalize_name(req.name)]), f"bootstrap.in's {req.name} breaks {line}"


def test_setup_installs_every_package_from_a_lock_with_hashes_and_no_resolution():
    setup = (ROOT / ".ci" / "setup").read_text()
    code = "\n".join(line.split("#", 1)[0] for line in setup.splitlines())
    installs = [line.strip() for line in code.splitlines() if re.search(r"\bpip\"? install\b", line)]
    assert installs, "no pip install found in .ci/setup"
    for line in installs:
        if "-e ." in line:  # the project itself: its dependencies came from the lock, its build backend too
            assert "--no-deps" in line and "--no-build-isolation" in line, line
        else:
            assert "--require-hashes" in line and "--no-deps" in line and " -r " in line, line
    assert "--upgrade" not in code, "an unpinned pip upgrade in .ci/setup"
    for lock in LOCKS:
        assert f"requirements/{lock.name}" in setup or lock.name.startswith("tools-"), f"{lock.name} is never installed"
    assert "requirements/tools-$name.txt" in setup
