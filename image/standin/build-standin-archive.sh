#!/usr/bin/env bash
# Builds the stand-in for the official nextcloud:*-apache base image on the host, without
# a Docker engine: a Debian bookworm root filesystem with Apache + mod_php 8.2 and the PHP
# extensions Nextcloud needs, laid out like the official image, written as a gzip tarball
# that the bake loads with `docker import`. TEST FIXTURE: it carries no Nextcloud code.
#
# Usage: build-standin-archive.sh OUTPUT.tar.gz
# Inputs (environment): NEXTCLOUD_TREE  fake code tree copied to /usr/src/nextcloud
#                                        (default: image/standin/nextcloud beside this script)
#                       DEBIAN_MIRROR    default http://deb.debian.org/debian
set -o errexit -o nounset -o pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
output="${1:-}"
NEXTCLOUD_TREE="${NEXTCLOUD_TREE:-${here}/nextcloud}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if [[ -z "${output}" || "${output}" != *.tar.gz ]]; then
  echo "usage: $0 OUTPUT.tar.gz (the bake loads a gzip tarball with docker import)" >&2
  exit 2
fi
if [[ ! -f "${NEXTCLOUD_TREE}/version.php" ]]; then
  echo "error: ${NEXTCLOUD_TREE}/version.php not found: the stand-in needs the fake Nextcloud tree" \
       "(image/standin/nextcloud/) or NEXTCLOUD_TREE pointing at one" >&2
  exit 1
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
  --customize-hook="NEXTCLOUD_TREE='${NEXTCLOUD_TREE}' '${here}/customize-standin.sh' \"\$1\"" \
  bookworm "${output}" \
  "deb ${DEBIAN_MIRROR} bookworm main" \
  "deb ${DEBIAN_MIRROR} bookworm-updates main" \
  "deb ${DEBIAN_MIRROR}-security bookworm-security main"
