#!/usr/bin/env bash
# Installs the host side of the image: the rootfs overlay (systemd units, resolve-secrets),
# the non-secret Nextcloud environment and the secret reference contract resolve-secrets parses
# the user data with, then enables the overlay's units.
#   STAGING_DIR  uploaded sources: rootfs/ (overlay), nextcloud.env and secret-references.json (rendered)
set -o errexit -o nounset -o pipefail

: "${STAGING_DIR:?STAGING_DIR is required (directory with rootfs/ and nextcloud.env)}"
overlay="${STAGING_DIR}/rootfs"
env_file="${STAGING_DIR}/nextcloud.env"
contract="${STAGING_DIR}/secret-references.json"

if [[ ! -d "${overlay}/etc/systemd/system" ]]; then
  echo "install-units.sh: ${overlay}/etc/systemd/system is missing: the rootfs overlay was not uploaded" >&2
  exit 1
fi
if [[ ! -f "${env_file}" ]]; then
  echo "install-units.sh: ${env_file} is missing: render build/<env>/nextcloud.env first" >&2
  exit 1
fi
# nextcloud.env is baked into every copy of the image: a secret there would be in the AMI.
if grep -Eq '^[A-Z0-9_]*(PASSWORD|SECRET|PASSWORDSALT|INSTANCEID)[A-Z0-9_]*=' "${env_file}"; then
  echo "install-units.sh: nextcloud.env names a secret ($(grep -Eo '^[A-Z0-9_]*(PASSWORD|SECRET|PASSWORDSALT|INSTANCEID)[A-Z0-9_]*' "${env_file}" | tr '\n' ' '));" \
       "secrets belong in user data (instance.json), never in the image" >&2
  exit 1
fi

if [[ ! -f "${contract}" ]]; then
  echo "install-units.sh: ${contract} is missing: render build/<env>/secret-references.json first" >&2
  exit 1
fi

# Owned by root whoever uploaded them; executables 0755, everything else 0644.
(
  cd "${overlay}"
  find . -type f -print0 | while IFS= read -r -d '' file; do
    mode=0644
    if [[ -x "${file}" ]]; then
      mode=0755
    fi
    install -D -o root -g root -m "${mode}" "${file}" "/${file#./}"
  done
)

install -d -o root -g root -m 0755 /etc/nextcloud
install -o root -g root -m 0644 "${env_file}" /etc/nextcloud/nextcloud.env
install -D -o root -g root -m 0644 "${contract}" /usr/local/share/nextcloud-image/secret-references.json

systemctl daemon-reload
units=()
for unit in "${overlay}"/etc/systemd/system/*.service "${overlay}"/etc/systemd/system/*.timer \
            "${overlay}"/etc/systemd/system/*.socket; do
  if [[ -f "${unit}" ]] && grep -q '^\[Install\]' "${unit}"; then
    units+=("$(basename "${unit}")")
  fi
done
if [[ "${#units[@]}" -eq 0 ]]; then
  echo "install-units.sh: no unit with an [Install] section in the overlay" >&2
  exit 1
fi
# Enabled, not started: the units need the instance's secrets, which only exist at boot.
systemctl enable "${units[@]}"
echo "enabled: ${units[*]}"
