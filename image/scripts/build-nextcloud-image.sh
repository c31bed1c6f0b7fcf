#!/usr/bin/env bash
# Builds the project's Nextcloud image (image/nextcloud/Dockerfile) on the cached base
# image and tags it nextcloud-cluster:<fingerprint[:12]> and nextcloud-cluster:current,
# the tag nextcloud.service runs.
#   NEXTCLOUD_IMAGE  base image reference as given to cache-nextcloud-image.sh
#   FINGERPRINT      sha256 of the build inputs (hex)
#   BUILD_CONTEXT    directory holding the Dockerfile
set -o errexit -o nounset -o pipefail

: "${NEXTCLOUD_IMAGE:?NEXTCLOUD_IMAGE is required}"
: "${FINGERPRINT:?FINGERPRINT is required}"
: "${BUILD_CONTEXT:?BUILD_CONTEXT is required (directory with the Dockerfile)}"

if [[ ! "${FINGERPRINT}" =~ ^[0-9a-f]{64}$ ]]; then
  echo "build-nextcloud-image.sh: FINGERPRINT must be 64 lowercase hex characters" >&2
  exit 1
fi
if [[ ! -f "${BUILD_CONTEXT}/Dockerfile" ]]; then
  echo "build-nextcloud-image.sh: no Dockerfile in ${BUILD_CONTEXT}" >&2
  exit 1
fi

# The digest-pinned reference cache-nextcloud-image.sh pulled (Docker looks a tag@digest reference up by digest).
base_image="${NEXTCLOUD_IMAGE}"
if ! docker image inspect "${base_image}" > /dev/null; then
  echo "build-nextcloud-image.sh: base image ${base_image} is not in the Docker store;" \
       "cache-nextcloud-image.sh must run first" >&2
  exit 1
fi

# Never pull: the base is already here, pinned. No network either: the Dockerfile fetches
# nothing, and dockerd has no bridge (install-docker.sh). The classic builder: no buildx plugin is installed.
DOCKER_BUILDKIT=0 docker build --pull=false --network none \
  --build-arg "BASE_IMAGE=${base_image}" \
  --label "nextcloud-image.fingerprint=${FINGERPRINT}" \
  --tag "nextcloud-cluster:${FINGERPRINT:0:12}" \
  --tag "nextcloud-cluster:current" \
  "${BUILD_CONTEXT}"

docker image inspect --format 'built {{.Id}}' nextcloud-cluster:current
