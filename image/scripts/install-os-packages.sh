#!/usr/bin/env bash
# Installs the Debian packages the image's own host-side code needs, e.g. python3-boto3
# for resolve-secrets (Secrets Manager / SSM references).
#   OS_PACKAGES  space-separated Debian package names
set -o errexit -o nounset -o pipefail

: "${OS_PACKAGES:?OS_PACKAGES is required (space-separated Debian package names)}"
export DEBIAN_FRONTEND=noninteractive

read -r -a packages <<< "${OS_PACKAGES}"
if [[ ! -s /var/cache/apt/pkgcache.bin ]]; then
  apt-get -o DPkg::Lock::Timeout=300 update -qq
fi
apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${packages[@]}"
