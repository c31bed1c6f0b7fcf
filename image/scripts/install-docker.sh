#!/usr/bin/env bash
# Installs the Docker engine the image runs Nextcloud with, every engine package at the exact version the settings
# pin (held, so nothing moves it later), and configures it for an immutable host: logs to journald (no json-file
# logs growing on the root volume), live-restore (a dockerd restart does not take the container down) and host
# networking only.
#   DOCKER_VERSION   "debian": Debian's docker.io (local twin, no registry needed); otherwise docker-ce from
#                    Docker's repository (its key checked against the fingerprint Docker publishes)
#   DOCKER_PACKAGES  "name=version ...": exactly what to install and hold (render/outputs.py, from [docker])
#   STAGING_DIR      uploaded sources (scripts/lib/apt-pins.sh)
set -o errexit -o nounset -o pipefail

: "${DOCKER_VERSION:?DOCKER_VERSION is required (\"debian\" or a docker-ce apt version)}"
: "${DOCKER_PACKAGES:?DOCKER_PACKAGES is required (\"name=version ...\" of the engine packages)}"
: "${STAGING_DIR:?STAGING_DIR is required (directory with scripts/lib/apt-pins.sh)}"
export DEBIAN_FRONTEND=noninteractive
# shellcheck source=SCRIPTDIR/lib/apt-pins.sh
. "${STAGING_DIR}/scripts/lib/apt-pins.sh"

# Docker's release key, as Docker's install documentation for Debian gives it ("Verify that you now have the key
# with the fingerprint 9DC8 5822 9FC7 DD38 854A E2D8 8D81 803C 0EBF CD88", docker/docs engine/install/debian.md).
DOCKER_REPO_KEY_FINGERPRINT="9DC8 5822 9FC7 DD38 854A  E2D8 8D81 803C 0EBF CD88"

apt_get() {
  apt-get -o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confold "$@"
}

apt_get update -qq

if [[ "${DOCKER_VERSION}" == "debian" ]]; then
  # Without apparmor, every `docker run` fails on Debian's cloud kernel
  # (exec: "apparmor_parser": executable file not found).
  install_pinned "${DOCKER_PACKAGES} apparmor"
  # docker.io's own runtime packages come from the same release; held with it so they move together or not at all.
  apt-mark hold containerd runc > /dev/null
else
  # Docker's own repository, its key verified before apt trusts it and pinned to this source only.
  apt_get install -y -qq --no-install-recommends ca-certificates curl gnupg
  install -d -m 0755 /etc/apt/keyrings
  key="$(mktemp)"
  curl -fsSL -o "${key}" https://download.docker.com/linux/debian/gpg
  verify_key_fingerprint "${key}" "${DOCKER_REPO_KEY_FINGERPRINT}"
  gpg --dearmor --yes -o /etc/apt/keyrings/docker.gpg < "${key}"
  rm -f "${key}"
  chmod 0644 /etc/apt/keyrings/docker.gpg
  # shellcheck source=/dev/null
  codename="$(. /etc/os-release && echo "${VERSION_CODENAME}")"
  echo "deb [arch=$(dpkg --print-architecture) signed-by=/etc/apt/keyrings/docker.gpg]" \
       "https://download.docker.com/linux/debian ${codename} stable" > /etc/apt/sources.list.d/docker.list
  apt_get update -qq
  # No buildx plugin: the image build uses the classic builder (build-nextcloud-image.sh), nothing else builds.
  install_pinned "${DOCKER_PACKAGES} apparmor"
fi

# No bridge, no iptables: the one container runs on the host's network (nextcloud.service), so
# dockerd needs no docker0, NAT or FORWARD rules. Setting them up was most of dockerd's start
# at boot (12 s of 19 s under TCG, measured) and left a FORWARD DROP policy on the host.
# Builds run with --network none (build-nextcloud-image.sh): nothing in them needs a network.
install -d -m 0755 /etc/docker
cat > /etc/docker/daemon.json <<'JSON'
{
  "log-driver": "journald",
  "live-restore": true,
  "storage-driver": "overlay2",
  "bridge": "none",
  "iptables": false,
  "ip6tables": false,
  "ip-forward": false,
  "ip-masq": false
}
JSON
chmod 0644 /etc/docker/daemon.json

# Start the engine beside cloud-init instead of after it. The packaged units wait for
# basic.target (which waits for cloud-init's network stage: SSH host keys, user data) and for
# network(-online).target (which cloud-init holds back too), yet neither engine needs a network
# or user data to start: no bridge, no iptables, no registry (--pull never). Their copies in
# /etc/systemd/system (which take precedence) drop those two dependencies and order the engine
# after the local filesystems and AppArmor only; nextcloud.service still waits for the network,
# the secrets and the engine. Measured on the local twin: dockerd is up before cloud-init's
# network stage ends instead of 10-20 s after it.
early_unit() {
  local unit="$1" packaged target="/etc/systemd/system/$1"
  packaged="$(systemctl show --property FragmentPath --value "${unit}")"
  if [[ "${packaged}" == "${target}" ]]; then
    packaged="/lib/systemd/system/${unit}"
  fi
  if [[ ! -f "${packaged}" ]] || ! grep -q '^\[Unit\]' "${packaged}"; then
    echo "install-docker.sh: no packaged ${unit} with a [Unit] section (found '${packaged}')" >&2
    exit 1
  fi
  sed -E \
    -e '/^(After|Wants)=/ s/[[:space:]]*\<network(-online)?\.target\>//g' \
    -e '/^(After|Wants)=/ s/=[[:space:]]+/=/' \
    -e '/^(After|Wants)=$/d' \
    -e '/^\[Unit\]$/a # nextcloud-image: starts beside cloud-init, see image/scripts/install-docker.sh\nDefaultDependencies=no\nAfter=local-fs.target systemd-tmpfiles-setup.service apparmor.service\nConflicts=shutdown.target\nBefore=shutdown.target' \
    "${packaged}" > "${target}.tmp"
  chmod 0644 "${target}.tmp"
  mv "${target}.tmp" "${target}"
}
early_unit containerd.service
early_unit docker.service
# The API socket the engine is activated through must not wait for basic.target either.
install -d -m 0755 /etc/systemd/system/docker.socket.d
cat > /etc/systemd/system/docker.socket.d/50-nextcloud-image-early.conf <<'UNIT'
# nextcloud-image: listens beside cloud-init, see image/scripts/install-docker.sh
[Unit]
DefaultDependencies=no
After=local-fs.target systemd-tmpfiles-setup.service
Before=sockets.target shutdown.target
Conflicts=shutdown.target
UNIT
chmod 0644 /etc/systemd/system/docker.socket.d/50-nextcloud-image-early.conf
systemctl daemon-reload
for unit in containerd.service docker.service; do
  after="$(systemctl show --property After --value "${unit}")"
  if [[ " ${after} " == *" network-online.target "* || " ${after} " == *" basic.target "* \
        || "$(systemctl show --property DefaultDependencies --value "${unit}")" != "no" ]]; then
    echo "install-docker.sh: ${unit} still waits for the network or basic.target (After=${after})" >&2
    exit 1
  fi
done

systemctl enable docker.service containerd.service
systemctl restart docker.service
docker version --format 'docker {{.Server.Version}} ready'
