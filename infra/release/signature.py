"""One signature scope of a Nextcloud release: its ``signature.json`` checked against the pinned code signing
authority, then every file of the scope hashed and compared with what was signed.

What Nextcloud's own checker (``lib/private/IntegrityCheck/Checker.php``) does, and where this is stricter:

- The signature is RSA-PSS over PHP's ``json_encode`` of the key-sorted ``hashes``: message digest SHA-1
  (phpseclib 2's default, ``setHash`` is never called), MGF1 with SHA-512, salt length 0. Checked against the
  real 34.0.1 signatures: only that combination verifies (SHA-256/SHA-512 digests and salt 20/64 do not).
- The certificate must be issued by a certificate of ``resources/codesigning/root.crt`` and be named (CN) for the
  scope, or ``core``, which Nextcloud accepts for any scope. Stricter: root.crt itself must hold exactly the
  certificates pinned below (Nextcloud trusts whatever file the tree ships), the intermediate must chain to the
  root, and the leaf must not be on ``root.crl`` (Nextcloud checks the CRL only for app store downloads).
- Files are compared path by path. Nextcloud compares with ``array_diff``, which compares *values* only: a signed
  file given the content of another signed file (34.0.1's core signature has 189 hashes shared by several files)
  would pass there; it does not pass here.
- Symbolic links and special files inside a scope are never followed or opened (a FIFO would hang a reader):
  they are reported as unsafe. Official releases contain none.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import stat
from collections.abc import Iterable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

# SHA-256 of the DER form of each certificate in nextcloud/server's resources/codesigning/root.crt (the same two
# certificates ship in the 34.0.1 release; compared byte for byte on 2026-12-05). A tree whose root.crt holds
# anything else is refused before any of its signatures is read.
PINNED_ROOT_SHA256 = frozenset({
    # CN=Nextcloud Code Signing Intermediate Authority, serial 4096, issued by the root below
    "ff038235477d48db67da20962958f7f9f0739b3c568af49b7c6daa0d9d410ea0",
    # CN=Nextcloud Root Authority, self-signed
    "fb418711e0cd2cae9be332cd61a1538214f55448b40170313f1c08b092ffcbfd",
})

ROOT_CRT = "resources/codesigning/root.crt"
ROOT_CRL = "resources/codesigning/root.crl"

# ExcludeFileByNameFilterIterator: file names never hashed, wherever they are.
EXCLUDED_NAMES = frozenset({".DS_Store", ".directory", ".rnd", ".webapp", "Thumbs.db", "nextcloud-init-sync.lock"})
EXCLUDED_NAME_PATTERN = re.compile(r"^\.webapp-nextcloud-(\d+\.){2}(\d+)(-r\d+)?$")
# Relative paths generateHashes skips in every scope: the signature files themselves.
EXCLUDED_RELPATHS = frozenset({"appinfo/signature.json", "core/signature.json"})
# ExcludeFoldersByPathFilterIterator: folders of the server root outside core's scope (the configured
# datadirectory too, but a release has no config.php to configure one).
CORE_EXCLUDED_FOLDERS = ("data", "themes", "config", "apps", "assets", "lost+found", "updater", "_oc_upgrade")

HTACCESS_MARKER = b"#### DO NOT CHANGE ANYTHING ABOVE THIS LINE ####"
_CHUNK = 1 << 20


class TrustError(Exception):
    """The tree's code signing trust anchors are not the pinned ones (or cannot be read)."""


@dataclass(frozen=True)
class TrustAnchors:
    """The pinned certificates of root.crt and the revocation list they signed."""

    certificates: tuple[x509.Certificate, ...]
    revoked_serials: frozenset[int]


@dataclass(frozen=True)
class InvalidFile:
    path: str
    expected: str
    actual: str


