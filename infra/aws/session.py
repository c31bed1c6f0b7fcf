"""One way to talk to AWS, used by every task that does.

- Credentials and region come from the standard chain (environment, profiles, SSO, instance role); clients are
  always created for the environment's own region (``settings.region``) unless a call names another one.
- Endpoints: boto3 itself honours ``AWS_ENDPOINT_URL`` and ``AWS_ENDPOINT_URL_<SERVICE>`` (and the profile's
  ``endpoint_url``); :meth:`Aws.custom_endpoint` tells other programs (Packer) where that is.
- Retries and throttling: botocore's retry modes (``standard`` by default, ``AWS_RETRY_MODE=adaptive`` honoured),
  never a hand-written loop.
- :meth:`Aws.preflight` runs ``sts:GetCallerIdentity`` before anything else and turns missing or expired
  credentials, a region the settings do not name, and an account the environment does not allow into one clear
  :class:`AwsError` naming the fix.
- ``dry_run=True`` installs a guard in front of every request: an operation that is not read-only is refused
  before it is sent (:class:`DryRunViolation`), so a dry run cannot change anything even by mistake.

Tests observe every request the production code makes through :data:`CALL_OBSERVERS` (the IAM policy check).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import boto3
import botocore.exceptions
from botocore.config import Config

from infra.errors import PipelineError

# Operation-name prefixes that never change anything (IAM calls these the List/Read access levels).
READ_ONLY_PREFIXES = ("Describe", "List", "Get", "Head", "Lookup", "Search", "Validate", "Estimate", "Detect")

# Observers of every request made through an :class:`Aws` (service name as boto3 spells it, operation name).
# Empty in production; the tests add one to prove the IAM policy covers every call the code makes.
CALL_OBSERVERS: list[Callable[[str, str], None]] = []

_CREDENTIAL_ERRORS = {
    "ExpiredToken", "ExpiredTokenException", "RequestExpired", "InvalidClientTokenId", "UnrecognizedClientException",
    "SignatureDoesNotMatch", "InvalidToken", "AuthFailure",
}
_ACCOUNT = re.compile(r"^\d{12}$")


class AwsError(PipelineError, RuntimeError):
    """An AWS operation cannot go on; the message says what is wrong and how to fix it (exit 2 unless told)."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message, exit_code=exit_code)


class DryRunViolation(AwsError):
    """A dry run tried to make a call that changes something: a bug, refused before it reached AWS."""

    def __init__(self, service: str, operation: str):
        super().__init__(
            f"dry run: refused {service}:{operation}, which would change something (nothing was sent)", exit_code=70
        )


@dataclass(frozen=True)
class CallerIdentity:
    account: str
    arn: str
    user_id: str


def is_read_only(operation: str) -> bool:
    """True for operations that only read (Describe*, List*, Get*, ...)."""
    return operation.startswith(READ_ONLY_PREFIXES)


def chain_region() -> str | None:
    """The region the standard chain selects (AWS_REGION, AWS_DEFAULT_REGION, the profile), or None."""
    try:
        return boto3.session.Session().region_name
    except botocore.exceptions.BotoCoreError:
        return None


