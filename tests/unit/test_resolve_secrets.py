"""The image's boot-time secret resolver and its systemd units.

Runs the very file that is baked into the image (image/rootfs/usr/local/libexec/nextcloud-image/
resolve-secrets) as a subprocess, the way nextcloud-secrets.service runs it.

Test doubles, each standing in for something that cannot run here:
- a moto server on 127.0.0.1 stands in for AWS Secrets Manager and SSM (it follows their API);
- a small HTTP server stands in for the EC2 instance metadata service (IMDSv2: it refuses any
  request without a session token, the way an instance with HttpTokens=required does).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.moto_server.threaded_moto_server import ThreadedMotoServer

from render.outputs import SECRET_VARIABLES
from render.secret_refs import render_contract

REPO = Path(__file__).resolve().parents[2]
ROOTFS = REPO / "image" / "rootfs"
SCRIPT = ROOTFS / "usr" / "local" / "libexec" / "nextcloud-image" / "resolve-secrets"
UNIT_DIR = ROOTFS / "etc" / "systemd" / "system"
SECRETS_UNIT = UNIT_DIR / "nextcloud-secrets.service"
NEXTCLOUD_UNIT = UNIT_DIR / "nextcloud.service"

ACCOUNT = "123456789012"  # moto's default account
SECRET_KEYS = tuple(sorted(SECRET_VARIABLES.values()))


def _python_has_boto3(python: str) -> bool:
    probe = subprocess.run([python, "-I", "-c", "import boto3"], capture_output=True, check=False)
    return probe.returncode == 0


# The image runs the script with Debian's python3 and python3-boto3 (older botocore than the
# venv's). Where the host has them, the central tests run under both interpreters.
DEBIAN_PYTHON = "/usr/bin/python3"
INTERPRETERS = [pytest.param(sys.executable, id="venv-python")]
if os.path.exists(DEBIAN_PYTHON) and _python_has_boto3(DEBIAN_PYTHON):
    INTERPRETERS.append(pytest.param(DEBIAN_PYTHON, id="debian-python3-boto3"))


def canary(label: str) -> str:
    """A unique value that must never show up in any output."""
    return f"canary-{label}-{uuid.uuid4().hex}"


def literal_secrets() -> dict[str, str]:
    return {key: canary(key.lower()) for key in SECRET_KEYS}


def instance_doc(values: dict[str, str] | None = None, **overrides: Any) -> dict[str, Any]:
    """An instance.json as the renderer writes it, with literal references unless overridden."""
    values = literal_secrets() if values is None else values
    doc: dict[str, Any] = {
        "schema": 1,
        "environment": "test",
        "region": "eu-west-1",
        "role": {"allow_install": True, "allow_upgrade": False},
        "secrets": {key: f"literal:{value}" for key, value in values.items()},
    }
    doc.update(overrides)
    return doc


class Run:
    """One invocation of the resolver and what it left behind."""

    def __init__(self, proc: subprocess.CompletedProcess[str], output: Path) -> None:
        self.proc = proc
        self.output = output
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr

    @property
    def all_output(self) -> str:
        return self.stdout + self.stderr

    def env_file(self) -> dict[str, str]:
        lines = self.output.read_text(encoding="utf-8").splitlines()
        return dict(line.split("=", 1) for line in lines)

    def assert_silent_about(self, *values: str) -> None:
        for value in values:
            assert value not in self.all_output, "a secret value appeared in the resolver's output"


@pytest.fixture
def resolver(tmp_path: Path) -> Callable[..., Run]:
    """Write instance.json (a dict, or raw text) and run the real script on it."""

    # The contract the image carries: `inv render` writes it, the bake installs it, the resolver reads it.
    contract = tmp_path / "secret-references.json"
    contract.write_text(render_contract(), encoding="utf-8")

    def run(
        doc: dict[str, Any] | str,
        *,
        python: str = sys.executable,
        python_flags: tuple[str, ...] = ("-I",),
        env: dict[str, str] | None = None,
        mode: int = 0o600,
        args: tuple[str, ...] = (),
        log_destination: str | None = "journal",
    ) -> Run:
        # The image's baked nextcloud.env: "journal" is what render writes for the local twin (builder "local"),
        # "cloudwatch" for AWS; None leaves the file out.
        image_env = tmp_path / "nextcloud.env"
        if log_destination is None:
            image_env.unlink(missing_ok=True)
        else:
            image_env.write_text(f"NEXTCLOUD_ENVIRONMENT=test\nNEXTCLOUD_LOG_DESTINATION={log_destination}\n")
        instance_json = tmp_path / "instance.json"
        text = doc if isinstance(doc, str) else json.dumps(doc, indent=2)
        instance_json.write_text(text, encoding="utf-8")
        instance_json.chmod(mode)
        output = tmp_path / "run" / "nextcloud" / "runtime.env"
        output.parent.parent.mkdir(exist_ok=True)
        base_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(tmp_path),
            # Keep the host's own AWS configuration, if any, out of the test.
            "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
            "NEXTCLOUD_SECRET_REFERENCES": str(contract),
            "NEXTCLOUD_IMAGE_ENV": str(image_env),
        }
        base_env.update(env or {})
        command = [python, *python_flags, str(SCRIPT), "--instance-json", str(instance_json)]
        command += ["--output", str(output), *args]
        proc = subprocess.run(command, capture_output=True, text=True, env=base_env, timeout=120, check=False)
        return Run(proc, output)

    return run


# --------------------------------------------------------------------------- literals


@pytest.mark.parametrize("python", INTERPRETERS)
def test_literals_become_a_sorted_env_file_with_the_role_flags(resolver, python):
    values = literal_secrets()
    values["NEXTCLOUD_REDIS_PASSWORD"] = ""  # "no password" is allowed for Redis
    values["NEXTCLOUD_DB_PASSWORD"] = "  spaced = and 'quoted' $HOME `x` " + canary("db")
    result = resolver(instance_doc(values), python=python)

    assert result.returncode == 0, result.stderr
    # Everything but the admin password: only the node that installs fetches that, on demand.
    expected = dict(values, NEXTCLOUD_ALLOW_INSTALL="1", NEXTCLOUD_ALLOW_UPGRADE="0")
    del expected["NEXTCLOUD_ADMIN_PASSWORD"]
    assert result.env_file() == expected
    text = result.output.read_text(encoding="utf-8")
    names = [line.split("=", 1)[0] for line in text.splitlines()]
    assert names == sorted(names)
    assert text.endswith("\n")
    result.assert_silent_about(*(v for v in values.values() if v))
    # The log says where each value came from, so an operator can debug without seeing it.
    assert "NEXTCLOUD_DB_PASSWORD <- literal" in result.stdout
    assert "NEXTCLOUD_ALLOW_INSTALL=1" in result.stdout


def test_role_flags_follow_the_role(resolver):
    result = resolver(instance_doc(role={"allow_install": False, "allow_upgrade": True}))
    assert result.returncode == 0, result.stderr
    env = result.env_file()
    assert (env["NEXTCLOUD_ALLOW_INSTALL"], env["NEXTCLOUD_ALLOW_UPGRADE"]) == ("0", "1")


def test_output_is_private_to_root(resolver):
    result = resolver(instance_doc())
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(result.output.stat().st_mode) == 0o600
    assert stat.S_IMODE(result.output.parent.stat().st_mode) == 0o700
    assert result.output.stat().st_uid == os.geteuid()


def test_a_loose_existing_directory_is_tightened(resolver, tmp_path):
    directory = tmp_path / "run" / "nextcloud"
    directory.mkdir(parents=True)
    directory.chmod(0o755)
    result = resolver(instance_doc())
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_rerun_replaces_the_file_atomically(resolver):
    first = resolver(instance_doc())
    assert first.returncode == 0, first.stderr
    old_content = first.output.read_bytes()
    with first.output.open("rb") as held_open:
        new_values = literal_secrets()
        second = resolver(instance_doc(new_values))
        assert second.returncode == 0, second.stderr
        # A reader holding the old file still sees it whole: the new one was renamed over it,
        # never truncated and rewritten in place.
        assert held_open.read() == old_content
    assert second.env_file()["NEXTCLOUD_SECRET"] == new_values["NEXTCLOUD_SECRET"]
    assert sorted(p.name for p in second.output.parent.iterdir()) == ["runtime.env"]
    assert stat.S_IMODE(second.output.stat().st_mode) == 0o600


def test_literal_references_need_no_boto3(resolver):
    # -S hides site-packages, so boto3 cannot be imported: literals must still work.
    result = resolver(instance_doc(), python_flags=("-I", "-S"))
    assert result.returncode == 0, result.stderr


def test_aws_reference_without_boto3_says_which_package_is_missing(resolver):
    doc = instance_doc()
    doc["secrets"]["NEXTCLOUD_SECRET"] = "ssm:/nextcloud/secret"
    result = resolver(doc, python_flags=("-I", "-S"))
    assert result.returncode == 3
    assert "python3-boto3" in result.stderr
    assert "NEXTCLOUD_SECRET" in result.stderr
    assert not result.output.exists()


def test_validate_only_checks_and_writes_nothing(resolver):
    values = literal_secrets()
    result = resolver(instance_doc(values), args=("--validate-only",))
    assert result.returncode == 0, result.stderr
    assert "is valid" in result.stdout
    assert not result.output.exists()
    result.assert_silent_about(*values.values())


def test_world_readable_instance_json_is_warned_about(resolver):
    result = resolver(instance_doc(), mode=0o644)
    assert result.returncode == 0, result.stderr
    assert "readable by other users" in result.stderr
    assert "'0600'" in result.stderr


def test_missing_instance_json_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope.json"
    contract = tmp_path / "secret-references.json"
    contract.write_text(render_contract())
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--instance-json", str(missing), "--output", str(tmp_path / "out.env"),
         "--references", str(contract)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert f"{missing} does not exist" in proc.stderr
    assert not (tmp_path / "out.env").exists()


def test_paths_can_come_from_the_environment(tmp_path):
    instance_json = tmp_path / "i.json"
    instance_json.write_text(json.dumps(instance_doc()), encoding="utf-8")
    instance_json.chmod(0o600)
    output = tmp_path / "env" / "runtime.env"
    contract = tmp_path / "secret-references.json"
    contract.write_text(render_contract())
    image_env = tmp_path / "nextcloud.env"
    image_env.write_text("NEXTCLOUD_LOG_DESTINATION=journal\n")
    env = dict(os.environ, NEXTCLOUD_INSTANCE_JSON=str(instance_json), NEXTCLOUD_RUNTIME_ENV=str(output),
               NEXTCLOUD_SECRET_REFERENCES=str(contract), NEXTCLOUD_IMAGE_ENV=str(image_env))
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    assert output.exists()


# --------------------------------------------------------------------------- refused values


@pytest.mark.parametrize(
    ("bad", "named_as"),
    [("\n", "a newline"), ("\r", "a carriage return"), ("\x00", "a NUL byte")],
    ids=["newline", "carriage-return", "nul"],
)
def test_values_that_break_the_env_file_are_refused(resolver, bad, named_as):
    values = literal_secrets()
    poisoned = canary("first") + bad + "NEXTCLOUD_ALLOW_INSTALL=1"
    values["NEXTCLOUD_SECRET"] = poisoned
    result = resolver(instance_doc(values))
    assert result.returncode == 3
    assert "secrets.NEXTCLOUD_SECRET" in result.stderr
    assert named_as in result.stderr
    assert "nothing was written" in result.stderr
    assert not result.output.exists()
    result.assert_silent_about(*values.values(), poisoned.split(bad)[0])


def test_empty_values_are_refused_except_the_redis_password(resolver):
    values = literal_secrets()
    values["NEXTCLOUD_PASSWORDSALT"] = ""
    result = resolver(instance_doc(values))
    assert result.returncode == 3
    assert "secrets.NEXTCLOUD_PASSWORDSALT" in result.stderr
    assert "empty" in result.stderr
    assert not result.output.exists()


# --------------------------------------------------------------------------- malformed instance.json


def _mutate(change: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], str]:
    def build(doc: dict[str, Any]) -> str:
        change(doc)
        return json.dumps(doc)

    return build


PLAIN_VALUE = canary("pasted-without-literal-prefix")
OBJECT_VALUE = canary("inside-an-object")

MALFORMED = [
    ("not-json", lambda doc: '{"schema": 1, "secrets": {', "not valid JSON"),
    ("top-level-list", lambda doc: json.dumps([doc]), "top level must be a JSON object"),
    (
        "duplicate-key",
        lambda doc: json.dumps(doc)[:-1] + ', "schema": 1}',
        "'schema' appears more than once",
    ),
    ("missing-secrets", _mutate(lambda d: d.pop("secrets")), "required key 'secrets' is missing"),
    (
        "missing-secret",
        _mutate(lambda d: d["secrets"].pop("NEXTCLOUD_PASSWORDSALT")),
        "'secrets.NEXTCLOUD_PASSWORDSALT' is missing",
    ),
    ("missing-role", _mutate(lambda d: d.pop("role")), "required key 'role' is missing"),
    (
        "missing-role-flag",
        _mutate(lambda d: d["role"].pop("allow_upgrade")),
        "'role.allow_upgrade' is missing",
    ),
    (
        "role-flag-as-string",
        _mutate(lambda d: d["role"].update(allow_install="true")),
        "'role.allow_install' must be true or false, got a string",
    ),
    ("schema-2", _mutate(lambda d: d.update(schema=2)), "'schema' must be the number 1"),
    ("schema-as-string", _mutate(lambda d: d.update(schema="1")), "'schema' must be the number 1"),
    ("unknown-top-level-key", _mutate(lambda d: d.update(secret={})), "unknown key(s) secret"),
    ("empty-environment", _mutate(lambda d: d.update(environment="")), "'environment' must be"),
    ("bad-region", _mutate(lambda d: d.update(region="Frankfurt")), "'region' must be an AWS region"),
    (
        "unknown-ref-scheme",
        _mutate(lambda d: d["secrets"].update(NEXTCLOUD_DB_PASSWORD=PLAIN_VALUE)),
        "secrets.NEXTCLOUD_DB_PASSWORD has an unknown reference scheme",
    ),
    (
        "vault-scheme",
        _mutate(lambda d: d["secrets"].update(NEXTCLOUD_DB_PASSWORD="vault:kv/nextcloud#db")),
        "secrets.NEXTCLOUD_DB_PASSWORD has an unknown reference scheme",
    ),
    (
        "literal-as-number",
        _mutate(lambda d: d["secrets"].update(NEXTCLOUD_INSTANCEID=12345)),
        "secrets.NEXTCLOUD_INSTANCEID must be a string reference",
    ),
    (
        "literal-as-object",
        _mutate(lambda d: d["secrets"].update(NEXTCLOUD_SECRET={"literal": OBJECT_VALUE})),
        "secrets.NEXTCLOUD_SECRET must be a string reference",
    ),
    (
        "secrets-manager-arn-without-account",
        _mutate(
            lambda d: d["secrets"].update(NEXTCLOUD_DB_PASSWORD="arn:aws:secretsmanager:eu-west-1:secret:nextcloud/db")
        ),
        "secrets.NEXTCLOUD_DB_PASSWORD is not a valid Secrets Manager ARN",
    ),
    (
        "ssm-arn-without-parameter",
        _mutate(lambda d: d["secrets"].update(NEXTCLOUD_SECRET=f"arn:aws:ssm:eu-west-1:{ACCOUNT}:document/x")),
        "secrets.NEXTCLOUD_SECRET is not a valid SSM parameter ARN",
    ),
    (
        "ssm-relative-name",
        _mutate(lambda d: d["secrets"].update(NEXTCLOUD_SECRET="ssm:nextcloud/secret")),
        "secrets.NEXTCLOUD_SECRET is not a valid SSM parameter reference",
    ),
    (
        "role-flag-in-secrets",
        _mutate(lambda d: d["secrets"].update(NEXTCLOUD_ALLOW_INSTALL="literal:1")),
        "'secrets.NEXTCLOUD_ALLOW_INSTALL' is reserved",
    ),
    (
        "lowercase-secret-name",
        _mutate(lambda d: d["secrets"].update(nextcloud_extra="literal:x")),
        "'nextcloud_extra' is not a valid name",
    ),
    (
        "secret-name-with-trailing-newline",
        _mutate(lambda d: d["secrets"].update({"NEXTCLOUD_EXTRA\n": "literal:x"})),
        "'NEXTCLOUD_EXTRA\\n' is not a valid name",
    ),
]


@pytest.mark.parametrize(("build", "message"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_instance_json_is_a_clear_error(resolver, build, message):
    values = literal_secrets()
    result = resolver(build(instance_doc(values)))
    assert result.returncode == 2, result.all_output
    assert message in result.stderr
    assert "instance.json" in result.stderr  # names the file it read
    assert not result.output.exists()
    assert result.stdout == ""
    result.assert_silent_about(*values.values(), PLAIN_VALUE, OBJECT_VALUE)
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("key", ["NEXTCLOUD_TRUSTED_PROXIES", "NEXTCLOUD_DB_HOST", "NEXTCLOUD_S3_SSE_C_KEY"])
def test_a_key_outside_the_contract_is_refused_naming_it(resolver, key):
    # runtime.env is loaded after the baked nextcloud.env: a key the contract does not name would override a baked
    # setting (whom Apache believes, which database) from user data. The contract and the user data come from the
    # same render, so a newer secret means a new image anyway.
    doc = instance_doc()
    extra = canary("extra")
    doc["secrets"][key] = f"literal:{extra}"
    result = resolver(doc)
    assert result.returncode == 2, result.all_output
    assert f"secrets.{key} is not one of the secrets this image takes" in result.stderr
    assert "NEXTCLOUD_DB_PASSWORD" in result.stderr  # names what is allowed
    assert not result.output.exists()
    result.assert_silent_about(extra)


# --------------------------------------------------------------------------- literals only on the local twin


def test_literals_are_refused_on_an_aws_image_naming_the_key_not_the_value(resolver):
    values = literal_secrets()
    result = resolver(instance_doc(values), log_destination="cloudwatch")
    assert result.returncode == 2, result.all_output
    assert "literal values in secrets.NEXTCLOUD_ADMIN_PASSWORD, secrets.NEXTCLOUD_DB_PASSWORD," in result.stderr
    assert "NEXTCLOUD_LOG_DESTINATION=cloudwatch" in result.stderr
    assert not result.output.exists()
    result.assert_silent_about(*values.values())


def test_literals_are_refused_when_the_image_does_not_say_it_is_the_local_twin(resolver, tmp_path):
    result = resolver(instance_doc(), log_destination=None)
    assert result.returncode == 2, result.all_output
    assert "literal values in secrets." in result.stderr and str(tmp_path / "nextcloud.env") in result.stderr
    assert not result.output.exists()


def test_the_print_admin_password_path_refuses_literals_on_aws_too(resolver):
    values = literal_secrets()
    result = resolver(instance_doc(values), log_destination="cloudwatch", args=("--print-admin-password",))
    assert result.returncode == 2 and result.stdout == ""
    result.assert_silent_about(*values.values())


def test_an_empty_literal_stays_allowed_on_aws_where_the_contract_allows_empty(resolver, aws_endpoint):
    # "literal:" for the Redis password is "no AUTH", which render allows on AWS too; it carries no secret.
    values = literal_secrets()
    doc = instance_doc(values)
    for key, value in values.items():
        doc["secrets"][key] = f"ssm:{put_parameter(aws_endpoint, value)}"
    doc["secrets"]["NEXTCLOUD_REDIS_PASSWORD"] = "literal:"
    result = resolver(doc, log_destination="cloudwatch", env={"AWS_ENDPOINT_URL": aws_endpoint, **DUMMY_CREDENTIALS})
    assert result.returncode == 0, result.stderr
    assert result.env_file()["NEXTCLOUD_REDIS_PASSWORD"] == ""


# --------------------------------------------------------------------------- value sizes


@pytest.mark.parametrize("size", [8192, 8193, 1024 * 1024])
def test_values_are_capped_at_8_kib_naming_the_key(resolver, size):
    values = literal_secrets()
    values["NEXTCLOUD_SECRET"] = "s" * (size - 6) + "canary"
    result = resolver(instance_doc(values))
    if size <= 8192:
        assert result.returncode == 0, result.stderr
        assert result.env_file()["NEXTCLOUD_SECRET"] == values["NEXTCLOUD_SECRET"]
        return
    assert result.returncode == 3, result.all_output
    assert f"secrets.NEXTCLOUD_SECRET: the value is {size} bytes, more than 8192" in result.stderr
    assert "canary" not in result.all_output and "sss" not in result.all_output
    assert not result.output.exists()


def test_the_cap_counts_bytes_not_characters(resolver):
    values = literal_secrets()
    values["NEXTCLOUD_SECRET"] = "é" * 4097  # 8194 bytes in UTF-8
    result = resolver(instance_doc(values))
    assert result.returncode == 3 and "8194 bytes" in result.stderr


# --------------------------------------------------------------------------- AWS (emulated)


@pytest.fixture(scope="module")
def aws_endpoint() -> Iterator[str]:
    """A moto server (stand-in for Secrets Manager and SSM) on a free loopback port."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


