#!/usr/bin/env bash
# Records the image's provenance in /etc/nextcloud-image/version-info.json: what it was
# built from (git sha, base image, Nextcloud image + digest) and what it holds.
#   ENV_NAME GIT_SHA BUILD_TIME FINGERPRINT NEXTCLOUD_IMAGE NEXTCLOUD_VERSION  required
#   BASE_IMAGE  identity of the source image; empty on AWS, where it is the source AMI id
#               read from the instance metadata (IMDSv2)
set -o errexit -o nounset -o pipefail

for name in ENV_NAME GIT_SHA BUILD_TIME FINGERPRINT NEXTCLOUD_IMAGE NEXTCLOUD_VERSION; do
  if [[ -z "${!name:-}" ]]; then
    echo "write-version-info.sh: ${name} is required" >&2
    exit 1
  fi
done
BASE_IMAGE="${BASE_IMAGE:-}"

if [[ -z "${BASE_IMAGE}" ]]; then
  token="$(curl -fsS -m 5 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' \
    http://169.254.169.254/latest/api/token || true)"
  if [[ -n "${token}" ]]; then
    BASE_IMAGE="$(curl -fsS -m 5 -H "X-aws-ec2-metadata-token: ${token}" \
      http://169.254.169.254/latest/meta-data/ami-id || true)"
  fi
  if [[ -z "${BASE_IMAGE}" ]]; then
    echo "write-version-info.sh: BASE_IMAGE is empty and no instance metadata answered the source AMI id" >&2
    exit 1
  fi
fi

export BASE_IMAGE
NEXTCLOUD_IMAGE_ID="$(docker image inspect --format '{{.Id}}' nextcloud-cluster:current)"
NEXTCLOUD_BASE_IMAGE_ID="$(docker image inspect --format '{{.Id}}' "${NEXTCLOUD_IMAGE%@local}")"
DOCKER_INSTALLED="$(docker version --format '{{.Server.Version}}')"
export NEXTCLOUD_IMAGE_ID NEXTCLOUD_BASE_IMAGE_ID DOCKER_INSTALLED

install -d -o root -g root -m 0755 /etc/nextcloud-image
python3 - <<'PY'
import json
import os

info = {
    "git_sha": os.environ["GIT_SHA"],
    "nextcloud_version": os.environ["NEXTCLOUD_VERSION"],
    "nextcloud_image": os.environ["NEXTCLOUD_IMAGE"],
    "nextcloud_base_image_id": os.environ["NEXTCLOUD_BASE_IMAGE_ID"],
    "nextcloud_image_id": os.environ["NEXTCLOUD_IMAGE_ID"],
    "docker_version": os.environ["DOCKER_INSTALLED"],
    "base_image": os.environ["BASE_IMAGE"],
    "fingerprint": os.environ["FINGERPRINT"],
    "build_time": os.environ["BUILD_TIME"],
    "environment": os.environ["ENV_NAME"],
}
path = "/etc/nextcloud-image/version-info.json"
with open(path, "w", encoding="utf-8") as f:
    json.dump(info, f, indent=2, sort_keys=True)
    f.write("\n")
os.chmod(path, 0o644)
PY
cat /etc/nextcloud-image/version-info.json