@dataclass
class Aws:
    """AWS clients for one environment: its region, its allowed account, optionally a guarded dry run."""

    region: str
    other_regions: tuple[str, ...] = ()
    account_id: str | None = None
    dry_run: bool = False
    # Extra operations a dry run may make although they are not read-only (e.g. a change set that is only
    # described and then deleted). Each is named by the caller on purpose.
    allow_in_dry_run: frozenset[str] = frozenset()
    session: boto3.session.Session | None = None
    _clients: dict[tuple[str, str], Any] = field(default_factory=dict, repr=False)
    identity: CallerIdentity | None = None

    @classmethod
    def for_settings(cls, settings: Any, *, dry_run: bool = False, allow_in_dry_run: Iterable[str] = ()) -> Aws:
        """The clients of an environment: ``settings.region``, ``settings.ami.regions``, ``settings.account_id``."""
        return cls(
            region=settings.region,
            other_regions=tuple(getattr(getattr(settings, "ami", None), "regions", ()) or ()),
            account_id=getattr(settings, "account_id", None),
            dry_run=dry_run,
            allow_in_dry_run=frozenset(allow_in_dry_run),
        )

    def __post_init__(self) -> None:
        if self.session is None:
            try:
                self.session = boto3.session.Session()
            except botocore.exceptions.ProfileNotFound as exc:
                raise AwsError(f"{exc}: set AWS_PROFILE to a profile in ~/.aws/config, or unset it") from None
        self.session.events.register_first("before-call", self._guard)
        self.session.events.register("before-call", self._observe)

    # ---- requests ---------------------------------------------------------------------------------------
    def _guard(self, model: Any, **_: Any) -> None:
        if self.dry_run and not is_read_only(model.name) and model.name not in self.allow_in_dry_run:
            raise DryRunViolation(model.service_model.service_name, model.name)

    def _observe(self, model: Any, **_: Any) -> None:
        for observer in CALL_OBSERVERS:
            observer(model.service_model.service_name, model.name)

    @staticmethod
    def client_config() -> Config:
        """Retries through botocore's retry modes; AWS_RETRY_MODE / AWS_MAX_ATTEMPTS override the defaults."""
        mode = os.environ.get("AWS_RETRY_MODE") or "standard"
        if mode not in ("standard", "adaptive", "legacy"):
            raise AwsError(f"AWS_RETRY_MODE={mode!r}: use standard or adaptive")
        try:
            attempts = int(os.environ.get("AWS_MAX_ATTEMPTS") or 8)
        except ValueError:
            raise AwsError("AWS_MAX_ATTEMPTS must be a whole number such as 8") from None
        return Config(retries={"mode": mode, "max_attempts": attempts}, user_agent_appid="nextcloud-image")

    def client(self, service: str, region: str | None = None) -> Any:
        """A cached boto3 client of ``service`` in ``region`` (default: the environment's region)."""
        region = region or self.region
        key = (service, region)
        if key not in self._clients:
            assert self.session is not None
            self._clients[key] = self.session.client(service, region_name=region, config=self.client_config())
        return self._clients[key]

    def custom_endpoint(self, service: str, region: str | None = None) -> str | None:
        """The endpoint URL boto3 uses for ``service`` when it is not AWS's own (AWS_ENDPOINT_URL...), else None.

        This is what other programs (Packer's ``custom_endpoint_ec2``) must be given to reach the same place.
        """
        url = self.client(service, region).meta.endpoint_url
        host = re.sub(r"^https?://", "", url).split("/", 1)[0]
        return None if host.endswith((".amazonaws.com", ".amazonaws.com.cn", ".api.aws")) else url

    # ---- who are we -------------------------------------------------------------------------------------
    def preflight(self) -> CallerIdentity:
        """sts:GetCallerIdentity, the chain's region and the allowed account, checked before anything starts."""
        # boto3 reads AWS_DEFAULT_REGION and the profile; other SDKs and CI actions set AWS_REGION: check both.
        configured = os.environ.get("AWS_REGION") or (self.session.region_name if self.session else None)
        allowed = {self.region, *self.other_regions}
        if configured and configured not in allowed:
            raise AwsError(
                f"the AWS region configured for this shell is {configured} (AWS_REGION, AWS_DEFAULT_REGION or the "
                f"profile), but the environment runs in {', '.join(sorted(allowed))}: unset it or set it to "
                f"{self.region}; nothing was changed"
            )
        try:
            answer = self.client("sts").get_caller_identity()
        except botocore.exceptions.NoCredentialsError:
            raise AwsError(
                "no AWS credentials found: configure the standard chain (AWS_PROFILE with `aws sso login`, "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or an instance role); nothing was changed"
            ) from None
        except (botocore.exceptions.TokenRetrievalError, botocore.exceptions.SSOTokenLoadError) as exc:
            raise AwsError(f"the SSO session has expired ({exc}): run `aws sso login`; nothing was changed") from None
        except botocore.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in _CREDENTIAL_ERRORS:
                raise AwsError(
                    f"the AWS credentials were refused ({code}): they are expired or invalid; renew them "
                    "(`aws sso login`, or new keys) and try again; nothing was changed"
                ) from None
            raise AwsError(f"sts:GetCallerIdentity failed ({code}): {exc}; nothing was changed") from None
        except botocore.exceptions.EndpointConnectionError as exc:
            raise AwsError(
                f"cannot reach AWS ({exc}); check the network, AWS_ENDPOINT_URL and the region; nothing was changed"
            ) from None
        identity = CallerIdentity(answer["Account"], answer["Arn"], answer["UserId"])
        if self.account_id and identity.account != self.account_id:
            raise AwsError(
                f"these credentials are for account {identity.account} ({identity.arn}), but the environment allows "
                f"only account {self.account_id} (account_id in its settings): switch profile; nothing was changed"
            )
        self.identity = identity
        return identity


def describe_client_error(exc: BaseException) -> str:
    """One line for an AWS error: its code and message (never a traceback)."""
    if isinstance(exc, botocore.exceptions.ClientError):
        err = exc.response.get("Error", {})
        return f"{err.get('Code', 'Error')}: {err.get('Message', str(exc))}"
    return str(exc)


def valid_account(value: str) -> bool:
    return bool(_ACCOUNT.match(value))