DUMMY_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def aws_client(endpoint: str, service: str, region: str) -> Any:
    return boto3.client(
        service,
        region_name=region,
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def create_secret(endpoint: str, value: str, region: str = "us-east-1") -> str:
    client = aws_client(endpoint, "secretsmanager", region)
    return client.create_secret(Name=f"nextcloud/{uuid.uuid4().hex}", SecretString=value)["ARN"]


def put_parameter(endpoint: str, value: str, region: str = "eu-west-1") -> str:
    name = f"/nextcloud/{uuid.uuid4().hex}"
    aws_client(endpoint, "ssm", region).put_parameter(Name=name, Value=value, Type="SecureString")
    return name


@pytest.mark.parametrize("python", INTERPRETERS)
def test_secrets_manager_and_ssm_references_are_resolved(resolver, aws_endpoint, python):
    values = literal_secrets()
    # The secret lives in us-east-1 while the instance runs in eu-west-1: an ARN names its own
    # region, and a call to any other region would not find it.
    db_arn = create_secret(aws_endpoint, values["NEXTCLOUD_DB_PASSWORD"], region="us-east-1")
    secret_param = put_parameter(aws_endpoint, values["NEXTCLOUD_SECRET"], region="eu-west-1")
    salt_param = put_parameter(aws_endpoint, values["NEXTCLOUD_PASSWORDSALT"], region="eu-central-1")
    salt_arn = f"arn:aws:ssm:eu-central-1:{ACCOUNT}:parameter{salt_param}"
    doc = instance_doc(values)
    doc["secrets"].update(
        NEXTCLOUD_DB_PASSWORD=db_arn,
        NEXTCLOUD_SECRET=f"ssm:{secret_param}",
        NEXTCLOUD_PASSWORDSALT=salt_arn,
    )

    result = resolver(doc, python=python, env={"AWS_ENDPOINT_URL": aws_endpoint, **DUMMY_CREDENTIALS})

    assert result.returncode == 0, result.stderr
    expected = dict(values, NEXTCLOUD_ALLOW_INSTALL="1", NEXTCLOUD_ALLOW_UPGRADE="0")
    del expected["NEXTCLOUD_ADMIN_PASSWORD"]
    assert result.env_file() == expected
    result.assert_silent_about(*values.values())
    assert f"NEXTCLOUD_DB_PASSWORD <- secretsmanager {db_arn}" in result.stdout
    assert f"NEXTCLOUD_SECRET <- ssm {secret_param}" in result.stdout


def test_service_specific_endpoint_wins(resolver, aws_endpoint):
    values = literal_secrets()
    doc = instance_doc(values)
    doc["secrets"]["NEXTCLOUD_SECRET"] = f"ssm:{put_parameter(aws_endpoint, values['NEXTCLOUD_SECRET'])}"
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ENDPOINT_URL_SSM": aws_endpoint, **DUMMY_CREDENTIALS}
    result = resolver(doc, env=env)
    assert result.returncode == 0, result.stderr
    assert result.env_file()["NEXTCLOUD_SECRET"] == values["NEXTCLOUD_SECRET"]


def test_missing_secret_fails_naming_the_key_and_the_aws_error(resolver, aws_endpoint):
    # An earlier good run left a file: a failed re-run must leave it exactly as it was.
    good = resolver(instance_doc())
    assert good.returncode == 0, good.stderr
    before = good.output.read_bytes()

    values = literal_secrets()
    doc = instance_doc(values)
    missing_arn = f"arn:aws:secretsmanager:us-east-1:{ACCOUNT}:secret:nextcloud/gone-AbCdEf"
    doc["secrets"]["NEXTCLOUD_DB_PASSWORD"] = missing_arn
    doc["secrets"]["NEXTCLOUD_SECRET"] = "ssm:/nextcloud/not-there"
    result = resolver(doc, env={"AWS_ENDPOINT_URL": aws_endpoint, **DUMMY_CREDENTIALS})

    assert result.returncode == 3
    # Every failure is reported, each with its key, its reference and the AWS error code.
    assert "secrets.NEXTCLOUD_DB_PASSWORD" in result.stderr
    assert missing_arn in result.stderr
    assert "ResourceNotFoundException" in result.stderr
    assert "secrets.NEXTCLOUD_SECRET" in result.stderr
    assert "ParameterNotFound" in result.stderr
    assert "nothing was written" in result.stderr
    assert good.output.read_bytes() == before
    assert sorted(p.name for p in good.output.parent.iterdir()) == ["runtime.env"]
    result.assert_silent_about(*values.values())
    assert "Traceback" not in result.stderr


def test_newline_in_an_aws_value_is_refused_without_showing_it(resolver, aws_endpoint):
    values = literal_secrets()
    first_line = canary("pem-line-1")
    multi_line = f"{first_line}\n{canary('pem-line-2')}"
    doc = instance_doc(values)
    doc["secrets"]["NEXTCLOUD_DB_PASSWORD"] = create_secret(aws_endpoint, multi_line)
    result = resolver(doc, env={"AWS_ENDPOINT_URL": aws_endpoint, **DUMMY_CREDENTIALS})
    assert result.returncode == 3
    assert "secrets.NEXTCLOUD_DB_PASSWORD" in result.stderr
    assert "a newline" in result.stderr
    assert not result.output.exists()
    result.assert_silent_about(first_line, multi_line, *values.values())


def test_binary_only_secret_is_refused(resolver, aws_endpoint):
    client = aws_client(aws_endpoint, "secretsmanager", "us-east-1")
    arn = client.create_secret(Name=f"nextcloud/{uuid.uuid4().hex}", SecretBinary=b"\x01\x02")["ARN"]
    doc = instance_doc()
    doc["secrets"]["NEXTCLOUD_SECRET"] = arn
    result = resolver(doc, env={"AWS_ENDPOINT_URL": aws_endpoint, **DUMMY_CREDENTIALS})
    assert result.returncode == 3
    assert "secrets.NEXTCLOUD_SECRET" in result.stderr
    assert "no SecretString" in result.stderr


def test_no_credentials_is_a_clear_error(resolver, aws_endpoint):
    doc = instance_doc()
    doc["secrets"]["NEXTCLOUD_SECRET"] = "ssm:/nextcloud/secret"
    result = resolver(doc, env={"AWS_ENDPOINT_URL": aws_endpoint})  # and IMDS disabled
    assert result.returncode == 3
    assert "secrets.NEXTCLOUD_SECRET" in result.stderr
    assert "no AWS credentials" in result.stderr


# --------------------------------------------------------------------------- instance role over IMDSv2


class FakeImds:
    """Stand-in for the EC2 instance metadata service with HttpTokens=required (IMDSv2 only)."""

    ROLE = "nextcloud-instance-role"

    def __init__(self, region: str) -> None:
        self.region = region
        self.requests: list[tuple[str, str, bool]] = []  # (method, path, had a valid token)
        self.token = uuid.uuid4().hex
        expiration = (datetime.now(UTC) + timedelta(hours=6)).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.documents = {
            "/latest/meta-data/placement/region": region,
            "/latest/meta-data/iam/security-credentials/": self.ROLE,
            f"/latest/meta-data/iam/security-credentials/{self.ROLE}": json.dumps(
                {
                    "Code": "Success",
                    "LastUpdated": "2026-01-01T00:00:00Z",
                    "Type": "AWS-HMAC",
                    "AccessKeyId": "ASIAFAKEIMDSROLE",
                    "SecretAccessKey": "fake-imds-secret",
                    "Token": "fake-imds-session-token",
                    "Expiration": expiration,
                }
            ),
        }
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: str) -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self) -> None:
                fake.requests.append(("PUT", self.path, False))
                if self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                    self._reply(200, fake.token)
                else:
                    self._reply(400, "")

            def do_GET(self) -> None:
                valid = self.headers.get("X-aws-ec2-metadata-token") == fake.token
                fake.requests.append(("GET", self.path, valid))
                if not valid:
                    self._reply(401, "")
                elif self.path in fake.documents:
                    self._reply(200, fake.documents[self.path])
                else:
                    self._reply(404, "")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def imds() -> Iterator[FakeImds]:
    fake = FakeImds(region="ap-southeast-2")
    try:
        yield fake
    finally:
        fake.close()


