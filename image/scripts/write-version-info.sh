#!/usr/bin/env bash
# Records the image's provenance in /etc/nextcloud-image/version-info.json: what it was
# built from (git sha, base image, Nextcloud image + digest) and what it holds (every installed
# package with its version, the engine pins), so what changed between two images is one diff.
#   ENV_NAME GIT_SHA BUILD_TIME FINGERPRINT NEXTCLOUD_IMAGE NEXTCLOUD_VERSION  required
#   BASE_IMAGE       the exact source image (resolved on the host: source AMI id, or the local base
#                    disk's digest); when empty, the source AMI id is read from the instance metadata
#   BASE_IMAGE_NAME  its name (optional)
#   DOCKER_PACKAGES  the engine pins ("name=version ..."), recorded beside what is installed
set -o errexit -o nounset -o pipefail

for name in ENV_NAME GIT_SHA BUILD_TIME FINGERPRINT NEXTCLOUD_IMAGE NEXTCLOUD_VERSION; do
  if [[ -z "${!name:-}" ]]; then
    echo "write-version-info.sh: ${name} is required" >&2
    exit 1
  fi
done
BASE_IMAGE="${BASE_IMAGE:-}"
BASE_IMAGE_NAME="${BASE_IMAGE_NAME:-}"
DOCKER_PACKAGES="${DOCKER_PACKAGES:-}"

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

export BASE_IMAGE BASE_IMAGE_NAME DOCKER_PACKAGES
NEXTCLOUD_IMAGE_ID="$(docker image inspect --format '{{.Id}}' nextcloud-cluster:current)"
NEXTCLOUD_BASE_IMAGE_ID="$(docker image inspect --format '{{.Id}}' "${NEXTCLOUD_IMAGE}")"
NEXTCLOUD_BASE_IMAGE_DIGESTS="$(docker image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "${NEXTCLOUD_IMAGE}")"
DOCKER_INSTALLED="$(docker version --format '{{.Server.Version}}')"
INSTALLED_PACKAGES="$(dpkg-query --show --showformat '${Package}\t${Version}\n')"
HELD_PACKAGES="$(apt-mark showhold)"
export NEXTCLOUD_IMAGE_ID NEXTCLOUD_BASE_IMAGE_ID NEXTCLOUD_BASE_IMAGE_DIGESTS DOCKER_INSTALLED INSTALLED_PACKAGES \
  HELD_PACKAGES

install -d -o root -g root -m 0755 /etc/nextcloud-image
python3 - <<'PY'
import json
import os

packages = dict(line.split("\t", 1) for line in os.environ["INSTALLED_PACKAGES"].splitlines() if "\t" in line)
pins = dict(
    spec.split("=", 1) if "=" in spec else (spec, "")
    for spec in os.environ["DOCKER_PACKAGES"].split()
)
image = os.environ["NEXTCLOUD_IMAGE"]
repository = image.rsplit("@", 1)[0].rsplit(":", 1)[0]
digests = [d.split("@", 1)[1] for d in os.environ["NEXTCLOUD_BASE_IMAGE_DIGESTS"].split() if d.startswith(repository + "@")]
info = {
    "git_sha": os.environ["GIT_SHA"],
    "nextcloud_version": os.environ["NEXTCLOUD_VERSION"],
    "nextcloud_image": image,
    "nextcloud_image_digest": digests[0] if digests else "",
    "nextcloud_base_image_id": os.environ["NEXTCLOUD_BASE_IMAGE_ID"],
    "nextcloud_image_id": os.environ["NEXTCLOUD_IMAGE_ID"],
    "docker_version": os.environ["DOCKER_INSTALLED"],
    # What the settings pinned, and what is installed and held: a mismatch is visible here and in the image suite.
    "docker_packages": {name: {"pinned": pins[name], "installed": packages.get(name, "")} for name in sorted(pins)},
    "held_packages": sorted(os.environ["HELD_PACKAGES"].split()),
    "packages": dict(sorted(packages.items())),
    "base_image": os.environ["BASE_IMAGE"],
    "base_image_name": os.environ["BASE_IMAGE_NAME"],
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
python3 -c 'import json, sys; i = json.load(open(sys.argv[1])); print(json.dumps({k: v for k, v in i.items() if k != "packages"}, indent=2)); print(len(i["packages"]), "packages recorded")' /etc/nextcloud-image/version-info.json
