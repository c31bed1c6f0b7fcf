"""The value rules accept what AWS and Nextcloud accept, and reach every field, including ones added later.

The refusals themselves are tried through the front door in test_settings_bad_input.py; here: that valid values
are not refused, that the generic rules hold for a section nobody has written yet, and that unusual but valid
files load.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError, create_model

from render.rules import parse_image_reference, s3_bucket_problem, trusted_proxy_problem
from render.settings import Settings, SettingsError, _Section, load_settings

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = (ROOT / "environments" / "example.toml").read_text()
DIGEST = "@sha256:" + "ab" * 32


@pytest.mark.parametrize(
    "name",
    ["example-nextcloud-primary", "my.bucket.name", "a1b", "n" * 63, "nextcloud-123456789012-eu-central-1-an",
     "xn-nextcloud", "nextcloud-s3", "192.168.5.4x", "1.2.3", "sthree"],
)
def test_valid_bucket_names_are_accepted(name):
    assert s3_bucket_problem(name) is None


@pytest.mark.parametrize(
    "cidr",
    ["10.0.0.0/16", "10.0.0.0/8", "172.31.0.0/16", "192.168.1.10", "100.64.0.0/10", "127.0.0.1", "10.0.2.0/24",
     "fd00:ec2::/56", "2a05:d014:abc:de00::/56", "2600:1f18:1234:5600::/64", "2600:1f18:1234::/48"],
)
def test_load_balancer_subnets_are_accepted_as_proxies(cidr):
    assert trusted_proxy_problem(cidr) is None


@pytest.mark.parametrize(
    ("image", "version"),
    [("nextcloud:34.0.3-apache" + DIGEST, "34.0.3"), ("nextcloud:34.0.3" + DIGEST, "34.0.3"),
     ("registry.example.com:5000/team/nextcloud:33.0.2-apache" + DIGEST, "33.0.2")],
)
def test_valid_pins_are_accepted(image, version):
    loaded = load_settings(ROOT, "example", environ={}, overrides={"nextcloud.image": image,
                                                                     "nextcloud.version": version})
    assert parse_image_reference(loaded.settings.nextcloud.image).tag_version == version


def test_a_section_added_later_inherits_the_control_character_rule():
    future = create_model("Future", __base__=_Section, note=(str, ...), steps=(list[str], []),
                          labels=(dict[str, str], {}))
    extended = create_model("Extended", __base__=Settings, future=(future, ...), later=(future | None, None))
    data = load_settings(ROOT, "example", environ={}).settings.model_dump()
    for value, where in (({"note": "ok\n"}, ("future", "note")), ({"note": "ok", "steps": ["a", "b\x00"]},
                                                                   ("future", "steps")),
                         ({"note": "ok", "labels": {"k": "v\t"}}, ("future", "labels"))):
        with pytest.raises(ValidationError) as exc:
            extended.model_validate({**data, "future": value})
        (error,) = exc.value.errors()
        assert error["loc"] == where and "remove it" in error["msg"]
    with pytest.raises(ValidationError) as exc:
        extended.model_validate({**data, "future": {"note": "ok"}, "later": {"note": "x\r"}})
    assert [e["loc"] for e in exc.value.errors()] == [("later", "note")], "an optional section names its own key"
    assert extended.model_validate({**data, "future": {"note": "fine", "steps": ["a"], "labels": {"k": "v"}}})


def test_a_program_override_of_any_depth_is_refused_without_a_crash():
    deep: object = "x"
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(SettingsError) as exc:
        load_settings(ROOT, "example", environ={}, overrides={"ami.regions": deep})
    assert "ami.regions" in str(exc.value) and len(str(exc.value)) < 2000


def test_secrets_are_never_quoted_in_errors():
    with pytest.raises(SettingsError) as exc:
        load_settings(ROOT, "local", environ={}, overrides={"secrets.secret": ["hunter2-canary"],
                                                            "secrets.db_password": "hunter3-canary"})
    message = str(exc.value)
    assert "secrets.secret" in message and "secrets.db_password" in message
    assert "hunter" not in message


def write_env(tmp_path: Path, content: bytes) -> Path:
    (tmp_path / "environments").mkdir()
    (tmp_path / "environments" / "example.toml").write_bytes(content)
    return tmp_path


@pytest.mark.parametrize(
    "change",
    [
        lambda text: text.replace("\n", "\r\n"),  # Windows line endings
        lambda text: text.replace("port = 5432", "port\t=\t5432\t# tabs are fine"),
        lambda text: text.replace("[base_image]", "# [[[[[[[[[[[[[[[[[[[[ brackets in a comment\n[base_image]"),
        lambda text: text.replace('owner = "platform-team"', 'owner = "[[[[[[[[[[[[[[[[[[[[ {{{{{{{{{{{{"'),
        lambda text: text.replace('owner = "platform-team"', "owner = '''\n[[[[[[[[[[[[[[[ not a [table]'''"),
        lambda text: text.replace('owner = "platform-team"', 'owner = "caf\\u00e9 \\"quoted\\" \\\\ [["'),
    ],
    ids=["crlf", "tabs", "brackets-in-comment", "brackets-in-string", "brackets-in-literal-string", "escapes"],
)
def test_unusual_but_valid_files_load(tmp_path, change):
    root = write_env(tmp_path, change(EXAMPLE).encode())
    loaded = load_settings(root, "example", environ={})
    assert loaded.settings.database.port == 5432