@pytest.mark.parametrize("python", INTERPRETERS)
def test_instance_role_and_region_come_from_imdsv2(resolver, aws_endpoint, imds, python):
    values = literal_secrets()
    doc = instance_doc(values)
    del doc["region"]
    name = put_parameter(aws_endpoint, values["NEXTCLOUD_SECRET"], region=imds.region)
    doc["secrets"]["NEXTCLOUD_SECRET"] = f"ssm:{name}"
    env = {
        "AWS_ENDPOINT_URL": aws_endpoint,
        "AWS_EC2_METADATA_DISABLED": "false",
        "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.endpoint,
    }  # no credentials in the environment: only the fake instance role can supply them

    result = resolver(doc, python=python, env=env)

    assert result.returncode == 0, result.stderr
    assert result.env_file()["NEXTCLOUD_SECRET"] == values["NEXTCLOUD_SECRET"]
    gets = [(path, valid) for method, path, valid in imds.requests if method == "GET"]
    assert ("/latest/meta-data/placement/region", True) in gets
    assert (f"/latest/meta-data/iam/security-credentials/{FakeImds.ROLE}", True) in gets
    assert all(valid for _, valid in gets), "an IMDSv1 (token-less) request was made"


def test_region_lookup_failure_names_every_key_and_asks_imds_once(resolver, imds):
    del imds.documents["/latest/meta-data/placement/region"]
    doc = instance_doc()
    del doc["region"]
    doc["secrets"]["NEXTCLOUD_SECRET"] = "ssm:/nextcloud/secret"
    doc["secrets"]["NEXTCLOUD_DB_PASSWORD"] = "ssm:/nextcloud/db"
    env = {"AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.endpoint, **DUMMY_CREDENTIALS}
    result = resolver(doc, env=env)
    assert result.returncode == 3
    assert "secrets.NEXTCLOUD_SECRET (ssm /nextcloud/secret): no region" in result.stderr
    assert "secrets.NEXTCLOUD_DB_PASSWORD (ssm /nextcloud/db): no region" in result.stderr
    region_gets = [r for r in imds.requests if r[:2] == ("GET", "/latest/meta-data/placement/region")]
    assert len(region_gets) == 3  # one round of retries, not one per reference


def test_no_region_anywhere_is_a_clear_error(resolver, tmp_path):
    doc = instance_doc()
    del doc["region"]
    doc["secrets"]["NEXTCLOUD_SECRET"] = "ssm:/nextcloud/secret"
    env = {"AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:9", **DUMMY_CREDENTIALS}
    result = resolver(doc, env=env)
    assert result.returncode == 3
    assert "no region" in result.stderr
    assert "set 'region' in the user data" in result.stderr


# --------------------------------------------------------------------------- retry, admin password on demand


def test_retry_recovers_by_itself_when_the_cause_goes_away(tmp_path, aws_endpoint):
    """A reference that cannot be resolved yet (IAM not propagated, a secret created a moment later): --retry
    keeps trying with capped backoff, says why at every attempt, and writes the file once it works."""
    values = literal_secrets()
    name = f"/nextcloud/later-{uuid.uuid4().hex[:8]}"
    doc = instance_doc(values)
    doc["secrets"]["NEXTCLOUD_SECRET"] = f"ssm:{name}"
    instance_json = tmp_path / "instance.json"
    instance_json.write_text(json.dumps(doc))
    instance_json.chmod(0o600)
    output = tmp_path / "run" / "runtime.env"
    contract = tmp_path / "secret-references.json"
    contract.write_text(render_contract(), encoding="utf-8")
    image_env = tmp_path / "nextcloud.env"
    image_env.write_text("NEXTCLOUD_LOG_DESTINATION=journal\n")  # the other secrets are literals
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "AWS_ENDPOINT_URL": aws_endpoint,
           "NEXTCLOUD_SECRET_REFERENCES": str(contract), "NEXTCLOUD_IMAGE_ENV": str(image_env),
           "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/dev/null", "AWS_MAX_ATTEMPTS": "1",
           "NEXTCLOUD_SECRETS_RETRY_INITIAL": "0.2", "NEXTCLOUD_SECRETS_RETRY_MAX": "0.5", **DUMMY_CREDENTIALS}
    proc = subprocess.Popen([sys.executable, "-I", str(SCRIPT), "--retry", "--instance-json", str(instance_json),
                             "--output", str(output)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 20
        attempts = ""
        while time.monotonic() < deadline and attempts.count("retrying in") < 3:
            attempts += proc.stderr.readline()
        assert attempts.count("retrying in") >= 3, attempts
        assert "ParameterNotFound" in attempts and f"secrets.NEXTCLOUD_SECRET (ssm {name}" in attempts
        assert proc.poll() is None and not output.exists(), "it must keep waiting, writing nothing"
        aws_client(aws_endpoint, "ssm", "eu-west-1").put_parameter(
            Name=name, Value=values["NEXTCLOUD_SECRET"], Type="SecureString")
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    written = dict(line.split("=", 1) for line in output.read_text().splitlines())
    assert written["NEXTCLOUD_SECRET"] == values["NEXTCLOUD_SECRET"]
    for value in values.values():
        assert value not in out + err + attempts


def test_retry_does_not_retry_an_invalid_instance_json(resolver):
    result = resolver({"schema": 1}, args=("--retry",))
    assert result.returncode == 2 and "retrying" not in result.stderr


def test_admin_password_is_printed_only_for_an_instance_that_may_install(resolver):
    values = literal_secrets()
    result = resolver(instance_doc(values), args=("--print-admin-password",))
    assert result.returncode == 0, result.stderr
    assert result.stdout == values["NEXTCLOUD_ADMIN_PASSWORD"]  # the value and nothing else: stdout is the socket
    assert not result.output.exists()  # nothing written anywhere
    assert values["NEXTCLOUD_ADMIN_PASSWORD"] not in result.stderr

    refused = resolver(instance_doc(values, role={"allow_install": False, "allow_upgrade": False}),
                       args=("--print-admin-password",))
    assert refused.returncode == 2 and refused.stdout == ""
    assert "role.allow_install is false" in refused.stderr


def test_admin_password_socket_is_root_only_and_one_run_per_connection():
    socket_unit = parse_unit(UNIT_DIR / "nextcloud-admin-password.socket")
    assert socket_unit["Socket"]["ListenStream"] == ["/run/nextcloud-admin/password.sock"]
    assert socket_unit["Socket"]["SocketMode"] == ["0600"] and socket_unit["Socket"]["Accept"] == ["yes"]
    service = parse_unit(UNIT_DIR / "nextcloud-admin-password@.service")["Service"]
    assert service["ExecStart"] == ["/usr/local/libexec/nextcloud-image/resolve-secrets --print-admin-password"]
    assert (service["StandardInput"], service["StandardOutput"]) == (["socket"], ["socket"])
    assert service["StandardError"] == ["journal"]  # the value goes to the socket only, never to the journal


# --------------------------------------------------------------------------- systemd units


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> every value (systemd keys repeat), with line continuations joined."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    logical = path.read_text(encoding="utf-8").replace("\\\n", " ")
    for raw in logical.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path.name}: directive outside a section: {line}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def words(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> list[str]:
    return [word for value in unit[section].get(key, []) for word in value.split()]


def test_secrets_unit_orders_and_hardens_the_resolver():
    unit = parse_unit(SECRETS_UNIT)
    service = unit["Service"]
    assert service["Type"] == ["oneshot"]
    assert service["RemainAfterExit"] == ["yes"]
    assert service["ExecStart"] == ["/usr/local/libexec/nextcloud-image/resolve-secrets --retry"]
    # Retries inside the one start: a restarting oneshot would fail nextcloud.service's start job for good.
    assert service["TimeoutStartSec"] == ["infinity"] and "Restart" not in service
    assert service["NotifyAccess"] == ["main"]  # the reason of the last failed attempt shows as its status
    # After the unit that takes instance.json from cloud-init's local-stage cache and after ifupdown, never after
    # what cloud-init's network stage holds back (that stage runs 10+ s longer under TCG).
    after = set(words(unit, "Unit", "After"))
    assert {"nextcloud-instance-json.service", "cloud-init-local.service", "networking.service"} <= after, after
    assert unit["Unit"]["DefaultDependencies"] == ["no"]
    assert not after & {"cloud-init.service", "network-online.target", "basic.target", "sysinit.target"}, after
    assert "nextcloud-instance-json.service" in words(unit, "Unit", "Wants")
    # The container starts before the secrets are resolved and waits for the file: ordering the container after
    # this unit would put creating and starting it back on the boot's critical path.
    assert "nextcloud.service" not in words(unit, "Unit", "Before")
    assert unit["Unit"]["ConditionPathExists"] == ["/etc/nextcloud/instance.json"]
    assert service["UMask"] == ["0077"]
    # The directory exists before this unit runs (tmpfiles, 0700 root): the container mounts it early. The values
    # go when the unit stops.
    assert "RuntimeDirectory" not in service
    assert service["ReadWritePaths"] == ["/run/nextcloud"]
    assert service["ExecStopPost"] == ["/usr/bin/rm -f /run/nextcloud/runtime.env"]
    tmpfiles = (ROOTFS / "etc/tmpfiles.d/nextcloud-image.conf").read_text().splitlines()
    assert "d /run/nextcloud 0700 root root -" in tmpfiles
    assert "d /run/nextcloud-admin 0700 root root -" in tmpfiles
    for key in ("PrivateTmp", "ProtectHome", "NoNewPrivileges"):
        assert service[key] == ["yes"], key
    assert service["ProtectSystem"] == ["strict"]
    assert "WantedBy" in unit["Install"]


def test_nextcloud_unit_runs_the_baked_container_as_the_contract_says():
    unit = parse_unit(NEXTCLOUD_UNIT)
    service = unit["Service"]
    for dependency in ("docker.service", "nextcloud-secrets.service"):
        assert dependency in words(unit, "Unit", "Requires")
    # Beside cloud-init: after the engine, never after what cloud-init's network stage holds back, nor after the
    # secrets (the entrypoint waits for them), nor after ifupdown; stopped before the engine at shutdown (and
    # before the network by nextcloud-drain.service, below).
    after = set(words(unit, "Unit", "After"))
    assert "docker.service" in after and "systemd-tmpfiles-setup.service" in after
    assert unit["Unit"]["DefaultDependencies"] == ["no"]
    assert not after & {"basic.target", "sysinit.target", "cloud-init.service", "network-online.target",
                        "network.target", "networking.service", "nextcloud-secrets.service"}, after
    assert words(unit, "Unit", "Conflicts") == ["shutdown.target"]
    assert "shutdown.target" in words(unit, "Unit", "Before")
    socket = parse_unit(NEXTCLOUD_UNIT.parent / "nextcloud-admin-password.socket")
    assert socket["Unit"]["DefaultDependencies"] == ["no"]
    assert not set(words(socket, "Unit", "After")) & {"sysinit.target", "basic.target", "cloud-init.service"}
    assert service["Restart"] == ["always"]
    assert 1 <= int(service["RestartSec"][0]) <= 30
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]

    (run,) = service["ExecStart"]
    argv = shlex.split(run)
    assert argv[:3] == ["/usr/bin/docker", "run", "--rm"]
    assert argv[-1] == "nextcloud-cluster:current"
    pairs = {argv[i]: argv[i + 1] for i in range(len(argv) - 1) if argv[i].startswith("-")}
    assert pairs["--name"] == "nextcloud"
    assert pairs["--network"] == "host"
    assert pairs["--env-file"] == "/etc/nextcloud/nextcloud.env"
    volumes = [argv[i + 1] for i in range(len(argv) - 1) if argv[i] == "-v"]
    # The directory, not the file: the file appears (by rename) after the container started.
    envs = [argv[i + 1] for i in range(len(argv) - 1) if argv[i] == "--env"]
    assert envs == ["NEXTCLOUD_RUNTIME_ENV_FILE=/run/secrets/nextcloud/runtime.env", "NEXTCLOUD_RUNTIME_ENV_WAIT=600"]
    assert volumes == [
        "/etc/nextcloud/tls:/etc/nextcloud/tls:ro",  # the database's CA bundle (verify-full; empty on the twin)
        "/run/nextcloud:/run/secrets/nextcloud:ro",
        "/run/nextcloud-admin:/run/nextcloud-admin:ro",  # the installing init's admin password socket
        "/run/systemd/journal/dev-log:/dev/log",  # Nextcloud's syslog entries, into the journal once
    ]
    assert "--env-file" not in argv[argv.index("--env-file") + 2 :], "secrets must not go in as docker env"

    # A leftover container goes with its anonymous volumes; and none are made: /var/www/html gets an empty tmpfs.
    # Through the Engine API (curl, not the 45 MB docker CLI on the boot path): DELETE with force and v (volumes).
    # First the memory limit for this machine (tests/unit/test_container_runtime.py), then the leftover's removal.
    memory, pre = service["ExecStartPre"]
    assert shlex.split(memory) == ["/usr/local/libexec/nextcloud-image/size-container-memory", "--output",
                                   "/run/nextcloud-container/memory.env"]
    pre_argv = shlex.split(pre)
    assert pre_argv[0] == "/usr/bin/curl" and pre_argv[pre_argv.index("--unix-socket") + 1] == "/run/docker.sock"
    assert pre_argv[pre_argv.index("-X") + 1] == "DELETE"
    assert pre_argv[-1] == "http://localhost/containers/nextcloud?force=true&v=true"
    assert pairs["--mount"].startswith("type=tmpfs,destination=/var/www/html,")
    (stop,) = service["ExecStop"]
    stop_argv = shlex.split(stop)
    assert stop_argv[:2] == ["/usr/bin/docker", "stop"]
    drain = int(stop_argv[stop_argv.index("--time") + 1])
    assert drain == int(pairs["--stop-timeout"]) == 30
    # systemd must not kill the unit while docker is still waiting for requests to drain.
    assert int(service["TimeoutStopSec"][0]) > drain


def test_drain_unit_stops_the_container_before_the_network_at_shutdown():
    # systemd stops units in the reverse of their start order: a unit started after nextcloud.service, the
    # engine and network.target is stopped before all three, so its ExecStop drains the container while
    # ifupdown's interfaces are still up (nextcloud.service itself starts before network.target).
    unit = parse_unit(UNIT_DIR / "nextcloud-drain.service")
    nextcloud = parse_unit(NEXTCLOUD_UNIT)
    after = set(words(unit, "Unit", "After"))
    assert {"nextcloud.service", "docker.service", "network.target"} <= after, after
    assert unit["Unit"]["DefaultDependencies"] == ["no"]
    assert words(unit, "Unit", "Conflicts") == ["shutdown.target"]
    assert "shutdown.target" in words(unit, "Unit", "Before")
    service = unit["Service"]
    assert service["Type"] == ["oneshot"] and service["RemainAfterExit"] == ["yes"]
    (stop,) = service["ExecStop"]
    stop_argv = shlex.split(stop.removeprefix("-"))
    assert stop_argv[:2] == ["/usr/bin/docker", "stop"] and stop_argv[-1] == "nextcloud"
    run = shlex.split(nextcloud["Service"]["ExecStart"][0])
    drain = int(stop_argv[stop_argv.index("--time") + 1])
    assert drain == int(run[run.index("--stop-timeout") + 1])
    assert int(service["TimeoutStopSec"][0]) > drain
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def systemd_analyze() -> str | None:
    return shutil.which("systemd-analyze")


@pytest.fixture
def unit_root(tmp_path: Path) -> Path:
    """A root like the image's: Debian's own units, the overlay, and docker where the image has it.

    docker.service and /usr/bin/docker are stand-ins (Docker itself is installed at bake time);
    systemd-analyze only needs them to exist to check the dependencies and ExecStart paths.
    """
    root = tmp_path / "root"
    shutil.copytree("/lib/systemd/system", root / "lib" / "systemd" / "system", symlinks=True)
    shutil.copytree(ROOTFS, root, dirs_exist_ok=True, symlinks=True)
    docker_unit = root / "lib" / "systemd" / "system" / "docker.service"
    docker_unit.unlink(missing_ok=True)
    docker_unit.write_text("[Unit]\nDescription=stand-in for docker.io\n[Service]\nExecStart=/usr/bin/dockerd\n")
    for tool in ("docker", "dockerd", "curl", "test", "true", "rm", "python3", "../../bin/systemctl"):
        stub = root / "usr" / "bin" / tool
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
    return root


needs_systemd_analyze = pytest.mark.skipif(
    systemd_analyze() is None or not Path("/lib/systemd/system/sysinit.target").exists(),
    reason="systemd-analyze not installed (apt-get install systemd); the directive tests above still run",
)


@needs_systemd_analyze
@pytest.mark.parametrize("unit", sorted(p for p in UNIT_DIR.iterdir() if p.is_file() and "@." not in p.name),
                         ids=lambda p: p.name)
def test_systemd_analyze_verify_accepts_the_unit(unit_root, unit):
    target = unit_root / unit.relative_to(ROOTFS)
    proc = subprocess.run(
        [str(systemd_analyze()), f"--root={unit_root}", "verify", str(target)],
        capture_output=True,
        text=True,
        check=False,
    )
    # verify exits 0 on unknown keys and bad values ("... ignoring"): any output is a finding.
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr


@needs_systemd_analyze
def test_systemd_analyze_verify_catches_a_broken_unit(unit_root):
    # Proves the check above can fail: a typo'd directive must be reported.
    target = unit_root / SECRETS_UNIT.relative_to(ROOTFS)
    target.write_text(target.read_text().replace("UMask=0077", "UMsk=0077"))
    proc = subprocess.run(
        [str(systemd_analyze()), f"--root={unit_root}", "verify", str(target)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "Unknown key 'UMsk'" in proc.stderr


@needs_systemd_analyze
def test_secrets_unit_exposure_stays_low(unit_root):
    # systemd's own score of the sandbox (0 = locked down, 10 = none); 1.6 when written. Loosening
    # the hardening past 2.0 ("OK") fails here.
    target = unit_root / SECRETS_UNIT.relative_to(ROOTFS)
    proc = subprocess.run(
        [str(systemd_analyze()), "--offline=yes", "--threshold=20", f"--root={unit_root}", "security", str(target)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
