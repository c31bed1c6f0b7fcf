"""infra/release: a Nextcloud release verifies only when Nextcloud's code signing root signed every file of it.

The fake releases here are signed by a CA chain made in the test (root -> intermediate -> leaf named for the
scope) with Nextcloud's scheme (RSA-PSS, SHA-1 message digest, MGF1-SHA512, salt 0, over PHP's json_encode of the
sorted hashes); hashes and the signed message are computed here, independently of infra/release. The test root
is pinned by passing its fingerprints; with the real pins the same tree is refused. The last test verifies the
real 34.0.1 tree when NEXTCLOUD_RELEASE points at it.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import io
import json
import os
import tarfile
import time
import zipfile
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from infra.release import (
    REFUSED,
    VERIFIED,
    VERIFIED_WITH_MISSING,
    BadInput,
    ReleaseReport,
    UnsafeArchive,
    cli,
    verify_release,
)
from infra.release import signature as release_signature
from infra.release.archive import unpack_release
from infra.release.signature import php_json_encode

NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
MARKER = b"#### DO NOT CHANGE ANYTHING ABOVE THIS LINE ####"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key, issuer: str, issuer_key, *, ca: bool, serial: int) -> x509.Certificate:
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(serial)
               .not_valid_before(NOW).not_valid_after(NOW + datetime.timedelta(days=3650))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    return builder.sign(issuer_key, hashes.SHA256())


class Authority:
    """A root and an intermediate (root.crt holds both, intermediate first, as Nextcloud's does)."""

    def __init__(self, label: str, leaf_key) -> None:
        self.root_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.int_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.leaf_key = leaf_key
        self.root = _cert(f"{label} Root", self.root_key, f"{label} Root", self.root_key, ca=True, serial=1)
        self.intermediate = _cert(f"{label} Intermediate", self.int_key, f"{label} Root", self.root_key,
                                  ca=True, serial=2)
        self.serial = 4096

    def leaf(self, cn: str, serial: int | None = None) -> x509.Certificate:
        self.serial += 1
        issuer = self.intermediate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        return _cert(cn, self.leaf_key, issuer, self.int_key, ca=False, serial=serial or self.serial)

    def root_crt(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (self.intermediate, self.root))

    def pins(self) -> frozenset[str]:
        return frozenset(c.fingerprint(hashes.SHA256()).hex() for c in (self.intermediate, self.root))

    def crl(self, revoked: tuple[int, ...] = ()) -> bytes:
        builder = (x509.CertificateRevocationListBuilder().issuer_name(self.intermediate.subject)
                   .last_update(NOW).next_update(NOW + datetime.timedelta(days=3650)))
        for serial in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(NOW).build())
        return builder.sign(self.int_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def authority() -> Authority:
    return Authority("Test Code Signing", rsa.generate_private_key(public_exponent=65537, key_size=2048))


@pytest.fixture(scope="module")
def stranger(authority) -> Authority:
    """Another root, never pinned, holding the same leaf key (only the chain differs)."""
    return Authority("Stranger", authority.leaf_key)


# --- signing, the way Nextcloud's release tooling does (written here without infra/release) ---

EXCLUDED_NAMES = {".DS_Store", "Thumbs.db"}
CORE_OUTSIDE = {"data", "themes", "config", "apps", "assets", "lost+found", "updater", "_oc_upgrade"}


def nextcloud_hashes(scope: Path, core: bool) -> dict[str, str]:
    result = {}
    for folder, dirs, files in os.walk(scope):
        rel_folder = Path(folder).relative_to(scope)
        if core and rel_folder == Path("."):
            dirs[:] = [d for d in dirs if d not in CORE_OUTSIDE]
        for name in files:
            rel = (rel_folder / name).as_posix()
            if name in EXCLUDED_NAMES or rel in ("appinfo/signature.json", "core/signature.json"):
                continue
            content = (Path(folder) / name).read_bytes()
            if core and rel == ".htaccess" and content.count(MARKER) == 1:
                content = content.split(MARKER)[0]
            result[rel] = hashlib.sha512(content).hexdigest()
    return result


def sign(scope: Path, target: Path, cert: x509.Certificate, key, core: bool = False) -> None:
    signed = dict(sorted(nextcloud_hashes(scope, core).items()))
    message = json.dumps(signed, separators=(",", ":")).replace("/", "\\/").encode()
    sig = key.sign(message, padding.PSS(mgf=padding.MGF1(hashes.SHA512()), salt_length=0), hashes.SHA1())
    document = {"hashes": signed, "signature": base64.b64encode(sig).decode(),
                "certificate": cert.public_bytes(serialization.Encoding.PEM).decode()}
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(document, indent=4).replace("/", "\\/"))


