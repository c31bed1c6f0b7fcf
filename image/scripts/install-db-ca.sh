#!/usr/bin/env bash
# Installs the CA bundle that signed the database's certificate (Amazon RDS's) as /etc/nextcloud/tls/db-ca.pem,
# which nextcloud.service mounts read-only into the container: with it every PostgreSQL client of the node uses
# sslmode=verify-full (nextcloud.env: NEXTCLOUD_DB_SSLMODE / NEXTCLOUD_DB_SSLROOTCERT, written by render).
# The bundle is downloaded during the bake and refused unless its sha256 is the one the settings pin
# (database.ca_bundle_sha256): a bundle AWS changes is a settings change and a new, tested image, never a surprise.
#   DB_CA_URL     where to download it (database.ca_bundle_url)
#   DB_CA_SHA256  its sha256; empty: nothing to install (the local twin's database has no RDS certificate)
#   DB_CA_DIR     where it goes (default /etc/nextcloud/tls; tests point it elsewhere)
set -o errexit -o nounset -o pipefail

: "${DB_CA_URL?DB_CA_URL is required (database.ca_bundle_url)}"
: "${DB_CA_SHA256?DB_CA_SHA256 is required (database.ca_bundle_sha256; empty for none)}"
dir=${DB_CA_DIR:-/etc/nextcloud/tls}
target=${dir}/db-ca.pem
install -d -o root -g root -m 0755 "${dir}"
if [[ -z "${DB_CA_SHA256}" ]]; then
  echo "install-db-ca.sh: no database CA bundle pinned (database.ca_bundle_sha256): nothing installed"
  exit 0
fi

download=$(mktemp)
trap 'rm -f "${download}"' EXIT
curl --fail --silent --show-error --location --proto '=https' --tlsv1.2 --retry 5 --max-time 60 \
  --output "${download}" "${DB_CA_URL}"
actual=$(sha256sum "${download}" | cut -d' ' -f1)
if [[ "${actual}" != "${DB_CA_SHA256}" ]]; then
  echo "install-db-ca.sh: ${DB_CA_URL} has sha256 ${actual}, the settings pin ${DB_CA_SHA256}" \
       "(database.ca_bundle_sha256): check the bundle and update the pin" >&2
  exit 1
fi
# Certificates only: no private key, at least one certificate, each one parseable.
if grep -q 'PRIVATE KEY' "${download}" || ! grep -q -- '-----BEGIN CERTIFICATE-----' "${download}"; then
  echo "install-db-ca.sh: ${DB_CA_URL} is not a bundle of PEM certificates" >&2
  exit 1
fi
if ! openssl crl2pkcs7 -nocrl -certfile "${download}" | openssl pkcs7 -print_certs -noout >/dev/null; then
  echo "install-db-ca.sh: ${DB_CA_URL}: a certificate in the bundle does not parse" >&2
  exit 1
fi
install -o root -g root -m 0644 "${download}" "${target}"
echo "install-db-ca.sh: ${target} ($(grep -c -- '-----BEGIN CERTIFICATE-----' "${target}") certificates, sha256 ${actual})"
