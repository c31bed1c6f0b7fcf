"""Secret references: the one definition of what a reference looks like, for render and for the image.

``render/settings/`` checks every ``secrets.*`` setting with :func:`classify`. ``inv render`` also writes
:func:`contract_document` to ``build/<env>/secret-references.json``; the bake installs it as
``/usr/local/share/nextcloud-image/secret-references.json`` and the boot-time resolver
(``image/rootfs/usr/local/libexec/nextcloud-image/resolve-secrets``) parses references with exactly these patterns,
in this order. A reference that passes render therefore parses at boot, and one the image would refuse is refused
by render first. Change the grammar here, nowhere else.

Only the standard library: the document is data (JSON, Python ``re`` syntax), read by the image's own Python.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

SCHEMA = 1
LITERAL_PREFIX = "literal:"

# Settings field → the environment variable the instance receives the value as (the contract with the image's
# resolver and its cluster init). Every one of them must be in the user data; only these may resolve to "".
SECRET_VARIABLES = {
    "db_password": "NEXTCLOUD_DB_PASSWORD",
    "redis_password": "NEXTCLOUD_REDIS_PASSWORD",
    "instanceid": "NEXTCLOUD_INSTANCEID",
    "passwordsalt": "NEXTCLOUD_PASSWORDSALT",
    "secret": "NEXTCLOUD_SECRET",
    "admin_password": "NEXTCLOUD_ADMIN_PASSWORD",
}
# "No password" is a legitimate Redis setting (ElastiCache without AUTH); an empty DB password, salt or secret is not.
MAY_BE_EMPTY = ("redis_password",)

# AWS partitions and region codes (aws, aws-cn, aws-us-gov, the ISO partitions, the European Sovereign Cloud).
PARTITION = r"aws(?:-cn|-us-gov|-iso|-iso-[bef]|-eusc)?"
REGION = r"(?:[a-z]{2}|eusc-[a-z]{2})(?:-gov|-iso[a-z]?)?-[a-z]+-\d{1,2}"
ACCOUNT = r"\d{12}"
# Secrets Manager secret names: 1-512 ASCII letters, digits and /_+=.@- (CreateSecret's Name).
SECRET_NAME = r"[A-Za-z0-9/_+=.@-]{1,512}"
# SSM parameter names: letters, digits and _.-, "/" between at most 15 levels, 1011 characters at most; never an
# empty level or a trailing "/" (GetParameter refuses both with a ValidationException).
_SSM_LEVEL = r"[A-Za-z0-9_.-]+"
SSM_PATH = rf"(?=[^\n]{{1,1011}}\Z)/{_SSM_LEVEL}(?:/{_SSM_LEVEL}){{0,14}}"
SSM_ARN_NAME = rf"{_SSM_LEVEL}(?:/{_SSM_LEVEL}){{0,14}}"


@dataclass(frozen=True)
class Form:
    """One kind of reference: ``scheme`` says a reference means this form, ``pattern`` (fullmatch) says it is valid.

    Named groups: ``region`` (fixed by the reference; absent = the instance's region) and ``target`` (what is
    fetched; absent = the whole reference).
    """

    kind: str  # "secretsmanager" | "ssm": the AWS API that resolves it
    what: str
    example: str
    scheme: str
    pattern: str


FORMS = (
    Form(
        kind="secretsmanager",
        what="Secrets Manager ARN",
        example="arn:aws:secretsmanager:<region>:<12-digit account>:secret:<name>",
        scheme=r"arn:[^:]*:secretsmanager:",
        pattern=rf"arn:{PARTITION}:secretsmanager:(?P<region>{REGION}):{ACCOUNT}:secret:{SECRET_NAME}",
    ),
    Form(
        kind="ssm",
        what="SSM parameter ARN",
        example="arn:aws:ssm:<region>:<12-digit account>:parameter/<name>",
        scheme=r"arn:[^:]*:ssm:",
        # GetParameter takes the full ARN as Name, which also reaches parameters shared from another account.
        pattern=rf"arn:{PARTITION}:ssm:(?P<region>{REGION}):{ACCOUNT}:parameter/{SSM_ARN_NAME}",
    ),
    Form(
        kind="ssm",
        what="SSM parameter reference",
        example="ssm:/<name>",
        scheme=r"ssm:",
        pattern=rf"ssm:(?P<target>{SSM_PATH})",
    ),
)

FORMS_HELP = ", ".join(f.example for f in FORMS) + f", or (local environment only) {LITERAL_PREFIX}<value>"


@dataclass(frozen=True)
class Reference:
    kind: str  # "literal" | "secretsmanager" | "ssm"
    target: str  # the ARN or parameter name; "" for literals
    region: str | None  # fixed by the reference; None = the instance's region
    literal: str | None = None


class InvalidReference(ValueError):
    """Not a reference; the message says which form was expected and never quotes the value (it may be a secret)."""


def classify(ref: str) -> Reference:
    """Parse one reference exactly as the image's resolver does (same forms, same order, same patterns)."""
    if ref.startswith(LITERAL_PREFIX):
        return Reference("literal", "", None, literal=ref[len(LITERAL_PREFIX) :])
    for form in FORMS:
        if re.match(form.scheme, ref):
            match = re.fullmatch(form.pattern, ref)
            if not match:
                raise InvalidReference(f"not a valid {form.what}: write {form.example}")
            groups = match.groupdict()
            return Reference(form.kind, groups.get("target") or ref, groups.get("region"))
    raise InvalidReference(
        f"not a secret reference: write {FORMS_HELP} (a plain value needs the {LITERAL_PREFIX!r} prefix)"
    )


def contract_document() -> dict[str, object]:
    """What the image's resolver reads at boot (``secret-references.json``): forms, variables, which may be empty."""
    return {
        "schema": SCHEMA,
        "literal_prefix": LITERAL_PREFIX,
        "region": REGION,
        "forms": [
            {"kind": f.kind, "what": f.what, "example": f.example, "scheme": f.scheme, "pattern": f.pattern}
            for f in FORMS
        ],
        "forms_help": FORMS_HELP,
        "variables": dict(sorted(SECRET_VARIABLES.items())),
        "may_be_empty": sorted(SECRET_VARIABLES[f] for f in MAY_BE_EMPTY),
    }


def render_contract() -> str:
    """``build/<env>/secret-references.json``: deterministic bytes (it is a build input, so part of the fingerprint)."""
    return json.dumps(contract_document(), indent=2, sort_keys=True) + "\n"
