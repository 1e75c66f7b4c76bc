#!/usr/bin/env bash
# Installs the Debian packages the e2e tests, the demo and the benchmark need.
# Idempotent and quiet: when everything is installed it only asks dpkg and exits.
# apt-get update runs at most once, and only when a package has no install candidate.
set -euo pipefail

packages=(
  gdisk        # sgdisk: GPT
  fdisk        # sfdisk: MBR with extended/logical partitions
  util-linux   # partx, blkid
  mount        # losetup, mount, umount
  e2fsprogs    # mkfs.ext4, e2fsck, debugfs, filefrag
  xfsprogs     # mkfs.xfs, xfs_repair
  dosfstools   # mkfs.vfat, fsck.vfat
  mtools       # vfat content without a vfat kernel driver
  qemu-utils   # qemu-img
  partclone    # benchmark floor
  zstd         # benchmark floor
  time         # /usr/bin/time: peak RSS in the benchmark
  openssl      # deterministic pseudo-random content
  attr         # setfattr/getfattr: xattrs in test trees
  qemu-system-x86  # the ramdisk and the snapshots boot in VMs (TCG where KVM is unusable)
  busybox-static   # the ramdisk's userspace; `busybox nc` behind qemu's guestfwd
  cpio             # initramfs archives
  grub-pc-bin      # a BIOS bootloader for the bootable test disk
  grub2-common     # grub-install
  udev             # udevadm: grub-install finds a partition's start through it (no udev daemon needed)
  btrfs-progs      # mkfs.btrfs: a filesystem bmsnap does not parse (robustness e2e)
  lvm2             # pvcreate/vgcreate/lvcreate without device-mapper (robustness e2e)
)

# (no `cmd | grep -q`: with pipefail, grep's early exit would fail the pipeline on SIGPIPE)
installed() { [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = installed ]; }
has_candidate() {
  local policy
  policy=$(apt-cache policy "$1" 2>/dev/null || true)
  [[ $policy =~ Candidate:\ [^\(] ]]
}

missing=()
for p in "${packages[@]}"; do installed "$p" || missing+=("$p"); done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: missing packages ${missing[*]}; run as root to install them" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# runs a command silently; shows its output only when it fails
quietly() {
  local out
  if ! out=$("$@" 2>&1); then echo "$out" >&2; echo "setup: failed: $*" >&2; exit 1; fi
}
for p in "${missing[@]}"; do
  if ! has_candidate "$p"; then
    echo "setup: apt-get update (no candidate for $p)" >&2
    quietly apt-get update -qq
    break
  fi
done

installable=()
for p in "${missing[@]}"; do
  if has_candidate "$p"; then installable+=("$p"); else echo "setup: no Debian package $p, skipped" >&2; fi
done
[ ${#installable[@]} -eq 0 ] && exit 0
echo "setup: installing ${installable[*]}" >&2
quietly apt-get install -y -qq --no-install-recommends "${installable[@]}"
