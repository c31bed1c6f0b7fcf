#!/usr/bin/env bash
# Benchmark only (infra/bench/seed.py): what the original setup's user data did at every boot, so the
# baked image can be compared with it. Update and upgrade packages, install Docker, pull the
# Nextcloud image (by digest, from the twin's loopback registry), build the derived image, write
# its environment, start it. The project's sources come from a throwaway HTTP server on the host.
# The steps reuse the bake's own scripts, so they do exactly what the bake does, only at boot.
#
# Usage: seed-setup BASE_URL NEXTCLOUD_IMAGE FINGERPRINT DOCKER_PACKAGES INSECURE_REGISTRY
# Each step's milliseconds go to /var/log/seed-setup-timings.tsv (name<TAB>ms), which the benchmark reads.
set -o errexit -o nounset -o pipefail

if [[ $# -ne 5 ]]; then
  echo "usage: $0 BASE_URL NEXTCLOUD_IMAGE FINGERPRINT DOCKER_PACKAGES INSECURE_REGISTRY (got $# arguments)" >&2
  exit 2
fi
base_url="$1"
nextcloud_image="$2"
fingerprint="$3"
docker_packages="$4"
insecure_registry="$5"
staging=/tmp/nextcloud-image
timings=/var/log/seed-setup-timings.tsv
export DEBIAN_FRONTEND=noninteractive

step() {
  local name="$1" start end
  shift
  start="$(date +%s%N)"
  "$@"
  end="$(date +%s%N)"
  printf '%s\t%s\n' "${name}" "$(( (end - start) / 1000000 ))" >> "${timings}"
}

apt_update_upgrade() {
  apt-get -o DPkg::Lock::Timeout=300 update -qq
  apt-get -o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confold upgrade -y -qq
}

fetch_image_sources() {
  install -d -m 0700 "${staging}"
  curl -fsS --retry 5 "${base_url}/image.tar.gz" | tar -xz -C "${staging}"
  curl -fsS --retry 5 -o "${staging}/nextcloud.env" "${base_url}/nextcloud.env"
  curl -fsS --retry 5 -o "${staging}/secret-references.json" "${base_url}/secret-references.json"
}

: > "${timings}"
step apt_update_upgrade apt_update_upgrade
step fetch_image_sources fetch_image_sources
step install_docker env DOCKER_VERSION=debian DOCKER_PACKAGES="${docker_packages}" STAGING_DIR="${staging}" \
  "${staging}/scripts/install-docker.sh"
step load_nextcloud_image env NEXTCLOUD_IMAGE="${nextcloud_image}" INSECURE_REGISTRY="${insecure_registry}" \
  "${staging}/scripts/cache-nextcloud-image.sh"
step build_nextcloud_image env NEXTCLOUD_IMAGE="${nextcloud_image}" FINGERPRINT="${fingerprint}" \
  BUILD_CONTEXT="${staging}/nextcloud" "${staging}/scripts/build-nextcloud-image.sh"
step write_environment_and_units env STAGING_DIR="${staging}" "${staging}/scripts/install-units.sh"
# --no-block: runcmd runs inside cloud-final.service; the container start must not wait on it.
step start_nextcloud systemctl start --no-block nextcloud.service
