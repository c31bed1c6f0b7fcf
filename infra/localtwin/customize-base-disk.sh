#!/usr/bin/env bash
# mmdebstrap customize hook for the source-AMI stand-in: makes the chroot look like
# Debian's EC2 image at first boot (cloud-init, default user "admin", no identity yet).
set -o errexit -o nounset -o pipefail

root="${1:?usage: customize-base-disk.sh ROOTDIR}"
if [[ ! -d "${root}/etc" ]]; then
  echo "customize-base-disk.sh: ${root} is not a root filesystem (no etc/)" >&2
  exit 1
fi

# The kernel is started with root=/dev/vda; fstab names the filesystem by label so the
# same disk works whatever the device name.
cat > "${root}/etc/fstab" <<'FSTAB'
LABEL=root / ext4 defaults,errors=remount-ro 0 1
FSTAB

cat > "${root}/etc/network/interfaces" <<'NET'
# cloud-init renders the primary interface into interfaces.d
source /etc/network/interfaces.d/*

auto lo
iface lo inet loopback
NET
mkdir -p "${root}/etc/network/interfaces.d"

echo "debian" > "${root}/etc/hostname"

mkdir -p "${root}/etc/cloud/cloud.cfg.d"
cat > "${root}/etc/cloud/cloud.cfg.d/90-local-twin.cfg" <<'CLOUD'
# Local twin of Debian's EC2 image: NoCloud instead of the EC2 datasource.
datasource_list: [NoCloud, None]
# Without a locale cloud-init's locale module fails and cloud-init ends in "error".
locale: C.UTF-8
manage_etc_hosts: true
system_info:
  default_user:
    name: admin
    lock_passwd: true
    gecos: Debian
    groups: [adm, sudo]
    sudo: ["ALL=(ALL) NOPASSWD:ALL"]
    shell: /bin/bash
CLOUD

# Identity is created at first boot, never shipped.
rm -f "${root}"/etc/ssh/ssh_host_*
: > "${root}/etc/machine-id"
rm -f "${root}/var/lib/dbus/machine-id"

# Kernel and initrd are booted directly by QEMU (-kernel/-initrd), so no boot loader.
# The initrd is needed: the cloud kernel's virtio drivers are modules.
ls "${root}"/boot/vmlinuz-* "${root}"/boot/initrd.img-* > /dev/null
