"""The stand-in for the official ``nextcloud:<version>-apache`` image (a TEST FIXTURE), built on the host as an OCI
image and cached, so the local twin's bake pulls it from a registry by digest exactly as an AWS bake pulls the
real image.

The official image cannot be pulled here, so this one is made to behave like it wherever boot behaviour depends on
it (README.md beside this file): two layers like the official image's two that matter,

1. a Debian bookworm root filesystem with Apache + mod_php 8.2 (``build-standin-rootfs.sh``, mmdebstrap), laid out
   like ``php:*-apache`` plus what nextcloud/docker's Dockerfile adds (``/var/www`` owned by www-data, the entrypoint
   hooks, an ``/entrypoint.sh`` with the official conventions);
2. ``/usr/src/nextcloud``: the fake code tree in ``nextcloud/`` (an ``occ`` test double, ``version.php`` written
   for the environment's ``nextcloud.version``) plus filler files that give the tree a real release's file count
   and unpacked size, owned ``nobody:nogroup`` with modes 0644/0755 as the release tarball is;

and the image configuration that changes how a container starts: ``VOLUME /var/www/html``,
``ENTRYPOINT ["/entrypoint.sh"]``, ``CMD ["apache2-foreground"]``, ``WORKDIR /var/www/html``, ``STOPSIGNAL SIGWINCH``.

The image is cached under ``build/cache/standin/<key>/`` (an OCI layout and ``standin.json``), ``key`` hashing every
file of this directory and the version, so the digest is known without a registry (the no-op rebuild resolves it in
milliseconds) and changes whenever the fixture does.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
FIXTURE_DIR = Path(__file__).resolve().parent
CODE_TREE = FIXTURE_DIR / "nextcloud"
ROOTFS_SCRIPT = FIXTURE_DIR / "build-standin-rootfs.sh"
DEFAULT_CACHE = REPO_ROOT / "build" / "cache" / "standin"
# Bump when the layout of the cache entry or of the image changes in a way the fixture's files do not show.
FORMAT = 2

# A real release's size, which the filler reproduces (README.md beside this file says where the figures come from):
# nextcloud:33.0.8-apache's layer that unpacks the release tarball into /usr/src/nextcloud is 264.4 MB compressed, the
# image is 1.44 GB on disk against 509 MB for its php:8.4-apache base (docker-library/repo-info), and the entrypoint's
# rsync copies "about 25k" files (nextcloud/helm#10, nextcloud/docker#2392).
RELEASE_FILES = 25_000
RELEASE_BYTES = 800_000_000
# Release tarballs: directories 0755, files 0644, owner nobody:nogroup (nextcloud-releases/server, package.sh);
# tar keeps the names, which are 65534:65534 on Debian.
CODE_OWNER = (65534, 65534, "nobody", "nogroup")
CODE_MTIME = 1_767_225_600  # 2026-01-01: fixed, so the same inputs give the same layer and digest anywhere
WEBROOT_VOLUME = "/var/www/html"

LAYER_MEDIA = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG_MEDIA = "application/vnd.oci.image.config.v1+json"
MANIFEST_MEDIA = "application/vnd.oci.image.manifest.v1+json"

Log = Callable[[str], None]


@dataclass(frozen=True)
class StandinImage:
    """A built stand-in image: an OCI layout on disk and the manifest digest every registry will report for it."""

    layout: Path
    repository: str
    tag: str
    digest: str  # sha256:<hex> of the image manifest
    version: str

    def reference(self, registry: str) -> str:
        """``registry/repository:tag@digest``: the digest-pinned reference a bake pulls."""
        return f"{registry}/{self.repository}:{self.tag}@{self.digest}"


def split_image(image: str) -> tuple[str, str]:
    """``nextcloud-standin:33.0.8-apache`` -> (``nextcloud-standin``, ``33.0.8-apache``); a digest is not allowed."""
    if "@" in image:
        raise ValueError(f"{image!r}: the stand-in is named by repository:tag; its digest comes from the build")
    repo, sep, tag = image.rpartition(":")
    if not sep or "/" in tag or not repo:
        raise ValueError(f"{image!r}: expected repository:tag such as nextcloud-standin:33.0.8-apache")
    return repo, tag


def version_php(version: str, template: str | None = None) -> str:
    """The fixture's version.php rewritten for ``version`` (X.Y.Z): the same variables as Nextcloud's version.php."""
    m = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", version)
    if not m:
        raise ValueError(f"nextcloud.version {version!r} is not X.Y.Z")
    major, minor, patch = (int(x) for x in m.groups())
    text = template if template is not None else (CODE_TREE / "version.php").read_text()
    replacements = (
        (r"\$OC_Version = array\([^)]*\);", f"$OC_Version = array({major}, {minor}, {patch}, 1);"),
        (r"\$OC_VersionString = '[^']*';", f"$OC_VersionString = '{major}.{minor}.{patch}';"),
        (r"'nextcloud' => array\([^)]*\)", f"'nextcloud' => array('{major - 1}.0' => true, '{major}.0' => true)"),
    )
    for pattern, new in replacements:
        text, count = re.subn(pattern, lambda _m, new=new: new, text)
        if count != 1:
            raise ValueError(f"the fixture's version.php has no single match for {pattern!r}")
    return text


def _fixture_files(base: Path) -> list[Path]:
    """The fixture's files that shape the image: documentation (README*.md) reaches no layer and is left out."""
    return sorted(
        p for p in base.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and not p.name.startswith("README")
    )


