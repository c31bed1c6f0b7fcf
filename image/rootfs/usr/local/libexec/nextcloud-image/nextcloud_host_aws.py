"""Shared by the host's AWS-facing helpers (resolve-secrets, liveness-watchdog, forward-journal): who and where this
instance is (IMDSv2 only, never through a proxy) and boto3 clients with the instance role, botocore's standard
retries and the endpoint variables honoured (AWS_ENDPOINT_URL[_<SERVICE>]: Debian 12's botocore predates native
support).

The helpers run as `python3 -I` (no script directory on sys.path): each puts its own directory on sys.path before
importing this module, which is baked beside them.
"""

from __future__ import annotations

import os
import re
import time
import urllib.error
import urllib.request
from typing import Any

IMDS_DEFAULT_ENDPOINT = "http://169.254.169.254"
# Only a sanity check of what the metadata service answers.
REGION_RE = re.compile(r"[a-z]{2,4}(?:-[a-z]+)+-\d+\Z")
# botocore's AWS_ENDPOINT_URL_<SERVICE> names (the service id in upper snake case) where it is not just the
# client name in upper case.
ENDPOINT_SUFFIX = {"autoscaling": "AUTO_SCALING", "logs": "CLOUDWATCH_LOGS", "secretsmanager": "SECRETS_MANAGER"}


class MetadataError(Exception):
    """The instance metadata service did not answer; the message says what was asked, ``reason`` what went wrong."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message


def imds_endpoint() -> str:
    """The metadata service's base URL (AWS_EC2_METADATA_SERVICE_ENDPOINT, as botocore reads it)."""
    return os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT", IMDS_DEFAULT_ENDPOINT).rstrip("/")


def imds_get(path: str, timeout: float = 2.0) -> str:
    """One IMDSv2 document (a session token first; IMDSv1 is never used)."""
    endpoint = imds_endpoint()
    # IMDS must never go through an HTTP proxy configured for the rest of the system.
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
        reason = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
        raise MetadataError(f"{endpoint}{path}: {reason}", reason) from None


def instance_id() -> str:
    value = imds_get("/latest/meta-data/instance-id")
    if not value.startswith("i-"):
        raise MetadataError("the metadata service returned something that is not an instance id")
    return value


def imds_region(timeout: float = 2.0, attempts: int = 3) -> str:
    """The instance's region, asked up to ``attempts`` times with backoff (at boot the network may still lag)."""
    reason = ""
    for attempt in range(attempts):
        if attempt:
            time.sleep(0.5 * 2**attempt)
        try:
            value = imds_get("/latest/meta-data/placement/region", timeout)
        except MetadataError as exc:
            reason = exc.reason
            continue
        if REGION_RE.match(value):
            return value
        reason = "the metadata service returned something that is not a region name"
    raise MetadataError(f"{imds_endpoint()}/latest/meta-data/placement/region: {reason}", reason)


def endpoint_url(service: str) -> str | None:
    """AWS_ENDPOINT_URL_<SERVICE>, else AWS_ENDPOINT_URL, else None (AWS itself)."""
    suffix = ENDPOINT_SUFFIX.get(service, service.upper())
    return os.environ.get(f"AWS_ENDPOINT_URL_{suffix}") or os.environ.get("AWS_ENDPOINT_URL") or None


def client(service: str, region: str, agent: str, *, max_attempts: int = 5, session: Any = None) -> Any:
    """A boto3 client for ``service`` in ``region`` (default credential chain: the instance role).

    Standard retry mode retries throttling, 5xx and connection errors with backoff, ``max_attempts`` times unless
    AWS_MAX_ATTEMPTS says otherwise. ``session`` lets a caller share one boto3 session (one credential lookup)
    between its clients.
    """
    import boto3
    import botocore.config

    retries: dict[str, Any] = {"mode": "standard"}
    if not os.environ.get("AWS_MAX_ATTEMPTS"):
        retries["max_attempts"] = max_attempts
    config = botocore.config.Config(retries=retries, connect_timeout=5, read_timeout=15, user_agent_extra=agent)
    session = session if session is not None else boto3.session.Session()
    return session.client(service, region_name=region, endpoint_url=endpoint_url(service), config=config)
