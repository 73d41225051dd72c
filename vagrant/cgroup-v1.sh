#!/usr/bin/env bash
# Make this VM boot with the cgroup v1 hierarchy (the optional "v1" machine of the Vagrantfile).
# Idempotent: it only edits GRUB's kernel command line when the running kernel was not booted with
# the v1 switch; Vagrant reboots the VM after it (`reboot: true`).
#
# systemd.unified_cgroup_hierarchy=0 asks systemd for the legacy layout (v1 controllers, systemd's
# own tree on v2 under /sys/fs/cgroup/unified: "hybrid", like the CI machine). systemd 255 (Ubuntu
# 24.04) honours it with a deprecation warning; systemd >= 256 refuses to boot that way unless
# SYSTEMD_CGROUP_ENABLE_LEGACY_FORCE=1 is on the command line as well.
set -euo pipefail

PARAMS="systemd.unified_cgroup_hierarchy=0 SYSTEMD_CGROUP_ENABLE_LEGACY_FORCE=1"
DROPIN=/etc/default/grub.d/99-deep-dive-lab-cgroup-v1.cfg

if grep -qw 'systemd.unified_cgroup_hierarchy=0' /proc/cmdline; then
    echo "[cgroup-v1] booted with the v1 hierarchy: $(stat -fc %T /sys/fs/cgroup) at /sys/fs/cgroup"
    exit 0
fi
command -v update-grub >/dev/null || { echo "[cgroup-v1] no update-grub: cannot change the kernel command line" >&2; exit 1; }
mkdir -p "$(dirname "$DROPIN")"
# shellcheck disable=SC2016  # $GRUB_CMDLINE_LINUX is for GRUB's shell, not ours
printf '# Written by vagrant/cgroup-v1.sh: boot with the cgroup v1 hierarchy.\nGRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX %s"\n' "$PARAMS" > "$DROPIN"
update-grub
echo "[cgroup-v1] kernel command line gets: $PARAMS (Vagrant reboots the VM now)"