def standin_key(version: str, fixture_dir: Path = FIXTURE_DIR) -> str:
    """sha256 over the relative path, mode and content of every file of the fixture, the version and FORMAT."""
    if not (fixture_dir / "nextcloud" / "version.php").is_file():
        raise RuntimeError(
            f"stand-in: {fixture_dir / 'nextcloud' / 'version.php'} is missing; the fake Nextcloud "
            "tree (infra/localtwin/standin/nextcloud/) must exist before the stand-in image can be built"
        )
    digest = hashlib.sha256(f"standin format {FORMAT} version {version} {RELEASE_FILES} {RELEASE_BYTES}\n".encode())
    for path in _fixture_files(fixture_dir):
        rel = path.relative_to(fixture_dir).as_posix()
        digest.update(f"{rel}\0{path.stat().st_mode & 0o777:o}\0".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


# ---- layer 2: the code tree ------------------------------------------------------------------------------------
_ALPHABET = "abcdefghijklmnopqrstuvwxyz"
_SEPARATORS = (" ", " ", " ", "(", ")", ";\n", ", ", " = ", "->", "\n\t", "$", ".")
# Where a release keeps its files, with the share of the file count each part gets and the suffix its files carry.
_FILLER_PARTS = (
    ("3rdparty/composer/vendor-{a:03d}/src", 0.34, ".php"),
    ("apps/app-{a:02d}/lib", 0.24, ".php"),
    ("apps/app-{a:02d}/js", 0.14, ".js"),
    ("dist", 0.10, ".js"),
    ("core/img", 0.08, ".svg"),
    ("lib/private/part-{a:02d}", 0.10, ".php"),
)


def _corpus(rng: random.Random, size: int = 4 << 20) -> bytes:
    """Source-like text (about 3:1 under gzip, as a release's PHP and JavaScript is)."""
    vocab = ["".join(rng.choice(_ALPHABET) for _ in range(rng.randint(2, 10))) for _ in range(400)]
    out, n = [], 0
    while n < size:
        word = rng.choice(vocab) + rng.choice(_SEPARATORS)
        out.append(word)
        n += len(word)
    return "".join(out).encode()


def filler_files(count: int, total_bytes: int, seed: int = 33) -> Iterator[tuple[str, bytes]]:
    """(relative path, content) of ``count`` filler files adding up to exactly ``total_bytes``; deterministic."""
    if count < 1 or total_bytes < count:
        raise ValueError("need at least one filler file and one byte per file")
    rng = random.Random(seed)
    corpus = _corpus(rng)
    # Many small files and a few large bundles, like a release (log-normal sizes), scaled to the total.
    weights = [rng.lognormvariate(9.0, 1.3) for _ in range(count)]
    scale = total_bytes / sum(weights)
    sizes = [max(1, int(w * scale)) for w in weights]
    sizes[-1] += total_bytes - sum(sizes)
    index = 0
    for template, share, suffix in _FILLER_PARTS:
        n = count - index if template == _FILLER_PARTS[-1][0] else int(count * share)
        for i in range(n):
            directory = template.format(a=i // 400) + f"/d{(i // 40) % 10}"
            name = f"{directory}/filler-{index:05d}{suffix}"
            size = sizes[index]
            header = f"/* TEST FIXTURE filler (not Nextcloud): {name} */\n".encode()
            yield name, (header + _slice(corpus, (index * 7919) % len(corpus), size))[:size]
            index += 1


def _slice(corpus: bytes, start: int, size: int) -> bytes:
    """``size`` bytes of ``corpus`` from ``start``, wrapping around."""
    parts, left = [], size
    while left > 0:
        piece = corpus[start:start + left]
        parts.append(piece)
        left -= len(piece)
        start = 0
    return b"".join(parts)


class _Hashing(io.RawIOBase):
    """A write-through file object that counts and hashes what passes."""

    def __init__(self, inner) -> None:
        self.inner, self.sha, self.size = inner, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.sha.update(b)
        self.size += len(b)
        self.inner.write(b)
        return len(b)


def _code_tree_entries(version: str) -> Iterator[tuple[tarfile.TarInfo, bytes | None]]:
    uid, gid, uname, gname = CODE_OWNER

    def info(name: str, kind: bytes, mode: int, size: int = 0, owner: tuple = CODE_OWNER) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(name)
        ti.type, ti.mode, ti.size, ti.mtime = kind, mode, size, CODE_MTIME
        ti.uid, ti.gid, ti.uname, ti.gname = owner
        return ti

    files: dict[str, bytes] = {}
    for path in _fixture_files(CODE_TREE):
        files[path.relative_to(CODE_TREE).as_posix()] = path.read_bytes()
    files["version.php"] = version_php(version).encode()
    fixture_bytes = sum(len(b) for b in files.values())
    for name, content in filler_files(RELEASE_FILES - len(files), RELEASE_BYTES - fixture_bytes):
        files[name] = content
    dirs = {"usr", "usr/src", "usr/src/nextcloud"}
    for name in files:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("usr/src/nextcloud/" + "/".join(parts[:i]))
    root = (0, 0, "root", "root")
    for d in sorted(dirs):
        yield info(d, tarfile.DIRTYPE, 0o755, owner=root if d in ("usr", "usr/src") else CODE_OWNER), None
    for name in sorted(files):
        mode = 0o755 if name == "occ" else 0o644
        yield info(f"usr/src/nextcloud/{name}", tarfile.REGTYPE, mode, len(files[name])), files[name]
    # As in the official image: created by root after the tarball was unpacked.
    for extra in ("data", "custom_apps"):
        yield info(f"usr/src/nextcloud/{extra}", tarfile.DIRTYPE, 0o755, owner=root), None


def write_layer(entries: Iterator[tuple[tarfile.TarInfo, bytes | Path | None]], blobs: Path) -> dict[str, object]:
    """Write one gzip layer blob from tar entries; return its digest, diff_id and size."""
    tmp = blobs / f".layer-{os.getpid()}"
    with tmp.open("wb") as raw:
        compressed = _Hashing(raw)
        with gzip.GzipFile(fileobj=compressed, mode="wb", mtime=0, compresslevel=6) as gz:
            uncompressed = _Hashing(gz)
            with tarfile.open(fileobj=uncompressed, mode="w|", format=tarfile.GNU_FORMAT) as tar:
                for ti, content in entries:
                    if isinstance(content, Path):  # a file of a release tree: streamed, not read into memory
                        with content.open("rb") as fh:
                            tar.addfile(ti, fh)
                    else:
                        tar.addfile(ti, io.BytesIO(content) if content is not None else None)
    digest = compressed.sha.hexdigest()
    tmp.rename(blobs / digest)
    return {"digest": f"sha256:{digest}", "diff_id": f"sha256:{uncompressed.sha.hexdigest()}",
            "size": compressed.size, "unpacked": uncompressed.size}


def _layer_from_tarball(tarball: Path, blobs: Path) -> dict[str, object]:
    """The rootfs tarball (mmdebstrap's output) as a gzip layer blob."""
    tmp = blobs / f".layer-{os.getpid()}"
    with tarball.open("rb") as src, tmp.open("wb") as raw:
        compressed = _Hashing(raw)
        diff = hashlib.sha256()
        size = 0
        with gzip.GzipFile(fileobj=compressed, mode="wb", mtime=0, compresslevel=6) as gz:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                diff.update(chunk)
                size += len(chunk)
                gz.write(chunk)
    digest = compressed.sha.hexdigest()
    tmp.rename(blobs / digest)
    return {"digest": f"sha256:{digest}", "diff_id": f"sha256:{diff.hexdigest()}", "size": compressed.size,
            "unpacked": size}


def rootfs_key(fixture_dir: Path = FIXTURE_DIR) -> str:
    """sha256 over what shapes the root filesystem layer: the mmdebstrap script, its hook and the rootfs overlay."""
    digest = hashlib.sha256(f"standin rootfs format {FORMAT}\n".encode())
    parts = [fixture_dir / ROOTFS_SCRIPT.name, fixture_dir / "customize-standin.sh",
             *_fixture_files(fixture_dir / "rootfs")]
    for path in parts:
        digest.update(f"{path.relative_to(fixture_dir).as_posix()}\0{path.stat().st_mode & 0o777:o}\0".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


ROOTFS_CACHE = DEFAULT_CACHE.parent / "standin-rootfs"


def rootfs_layer(blobs: Path, log: Log = print, cache: Path = ROOTFS_CACHE) -> dict[str, object]:
    """The root filesystem layer (mmdebstrap, about 2 min), written into ``blobs``; built once per ``rootfs_key``
    and copied from its cache afterwards (the stand-in and the release image share it)."""
    entry = cache / rootfs_key()
    try:
        layer = json.loads((entry / "layer.json").read_text())
        blob = entry / str(layer["digest"]).split(":", 1)[1]
        if blob.is_file():
            shutil.copyfile(blob, blobs / blob.name)
            return layer
    except (OSError, ValueError, KeyError):
        pass
    started = time.monotonic()
    tmp = cache / f".tmp-{entry.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        rootfs = tmp / "rootfs.tar"
        proc = subprocess.run([str(ROOTFS_SCRIPT), str(rootfs)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
        if proc.returncode != 0:
            tail = "\n".join(proc.stdout.splitlines()[-30:])
            raise RuntimeError(f"stand-in: {ROOTFS_SCRIPT.name} failed (exit {proc.returncode}):\n{tail}")
        layer = _layer_from_tarball(rootfs, tmp)
        rootfs.unlink()
        (tmp / "layer.json").write_text(json.dumps(layer) + "\n")
        shutil.rmtree(entry, ignore_errors=True)
        tmp.rename(entry)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"root filesystem layer built in {time.monotonic() - started:.0f}s")
    shutil.copyfile(entry / str(layer["digest"]).split(":", 1)[1], blobs / str(layer["digest"]).split(":", 1)[1])
    return layer


def image_config(version: str, layers: list[dict[str, object]]) -> dict[str, object]:
    """The image configuration: what the official image declares that changes how a container starts."""
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(CODE_MTIME))
    return {
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": {
            "Env": [
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                # The stand-in's PHP also scans /usr/local/etc/php/conf.d, where the official image keeps its ini.
                "PHP_INI_SCAN_DIR=:/usr/local/etc/php/conf.d",
                "APACHE_CONFDIR=/etc/apache2",
                "APACHE_ENVVARS=/etc/apache2/envvars",
                # The official image's defaults, read by its PHP ini and Apache config (rootfs/ carries both):
                # nextcloud/docker's Dockerfile-debian.template.
                "PHP_MEMORY_LIMIT=512M",
                "PHP_UPLOAD_LIMIT=512M",
                "PHP_OPCACHE_MEMORY_CONSUMPTION=128",
                "APACHE_BODY_LIMIT=1073741824",
                f"NEXTCLOUD_VERSION={version}",
            ],
            "Entrypoint": ["/entrypoint.sh"],
            "Cmd": ["apache2-foreground"],
            "WorkingDir": WEBROOT_VOLUME,
            "ExposedPorts": {"80/tcp": {}},
            "Volumes": {WEBROOT_VOLUME: {}},
            "StopSignal": "SIGWINCH",
            "Labels": {"org.opencontainers.image.description":
                       f"TEST FIXTURE: stand-in for nextcloud:{version}-apache, no Nextcloud code"},
        },
        "rootfs": {"type": "layers", "diff_ids": [layer["diff_id"] for layer in layers]},
        "history": [
            {"created": created, "created_by": "infra/localtwin/standin/build-standin-rootfs.sh (mmdebstrap)"},
            {"created": created, "created_by": f"stand-in code tree for {version}: fixture + filler "
                                               f"({RELEASE_FILES} files, {RELEASE_BYTES} bytes)"},
        ],
    }


def write_oci_layout(layout: Path, tag: str, config: dict[str, object], layers: list[dict[str, object]]) -> str:
    """index.json, oci-layout and the config/manifest blobs; returns the manifest digest."""
    blobs = layout / "blobs" / "sha256"

    def blob(data: bytes) -> tuple[str, int]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return f"sha256:{digest}", len(data)

    config_digest, config_size = blob(json.dumps(config, sort_keys=True, separators=(",", ":")).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA,
        "config": {"mediaType": CONFIG_MEDIA, "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": LAYER_MEDIA, "digest": layer["digest"], "size": layer["size"]} for layer in layers],
    }
    manifest_digest, manifest_size = blob(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode())
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": MANIFEST_MEDIA, "digest": manifest_digest, "size": manifest_size,
        "annotations": {"org.opencontainers.image.ref.name": tag}}]}
    (layout / "index.json").write_text(json.dumps(index, indent=2))
    return manifest_digest


