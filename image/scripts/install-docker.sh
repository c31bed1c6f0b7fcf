#!/usr/bin/env bash
# Installs the Docker engine the image runs Nextcloud with and configures it for an
# immutable host: logs to journald (no json-file logs growing on the root volume) and
# live-restore (a dockerd restart does not take the container down).
#   DOCKER_VERSION  "debian": Debian's docker.io (local twin, no registry needed);
#                   otherwise the exact apt version of docker-ce from Docker's repository,
#                   e.g. "5:27.3.1-1~debian.12~bookworm".
set -o errexit -o nounset -o pipefail

: "${DOCKER_VERSION:?DOCKER_VERSION is required (\"debian\" or a docker-ce apt version)}"
export DEBIAN_FRONTEND=noninteractive

apt_get() {
  apt-get -o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confold "$@"
}

apt_get update -qq

if [[ "${DOCKER_VERSION}" == "debian" ]]; then
  # Without apparmor, every `docker run` fails on Debian's cloud kernel
  # (exec: "apparmor_parser": executable file not found).
  apt_get install -y -qq --no-install-recommends docker.io apparmor
else
  # Docker's own repository, its key pinned to this source only.
  apt_get install -y -qq --no-install-recommends ca-certificates curl gnupg
  install -d -m 0755 /etc/apt/keyrings
  curl -fsSL https://download.docker.com/linux/debian/gpg | gpg --dearmor --yes -o /etc/apt/keyrings/docker.gpg
  chmod 0644 /etc/apt/keyrings/docker.gpg
  # shellcheck source=/dev/null
  codename="$(. /etc/os-release && echo "${VERSION_CODENAME}")"
  echo "deb [arch=$(dpkg --print-architecture) signed-by=/etc/apt/keyrings/docker.gpg]" \
       "https://download.docker.com/linux/debian ${codename} stable" > /etc/apt/sources.list.d/docker.list
  apt_get update -qq
  if ! apt-cache madison docker-ce | grep -qF " ${DOCKER_VERSION} "; then
    echo "install-docker.sh: docker-ce ${DOCKER_VERSION} is not in Docker's repository;" \
         "available: $(apt-cache madison docker-ce | awk '{print $3}' | head -5 | tr '\n' ' ')" >&2
    exit 1
  fi
  apt_get install -y -qq --no-install-recommends \
    "docker-ce=${DOCKER_VERSION}" "docker-ce-cli=${DOCKER_VERSION}" containerd.io docker-buildx-plugin apparmor
  # The pinned version is what the image records; an unattended upgrade must not move it.
  apt-mark hold docker-ce docker-ce-cli
fi

install -d -m 0755 /etc/docker
cat > /etc/docker/daemon.json <<'JSON'
{
  "log-driver": "journald",
  "live-restore": true,
  "storage-driver": "overlay2"
}
JSON
chmod 0644 /etc/docker/daemon.json

systemctl enable docker.service containerd.service
systemctl restart docker.service
docker version --format 'docker {{.Server.Version}} ready'
