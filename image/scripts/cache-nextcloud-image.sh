#!/usr/bin/env bash
# Puts the base Nextcloud image into the image's Docker store, so an instance never pulls
# at boot.
#   NEXTCLOUD_IMAGE  <repo>:<tag>@sha256:<digest>: pulled by digest (AWS), or, when
#                    STANDIN_ARCHIVE exists, the name:tag the stand-in is imported as
#                    (local twin; a trailing "@local" is dropped)
#   STANDIN_ARCHIVE  the stand-in root filesystem tarball (local twin only)
set -o errexit -o nounset -o pipefail

: "${NEXTCLOUD_IMAGE:?NEXTCLOUD_IMAGE is required (image reference with @sha256 digest, or name:tag@local)}"
STANDIN_ARCHIVE="${STANDIN_ARCHIVE:-}"

if [[ "${NEXTCLOUD_IMAGE}" == *@sha256:* ]]; then
  if [[ -e "${STANDIN_ARCHIVE}" ]]; then
    echo "cache-nextcloud-image.sh: both a stand-in archive and a pinned registry image (${NEXTCLOUD_IMAGE}) were given;" \
         "the local twin uses a name:tag@local reference" >&2
    exit 1
  fi
  registry="${NEXTCLOUD_IMAGE%%/*}"
  if [[ "${registry}" =~ ^[0-9]{12}\.dkr\.ecr(-fips)?\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$ ]]; then
    # A private ECR repository or ECR pull-through cache: the bake instance's own role signs the pull
    # (amazon-ecr-credential-helper, IMDS credentials). No registry credentials exist anywhere; the login
    # configuration is a throwaway DOCKER_CONFIG, and the helper leaves the image with it.
    apt-get install -y -qq --no-install-recommends amazon-ecr-credential-helper
    DOCKER_CONFIG="$(mktemp -d)"
    export DOCKER_CONFIG
    trap 'rm -rf "${DOCKER_CONFIG}"; apt-get purge -y -qq amazon-ecr-credential-helper' EXIT
    printf '{"credHelpers": {"%s": "ecr-login"}}\n' "${registry}" > "${DOCKER_CONFIG}/config.json"
  fi
  docker pull --quiet "${NEXTCLOUD_IMAGE}"
elif [[ -s "${STANDIN_ARCHIVE}" ]]; then
  tag="${NEXTCLOUD_IMAGE%@local}"
  # The image configuration the official nextcloud:*-apache image has; a root
  # filesystem tarball carries none. PHP also scans /usr/local/etc/php/conf.d as there.
  docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV PHP_INI_SCAN_DIR=:/usr/local/etc/php/conf.d' \
    --change 'ENV APACHE_CONFDIR=/etc/apache2' \
    --change 'WORKDIR /var/www/html' \
    --change 'EXPOSE 80' \
    --change 'CMD ["apache2-foreground"]' \
    --message "TEST FIXTURE: stand-in for nextcloud:*-apache, no Nextcloud code" \
    "${STANDIN_ARCHIVE}" "${tag}"
  rm -f "${STANDIN_ARCHIVE}"
else
  echo "cache-nextcloud-image.sh: NEXTCLOUD_IMAGE=${NEXTCLOUD_IMAGE} is not pinned and no stand-in archive" \
       "was uploaded: use <repo>:<tag>@sha256:<digest> (or a stand-in archive for the local twin)" >&2
  exit 1
fi
