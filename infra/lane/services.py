"""The shared services a lane's Nextcloud nodes use, all on the host's loopback: a real PostgreSQL 15, a real
Redis that speaks TLS only (as ElastiCache with in-transit encryption; a throwaway CA made for the run), and an
S3 endpoint (moto's server: the S3 API, not AWS).

The containers use the host's network, so they reach these at 127.0.0.1/localhost like any host process. The
throwaway CA reaches a container as part of a CA bundle (the host's bundle plus the CA) mounted where OpenSSL
looks by default, because the image verifies Redis against the system bundle, as it does ElastiCache's.
"""

from __future__ import annotations

import contextlib
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra.localtwin.instance import free_port
from infra.localtwin.services import ThrowawayPostgres, ThrowawayRedis

SYSTEM_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
S3_REGION = "eu-central-1"
# moto accepts any key pair; these are not credentials of anything.
S3_KEY = "lane-test-key"


@dataclass
class S3Endpoint:
    """moto's server on 127.0.0.1 (``ThreadedMotoServer``): S3 buckets and objects over the S3 REST API."""

    port: int = field(default_factory=free_port)
    secret: str = field(default_factory=lambda: secrets.token_hex(16))
    _server: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.url, region_name=S3_REGION, aws_access_key_id=S3_KEY,
                            aws_secret_access_key=self.secret)

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": S3_REGION})
        return name

    def objects(self, bucket: str) -> dict[str, bytes]:
        """Every object of ``bucket`` with its content."""
        s3 = self.client()
        keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
                for o in page.get("Contents", [])]
        return {key: s3.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys}


class LaneServices(contextlib.ExitStack):
    """PostgreSQL, Redis with TLS and the S3 endpoint, started on enter and removed on exit."""

    def __init__(self, workdir: Path) -> None:
        super().__init__()
        self.workdir = workdir
        self.pg = ThrowawayPostgres(free_port(), "pg-" + secrets.token_hex(12))
        self.redis = ThrowawayRedis(free_port(), "rd-" + secrets.token_hex(12), tls=True)
        self.s3 = S3Endpoint()
        self.ca_bundle = workdir / "ca-bundle.crt"

    def __enter__(self) -> LaneServices:
        super().__enter__()
        try:
            self.enter_context(self.pg)
            self.enter_context(self.redis)
            self.s3.start()
            self.callback(self.s3.stop)
            system = SYSTEM_CA_BUNDLE.read_bytes() if SYSTEM_CA_BUNDLE.is_file() else b""
            self.workdir.mkdir(parents=True, exist_ok=True)
            self.ca_bundle.write_bytes(system + b"\n" + self.redis.ca_file.read_bytes())
        except BaseException:
            self.close()
            raise
        return self
