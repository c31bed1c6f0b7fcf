#!/usr/bin/env bash
# Builds the root filesystem layer of the stand-in for the official nextcloud:*-apache base image on the host,
# without a Docker engine: Debian bookworm with Apache + mod_php 8.2 and the PHP extensions Nextcloud needs,
# laid out like the official image, written as an uncompressed tarball. TEST FIXTURE: it carries no Nextcloud
# code. The code tree (/usr/src/nextcloud) is a second layer, and the image configuration (VOLUME, ENTRYPOINT,
# ...) is written by infra/localtwin/standin/__init__.py, which turns both into an OCI image.
#
# Usage: build-standin-rootfs.sh OUTPUT.tar
# Inputs (environment): DEBIAN_MIRROR  default http://deb.debian.org/debian
set -o errexit -o nounset -o pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
output="${1:-}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if [[ -z "${output}" || "${output}" != *.tar ]]; then
  echo "usage: $0 OUTPUT.tar (an uncompressed tarball: the OCI layer is compressed from it)" >&2
  exit 2
fi
if ! command -v mmdebstrap > /dev/null; then
  echo "error: mmdebstrap not found; install it with: apt-get install mmdebstrap" >&2
  exit 1
fi
if [[ "$(id -u)" -ne 0 ]]; then
  echo "error: run as root: the archive must keep root and www-data (uid 33) ownership" >&2
  exit 1
fi

packages=(
  apache2 libapache2-mod-php8.2 php8.2-cli php8.2-opcache
  php8.2-pgsql php-redis php-apcu php8.2-gd php8.2-zip php8.2-intl php8.2-mbstring
  php8.2-curl php8.2-xml php8.2-bcmath php8.2-gmp
  curl ca-certificates rsync
)
IFS=,
include="${packages[*]}"
unset IFS

# Trimmed like a slim container image: no docs, man pages, locales or apt lists.
mmdebstrap \
  --variant=minbase --mode=root --components=main \
  --include="${include}" \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/lintian/*' \
  --customize-hook="'${here}/customize-standin.sh' \"\$1\"" \
  bookworm "${output}" \
  "deb ${DEBIAN_MIRROR} bookworm main" \
  "deb ${DEBIAN_MIRROR} bookworm-updates main" \
  "deb ${DEBIAN_MIRROR}-security bookworm-security main"
