#!/usr/bin/env bash
# Helpers for installing packages at exact, verified versions (sourced by install-docker.sh; the tests source it
# too, with APT_CONFIG pointing apt at a local repository).
#   verify_key_fingerprint KEYFILE FINGERPRINT  the (armored or binary) OpenPGP key file holds exactly one primary
#                                               key, with this fingerprint (40 hex, spaces allowed)
#   install_pinned "name=version ..."           every package at exactly that version (a bare name: the
#                                               candidate), all checked before anything is installed, then held

# shellcheck disable=SC2317 # functions of a sourced library

verify_key_fingerprint() {
  local file="$1" expected actual
  expected="$(tr -d ' ' <<< "$2" | tr '[:lower:]' '[:upper:]')"
  if [[ ! "${expected}" =~ ^[0-9A-F]{40}$ ]]; then
    echo "verify_key_fingerprint: expected fingerprint '$2' is not 40 hex digits" >&2
    return 2
  fi
  # Primary keys only (the fpr record right after each pub record), without importing anything.
  actual="$(gpg --batch --no-default-keyring --with-colons --show-keys "${file}" 2> /dev/null \
    | awk -F: '$1 == "pub" { want = 1; next } $1 == "fpr" && want { print $10; want = 0 }')"
  if [[ "${actual}" != "${expected}" ]]; then
    echo "the repository key in ${file} has fingerprint(s) '${actual//$'\n'/ }', not the known ${expected}:" \
         "refusing to trust the repository" >&2
    return 1
  fi
}

install_pinned() {
  local spec name version available missing=()
  local -a install=() names=()
  for spec in $1; do
    name="${spec%%=*}"
    version=""
    [[ "${spec}" == *=* ]] && version="${spec#*=}"
    names+=("${name}")
    available="$(apt-cache madison "${name}" 2> /dev/null | awk -F'|' '{gsub(/ /, "", $2); print $2}')"
    if [[ -z "${available}" ]]; then
      missing+=("${name}: not in any configured repository")
    elif [[ -n "${version}" ]] && ! grep -qxF -- "${version}" <<< "${available}"; then
      missing+=("${name}=${version}: not available; available: $(head -n 5 <<< "${available}" | tr '\n' ' ')")
    fi
    install+=("${spec}")
  done
  if [[ "${#missing[@]}" -gt 0 ]]; then
    printf 'install_pinned: a pinned version is not available (nothing was installed):\n' >&2
    printf '  %s\n' "${missing[@]}" >&2
    printf '  pin a version that is available (apt-cache madison NAME) in the [docker] settings\n' >&2
    return 1
  fi
  apt-get -o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confold install -y -qq --no-install-recommends \
    --allow-downgrades "${install[@]}"
  # An unattended upgrade must not move what the image records.
  apt-mark hold "${names[@]}" > /dev/null
}