@dataclass
class ScopeResult:
    """What one signature scope (``core`` or an app id) looks like on disk compared with what was signed."""

    name: str
    directory: Path
    signer: str = ""
    signed: int = 0
    checked: int = 0
    bad_signature: str | None = None
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    invalid: list[InvalidFile] = field(default_factory=list)
    unsafe: list[str] = field(default_factory=list)

    @property
    def refused(self) -> bool:
        return bool(self.bad_signature or self.extra or self.invalid or self.unsafe)


def _fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def load_trust(server_root: Path, pins: Iterable[str] | None = None) -> TrustAnchors:
    """The tree's root.crt, accepted only if it holds exactly the pinned certificates (each non-self-signed one
    issued by another of them), and its root.crl, accepted only if one of them signed it."""
    pins = frozenset(PINNED_ROOT_SHA256 if pins is None else pins)
    try:
        certs = tuple(x509.load_pem_x509_certificates((server_root / ROOT_CRT).read_bytes()))
    except (OSError, ValueError) as exc:
        raise TrustError(f"{ROOT_CRT}: cannot read the code signing certificates ({exc})") from None
    found = {_fingerprint(c) for c in certs}
    if found != pins or len(certs) != len(pins):
        unknown = sorted(found - pins)
        absent = sorted(pins - found)
        raise TrustError(
            f"{ROOT_CRT} does not hold exactly the pinned Nextcloud code signing certificates "
            f"(not pinned: {', '.join(unknown) or 'none'}; pinned but absent: {', '.join(absent) or 'none'})"
        )
    for cert in certs:
        if not any(_issued_by(cert, issuer) for issuer in certs if issuer is not cert) and not _issued_by(cert, cert):
            raise TrustError(f"{ROOT_CRT}: {cert.subject.rfc4514_string()} is not issued by any pinned certificate")
    try:
        crl = x509.load_pem_x509_crl((server_root / ROOT_CRL).read_bytes())
    except (OSError, ValueError) as exc:
        raise TrustError(f"{ROOT_CRL}: cannot read the revocation list ({exc})") from None
    if not any(crl.issuer == c.subject and crl.is_signature_valid(c.public_key()) for c in certs):
        raise TrustError(f"{ROOT_CRL} is not signed by a pinned certificate")
    return TrustAnchors(certs, frozenset(r.serial_number for r in crl))


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def php_json_encode(hashes_: dict[str, str]) -> bytes:
    """PHP's ``json_encode`` with default flags: compact, ``/`` escaped, non-ASCII as lowercase ``\\uXXXX``."""
    return json.dumps(hashes_, separators=(",", ":"), ensure_ascii=True).replace("/", "\\/").encode("ascii")


def php_ksort(hashes_: dict[str, str]) -> dict[str, str]:
    """``ksort`` for file paths: byte order (PHP compares non-numeric strings with memcmp; a path is numeric only
    if it is a bare number such as ``1.5``, which no release signs)."""
    return dict(sorted(hashes_.items(), key=lambda item: item[0].encode("utf-8", "surrogatepass")))


def check_signature(data: object, scope: str, trust: TrustAnchors) -> tuple[dict[str, str], str]:
    """The signed hashes and the signer's CN, or ValueError saying why the signature is not acceptable."""
    if not isinstance(data, dict) or not {"hashes", "signature", "certificate"} <= data.keys():
        raise ValueError("not a signature file (needs hashes, signature and certificate)")
    signed = data["hashes"]
    if not isinstance(signed, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in signed.items()):
        raise ValueError("hashes is not an object of path -> hash")
    try:
        cert = x509.load_pem_x509_certificate(str(data["certificate"]).encode())
        signature = base64.b64decode(str(data["signature"]), validate=True)
    except (ValueError, binascii.Error) as exc:
        raise ValueError(f"unreadable certificate or signature ({exc})") from None
    issuer = next((c for c in trust.certificates if _issued_by(cert, c)), None)
    if issuer is None:
        raise ValueError(f"certificate {cert.subject.rfc4514_string()} is not issued by a pinned Nextcloud authority")
    if cert.serial_number in trust.revoked_serials:
        raise ValueError(f"certificate serial {cert.serial_number} is revoked ({ROOT_CRL})")
    names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    cn = str(names[0].value) if len(names) == 1 else ""
    if cn not in (scope, "core"):
        raise ValueError(f"certificate is for {cn!r}, not for {scope!r} (or 'core')")
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("certificate key is not RSA")
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA512()), salt_length=0)
    try:
        key.verify(signature, php_json_encode(php_ksort(signed)), pss, hashes.SHA1())
    except InvalidSignature:
        raise ValueError("the signature does not match the signed hashes") from None
    return signed, cn


