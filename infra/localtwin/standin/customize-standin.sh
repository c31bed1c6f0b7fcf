#!/usr/bin/env bash
# mmdebstrap customize hook for the stand-in base image's root filesystem: lay the chroot out like the
# official nextcloud:*-apache image (php:*-apache plus what nextcloud/docker's Dockerfile adds) and trim it.
# The code tree /usr/src/nextcloud is not here: it is the image's second layer, as in the official image.
# Usage: customize-standin.sh ROOTDIR
set -o errexit -o nounset -o pipefail

root="${1:?usage: customize-standin.sh ROOTDIR}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# Static files (apache2-foreground, /entrypoint.sh, PHP ini, Apache config) from the overlay.
cp -R --no-preserve=ownership "${here}/rootfs/." "${root}/"
chmod 0755 "${root}/usr/local/bin/apache2-foreground" "${root}/entrypoint.sh"

# Same ownership as the official image: the web user (www-data, uid 33 on Debian) owns /var/www
# (nextcloud/docker: chown -R www-data:root /var/www; chmod -R g=u /var/www); /var/www/html starts empty.
if [[ "$(chroot "${root}" id -u www-data)" != 33 ]]; then
  echo "customize-standin.sh: www-data is not uid 33 in the stand-in" >&2
  exit 1
fi
rm -rf "${root}/var/www/html"
mkdir -p "${root}/var/www/html" "${root}/var/www/data" "${root}/usr/src"
chroot "${root}" chown -R www-data:root /var/www
chmod -R g=u "${root}/var/www"

for hook in pre-installation post-installation pre-upgrade post-upgrade before-starting; do
  mkdir -p "${root}/docker-entrypoint-hooks.d/${hook}"
done

# Apache: modules the official image enables, logs to the container's stdout/stderr.
chroot "${root}" a2enmod -q rewrite headers env dir mime remoteip
chroot "${root}" a2enconf -q docker-php remoteip apache-limits
for log in access other_vhosts_access; do
  ln -sfT /dev/stdout "${root}/var/log/apache2/${log}.log"
done
ln -sfT /dev/stderr "${root}/var/log/apache2/error.log"

# Say what this is wherever someone might look.
mkdir -p "${root}/usr/local/share/nextcloud-standin"
cat > "${root}/usr/local/share/nextcloud-standin/README" <<'TXT'
TEST FIXTURE: stand-in for the official nextcloud:*-apache base image, built from Debian
packages by infra/localtwin/standin/. It carries no Nextcloud code; /usr/src/nextcloud holds
a fake tree (version.php, an occ test double and filler files of a release's size).
TXT

rm -rf "${root}"/var/lib/apt/lists/* "${root}"/var/cache/apt/*.bin "${root}"/var/cache/apt/archives/*.deb \
  "${root}"/var/cache/debconf/*-old "${root}"/var/lib/dpkg/*-old "${root}"/var/log/apt/* \
  "${root}"/var/log/dpkg.log "${root}"/var/log/alternatives.log "${root}"/var/log/bootstrap.log