class FakeRelease:
    """A tiny release: core (with root.crt/root.crl) and the app ``notes``, both signed."""

    def __init__(self, base: Path, authority: Authority) -> None:
        self.root = base / "nextcloud"
        self.authority = authority
        files = {
            "version.php": "<?php\n$OC_Version = array(34,0,1,2);\n$OC_VersionString = '34.0.1';\n",
            "index.php": "<?php\nrequire_once __DIR__ . '/lib/base.php';\n",
            "lib/base.php": "<?php\n// base\n",
            "lib/private/Empty.php": "",
            "lib/private/AlsoEmpty.php": "",
            "lib/private/Security.php": "<?php\n// checks\n",
            ".htaccess": "<IfModule mod_php.c>\n  php_value upload_max_filesize 511M\n</IfModule>\n",
            "core/js/mimetypelist.js": "OC.MimeTypeList={aliases:{}};\n",
            "core/shipped.json": json.dumps({"shippedApps": ["notes"]}),
            "config/config.sample.php": "<?php\n",
            "themes/README": "themes\n",
            "updater/index.php": "<?php\n",
            "apps/notes/appinfo/info.xml": "<info><id>notes</id></info>\n",
            "apps/notes/lib/Notes.php": "<?php\n// notes\n",
            "apps/notes/js/notes.js.map": "{}\n",
        }
        for rel, text in files.items():
            self.write(rel, text)
        self.write_bytes("resources/codesigning/root.crt", authority.root_crt())
        self.write_bytes("resources/codesigning/root.crl", authority.crl())
        self.sign_all()

    def write(self, rel: str, text: str) -> Path:
        return self.write_bytes(rel, text.encode())

    def write_bytes(self, rel: str, content: bytes) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        return path

    def sign_all(self, core_cn: str = "core", app_cn: str = "notes", by: Authority | None = None) -> None:
        by = by or self.authority
        sign(self.root, self.root / "core/signature.json", by.leaf(core_cn), by.leaf_key, core=True)
        sign(self.root / "apps/notes", self.root / "apps/notes/appinfo/signature.json", by.leaf(app_cn),
             by.leaf_key)

    def verify(self, **kwargs):
        return verify_release(self.root, pins=self.authority.pins(), **kwargs)


@pytest.fixture
def release(tmp_path, authority) -> FakeRelease:
    return FakeRelease(tmp_path, authority)


# --- the tree ---

def test_a_signed_tree_verifies_and_reports_version_and_counts(release):
    report = release.verify()
    assert report.verdict == VERIFIED, report.problems
    assert report.version == "34.0.1"
    scopes = {s.name: s for s in report.scopes}
    assert set(scopes) == {"core", "notes"}
    assert scopes["core"].checked == scopes["core"].signed == 11  # config/, themes/, updater/, apps/ are outside
    assert scopes["notes"].checked == 3 and scopes["core"].signer == "core" and scopes["notes"].signer == "notes"
    assert report.uncovered == {"themes": 1, "config": 1, "updater": 1}
    assert verify_release(release.root.parent, pins=release.authority.pins()).verdict == VERIFIED


def test_a_modified_file_is_invalid_and_refused(release):
    release.write("lib/base.php", "<?php\n// base\nfile_get_contents('http://attacker/');\n")
    report = release.verify()
    assert report.verdict == REFUSED
    assert [f.path for f in report.scopes[0].invalid] == ["lib/base.php"]
    assert "INVALID lib/base.php" in report.problems


def test_an_extra_core_file_like_versioncheck_is_refused(release):
    release.write("lib/versioncheck.php", "<?php\n// sends config.php away\n")
    report = release.verify()
    assert report.verdict == REFUSED
    assert report.scopes[0].extra == ["lib/versioncheck.php"] and report.missing_files == []


