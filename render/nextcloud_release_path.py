"""The version of a Nextcloud release named by ``nextcloud.release``: an unpacked tree (the folder holding
``version.php``, or one holding ``nextcloud/``) or the official archive (``nextcloud-X.Y.Z.tar.bz2`` / ``.zip``, whose
top folder is ``nextcloud/``).

Only ``$OC_VersionString`` is read, as text: nothing of the release runs here (the local twin's build verifies its
code signature before it uses it: ``infra/release``).
"""

from __future__ import annotations

import re
import tarfile
import zipfile
from pathlib import Path

_VERSION_STRING = re.compile(rb"""\$OC_VersionString\s*=\s*'(\d+\.\d+\.\d+)'""")
_ARCHIVES = (".tar.bz2", ".tbz2", ".tar.gz", ".tgz", ".tar.xz", ".zip")


def _from_text(text: bytes, where: str) -> str:
    m = _VERSION_STRING.search(text)
    if not m:
        raise ValueError(f"{where} holds no $OC_VersionString: not a Nextcloud release")
    return m.group(1).decode()


def release_version(path: Path) -> str:
    """``34.0.1`` for the release at ``path``; ValueError (with the fix) when it is not one."""
    if path.is_dir():
        for candidate in (path / "version.php", path / "nextcloud" / "version.php"):
            if candidate.is_file():
                return _from_text(candidate.read_bytes(), str(candidate))
        raise ValueError(f"{path} is a folder without version.php or nextcloud/version.php: give the unpacked "
                         "release (the folder holding version.php) or the release archive")
    if not path.is_file():
        raise ValueError(f"{path} does not exist: give the path of a Nextcloud release archive or unpacked tree")
    name = path.name.lower()
    try:
        if name.endswith(".zip"):
            with zipfile.ZipFile(path) as zf:
                return _from_text(zf.read("nextcloud/version.php"), f"{path}:nextcloud/version.php")
        if name.endswith(_ARCHIVES):
            with tarfile.open(path) as tf:
                member = tf.extractfile("nextcloud/version.php")
                if member is None:
                    raise KeyError("nextcloud/version.php")
                return _from_text(member.read(), f"{path}:nextcloud/version.php")
    except KeyError:
        raise ValueError(f"{path} has no nextcloud/version.php: not a Nextcloud release archive") from None
    except (OSError, tarfile.TarError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path} cannot be read as a release archive: {exc}") from None
    raise ValueError(f"{path}: not a folder and not a release archive ({', '.join(_ARCHIVES)})")