# ---- cache -------------------------------------------------------------------------------------------------------
def _entry(cache: Path, image: str, version: str) -> tuple[Path, str, str]:
    repo, tag = split_image(image)
    return cache / standin_key(version), repo, tag


def cached_standin_image(image: str, version: str, cache: Path = DEFAULT_CACHE) -> StandinImage | None:
    """The cached image for these inputs, or None when it has not been built."""
    entry, repo, tag = _entry(cache, image, version)
    try:
        info = json.loads((entry / "standin.json").read_text())
    except (OSError, ValueError):
        return None
    if (entry / "oci" / "index.json").is_file() and info.get("tag") == tag and info.get("repository") == repo:
        return StandinImage(entry / "oci", repo, tag, info["digest"], version)
    return None


def build_standin_image(image: str, version: str, cache: Path = DEFAULT_CACHE, log: Log = print) -> StandinImage:
    """Build the OCI image for these inputs (unconditionally) and return it."""
    entry, repo, tag = _entry(cache, image, version)
    tmp = cache / f".tmp-{entry.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    blobs = tmp / "oci" / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    started = time.monotonic()
    try:
        layers = [rootfs_layer(blobs, log)]
        log("stand-in image: writing the code tree layer ...")
        layers.append(write_layer(_code_tree_entries(version), blobs))
        digest = write_oci_layout(tmp / "oci", tag, image_config(version, layers), layers)
        info = {
            "key": entry.name, "repository": repo, "tag": tag, "version": version, "digest": digest,
            "layers": layers, "code_tree": {"files": RELEASE_FILES, "bytes": RELEASE_BYTES},
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_seconds": round(time.monotonic() - started, 1),
            "note": "TEST FIXTURE: stand-in for nextcloud:*-apache, carries no Nextcloud code",
        }
        (tmp / "standin.json").write_text(json.dumps(info, indent=2) + "\n")
        shutil.rmtree(entry, ignore_errors=True)
        tmp.rename(entry)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return StandinImage(entry / "oci", repo, tag, digest, version)


def ensure_standin_image(image: str, version: str, cache: Path = DEFAULT_CACHE, log: Log = print) -> StandinImage:
    """Return the cached stand-in image, building it first only when it is missing."""
    found = cached_standin_image(image, version, cache)
    if found is not None:
        log(f"stand-in image: reusing {found.repository}:{found.tag}@{found.digest[:19]}")
        return found
    log("stand-in image: building with mmdebstrap plus a release-sized code tree (about 3 min) ...")
    started = time.monotonic()
    built = build_standin_image(image, version, cache, log)
    log(f"stand-in image: built {built.repository}:{built.tag}@{built.digest[:19]} in "
        f"{time.monotonic() - started:.0f}s")
    return built


def main() -> int:
    """``python -m infra.localtwin.standin [ENV]``: build (or reuse) the image of ENV's settings, print its digest."""
    from render.settings import SettingsError, load_settings

    try:
        settings = load_settings(REPO_ROOT, sys.argv[1] if len(sys.argv) > 1 else "local").settings
        built = ensure_standin_image(settings.nextcloud.image, settings.nextcloud.version,
                                     log=lambda m: print(m, file=sys.stderr))
    except (SettingsError, RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"layout": str(built.layout), "digest": built.digest, "tag": built.tag}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