def test_an_extra_app_file_is_refused_with_its_tree_path(release):
    release.write("apps/notes/lib/Hook.php", "<?php\n")
    assert release.verify().problems == ["EXTRA apps/notes/lib/Hook.php"]


def test_a_missing_file_is_missing_not_invalid_and_still_verifies(release):
    (release.root / "apps/notes/js/notes.js.map").unlink()
    (release.root / "core/js/mimetypelist.js").unlink()
    report = release.verify()
    assert report.verdict == VERIFIED_WITH_MISSING
    assert report.missing_files == ["apps/notes/js/notes.js.map", "core/js/mimetypelist.js"]
    assert report.problems == []


def test_a_signed_file_given_another_signed_files_content_is_invalid(release):
    """Nextcloud's array_diff compares hash values only: this swap would pass there."""
    release.write("lib/private/Security.php", "")
    report = release.verify()
    assert [f.path for f in report.scopes[0].invalid] == ["lib/private/Security.php"]


def test_the_hashes_are_sorted_before_the_signature_is_checked_as_php_ksort_does(release):
    path = release.root / "apps/notes/appinfo/signature.json"
    document = json.loads(path.read_text())
    document["hashes"] = dict(reversed(document["hashes"].items()))
    path.write_text(json.dumps(document))
    assert release.verify().verdict == VERIFIED


def test_core_signed_updater_entries_are_dropped_as_nextcloud_does(release, authority):
    signed_with_updater = release.root / "core/signature.json"
    sign(release.root, signed_with_updater, authority.leaf("core"), authority.leaf_key, core=True)
    document = json.loads(signed_with_updater.read_text())
    assert "updater/index.php" not in document["hashes"]
    document["hashes"]["updater/index.php"] = hashlib.sha512(b"<?php\n").hexdigest()
    hashes_ = dict(sorted(document["hashes"].items()))
    message = json.dumps(hashes_, separators=(",", ":")).replace("/", "\\/").encode()
    document["signature"] = base64.b64encode(authority.leaf_key.sign(
        message, padding.PSS(mgf=padding.MGF1(hashes.SHA512()), salt_length=0), hashes.SHA1())).decode()
    document["hashes"] = hashes_
    signed_with_updater.write_text(json.dumps(document))
    (release.root / "updater/index.php").unlink()
    report = release.verify()
    assert report.verdict == VERIFIED and report.scopes[0].signed == 11


def test_files_nextcloud_ignores_by_name_are_ignored(release):
    release.write("lib/.DS_Store", "junk")
    release.write("apps/notes/Thumbs.db", "junk")
    release.write("lib/.webapp-nextcloud-34.0.1-r1", "junk")
    assert release.verify().verdict == VERIFIED


def test_a_certificate_from_another_root_is_refused(release, stranger):
    release.sign_all(by=stranger)
    report = release.verify()
    assert report.verdict == REFUSED
    assert all("not issued by a pinned" in (s.bad_signature or "") for s in report.scopes)


@pytest.mark.parametrize(("core_cn", "app_cn", "refused"), [
    ("core", "calendar", {"notes"}),
    ("notes", "notes", {"core"}),
    ("core", "core", set()),  # "core" is accepted for any scope
])
def test_the_certificate_must_be_named_for_its_scope_or_core(release, core_cn, app_cn, refused):
    release.sign_all(core_cn=core_cn, app_cn=app_cn)
    report = release.verify()
    assert {s.name for s in report.scopes if s.bad_signature} == refused
    assert all("not for" in s.bad_signature for s in report.scopes if s.bad_signature)


def test_a_tampered_signature_or_hash_list_is_refused(release):
    document = json.loads((release.root / "core/signature.json").read_text())
    document["hashes"]["lib/versioncheck.php"] = "0" * 128
    (release.root / "core/signature.json").write_text(json.dumps(document))
    report = release.verify()
    assert "does not match the signed hashes" in report.scopes[0].bad_signature and report.verdict == REFUSED


def test_a_revoked_leaf_is_refused(release):
    release.write_bytes("resources/codesigning/root.crl", release.authority.crl((9999,)))
    sign(release.root, release.root / "core/signature.json", release.authority.leaf("core", serial=9999),
         release.authority.leaf_key, core=True)
    report = release.verify()
    assert "serial 9999 is revoked" in (report.scopes[0].bad_signature or "")
    assert report.scopes[1].bad_signature is None and report.verdict == REFUSED