def hash_file(path: Path, htaccess_rule: bool = False) -> str:
    """SHA-512 hex of a file; for the server root's ``.htaccess``, of the part before the marker line when the
    marker occurs exactly once (install writes its own rules below it)."""
    if htaccess_rule:
        content = path.read_bytes()
        parts = content.split(HTACCESS_MARKER)
        return hashlib.sha512(parts[0] if len(parts) == 2 else content).hexdigest()
    digest = hashlib.sha512()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def list_scope(directory: Path, excluded_folders: Iterable[str] = ()) -> tuple[list[str], list[str]]:
    """(regular files, unsafe entries) of a scope as relative POSIX paths, skipping what Nextcloud skips.
    ``excluded_folders`` are relative to ``directory`` (core's folders outside its scope)."""
    excluded = {directory / f for f in excluded_folders}
    files: list[str] = []
    unsafe: list[str] = []

    def walk(folder: Path, prefix: str) -> None:
        with os.scandir(folder) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                rel = prefix + entry.name
                mode = entry.stat(follow_symlinks=False).st_mode
                if stat.S_ISLNK(mode):
                    unsafe.append(f"{rel} (symbolic link)")
                elif stat.S_ISDIR(mode):
                    if Path(entry.path) not in excluded:
                        walk(Path(entry.path), rel + "/")
                elif not stat.S_ISREG(mode):
                    unsafe.append(f"{rel} (special file)")
                elif not (entry.name in EXCLUDED_NAMES or EXCLUDED_NAME_PATTERN.match(entry.name)
                          or rel in EXCLUDED_RELPATHS):
                    files.append(rel)

    walk(directory, "")
    return files, unsafe


def verify_scope(
    name: str,
    directory: Path,
    signature_file: Path,
    trust: TrustAnchors,
    *,
    excluded_folders: Iterable[str] = (),
    unchecked_prefixes: tuple[str, ...] = (),
    htaccess_rule: bool = False,
    executor: Executor | None = None,
) -> ScopeResult:
    """Check one scope: its signature (nothing else is read if that fails), then every file against it."""
    result = ScopeResult(name=name, directory=directory)
    try:
        data = json.loads(signature_file.read_bytes())
        signed, result.signer = check_signature(data, name, trust)
    except (OSError, ValueError) as exc:
        result.bad_signature = f"{signature_file.name}: {exc}"
        return result
    # Nextcloud drops core's signed updater/ entries (the updater replaces itself after the check).
    signed = {k: v for k, v in signed.items() if not k.startswith(unchecked_prefixes)} if unchecked_prefixes else signed
    result.signed = len(signed)
    present, result.unsafe = list_scope(directory, excluded_folders)
    present_set = set(present)
    result.missing = sorted(set(signed) - present_set)
    result.extra = sorted(present_set - set(signed))
    to_check = [p for p in present if p in signed]

    def one(rel: str) -> tuple[str, str]:
        try:
            return rel, hash_file(directory / rel, htaccess_rule and rel == ".htaccess")
        except OSError as exc:
            return rel, f"unreadable: {exc.strerror or exc}"

    outcomes = executor.map(one, to_check) if executor else map(one, to_check)
    for rel, actual in outcomes:
        result.checked += 1
        if actual != signed[rel]:
            result.invalid.append(InvalidFile(rel, signed[rel], actual))
    return result
