#!/usr/bin/env bash
# Access hardening: SSH only with keys, no root login, and no account with a usable
# password (instances are reached with the launch key pair or SSM, never a password).
set -o errexit -o nounset -o pipefail

install -d -m 0755 /etc/ssh/sshd_config.d
# sshd keeps the first value it reads; Debian includes sshd_config.d/*.conf first and
# cloud-init writes 50-cloud-init.conf, so a lower number wins over both.
cat > /etc/ssh/sshd_config.d/10-nextcloud-hardening.conf <<'CONF'
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitEmptyPasswords no
PermitRootLogin no
CONF
chmod 0644 /etc/ssh/sshd_config.d/10-nextcloud-hardening.conf

# Lock every account whose password field is empty or a hash (not "!..." / "*").
while IFS=: read -r user hash _; do
  if [[ -z "${hash}" || ( "${hash}" != '!'* && "${hash}" != '*'* ) ]]; then
    passwd --lock "${user}" > /dev/null
    echo "locked password of ${user}"
  fi
done < /etc/shadow