def test_an_unpinned_root_crt_is_refused(release, stranger):
    report = verify_release(release.root)  # the real pins: the test root is not Nextcloud's
    assert report.verdict == REFUSED and "does not hold exactly the pinned" in report.trust_error
    assert report.scopes == []


def test_a_root_crt_with_one_more_certificate_is_refused(release, stranger):
    release.write_bytes("resources/codesigning/root.crt", release.authority.root_crt() + stranger.root_crt())
    assert "not pinned: " in release.verify().trust_error


def test_pinned_certificates_that_do_not_chain_are_refused(release, stranger):
    """root.crt must be a chain: an intermediate of another root next to our root is refused even when pinned."""
    mixed = [stranger.intermediate, release.authority.root]
    release.write_bytes("resources/codesigning/root.crt",
                        b"".join(c.public_bytes(serialization.Encoding.PEM) for c in mixed))
    report = verify_release(release.root, pins=frozenset(c.fingerprint(hashes.SHA256()).hex() for c in mixed))
    assert "Stranger Intermediate" in report.trust_error and "is not issued by any pinned" in report.trust_error


def test_a_root_crl_signed_by_someone_else_is_refused(release, stranger):
    release.write_bytes("resources/codesigning/root.crl", stranger.crl())
    assert "root.crl is not signed by a pinned" in release.verify().trust_error


def test_an_unsigned_app_folder_is_refused(release):
    release.write("apps/backdoor/lib/x.php", "<?php\n")
    report = release.verify()
    assert report.unsigned_apps == ["backdoor"] and report.verdict == REFUSED
    assert report.problems == ["UNSIGNED app apps/backdoor/ (no appinfo/signature.json)"]


def test_a_file_directly_in_apps_belongs_to_no_signature_and_is_refused(release):
    release.write("apps/loose.php", "<?php\n")
    report = release.verify()
    assert report.problems == ["EXTRA apps/loose.php (in apps/ but in no app)"] and report.verdict == REFUSED


def test_files_in_folders_only_a_running_instance_makes_are_refused(release):
    release.write("data/owncloud.log", "{}\n")
    release.write("assets/x.php", "<?php\n")
    release.write("config/config.php", "<?php\n$CONFIG = [];\n")  # config/ is outside every signature, as in NC
    report = release.verify()
    assert sorted(report.problems) == ["EXTRA assets/x.php (a release has no assets/ folder)",
                                       "EXTRA data/owncloud.log (a release has no data/ folder)"]
    assert report.uncovered["config"] == 2


def test_a_report_without_any_verified_scope_is_never_verified():
    assert ReleaseReport(Path("nextcloud"), "34.0.1").verdict == REFUSED


def test_a_shipped_app_that_is_absent_is_missing(release):
    release.write("core/shipped.json", json.dumps({"shippedApps": ["notes", "calendar"]}))
    release.sign_all()
    report = release.verify()
    assert report.verdict == VERIFIED_WITH_MISSING and report.missing_files == ["apps/calendar/"]


def test_symlinks_and_fifos_in_a_scope_are_unsafe_and_never_opened(release):
    (release.root / "lib/link.php").symlink_to("/etc/passwd")
    os.mkfifo(release.root / "apps/notes/lib/pipe")
    started = time.monotonic()
    report = release.verify()
    assert time.monotonic() - started < 30
    assert "UNSAFE lib/link.php (symbolic link)" in report.problems
    assert "UNSAFE apps/notes/lib/pipe (special file)" in report.problems


# --- .htaccess ---

def test_htaccess_is_hashed_up_to_the_marker_and_a_tail_after_it_is_refused(release):
    original = (release.root / ".htaccess").read_bytes()
    release.write_bytes(".htaccess", original + MARKER + b"\n\n")
    assert release.verify().verdict == VERIFIED  # the part before the marker is what was signed

    release.write_bytes(".htaccess", original + MARKER + b"\nphp_value auto_prepend_file /tmp/x.php\n")
    report = release.verify()
    assert report.verdict == REFUSED and not report.scopes[0].invalid
    assert any(p.startswith("UNSAFE .htaccess (") for p in report.problems)

    release.write_bytes(".htaccess", original + MARKER + b"\n" + MARKER + b"\n")  # twice: the whole file counts
    assert [f.path for f in release.verify().scopes[0].invalid] == [".htaccess"]


