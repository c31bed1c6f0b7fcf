"""[docker] pins every engine package: what the settings accept, refuse (naming the key and the fix), and render."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from render.outputs import PACKER_VARS, render_all
from render.settings import SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[2]


def load(env: str, *sets: str):
    return load_settings(ROOT, env, environ={}, sets=list(sets)).settings


@pytest.mark.parametrize(
    ("env", "sets", "key", "words"),
    [
        ("example", ["docker.containerd_version="], "docker.containerd_version", "apt version"),
        ("example", ['docker.containerd_version="1.7 22"'], "docker.containerd_version", "apt version"),
        ("local", ["docker.containerd_version=1.7.22-1"], "docker.containerd_version", "remove it"),
        ("example", ["docker.debian_version=20.10.24+dfsg1-1"], "docker.debian_version", "remove it"),
        ("local", ['docker.debian_version="latest"'], "docker.debian_version", "apt version"),
    ],
    ids=["empty-containerd", "malformed-containerd", "containerd-with-debian", "debian-pin-with-docker-ce",
         "floating-debian"],
)
def test_bad_pins_are_refused_naming_the_key(env, sets, key, words):
    with pytest.raises(SettingsError) as err:
        load(env, *sets)
    text = str(err.value)
    assert key in text and words in text, text


def test_docker_ce_without_a_containerd_pin_is_refused(tmp_path):
    envs = tmp_path / "environments"
    envs.mkdir()
    text = (ROOT / "environments" / "example.toml").read_text()
    lines = [line for line in text.splitlines() if not line.startswith("containerd_version")]
    (envs / "example.toml").write_text("\n".join(lines) + "\n")
    with pytest.raises(SettingsError) as err:
        load_settings(tmp_path, "example", environ={})
    assert "docker.containerd_version" in str(err.value) and "required" in str(err.value)


@pytest.mark.parametrize(
    ("env", "packages"),
    [
        ("example", "containerd.io=1.7.22-1 docker-ce-cli=5:27.3.1-1~debian.12~bookworm "
                    "docker-ce=5:27.3.1-1~debian.12~bookworm"),
        ("local", "docker.io=20.10.24+dfsg1-1+deb12u1+b6"),
    ],
)
def test_the_pins_reach_the_bake_from_the_settings(env, packages):
    rendered = json.loads(render_all(ROOT, load(env))[PACKER_VARS])
    assert sorted(rendered["docker_packages"].split()) == sorted(packages.split())
