"""Shared by the host's AWS-facing helpers (liveness-watchdog, forward-journal): who this instance is (IMDSv2
only, never through a proxy) and boto3 clients with the instance role, botocore's standard retries and the
endpoint variables honoured (AWS_ENDPOINT_URL[_<SERVICE>]: Debian 12's botocore predates native support).
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from typing import Any

IMDS_DEFAULT_ENDPOINT = "http://169.254.169.254"


class MetadataError(Exception):
    """The instance metadata service did not answer; the message says what was asked."""


def imds_get(path: str, timeout: float = 2.0) -> str:
    """One IMDSv2 document (a session token first; IMDSv1 is never used)."""
    endpoint = os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT", IMDS_DEFAULT_ENDPOINT).rstrip("/")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        token_request = urllib.request.Request(
            f"{endpoint}/latest/api/token", method="PUT", headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"}
        )
        with opener.open(token_request, timeout=timeout) as response:
            token = response.read().decode("ascii").strip()
        request = urllib.request.Request(f"{endpoint}{path}", headers={"X-aws-ec2-metadata-token": token})
        with opener.open(request, timeout=timeout) as response:
            return response.read().decode("ascii").strip()
    except (urllib.error.URLError, OSError, UnicodeDecodeError) as exc:
        raise MetadataError(f"{endpoint}{path}: {type(exc).__name__}: {getattr(exc, 'reason', exc)}") from None


def instance_id() -> str:
    value = imds_get("/latest/meta-data/instance-id")
    if not value.startswith("i-"):
        raise MetadataError("the metadata service returned something that is not an instance id")
    return value


def client(service: str, region: str, agent: str) -> Any:
    """A boto3 client for ``service`` in ``region`` (default credential chain: the instance role)."""
    import boto3
    import botocore.config

    suffix = {"autoscaling": "AUTO_SCALING", "logs": "CLOUDWATCH_LOGS", "secretsmanager": "SECRETS_MANAGER"}.get(
        service, service.upper())
    endpoint = os.environ.get(f"AWS_ENDPOINT_URL_{suffix}") or os.environ.get("AWS_ENDPOINT_URL") or None
    retries: dict[str, Any] = {"mode": "standard"}
    if not os.environ.get("AWS_MAX_ATTEMPTS"):
        retries["max_attempts"] = 5
    config = botocore.config.Config(retries=retries, connect_timeout=5, read_timeout=15, user_agent_extra=agent)
    return boto3.session.Session().client(service, region_name=region, endpoint_url=endpoint, config=config)
