"""What every settings module shares: the error type, name and address patterns, and the override prefix."""

from __future__ import annotations

import ipaddress
import re

from render.secret_refs import REGION as _REGION_PATTERN
from render.secret_refs import classify

ENV_PREFIX = "NCIMAGE_"

# Every pattern is used with fullmatch: Python's `$` also matches before a final newline.
_REGION = re.compile(_REGION_PATTERN)
_SSM_PARAMETER = re.compile(r"/[A-Za-z0-9/_.-]{1,1010}")
_HOSTNAME = re.compile(
    r"(?=.{1,253}\Z)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
_NAME = re.compile(r"[a-z][a-z0-9-]{0,30}[a-z0-9]")
_AWS_NAME = re.compile(r"[A-Za-z0-9()./_-]{3,128}")
_INSTANCE_TYPE = re.compile(r"[a-z][a-z0-9-]*\d[a-z0-9-]*\.(nano|micro|small|medium|large|metal|\d*xlarge)")


class SettingsError(Exception):
    """Settings could not be loaded; ``problems`` lists one line per problem, each naming field and fix."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: invalid settings\n" + "\n".join(f"  - {p}" for p in problems))


SecretRef = str


def secret_ref_kind(ref: str) -> str:
    """Classify a secret reference: 'literal', 'secretsmanager' or 'ssm'; raise ValueError with a fix otherwise."""
    return classify(ref).kind


def _port_ok(port: str | None) -> bool:
    return port is None or (port.isdigit() and 1 <= int(port) <= 65535)


def _is_ip(v: str) -> bool:
    try:
        ipaddress.ip_address(v)
    except ValueError:
        return False
    return True
