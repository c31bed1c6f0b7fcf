"""Read a container registry over the OCI distribution API: a repository's tags and a tag's manifest digest.

No engine is needed (check-updates runs anywhere a workflow does). Authentication follows the distribution spec's
token flow: a request answered 401 with ``WWW-Authenticate: Bearer realm=…,service=…`` is retried once with an
anonymous (or basic-authenticated) token for ``repository:<name>:pull`` — how Docker Hub serves public images.
ECR answers with ``Basic`` and wants the credentials ``ecr:GetAuthorizationToken`` returns: pass them as
``basic_auth``. Registries on loopback are spoken to over plain HTTP (the twin's and the tests' registry); every
other registry over HTTPS only.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from infra.errors import PipelineError

DOCKER_HUB = "registry-1.docker.io"
# The manifest media types a multi-arch tag (an index) or a single-platform one may answer with; the digest of
# what the registry answers is the digest `docker pull` records as RepoDigests.
MANIFEST_TYPES = ", ".join([
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


class RegistryError(PipelineError, RuntimeError):
    """The registry could not be read; the message names the registry, what failed and what to check."""


@dataclass(frozen=True)
class ImageReference:
    registry: str  # host[:port]; Docker Hub is registry-1.docker.io
    repository: str  # e.g. library/nextcloud
    tag: str | None
    digest: str | None

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"


def parse_reference(ref: str) -> ImageReference:
    """Split ``[registry/]repo[:tag][@sha256:…]`` the way Docker does (no registry → Docker Hub, ``library/``)."""
    rest, _, digest = ref.partition("@")
    first, _, remainder = rest.partition("/")
    if remainder and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, remainder
    else:
        registry, path = DOCKER_HUB, rest
    name, _, tag = path.rpartition(":") if ":" in path else (path, "", "")
    if registry == DOCKER_HUB and "/" not in name:
        name = f"library/{name}"
    if digest and not _DIGEST.fullmatch(digest):
        raise RegistryError(f"{ref!r}: the digest must be sha256:<64 hex>")
    return ImageReference(registry, name, tag or None, digest or None)


def _is_loopback(registry: str) -> bool:
    host = registry.rsplit(":", 1)[0] if registry.count(":") == 1 else registry
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, params = header.partition(" ")
    return scheme.lower(), dict(re.findall(r'(\w+)="([^"]*)"', params))


class RegistryClient:
    """Tags and digests of one registry; ``basic_auth`` is (user, password) where the registry wants them."""

    def __init__(self, registry: str, *, basic_auth: tuple[str, str] | None = None, timeout: float = 20.0):
        self.registry = registry
        self.scheme = "http" if _is_loopback(registry) else "https"
        self.basic_auth = basic_auth
        self.timeout = timeout
        self._tokens: dict[str, str] = {}

    def _basic(self) -> str:
        assert self.basic_auth is not None
        return "Basic " + base64.b64encode(":".join(self.basic_auth).encode()).decode()

    def _token(self, header: str, repository: str) -> str:
        scheme, params = _challenge(header)
        if scheme == "basic":
            if not self.basic_auth:
                raise RegistryError(f"{self.registry} wants credentials (Basic); none were given")
            return self._basic()
        if scheme != "bearer" or "realm" not in params:
            raise RegistryError(f"{self.registry} answered 401 with an unknown challenge {header!r}")
        query = {"scope": f"repository:{repository}:pull"}
        if "service" in params:
            query["service"] = params["service"]
        req = urllib.request.Request(f"{params['realm']}?{urllib.parse.urlencode(query)}")
        if self.basic_auth:
            req.add_header("Authorization", self._basic())
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310 - registry's own realm
                answer = json.load(resp)
        except (OSError, ValueError) as exc:
            raise RegistryError(f"{self.registry}: no pull token from {params['realm']} ({exc})") from None
        token = answer.get("token") or answer.get("access_token")
        if not token:
            raise RegistryError(f"{self.registry}: the token service answered no token")
        return f"Bearer {token}"

    def _request(self, method: str, path: str, repository: str, accept: str | None = None):
        url = f"{self.scheme}://{self.registry}{path}"
        for attempt in (1, 2):
            req = urllib.request.Request(url, method=method)
            if accept:
                req.add_header("Accept", accept)
            if repository in self._tokens:
                req.add_header("Authorization", self._tokens[repository])
            try:
                return urllib.request.urlopen(req, timeout=self.timeout)  # noqa: S310 - https, or loopback http
            except urllib.error.HTTPError as exc:
                if exc.code == 401 and attempt == 1 and "WWW-Authenticate" in exc.headers:
                    self._tokens[repository] = self._token(exc.headers["WWW-Authenticate"], repository)
                    continue
                if exc.code == 404:
                    raise RegistryError(f"{self.registry}/{repository}: {path.rsplit('/', 1)[-1]} not found") from None
                raise RegistryError(f"{self.registry}: {method} {path} answered {exc.code} {exc.reason}") from None
            except OSError as exc:
                raise RegistryError(
                    f"cannot reach the registry {self.registry} ({exc}); check the network or the image reference"
                ) from None
        raise RegistryError(f"{self.registry}: {method} {path} was refused after authenticating")  # pragma: no cover

    def tags(self, repository: str) -> list[str]:
        """Every tag of ``repository``, following the ``Link`` pagination of the tags list."""
        found: list[str] = []
        path = f"/v2/{repository}/tags/list?n=1000"
        while path:
            with self._request("GET", path, repository) as resp:
                found += json.load(resp).get("tags") or []
                link = resp.headers.get("Link", "")
            match = re.match(r'<([^>]+)>;\s*rel="next"', link)
            path = match[1] if match else ""
        return found

    def digest(self, repository: str, tag: str) -> str:
        """The manifest digest the registry serves for ``tag`` (what a pull by that tag records)."""
        with self._request("HEAD", f"/v2/{repository}/manifests/{tag}", repository, accept=MANIFEST_TYPES) as resp:
            digest = resp.headers.get("Docker-Content-Digest", "")
        if not _DIGEST.fullmatch(digest):
            raise RegistryError(f"{self.registry}/{repository}:{tag}: the registry sent no manifest digest")
        return digest