def test_the_htaccess_marker_rule_holds_only_for_the_root_htaccess(release):
    release.write_bytes("lib/.htaccess", b"deny\n")
    release.sign_all()
    release.write_bytes("lib/.htaccess", b"deny\n" + MARKER + b"\n")
    assert [f.path for f in release.verify().scopes[0].invalid] == ["lib/.htaccess"]


def test_php_json_encode_escapes_slashes_and_non_ascii_like_php():
    assert php_json_encode({"a/b": "x", "caf\u00e9/\U0001f600": "y"}) == \
        b'{"a\\/b":"x","caf\\u00e9\\/\\ud83d\\ude00":"y"}'


# --- archives ---

def _tar(path: Path, entries: list[tuple[str, bytes | None, bytes]], mode: str = "w:bz2") -> Path:
    """entries: (name, content or None for a directory, type)."""
    with tarfile.open(path, mode) as tar:
        for name, content, kind in entries:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.SYMTYPE or kind == tarfile.LNKTYPE:
                info.linkname = "/etc/passwd"
            if content is not None:
                info.size = len(content)
            tar.addfile(info, io.BytesIO(content) if content is not None else None)
    return path


def _archive_tree(tree: Path, target: Path) -> Path:
    with tarfile.open(target, "w:bz2") as tar:
        tar.add(tree, arcname="nextcloud")
    return target


def test_a_signed_archive_verifies_unpacked_into_a_temporary_or_given_folder(release, tmp_path):
    archive = _archive_tree(release.root, tmp_path / "nextcloud-34.0.1.tar.bz2")
    assert verify_release(archive, pins=release.authority.pins()).verdict == VERIFIED
    report = verify_release(archive, unpack_to=tmp_path / "kept", pins=release.authority.pins())
    assert report.verdict == VERIFIED and report.tree == tmp_path / "kept/nextcloud" and report.archive == archive
    assert report.unpack_seconds > 0 and (tmp_path / "kept/nextcloud/lib/base.php").is_file()
    zipped = tmp_path / "nextcloud-34.0.1.zip"
    with zipfile.ZipFile(zipped, "w") as out:
        for path in sorted(release.root.rglob("*")):
            if path.is_file():
                out.write(path, "nextcloud/" + path.relative_to(release.root).as_posix())
    assert verify_release(zipped, pins=release.authority.pins()).verdict == VERIFIED


