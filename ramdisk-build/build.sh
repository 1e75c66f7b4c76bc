#!/usr/bin/env bash
# Builds the bmsnap ramdisk: a Debian kernel + an initramfs that boots straight into the agent.
#
#   ramdisk-build/build.sh [--out DIR] [--quiet]
#
# Prints two lines, "kernel PATH" and "initramfs PATH". The result is cached under
# $BMSNAP_RAMDISK_CACHE (default /var/cache/bmsnap/ramdisk), keyed by the sha256 of every input
# (kernel package, each binary and library copied in, the agent's files, these scripts), so an
# unchanged input set is not rebuilt and the same inputs give the same bytes (reproducible: sorted
# cpio, fixed mtimes and owners, single-threaded zstd). With --out the two files are also copied
# to DIR as bmsnap.kernel and bmsnap.initramfs (the names an operator points deploy_kernel /
# deploy_ramdisk at).
#
# Contents: busybox (shell, mount, ip, udhcpc, modprobe, fsfreeze, ...), node (stripped) and the
# compiled agent with its production packages, openssl (the agent's auto-TLS), lsblk/blkid, losetup,
# e2fsck, dmsetup + lvm, kexec, and the kernel modules for virtio/NVMe/SATA/SAS disks, common
# server NICs, ext4/xfs/vfat, device-mapper, brd/zram/loop. /init is ramdisk-build/init.
# Needs root (apt-get) on Debian 12 and an `npm run build` of the agent.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
cache=${BMSNAP_RAMDISK_CACHE:-/var/cache/bmsnap/ramdisk}
out_dir= quiet=0
while [ $# -gt 0 ]; do
  case $1 in
    --out) out_dir=$2; shift 2 ;;
    --quiet) quiet=1; shift ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "ramdisk-build: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
say() { [ "$quiet" = 1 ] || echo "ramdisk-build: $*" >&2; }
die() { echo "ramdisk-build: $*" >&2; exit 1; }
export LC_ALL=C

# --- tools on the build host ---------------------------------------------------------------------
source "$here/lib.sh"
ensure_packages busybox-static cpio kexec-tools lvm2 dmsetup openssl util-linux e2fsprogs zstd binutils
[ -f "$repo/dist/agent/src/cli/main.js" ] || die "the agent is not built: run npm run build first"

# --- the kernel: whatever linux-image-amd64 points at, as a downloaded .deb -----------------------
fetch_kernel_deb   # sets kpkg kver kdeb

# --- the inputs, and the cache key over all of them ----------------------------------------------
BINS=(/usr/bin/node /bin/busybox /usr/bin/openssl /usr/bin/lsblk /usr/sbin/blkid /usr/sbin/e2fsck
      /usr/sbin/dmsetup /usr/sbin/lvm /usr/sbin/kexec /usr/sbin/losetup)
mapfile -t LIBS < <(libs_of "${BINS[@]}")
# openssl's default config, so `openssl req` finds its defaults
EXTRA=(/usr/lib/ssl/openssl.cnf)
mapfile -t AGENT < <(node "$here/agent-files.mjs" "$repo")
MODULES=$(grep -v '^#' "$here/modules.list" | tr -s ' \n' ' ')
key=$( {
  echo "kernel $(sha256sum < "$kdeb")"
  for f in "${BINS[@]}" "${LIBS[@]}" "${EXTRA[@]}"; do echo "$f $(sha256sum < "$(readlink -f "$f")")"; done
  for f in "${AGENT[@]}"; do echo "agent/$f $(sha256sum < "$repo/$f")"; done
  for f in build.sh lib.sh init udhcpc.script modules.list agent-files.mjs; do echo "script/$f $(sha256sum < "$here/$f")"; done
} | sha256sum | cut -c1-16)
dest=$cache/ramdisk-$key

