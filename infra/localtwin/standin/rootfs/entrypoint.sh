#!/usr/bin/env bash
# The stand-in's /entrypoint.sh (TEST FIXTURE, written for it, not copied): the official image's entrypoint
# conventions that change boot behaviour, so an image that forgets to replace the entrypoint behaves here as it
# would on the real image. For apache2*/php-fpm commands: when /var/www/html has no version.php, or an older one
# than /usr/src/nextcloud, the code tree is rsynced into /var/www/html (the volume) as www-data:root, and the
# before-starting hooks run; then the command is exec'd.
set -o errexit -o nounset -o pipefail

version_of() {
  # shellcheck disable=SC2016 # PHP variables, not shell expansions
  php -r 'require $argv[1]; echo implode(".", $OC_Version);' "$1"
}

run_hooks() {
  local dir="/docker-entrypoint-hooks.d/$1" hook
  [[ -d "${dir}" ]] || return 0
  for hook in "${dir}"/*.sh; do
    [[ -x "${hook}" ]] && "${hook}"
  done
  return 0
}

case "${1:-}" in
apache2* | php-fpm*)
  image_version="$(version_of /usr/src/nextcloud/version.php)"
  installed_version="0.0.0.0"
  if [[ -f /var/www/html/version.php ]]; then
    installed_version="$(version_of /var/www/html/version.php)"
  fi
  if dpkg --compare-versions "${installed_version}" lt "${image_version}"; then
    echo "Initializing nextcloud ${image_version} ..." >&2
    rsync -rlDog --chown www-data:root --delete /usr/src/nextcloud/ /var/www/html/
    echo "Initializing finished" >&2
  fi
  run_hooks before-starting
  ;;
esac

exec "$@"