@pytest.mark.parametrize(("entries", "reason"), [
    ([("nextcloud/../escaped.php", b"x", tarfile.REGTYPE)], "'..' path component"),
    ([("/etc/cron.d/evil", b"x", tarfile.REGTYPE)], "absolute path"),
    ([("other/index.php", b"x", tarfile.REGTYPE)], "outside the top folder"),
    ([("nextcloud/lib", None, tarfile.SYMTYPE)], "a link"),
    ([("nextcloud/lib/x.php", None, tarfile.LNKTYPE)], "a link"),
    ([("nextcloud/dev", None, tarfile.CHRTYPE)], "device"),
    ([("nextcloud/a.php", b"1", tarfile.REGTYPE), ("nextcloud/a.php", b"2", tarfile.REGTYPE)], "appears twice"),
])
def test_an_archive_with_an_entry_no_release_has_is_refused_and_leaves_nothing(tmp_path, entries, reason):
    archive = _tar(tmp_path / "nextcloud.tar.bz2", [("nextcloud", None, tarfile.DIRTYPE), *entries])
    with pytest.raises(UnsafeArchive, match=reason):
        unpack_release(archive, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nextcloud.tar.bz2"]
    assert not (tmp_path.parent / "escaped.php").exists()


def test_a_zip_with_traversal_or_a_symlink_is_refused(tmp_path):
    for name, attr in (("nextcloud/../../x.php", 0o100644), ("nextcloud/link", 0o120777)):
        zipped = tmp_path / "nextcloud.zip"
        with zipfile.ZipFile(zipped, "w") as out:
            info = zipfile.ZipInfo(name)
            info.external_attr = attr << 16
            out.writestr(info, b"/etc/passwd")
        with pytest.raises(UnsafeArchive):
            unpack_release(zipped, tmp_path / "out")


def test_an_unreadable_archive_or_a_used_destination_is_bad_input(tmp_path):
    broken = tmp_path / "nextcloud.tar.bz2"
    broken.write_bytes(b"not bzip2")
    with pytest.raises(BadInput, match="not a readable release archive"):
        verify_release(broken)
    used = tmp_path / "used"
    (used / "x").mkdir(parents=True)
    good = _tar(tmp_path / "ok.tar.gz", [("nextcloud/version.php", b"<?php\n", tarfile.REGTYPE)], "w:gz")
    with pytest.raises(BadInput, match="not an empty folder"):
        verify_release(good, unpack_to=used)


# --- the command line ---

def test_cli_exit_codes_verdict_lines_and_the_listing_limit(release, monkeypatch, capsys):
    monkeypatch.setattr(release_signature, "PINNED_ROOT_SHA256", release.authority.pins())
    assert cli.main([str(release.root)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("verdict: verified - Nextcloud 34.0.1: 14 files")

    (release.root / "apps/notes/js/notes.js.map").unlink()
    assert cli.main([str(release.root)]) == 0
    out = capsys.readouterr().out
    assert "  apps/notes/js/notes.js.map" in out and "verdict: verified_with_missing" in out

    for number in range(60):
        release.write(f"lib/extra{number:02}.php", "<?php\n")
    assert cli.main([str(release.root)]) == 1
    out = capsys.readouterr().out
    assert "EXTRA lib/extra49.php" in out and "EXTRA lib/extra50.php" not in out and "... and 10 more" in out
    assert out.splitlines()[-1] == "verdict: refused - Nextcloud 34.0.1: 60 problems (listed above)"


def test_cli_bad_input_exits_2_without_a_traceback(tmp_path, capsys):
    assert cli.main([str(tmp_path / "absent")]) == 2
    assert cli.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no such file or directory" in err and "not a Nextcloud release tree" in err and "Traceback" not in err


def test_cli_refuses_an_unsafe_archive_with_exit_1(tmp_path, capsys):
    archive = _tar(tmp_path / "nextcloud.tar.gz", [("nextcloud/../x", b"x", tarfile.REGTYPE)], "w:gz")
    assert cli.main([str(archive)]) == 1
    assert capsys.readouterr().out.splitlines()[-1].startswith("verdict: refused - unsafe archive: entry")


# --- the real release ---

REAL = os.environ.get("NEXTCLOUD_RELEASE", "")


@pytest.mark.skipif(not REAL or not Path(REAL).is_dir(), reason="NEXTCLOUD_RELEASE does not point at a release tree")
def test_the_real_release_verifies_with_exactly_the_files_known_to_be_missing():
    listed = Path(REAL).parent / "MISSING.txt"
    expected = {line.strip().removeprefix("nextcloud/") for line in listed.read_text().splitlines() if line.strip()}
    report = verify_release(REAL)  # the real pins
    assert report.trust_error is None and report.unsigned_apps == [] and report.stray_files == []
    assert set(report.missing_files) == expected
    assert report.problems == [] and report.verdict == VERIFIED_WITH_MISSING
    assert sum(len(s.invalid) + len(s.extra) + len(s.unsafe) for s in report.scopes) == 0
    print(f"{report.version}: {len(report.scopes)} scopes, {sum(s.signed for s in report.scopes)} signed, "
          f"{sum(s.checked for s in report.scopes)} checked, {len(report.missing_files)} missing, "
          f"{report.seconds:.1f} s")


def test_the_verify_release_task_refuses_an_extra_file_with_exit_1(release, monkeypatch, capsys):
    from invoke import Context, Exit

    from tasks.image import verify_release as task

    monkeypatch.setattr(release_signature, "PINNED_ROOT_SHA256", release.authority.pins())
    task(Context(), release=str(release.root))
    assert capsys.readouterr().out.splitlines()[-1].startswith("verdict: verified - Nextcloud 34.0.1")
    release.write("lib/versioncheck.php", "<?php /* a copy that sends the environment away */\n")
    with pytest.raises(Exit) as ended:
        task(Context(), release=str(release.root))
    out = capsys.readouterr().out
    assert ended.value.code == 1 and "EXTRA lib/versioncheck.php" in out
    assert out.splitlines()[-1].startswith("verdict: refused - Nextcloud 34.0.1: 1 problem")
