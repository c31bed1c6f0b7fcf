#!/usr/bin/env bash
# Last provisioning step: removes everything that is per-instance identity, build residue
# or history, so every instance booted from the image starts as a first boot.
#   STAGING_DIR  uploaded sources to remove
set -o errexit -o nounset -o pipefail

: "${STAGING_DIR:?STAGING_DIR is required (uploaded sources to remove)}"

rm -rf "${STAGING_DIR}"

# Build residue: Docker's build cache, apt's package cache and lists.
docker builder prune --all --force > /dev/null
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin

# Identity, regenerated at first boot: SSH host keys (cloud-init), machine-id (systemd;
# an empty file means "first boot"), cloud-init state and seeds, DHCP leases, random seed.
rm -f /etc/ssh/ssh_host_*
truncate -s 0 /etc/machine-id
if [[ -f /var/lib/dbus/machine-id && ! -L /var/lib/dbus/machine-id ]]; then
  rm -f /var/lib/dbus/machine-id
fi
# Debian 12's cloud-init (22.4) has no `clean --seeds`: remove the seeds by hand there.
if cloud-init clean --help | grep -q -- '--seeds'; then
  cloud-init clean --logs --seeds
else
  cloud-init clean --logs
  rm -rf /var/lib/cloud/seed
fi
# systemd-random-seed saves a seed when it stops: stop it now, so the shutdown that ends
# the bake does not write one seed into every instance.
systemctl stop systemd-random-seed.service
rm -f /var/lib/dhcp/*.leases /var/lib/systemd/random-seed /var/lib/docker/engine-id

# The build's SSH key and any shell history.
rm -f /root/.ssh/authorized_keys /home/*/.ssh/authorized_keys
rm -f /root/.bash_history /home/*/.bash_history /root/.lesshst /home/*/.lesshst

# Logs of the build (the journal included) and temporary files. Packer's own scripts
# live in /tmp; the running one is already open, so removing it is safe.
# The persistent journal lives in a directory named after the bake's machine-id. Switch
# journald to the volatile /run/log/journal for the rest of the bake (otherwise it
# recreates the directory), then remove it.
journalctl --relinquish-var
rm -rf /var/log/journal/*
find /var/log -type f \( -name '*.gz' -o -name '*.[0-9]' -o -name '*.old' \) -delete
find /var/log -type f -exec truncate -s 0 {} +
rm -rf /tmp/* /tmp/.[!.]* /var/tmp/* /var/tmp/.[!.]*

# Hand the blocks freed above back to the disk: the local twin's qcow2 then carries only what
# the filesystem uses (Packer's compaction drops discarded clusters). A disk that takes no
# discards has nothing to hand back; that is not an error.
if ! fstrim --verbose /; then
  echo "cleanup.sh: fstrim: this disk takes no discards; nothing handed back" >&2
fi
sync
