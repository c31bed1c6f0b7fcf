"""Sealing the admin password: ``resolve-secrets --seal-admin-password`` and the socket that runs it (issue 23).

The stack's member role may read the admin password's secret only while the secret carries the install tag
(infra/stack/nextcloud.yaml; tests/unit/test_stack_template.py pins the policy). Once the cluster is installed, the
installing node's cluster init connects to nextcloud-admin-seal.socket, whose service runs the very file tested here:
it removes that tag, and from then on no member can read the password.

The doubles are test_resolve_secrets': moto on 127.0.0.1 stands in for Secrets Manager, behind test_host_agents'
recording proxy, which shows what was asked (UntagResource, never GetSecretValue) and that infra/iam/instance-role/
allows it.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import test_resolve_secrets
from test_host_agents import INSTANCE_ROLE_POLICY, RecordingProxy
from test_resolve_secrets import (
    DUMMY_CREDENTIALS,
    INTERPRETERS,
    NEXTCLOUD_UNIT,
    UNIT_DIR,
    aws_client,
    canary,
    instance_doc,
    literal_secrets,
    parse_unit,
    words,
)

from infra.stack.template import load_template

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "aws"))
from iam_coverage import missing  # noqa: E402

# The tag as the stack puts it on the secret: the test seals exactly what the template makes readable.
(INSTALL_TAG,) = load_template()["Resources"]["AdminPasswordSecret"]["Properties"]["Tags"]
OTHER_TAG = {"Key": "nextcloud-image:environment", "Value": "staging"}
SEAL = ("--seal-admin-password",)

# test_resolve_secrets' fixtures: the real script run on an instance.json, and the moto server.
resolver = test_resolve_secrets.resolver
aws_endpoint = test_resolve_secrets.aws_endpoint


@pytest.fixture
def proxy(aws_endpoint: str) -> Iterator[RecordingProxy]:
    p = RecordingProxy(aws_endpoint)
    yield p
    p.close()


def admin_secret(endpoint: str, value: str, region: str = "us-east-1") -> str:
    """The stack's admin-password secret: the value, the install tag and another tag that must stay."""
    client = aws_client(endpoint, "secretsmanager", region)
    name = f"nextcloud/staging/admin-password-{uuid.uuid4().hex[:6]}"
    return client.create_secret(Name=name, SecretString=value, Tags=[INSTALL_TAG, OTHER_TAG])["ARN"]


def tags_of(endpoint: str, arn: str) -> list[dict[str, str]]:
    return aws_client(endpoint, "secretsmanager", "us-east-1").describe_secret(SecretId=arn).get("Tags", [])


@pytest.mark.parametrize("python", INTERPRETERS)
def test_sealing_removes_the_install_tag_and_nothing_else_without_reading_the_value(resolver, aws_endpoint, proxy,
                                                                                  python):
    values = literal_secrets()
    arn = admin_secret(aws_endpoint, values["NEXTCLOUD_ADMIN_PASSWORD"])
    doc = instance_doc(values)
    doc["secrets"]["NEXTCLOUD_ADMIN_PASSWORD"] = arn
    # The service-specific variable wins over the general one, as botocore's own support does.
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ENDPOINT_URL_SECRETS_MANAGER": proxy.url,
           **DUMMY_CREDENTIALS}

    result = resolver(doc, python=python, env=env, args=SEAL)

    assert result.returncode == 0, result.stderr
    assert tags_of(aws_endpoint, arn) == [OTHER_TAG]
    # One line to the socket (the cluster init logs it) and the same to the journal.
    said = f"resolve-secrets: sealed the admin password: removed the tag {INSTALL_TAG['Key']} from {arn}"
    assert result.stdout.startswith(said) and result.stdout.count("\n") == 1, result.stdout
    assert result.stderr == result.stdout
    assert proxy.actions() == ["UntagResource"], "sealing never reads the secret"
    assert proxy.calls[0][1] == {"SecretId": arn, "TagKeys": [INSTALL_TAG["Key"]]}
    assert not missing([("secretsmanager", "UntagResource")], INSTANCE_ROLE_POLICY)
    assert not result.output.exists(), "sealing writes no env file"
    result.assert_silent_about(*values.values())

    # Again (a node that may install finds the cluster installed at every start): nothing left to remove, success.
    again = resolver(doc, env=env, args=SEAL)
    assert again.returncode == 0, again.stderr
    assert tags_of(aws_endpoint, arn) == [OTHER_TAG]