emit() {
  if [ -n "$out_dir" ]; then
    mkdir -p "$out_dir"
    cp "$dest/vmlinuz" "$out_dir/bmsnap.kernel"
    cp "$dest/initramfs.zst" "$out_dir/bmsnap.initramfs"
    echo "kernel $(cd "$out_dir" && pwd)/bmsnap.kernel"
    echo "initramfs $(cd "$out_dir" && pwd)/bmsnap.initramfs"
  else
    echo "kernel $dest/vmlinuz"
    echo "initramfs $dest/initramfs.zst"
  fi
}
if [ -f "$dest/initramfs.zst" ] && [ -f "$dest/vmlinuz" ]; then
  say "cached: $dest"
  emit
  exit 0
fi

extract_kernel   # sets ktree (the extracted package, with modules.dep)

stage=$(mktemp -d "$cache/.stage-XXXXXX")
trap 'rm -rf "$stage"' EXIT
root=$stage/root
say "staging into $root"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,lib,lib64,etc,proc,sys,dev,run,tmp,mnt,root,var/log,opt/bmsnap,lib/modules/"$kver"}
ln -s ../run "$root/var/run"

# busybox and its applets (real binaries below win over applets of the same name)
cp /bin/busybox "$root/bin/busybox"
for a in $(busybox --list-full); do
  [ -e "$root/$a" ] || [ -L "$root/$a" ] || ln -s /bin/busybox "$root/$a"
done

# binaries and their libraries, at their host paths; node stripped (86 of its 99 MB are code)
for b in "${BINS[@]}"; do
  rm -f "$root$b"; mkdir -p "$root$(dirname "$b")"
  cp -L "$b" "$root$b"
done
strip --strip-all "$root/usr/bin/node"
for l in "${LIBS[@]}" "${EXTRA[@]}"; do
  mkdir -p "$root$(dirname "$l")"
  cp -L "$l" "$root$l"
done
mkdir -p "$root/etc/ssl" && ln -sf /usr/lib/ssl/openssl.cnf "$root/etc/ssl/openssl.cnf"
# lvm's command names are links to the one binary
for c in pvs vgs lvs pvcreate vgcreate lvcreate lvremove vgchange lvchange pvscan vgscan lvscan; do ln -sf /usr/sbin/lvm "$root/usr/sbin/$c"; done

# the agent
(cd "$repo" && printf '%s\n' "${AGENT[@]}" | cpio -pdm --quiet "$root/opt/bmsnap")
cat > "$root/usr/bin/bmsnap" <<'EOF'
#!/bin/sh
exec /usr/bin/node /opt/bmsnap/dist/agent/src/cli/main.js "$@"
EOF
chmod 755 "$root/usr/bin/bmsnap"

# kernel modules: the listed ones and everything they depend on
copy_modules "$root" $MODULES

# /init and friends
install -m 755 "$here/init" "$root/init"
install -m 755 "$here/udhcpc.script" "$root/etc/udhcpc.script"
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$root/etc/passwd"
printf 'root:x:0:\n' > "$root/etc/group"
printf 'bmsnap-ramdisk %s\nkernel %s\n' "$key" "$kver" > "$root/etc/bmsnap-ramdisk"

say "packing"
raw=$(pack_initramfs "$root" "$stage/initramfs.zst")
cp "$ktree/boot/vmlinuz-$kver" "$stage/vmlinuz"
cat > "$stage/build-info.json" <<EOF
{"key": "$key", "kernel": "$kver", "initramfs_bytes": $(stat -c %s "$stage/initramfs.zst"), "uncompressed_bytes": $raw,
 "initramfs_sha256": "$(sha256sum < "$stage/initramfs.zst" | cut -d' ' -f1)", "kernel_sha256": "$(sha256sum < "$stage/vmlinuz" | cut -d' ' -f1)"}
EOF
rm -rf "$root"
rm -rf "$dest" && mv "$stage" "$dest" && chmod 755 "$dest"
trap - EXIT
say "built $dest ($(( $(stat -c %s "$dest/initramfs.zst") / 1048576 )) MiB initramfs)"
emit
