"""Rules for single setting values that need more than a pattern: each says what is wrong and what to write instead.

Kept apart from the settings model so that each rule reads as the rule (and its source), and so that new settings
can reuse them.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from dataclasses import dataclass

# ---------------------------------------------------------------------------------------------------- characters

_CONTROL_NAMES = {
    "\x00": "a NUL byte",
    "\t": "a tab",
    "\n": "a line feed",
    "\r": "a carriage return",
    "\x1b": "an escape character",
    "\x7f": "a DEL character",
    "\x85": "a next-line character",
    "\u2028": "a line separator",
    "\u2029": "a paragraph separator",
}


def control_character(value: str) -> str | None:
    """The first control or line-breaking character in ``value``, described with its position; None if clean.

    C0/C1 controls (Unicode category Cc) and the Unicode line/paragraph separators: none of them belongs in any
    setting, and each would break the env-file, YAML or shell line a value ends up in.
    """
    for index, char in enumerate(value):
        if unicodedata.category(char) == "Cc" or char in "\u2028\u2029":
            name = _CONTROL_NAMES.get(char, "a control character")
            where = "at the end" if index == len(value) - 1 else f"at position {index + 1}"
            return f"{name} (U+{ord(char):04X}) {where}"
    return None


# ---------------------------------------------------------------------------------------------------- S3 buckets

S3_NAMING_RULES = "https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html"
# Reserved by S3 (general purpose bucket naming rules, the page above): CreateBucket refuses these.
_RESERVED_PREFIXES = {
    "xn--": "reserved for internationalised (punycode) DNS names",
    "sthree-": "reserved by S3",
    "amzn-s3-demo-": "reserved for AWS documentation examples",
}
_RESERVED_SUFFIXES = {
    "-s3alias": "reserved for access point aliases",
    "--ol-s3": "reserved for Object Lambda access point aliases",
    ".mrap": "reserved for Multi-Region Access Points",
    "--x-s3": "reserved for directory buckets",
    "--table-s3": "reserved for S3 table buckets",
}


def s3_bucket_problem(name: str) -> str | None:
    """Why S3 would refuse ``name`` as a general purpose bucket name (None if it would not)."""
    if not 3 <= len(name) <= 63:
        return f"is {len(name)} characters long; S3 bucket names are 3 to 63 characters"
    if not re.fullmatch(r"[a-z0-9.-]+", name):
        return "may hold only lowercase letters, digits, periods and hyphens"
    if not (name[0].isalnum() and name[-1].isalnum()):
        return "must begin and end with a lowercase letter or a digit"
    if ".." in name:
        return "contains two adjacent periods"
    if "-." in name or ".-" in name:
        # Each period-separated label becomes a DNS label of the virtual-hosted-style endpoint
        # (BUCKET.s3.REGION.amazonaws.com), and a DNS label cannot begin or end with a hyphen.
        return "has a hyphen next to a period; each period-separated part must begin and end with a letter or digit"
    if re.fullmatch(r"\d{1,3}(\.\d{1,3}){3}", name):
        return "is formatted as an IP address, which S3 refuses as a bucket name"
    for prefix, why in _RESERVED_PREFIXES.items():
        if name.startswith(prefix):
            return f"starts with {prefix!r}, {why}"
    for suffix, why in _RESERVED_SUFFIXES.items():
        if name.endswith(suffix):
            return f"ends with {suffix!r}, {why}"
    return None


# ---------------------------------------------------------------------------------------------------- proxies

# Address space a load balancer in a VPC reaches its targets from (RFC 1918, RFC 6598 shared space, loopback)
# and IPv6 unique local addresses.
_PRIVATE_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "127.0.0.0/8", "fc00::/7", "::1/128")
)
# A VPC's IPv6 block is a /56 from Amazon or a /48 at most when you bring your own: a trusted IPv6 range wider
# than that cannot be your load balancer's subnets.
WIDEST_PUBLIC_V6_PREFIX = 48


def trusted_proxy_problem(cidr: str) -> str | None:
    """Why ``cidr`` must not be a trusted proxy (None if it may).

    Nextcloud takes the client address from X-Forwarded-For only when the request comes from a trusted proxy, so
    each entry must be the load balancer's own subnets. A range holding public IPv4 addresses would let anyone on
    the internet forge their address (brute-force throttling, rate limits and the audit log would all see the
    forged one); an application load balancer reaches its targets from private addresses in the VPC's subnets.
    IPv6 subnets of a VPC are public (global unicast), so there the rule is the width: at most a VPC's /48.
    """
    try:
        net = ipaddress.ip_network(cidr, strict=True)
    except ValueError as exc:
        return f"{cidr!r} is not a CIDR ({exc}); write the network address, e.g. 10.0.0.0/16"
    if any(net.subnet_of(private) for private in _PRIVATE_NETWORKS if private.version == net.version):
        return None
    forged = (
        "Nextcloud believes X-Forwarded-For from every address listed here, so any client there could forge its "
        "address; list only the load balancer's private subnets, e.g. the VPC CIDR 10.0.0.0/16"
    )
    if net.version == 6 and net.is_global and not net.is_multicast and net.prefixlen >= WIDEST_PUBLIC_V6_PREFIX:
        return None
    if net.version == 6 and net.prefixlen < WIDEST_PUBLIC_V6_PREFIX:
        return (
            f"{cidr!r} is wider than a /{WIDEST_PUBLIC_V6_PREFIX} (a whole VPC at most) and holds public addresses; "
            f"{forged}"
        )
    return f"{cidr!r} holds public or non-VPC addresses, not only private ones; {forged}"


# ---------------------------------------------------------------------------------------------------- images

_REPOSITORY = r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?::\d+)?(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
_IMAGE_REFERENCE = re.compile(
    rf"(?P<repository>{_REPOSITORY})(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}))?(?:@sha256:(?P<digest>[^@]*))?"
)
_VERSION_TAG = re.compile(r"(?P<version>\d+(?:\.\d+)*)(?:-(?P<variant>[A-Za-z0-9_.-]+))?")


@dataclass(frozen=True)
class ImageReference:
    repository: str
    tag: str | None
    digest: str | None  # the 64 hex digits after @sha256:

    def with_tag(self, tag: str) -> str:
        return f"{self.repository}:{tag}" + (f"@sha256:{self.digest}" if self.digest else "")

    @property
    def tag_version(self) -> str | None:
        """The release a versioned tag names ("34.0.3" for 34.0.3-apache); None for latest, stable, apache, ..."""
        m = _VERSION_TAG.fullmatch(self.tag or "")
        return m["version"] if m else None

    @property
    def tag_variant(self) -> str | None:
        m = _VERSION_TAG.fullmatch(self.tag or "")
        return m["variant"] if m else None


def parse_image_reference(ref: str) -> ImageReference:
    """``repo[:tag][@sha256:<64 hex>]``; raises ValueError saying what to write."""
    m = _IMAGE_REFERENCE.fullmatch(ref)
    if not m:
        raise ValueError(
            "not an image reference: write repo:tag@sha256:<64 hex>, e.g. nextcloud:34.0.3-apache@sha256:…"
        )
    digest = m["digest"]
    if digest is not None and not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ValueError(
            f"the digest after @sha256: must be 64 hex digits (lowercase), not {len(digest)} characters; copy it "
            "whole from `docker buildx imagetools inspect IMAGE`"
        )
    return ImageReference(m["repository"], m["tag"], digest)


def image_version_problem(image: ImageReference, version: str) -> str | None:
    """Why a versioned tag disagrees with the declared Nextcloud version (None if it agrees or has no version)."""
    tag_version = image.tag_version
    if tag_version is None:
        return None
    wanted = f"{image.repository}:{version}-apache" + ("@sha256:<its digest>" if image.digest else "")
    if tag_version.count(".") != 2:
        return (
            f"the tag {image.tag!r} names a release line, not one release; use the full version tag, "
            f"{wanted} (the tag is checked against nextcloud.version)"
        )
    if tag_version != version:
        return (
            f"the tag {image.tag!r} is Nextcloud {tag_version} but nextcloud.version is {version!r}; make them agree: "
            f'image = "{wanted}" or version = "{tag_version}"'
        )
    if image.tag_variant not in (None, "apache"):
        return (
            f"the tag {image.tag!r} is the {image.tag_variant} variant; the derived image needs the apache variant "
            f"(Debian's Apache layout and apache2-foreground): use {wanted}"
        )
    return None