@pytest.mark.parametrize("reference", ["literal", "ssm:/nextcloud/staging/admin-password"])
def test_a_reference_without_the_install_tag_seals_nothing_and_succeeds(resolver, reference):
    values = literal_secrets()
    doc = instance_doc(values)
    if reference != "literal":
        doc["secrets"]["NEXTCLOUD_ADMIN_PASSWORD"] = reference
    # No AWS at all: any call would fail against this endpoint.
    result = resolver(doc, env={"AWS_ENDPOINT_URL": "http://127.0.0.1:9", **DUMMY_CREDENTIALS}, args=SEAL)
    assert result.returncode == 0, result.stderr
    kind = "literal" if reference == "literal" else "ssm /nextcloud/staging/admin-password"
    assert result.stdout == (f"resolve-secrets: nothing to seal: the admin password comes from {kind}, which carries "
                             f"no {INSTALL_TAG['Key']} tag\n")
    result.assert_silent_about(*values.values())


def test_an_unreachable_endpoint_is_one_clear_line_and_a_failure(resolver):
    values = literal_secrets()
    doc = instance_doc(values)
    arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:nextcloud/staging/admin-password-AbCdEf"
    doc["secrets"]["NEXTCLOUD_ADMIN_PASSWORD"] = arn
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_MAX_ATTEMPTS": "1", **DUMMY_CREDENTIALS}
    result = resolver(doc, env=env, args=SEAL)
    assert result.returncode == 3
    assert result.stdout == "", "nothing on the socket: the cluster init reports the failure"
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"resolve-secrets: error: could not seal the admin password (secretsmanager {arn}, "
                           "region us-east-1): EndpointConnectionError"), line
    assert "Traceback" not in result.stderr
    result.assert_silent_about(*values.values())


def test_an_aws_refusal_names_the_error_code(resolver, aws_endpoint):
    doc = instance_doc()
    arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:nextcloud/staging/admin-password-gone00"
    doc["secrets"]["NEXTCLOUD_ADMIN_PASSWORD"] = arn
    result = resolver(doc, env={"AWS_ENDPOINT_URL": aws_endpoint, **DUMMY_CREDENTIALS}, args=SEAL)
    assert result.returncode == 3 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert "could not seal the admin password" in line and "ResourceNotFoundException" in line, line


def test_a_node_that_may_not_install_never_seals(resolver, aws_endpoint):
    secret = canary("admin")
    arn = admin_secret(aws_endpoint, secret)
    doc = instance_doc(role={"allow_install": False, "allow_upgrade": False})
    doc["secrets"]["NEXTCLOUD_ADMIN_PASSWORD"] = arn
    result = resolver(doc, env={"AWS_ENDPOINT_URL": aws_endpoint, **DUMMY_CREDENTIALS}, args=SEAL)
    assert result.returncode == 2 and result.stdout == ""
    assert "role.allow_install is false" in result.stderr
    assert tags_of(aws_endpoint, arn) == [INSTALL_TAG, OTHER_TAG]


def test_the_seal_socket_is_root_only_one_run_per_connection_and_hardened_like_the_password_socket():
    socket_unit = parse_unit(UNIT_DIR / "nextcloud-admin-seal.socket")
    password_socket = parse_unit(UNIT_DIR / "nextcloud-admin-password.socket")
    assert socket_unit["Socket"]["ListenStream"] == ["/run/nextcloud-admin/seal.sock"]  # beside password.sock
    assert {k: v for k, v in socket_unit["Socket"].items() if k != "ListenStream"} == {
        k: v for k, v in password_socket["Socket"].items() if k != "ListenStream"}
    assert socket_unit["Socket"]["SocketMode"] == ["0600"] and socket_unit["Socket"]["Accept"] == ["yes"]
    # Enabled at bake like every overlay unit with an [Install] section (image/scripts/install-units.sh).
    assert socket_unit["Install"]["WantedBy"] == ["sockets.target"]
    assert socket_unit["Unit"]["DefaultDependencies"] == ["no"]

    service = parse_unit(UNIT_DIR / "nextcloud-admin-seal@.service")["Service"]
    password_service = parse_unit(UNIT_DIR / "nextcloud-admin-password@.service")["Service"]
    assert service["ExecStart"] == ["/usr/local/libexec/nextcloud-image/resolve-secrets --seal-admin-password"]
    assert service["SyslogIdentifier"] == ["nextcloud-admin-seal"]
    different = {"ExecStart", "SyslogIdentifier"}
    assert {k: v for k, v in service.items() if k not in different} == {
        k: v for k, v in password_service.items() if k not in different}, "the same sandbox as the password's"
    assert (service["StandardOutput"], service["StandardError"]) == (["socket"], ["journal"])

    # The container mounts the directory, so the cluster init reaches both sockets; the unit pulls both in.
    nextcloud = parse_unit(NEXTCLOUD_UNIT)
    assert {"nextcloud-admin-password.socket", "nextcloud-admin-seal.socket"} <= set(words(nextcloud, "Unit", "Wants"))
    assert "nextcloud-admin-seal.socket" in words(nextcloud, "Unit", "After")
    assert "-v /run/nextcloud-admin:/run/nextcloud-admin:ro" in nextcloud["Service"]["ExecStart"][0]
