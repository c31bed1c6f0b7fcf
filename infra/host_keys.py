"""SSH host keys learned out of band, from what an instance printed on its console at first boot.

cloud-init's ``keys_to_console`` module (on by default, in ``cloud_final_modules``) runs its helper
``write-ssh-key-fingerprints``, which prints every ``/etc/ssh/ssh_host_*key.pub`` between two marker lines::

    -----BEGIN SSH HOST KEY KEYS-----
    ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAI... root@ip-10-0-1-23
    ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI... root@ip-10-0-1-23
    -----END SSH HOST KEY KEYS-----

The console is the hypervisor's record of the instance, not a network path, so keys read from it can be pinned
before the first SSH contact: a key the instance presents over the network that is not one of these is refused.
"""

from __future__ import annotations

import base64
import binascii
import struct
from dataclasses import dataclass

BEGIN = "-----BEGIN SSH HOST KEY KEYS-----"
END = "-----END SSH HOST KEY KEYS-----"
# Host key types OpenSSH generates (ssh-keygen -A, cloud-init's ssh_genkeytypes), each with the length its last
# wire field must have (the Ed25519 key, the uncompressed ECDSA point; None: RSA's modulus varies). DSA is gone.
KEY_TYPES: dict[str, int | None] = {
    "ssh-ed25519": 32, "ecdsa-sha2-nistp256": 65, "ecdsa-sha2-nistp384": 97, "ecdsa-sha2-nistp521": 133,
    "ssh-rsa": None,
}


@dataclass(frozen=True)
class HostKey:
    """One public host key: its type and its base64 blob (the two first fields of a ``.pub`` line)."""

    key_type: str
    blob: str

    def known_hosts_line(self, host: str) -> str:
        return f"{host} {self.key_type} {self.blob}"


def _wire_fields(raw: bytes) -> list[bytes] | None:
    """The length-prefixed fields of an SSH public key blob (RFC 4253 6.6), or None when they do not fill it."""
    fields, i = [], 0
    while i < len(raw):
        if i + 4 > len(raw):
            return None
        (length,) = struct.unpack(">I", raw[i:i + 4])
        if i + 4 + length > len(raw):
            return None
        fields.append(raw[i + 4:i + 4 + length])
        i += 4 + length
    return fields


def _parse_key_line(line: str) -> HostKey | None:
    """A ``.pub`` line, or None when it is not one (console noise, a line cut short by other output)."""
    parts = line.split()
    if len(parts) < 2 or parts[0] not in KEY_TYPES:
        return None
    key_type, blob = parts[0], parts[1]
    try:
        fields = _wire_fields(base64.b64decode(blob, validate=True))
    except (binascii.Error, ValueError):
        return None
    # type, key (Ed25519) / type, curve, point (ECDSA) / type, e, n (RSA); a cut or mangled blob does not fit.
    if not fields or fields[0] != key_type.encode() or len(fields) != (2 if key_type == "ssh-ed25519" else 3):
        return None
    if key_type.startswith("ecdsa-") and fields[1] != key_type.rsplit("-", 1)[1].encode():
        return None
    size = KEY_TYPES[key_type]
    return HostKey(key_type, blob) if size is None or len(fields[-1]) == size else None


def console_host_keys(text: str) -> list[HostKey]:
    """The host keys of the last complete BEGIN/END block in console ``text``; [] when there is none.

    The last block, because a rebooted instance prints again and the console keeps both; an unterminated block
    (the output cut while it was being written) counts as none. Lines in a block that are not keys are skipped
    (kernel messages interleave with the console), each key at most once, in the order printed."""
    lines = [line.strip() for line in text.replace("\r", "\n").split("\n")]
    keys: list[HostKey] = []
    block: list[HostKey] | None = None
    for line in lines:
        if line.endswith(BEGIN):
            block = []
        elif line.endswith(END) and block is not None:
            keys, block = block, None
        elif block is not None:
            key = _parse_key_line(line)
            if key is not None and key not in block:
                block.append(key)
    return keys
