"""Unpacking an official Nextcloud release archive (``nextcloud-<version>.tar.bz2``, ``.tar.gz`` or ``.zip``, one
top folder ``nextcloud/``) without trusting it: every entry must be a plain directory or regular file below
``nextcloud/``. Links of any kind (a release has none), devices, FIFOs, absolute or ``..`` paths, duplicate
entries and archives that would unpack to more than MAX_BYTES are refused. Files are written with 0644, or 0755
when the archive marks them executable; owners, setuid bits and times are not taken from the archive.

The archive is unpacked into a fresh folder next to the destination and renamed into place only when every entry
was accepted, so a refused archive leaves nothing behind that could be mistaken for a release.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import IO

from infra.release.errors import BadInput, UnsafeArchive

TOP_FOLDER = "nextcloud"
ARCHIVE_SUFFIXES = (".tar.bz2", ".tar.gz", ".tgz", ".zip")
MAX_BYTES = 4 << 30  # 34.0.1 unpacks to about 0.6 GiB
MAX_ENTRIES = 200_000  # 34.0.1 has about 26,400 files
_CHUNK = 1 << 20


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _relative(name: str) -> PurePosixPath:
    """The entry's path below the top folder, or UnsafeArchive."""
    if "\\" in name or "\0" in name or name.startswith("/"):
        raise UnsafeArchive(f"entry {name!r}: absolute path or backslash/NUL in the name")
    parts = name.rstrip("/").split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise UnsafeArchive(f"entry {name!r}: empty, '.' or '..' path component")
    if parts[0] != TOP_FOLDER:
        raise UnsafeArchive(f"entry {name!r}: outside the top folder {TOP_FOLDER}/ of an official release")
    return PurePosixPath(*parts)


class _Writer:
    """Creates the accepted entries below ``root``, counting entries and bytes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.entries = 0
        self.bytes = 0

    def _count(self, name: str) -> None:
        self.entries += 1
        if self.entries > MAX_ENTRIES:
            raise UnsafeArchive(f"more than {MAX_ENTRIES} entries (at {name!r}): not a Nextcloud release")

    def directory(self, name: str) -> None:
        self._count(name)
        target = self.root / _relative(name)
        try:
            target.mkdir(mode=0o755, parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise UnsafeArchive(f"entry {name!r}: a directory where the archive already has a file") from None

    def file(self, name: str, source: IO[bytes], executable: bool) -> None:
        self._count(name)
        target = self.root / _relative(name)
        try:
            target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o755 if executable else 0o644)
        except FileExistsError:
            raise UnsafeArchive(f"entry {name!r}: appears twice in the archive") from None
        except NotADirectoryError:
            raise UnsafeArchive(f"entry {name!r}: below a path the archive has as a file") from None
        with os.fdopen(fd, "wb") as out:
            while chunk := source.read(_CHUNK):
                self.bytes += len(chunk)
                if self.bytes > MAX_BYTES:
                    raise UnsafeArchive(f"unpacks to more than {MAX_BYTES >> 30} GiB (at {name!r})")
                out.write(chunk)


def _unpack_tar(archive: Path, writer: _Writer) -> None:
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            if member.isdir():
                writer.directory(member.name)
            elif member.isreg():
                source = tar.extractfile(member)
                if source is None:  # pragma: no cover - tarfile returns a reader for every regular member
                    raise UnsafeArchive(f"entry {member.name!r}: unreadable")
                writer.file(member.name, source, bool(member.mode & 0o111))
            else:
                kind = "link" if member.issym() or member.islnk() else "device, FIFO or other special entry"
                raise UnsafeArchive(f"entry {member.name!r}: a {kind}; a release holds only folders and files")


def _unpack_zip(archive: Path, writer: _Writer) -> None:
    with zipfile.ZipFile(archive) as zipped:
        for info in zipped.infolist():
            mode = info.external_attr >> 16
            kind = stat.S_IFMT(mode)
            if info.is_dir() and kind in (0, stat.S_IFDIR):
                writer.directory(info.filename)
            elif not info.is_dir() and kind in (0, stat.S_IFREG):
                with zipped.open(info) as source:
                    writer.file(info.filename, source, bool(mode & 0o111))
            else:
                raise UnsafeArchive(f"entry {info.filename!r}: a link or special entry; a release holds only "
                                    "folders and files")


def unpack_release(archive: Path, destination: Path) -> Path:
    """Unpack ``archive`` so that ``destination/nextcloud`` is the release tree; return that tree.
    ``destination`` must not exist yet or be an empty folder."""
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
        raise BadInput(f"{destination}: exists and is not an empty folder; give a new folder to unpack into")
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.unpacking-", dir=destination.parent))
    try:
        writer = _Writer(staging)
        if archive.name.lower().endswith(".zip"):
            _unpack_zip(archive, writer)
        else:
            _unpack_tar(archive, writer)
        if not (staging / TOP_FOLDER).is_dir():
            raise BadInput(f"{archive}: no {TOP_FOLDER}/ folder inside; not an official release archive")
        if destination.exists():
            destination.rmdir()
        staging.rename(destination)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, OSError) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise BadInput(f"{archive}: not a readable release archive ({exc})") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return destination / TOP_FOLDER
