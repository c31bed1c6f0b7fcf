"""infra.aws.session against the emulator: the preflight's refusals, the endpoint variables, the dry-run guard."""

from __future__ import annotations

import pytest

from infra.aws.session import Aws, AwsError, DryRunViolation


def test_preflight_answers_the_caller_and_honours_the_endpoint_variable(aws):
    ctx = Aws(region="eu-central-1")
    identity = ctx.preflight()
    assert identity.account == aws.account
    assert ctx.client("ec2").meta.endpoint_url == aws.url
    assert ctx.custom_endpoint("ec2") == aws.url


def test_a_service_specific_endpoint_variable_wins(aws, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_EC2", aws.url + "/")
    assert Aws(region="eu-central-1").client("ec2").meta.endpoint_url.rstrip("/") == aws.url


def test_without_any_endpoint_variable_the_endpoint_is_aws_own(aws, monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    ctx = Aws(region="eu-central-1")
    assert ctx.client("ec2").meta.endpoint_url == "https://ec2.eu-central-1.amazonaws.com"
    assert ctx.custom_endpoint("ec2") is None


def test_missing_credentials_are_refused_with_the_fix(aws, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(AwsError, match="no AWS credentials found.*aws sso login"):
        Aws(region="eu-central-1").preflight()


def test_an_account_the_environment_does_not_allow_is_refused(aws):
    with pytest.raises(AwsError, match=r"account 123456789012 .* only account 210987654321"):
        Aws(region="eu-central-1", account_id="210987654321").preflight()


def test_a_region_the_settings_do_not_name_is_refused(aws, monkeypatch):
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    with pytest.raises(AwsError, match="us-east-1.*eu-central-1"):
        Aws(region="eu-central-1").preflight()
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with pytest.raises(AwsError, match="us-east-1.*eu-central-1"):
        Aws(region="eu-central-1").preflight()
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    Aws(region="eu-central-1", other_regions=("eu-west-1",)).preflight()


def test_a_dry_run_refuses_every_mutating_call_before_it_is_sent(aws):
    ctx = Aws(region="eu-central-1", dry_run=True)
    ctx.preflight()
    ctx.client("sts").get_caller_identity()
    before = aws.client("ec2").describe_key_pairs()["KeyPairs"]
    with pytest.raises(DryRunViolation, match="ec2:CreateKeyPair"):
        ctx.client("ec2").create_key_pair(KeyName="should-not-exist")
    assert aws.client("ec2").describe_key_pairs()["KeyPairs"] == before
    assert ("ec2", "CreateKeyPair") not in aws.calls


def test_retries_use_botocore_retry_modes(aws, monkeypatch):
    assert Aws.client_config().retries == {"mode": "standard", "max_attempts": 8}
    monkeypatch.setenv("AWS_RETRY_MODE", "adaptive")
    assert Aws(region="eu-central-1").client("sts").meta.config.retries["mode"] == "adaptive"
    monkeypatch.setenv("AWS_RETRY_MODE", "sometimes")
    with pytest.raises(AwsError, match="AWS_RETRY_MODE"):
        Aws.client_config()


def test_the_socket_guard_refuses_an_emulator_address():
    import socket

    s = socket.socket()
    try:
        with pytest.raises(AssertionError, match="only loopback"):
            s.connect(("10.0.0.5", 22))
    finally:
        s.close()
