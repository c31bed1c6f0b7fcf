#!/usr/bin/env bash
# Fails the bake unless the image is clean: no per-instance identity (SSH host keys,
# machine-id, cloud-init state, authorized keys, shell history), no usable passwords, SSH
# password login off, provenance recorded, and none of the canary strings anywhere on the
# filesystem (Docker's store included) -- a canary stands for a build secret that leaked.
#   VALIDATE_CANARIES  comma-separated strings that must not be found (at least one)
#   FINGERPRINT        expected in version-info.json
#   VALIDATE_ROOT      filesystem to check (default /; tests point it at a directory)
set -o errexit -o nounset -o pipefail

: "${VALIDATE_CANARIES:?VALIDATE_CANARIES is required: without a canary the leak check proves nothing}"
: "${FINGERPRINT:?FINGERPRINT is required}"
root="${VALIDATE_ROOT:-/}"
root="${root%/}"

failures=0
fail() {
  echo "validate: FAIL: $*" >&2
  failures=$((failures + 1))
}

# ---- identity ----
shopt -s nullglob
for key in "${root}"/etc/ssh/ssh_host_*; do
  fail "SSH host key ${key#"${root}"} remains"
done
if [[ ! -f "${root}/etc/machine-id" ]]; then
  fail "/etc/machine-id is missing (an empty file marks the first boot)"
elif [[ -s "${root}/etc/machine-id" ]]; then
  fail "/etc/machine-id is not empty"
fi
if [[ -f "${root}/var/lib/dbus/machine-id" && ! -L "${root}/var/lib/dbus/machine-id" ]]; then
  fail "/var/lib/dbus/machine-id remains"
fi
if [[ -e "${root}/var/lib/cloud/instance" ]]; then
  fail "cloud-init state /var/lib/cloud/instance remains"
fi
for state in "${root}"/var/lib/cloud/instances/* "${root}"/var/lib/cloud/seed/*; do
  fail "cloud-init state ${state#"${root}"} remains"
done
for keys in "${root}"/root/.ssh/authorized_keys "${root}"/home/*/.ssh/authorized_keys; do
  # A literal path stays in the list even under nullglob.
  [[ -e "${keys}" ]] || continue
  fail "authorized keys ${keys#"${root}"} remain"
done
for history in "${root}"/root/.*_history "${root}"/home/*/.*_history; do
  fail "shell history ${history#"${root}"} remains"
done
if [[ -e "${root}/var/lib/systemd/random-seed" ]]; then
  fail "/var/lib/systemd/random-seed remains (every instance would start from the same seed)"
fi
for journal in "${root}"/var/log/journal/*; do
  fail "journal of the bake ${journal#"${root}"} remains"
done
if [[ -e "${root}/etc/nextcloud/instance.json" ]]; then
  fail "/etc/nextcloud/instance.json (instance secrets) is in the image"
fi
shopt -u nullglob

# ---- access ----
if [[ -r "${root}/etc/shadow" ]]; then
  while IFS=: read -r user hash _; do
    if [[ -z "${hash}" || ( "${hash}" != '!'* && "${hash}" != '*'* ) ]]; then
      fail "account ${user} has a usable password"
    fi
  done < "${root}/etc/shadow"
else
  fail "/etc/shadow is missing"
fi
if ! grep -qsx 'PasswordAuthentication no' "${root}"/etc/ssh/sshd_config.d/10-nextcloud-hardening.conf; then
  fail "SSH password authentication is not switched off (sshd_config.d/10-nextcloud-hardening.conf)"
fi

# ---- provenance ----
info="${root}/etc/nextcloud-image/version-info.json"
if [[ ! -f "${info}" ]]; then
  fail "/etc/nextcloud-image/version-info.json is missing"
elif ! grep -q "\"fingerprint\": \"${FINGERPRINT}\"" "${info}"; then
  fail "version-info.json does not record fingerprint ${FINGERPRINT}"
fi
if [[ "${root}" == "" ]]; then
  for tag in "nextcloud-cluster:${FINGERPRINT:0:12}" nextcloud-cluster:current; do
    if ! docker image inspect "${tag}" > /dev/null 2>&1; then
      fail "Docker image ${tag} is missing"
    fi
  done
fi

# ---- canaries ----
patterns=()
IFS=, read -r -a canaries <<< "${VALIDATE_CANARIES}"
for canary in "${canaries[@]}"; do
  if [[ -n "${canary}" ]]; then
    if [[ "${#canary}" -lt 8 ]]; then
      echo "validate: a canary shorter than 8 characters would match by chance; use longer ones" >&2
      exit 2
    fi
    patterns+=(-e "${canary}")
  fi
done
if [[ "${#patterns[@]}" -eq 0 ]]; then
  echo "validate: VALIDATE_CANARIES holds no canary" >&2
  exit 2
fi
# Everything on disk, Docker's image store included; not the kernel's virtual
# filesystems nor /run (tmpfs, gone at shutdown, where secrets are meant to live).
targets=()
for entry in "${root}"/* "${root}"/.[!.]*; do
  case "${entry#"${root}"}" in
    /proc | /sys | /dev | /run) ;;
    # Top-level symlinks (/bin, /lib, /vmlinuz, ...) point inside the tree: grep would
    # follow them and search the same files twice.
    *) if [[ -e "${entry}" && ! -L "${entry}" ]]; then targets+=("${entry}"); fi ;;
  esac
done
started=${SECONDS}
set +o errexit
# Names only, never the matching text: printing a leaked secret would leak it again.
matches="$(grep --recursive --files-with-matches --fixed-strings --devices=skip --no-messages \
  "${patterns[@]}" -- "${targets[@]}")"
rc=$?
set -o errexit
if [[ -n "${matches}" ]]; then
  while IFS= read -r file; do
    fail "a canary was found in ${file#"${root}"}"
  done <<< "${matches}"
elif [[ "${rc}" -gt 1 ]]; then
  echo "validate: warning: grep could not read some files (exit ${rc})" >&2
fi
echo "validate: searched for ${#canaries[@]} canaries in $((SECONDS - started))s"

if [[ "${failures}" -gt 0 ]]; then
  echo "validate: ${failures} problem(s): the image is not clean" >&2
  exit 1
fi
echo "validate: image is clean"
