"""Pin the Nextcloud image by digest on the host, before a bake, when the settings give only a tag.

The digest is asked of a Docker-compatible engine through the ``docker`` SDK (``DOCKER_HOST`` or the default
socket: Docker on a CI runner or an operator's machine, or Podman's API service). Docker answers from the
registry without pulling (``GET /distribution/<ref>/json``: the manifest or index digest, valid for every
architecture); Podman does not implement that endpoint, so there the image is pulled and its ``RepoDigests``
read. Registry credentials are the engine's own business (``docker login``, a credential helper); none pass
through here. Where no engine answers and the reference is not pinned, the bake is refused.
"""

from __future__ import annotations

import re
from typing import Any

from infra.errors import PipelineError

_PINNED = re.compile(r".+@sha256:[0-9a-f]{64}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


class DigestError(PipelineError, RuntimeError):
    """The digest of an unpinned image reference could not be found; the message says why and what to do."""


def split_reference(ref: str) -> tuple[str, str]:
    """``registry:5000/ns/name:tag`` → (``registry:5000/ns/name``, ``tag``)."""
    repo, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag or not repo:
        raise DigestError(f"nextcloud.image {ref!r} has no tag: write repo:tag (or repo:tag@sha256:<digest>)")
    return repo, tag


def _client() -> Any:
    import docker  # the SDK talks to whatever engine DOCKER_HOST names

    try:
        client = docker.from_env(timeout=60)
        client.ping()
        return client
    except docker.errors.DockerException as exc:
        raise DigestError(str(exc)) from None


def resolve_image_digest(ref: str, client: Any = None) -> str:
    """``ref`` pinned: ``repo:tag@sha256:<digest>``; unchanged when it already is."""
    if _PINNED.fullmatch(ref):
        return ref
    repo, tag = split_reference(ref)
    fix = (
        f"pin it in the settings (nextcloud.image = \"{ref}@sha256:…\"; `docker buildx imagetools inspect {ref}` "
        "prints the digest), or run build-ami where a Docker-compatible engine is reachable (DOCKER_HOST)"
    )
    if client is None:
        try:
            client = _client()
        except DigestError as exc:
            raise DigestError(
                f"nextcloud.image {ref!r} is not pinned by digest and no Docker-compatible engine answers "
                f"({exc}): {fix}; nothing was changed"
            ) from None
    import docker

    try:
        engine = " ".join(c.get("Name", "") for c in client.version().get("Components") or [])
        podman = "Podman" in engine
        digest = _digest_by_pull(client, repo, tag) if podman else client.images.get_registry_data(ref).id
    except docker.errors.DockerException as exc:
        raise DigestError(f"cannot resolve the digest of nextcloud.image {ref!r}: {exc}; {fix}") from None
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise DigestError(f"the engine answered {digest!r} as the digest of {ref!r}, not sha256:<64 hex>; {fix}")
    return f"{repo}:{tag}@{digest}"


def _digest_by_pull(client: Any, repo: str, tag: str) -> str:
    image = client.images.pull(repo, tag=tag)
    digests = {d.rpartition("@")[2] for d in image.attrs.get("RepoDigests") or [] if _names(d.rpartition("@")[0], repo)}
    if len(digests) != 1:
        raise DigestError(f"the engine lists {sorted(digests) or 'no'} digests for {repo}:{tag} after pulling it")
    return digests.pop()


def _names(listed: str, repo: str) -> bool:
    """Whether the engine's repository name ``listed`` is ``repo`` (Podman spells out docker.io/library/)."""
    def norm(name: str) -> str:
        if "/" not in name:
            name = f"library/{name}"
        first = name.split("/", 1)[0]
        if "." not in first and ":" not in first and first != "localhost":
            name = f"docker.io/{name}"
        return name

    return norm(listed) == norm(repo)
