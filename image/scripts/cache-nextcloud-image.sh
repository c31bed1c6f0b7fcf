#!/usr/bin/env bash
# Puts the base Nextcloud image into the image's Docker store, so an instance never pulls at boot: pulled by
# digest from its registry, on AWS and on the local twin alike (there from the twin's loopback registry).
#   NEXTCLOUD_IMAGE    <registry/repo>:<tag>@sha256:<digest>
#   INSECURE_REGISTRY  optional host:port trusted without TLS for this pull only (the local twin's loopback
#                      registry); daemon.json is restored afterwards, so nothing of it stays in the image
set -o errexit -o nounset -o pipefail

: "${NEXTCLOUD_IMAGE:?NEXTCLOUD_IMAGE is required (image reference with :tag@sha256:digest)}"
INSECURE_REGISTRY="${INSECURE_REGISTRY:-}"

if [[ ! "${NEXTCLOUD_IMAGE}" =~ ^[a-z0-9][a-z0-9._:/-]*:[A-Za-z0-9_][A-Za-z0-9_.-]*@sha256:[0-9a-f]{64}$ ]]; then
  echo "cache-nextcloud-image.sh: NEXTCLOUD_IMAGE=${NEXTCLOUD_IMAGE} is not pinned: use" \
       "<repo>:<tag>@sha256:<digest> (the bake pulls exactly that image, by digest)" >&2
  exit 1
fi
digest="${NEXTCLOUD_IMAGE##*@}"
repository="${NEXTCLOUD_IMAGE%@*}"
repository="${repository%:*}"
registry="${NEXTCLOUD_IMAGE%%/*}"

# Whatever this script changes for the pull is undone on the way out, success or not.
cleanups=()
cleanup() {
  local i
  for ((i = ${#cleanups[@]} - 1; i >= 0; i--)); do
    eval "${cleanups[i]}" || true
  done
}
trap cleanup EXIT

if [[ "${registry}" =~ ^[0-9]{12}\.dkr\.ecr(-fips)?\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$ ]]; then
  # A private ECR repository or ECR pull-through cache: the bake instance's own role signs the pull
  # (amazon-ecr-credential-helper, IMDS credentials). No registry credentials exist anywhere; the login
  # configuration is a throwaway DOCKER_CONFIG, and the helper leaves the image with it.
  apt-get install -y -qq --no-install-recommends amazon-ecr-credential-helper
  DOCKER_CONFIG="$(mktemp -d)"
  export DOCKER_CONFIG
  # shellcheck disable=SC2016 # expanded when the cleanup runs
  cleanups+=('rm -rf "${DOCKER_CONFIG}"; apt-get purge -y -qq amazon-ecr-credential-helper')
  printf '{"credHelpers": {"%s": "ecr-login"}}\n' "${registry}" > "${DOCKER_CONFIG}/config.json"
fi

daemon_json=/etc/docker/daemon.json
if [[ -n "${INSECURE_REGISTRY}" ]]; then
  if [[ "${repository}" != "${INSECURE_REGISTRY}/"* ]]; then
    echo "cache-nextcloud-image.sh: INSECURE_REGISTRY=${INSECURE_REGISTRY} is not the registry of ${NEXTCLOUD_IMAGE}" >&2
    exit 1
  fi
  cp -p "${daemon_json}" "${daemon_json}.bake"
  # shellcheck disable=SC2016 # expanded when the cleanup runs
  cleanups+=('mv -f "${daemon_json}.bake" "${daemon_json}"; systemctl restart docker.service')
  python3 - "${daemon_json}" "${INSECURE_REGISTRY}" <<'PY'
import json
import sys

path, registry = sys.argv[1], sys.argv[2]
with open(path, encoding="utf-8") as f:
    config = json.load(f)
config["insecure-registries"] = [registry]
with open(path, "w", encoding="utf-8") as f:
    json.dump(config, f, indent=2)
PY
  systemctl restart docker.service
fi

started=${SECONDS}
docker pull --quiet "${NEXTCLOUD_IMAGE}"
# What is in the store must be that digest, whatever the tag says.
if ! docker image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "${NEXTCLOUD_IMAGE}" \
    | grep -qxF "${repository}@${digest}"; then
  echo "cache-nextcloud-image.sh: the pulled image does not carry ${repository}@${digest}" >&2
  exit 1
fi
echo "cached ${repository}@${digest} in $((SECONDS - started))s"
