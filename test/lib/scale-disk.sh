#!/usr/bin/env bash
# A sparse GPT disk of any size with one ext4 partition holding the same ~1 GiB of files
# whatever the size (for the scaling test and benchmark: time and memory must follow the used
# bytes, not the disk size):
#   test/lib/scale-disk.sh OUT.raw SIZE      (SIZE as truncate takes it: 2T, 4G, ...)
# Content: demo-disk.sh's file tree (modes, owners, xattrs, links, sparse and fragmented files)
# plus 512 MiB of pseudo-random data and 512 MiB of compressible text in 64 MiB files.
# mkfs with lazy inode tables and no discard, mounted with noinit_itable so the kernel does not
# zero the inode tables (32 GiB on 2 TiB) into the sparse file; a 64 MiB journal whatever the size
# (mkfs would pick 1 GiB on 2 TiB), so two sizes differ only in what follows the disk size.
# Prints the disk's size in bytes.
# Needs root (loop device, mount). Leaves no loop device or mount behind, even on failure.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 OUT.raw SIZE" >&2; exit 2; }
out=$1 size=$2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
disk_script=$here/../demo-disk.sh
die() { echo "scale-disk: $*" >&2; exit 1; }
export LC_ALL=C TZ=UTC

loop= mnt=
cleanup() {
  if [ -n "$mnt" ]; then umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true; rmdir "$mnt" 2>/dev/null || true; fi
  if [ -n "$loop" ]; then partx -d "$loop" 2>/dev/null || true; losetup -d "$loop" 2>/dev/null || true; fi
}
trap cleanup EXIT

rm -f "$out"
truncate -s "$size" "$out"
sgdisk -U 5ca1e000-0000-4000-8000-000000000000 \
  -n1:2048:0 -t1:8300 -c1:big -u1:5ca1e000-0000-4000-8000-000000000001 "$out" >/dev/null
loop=$(losetup -f --show -P "$out")
[ -e "/sys/block/${loop#/dev/}/${loop#/dev/}p1" ] || partx -a "$loop" 2>/dev/null || true
for _ in $(seq 1 100); do [ -b "${loop}p1" ] && break; sleep 0.05; done
[ -b "${loop}p1" ] || die "${loop}p1 did not appear"
mkfs.ext4 -q -F -L scale -U 5ca1e000-0000-4000-8000-0000000000e4 -J size=64 \
  -E nodiscard,lazy_itable_init=1,lazy_journal_init=1 "${loop}p1"
mnt=$(mktemp -d /tmp/bmsnap-scale-mnt-XXXXXX)
mount -o noinit_itable "${loop}p1" "$mnt"
bash "$disk_script" fill-tree "$mnt/tree" scale
mkdir -p "$mnt/bulk"
rand() { k=$(printf '%s' "$1" | sha256sum | cut -c1-32); { openssl enc -aes-128-ctr -nosalt -K "$k" -iv 0 -in /dev/zero 2>/dev/null || true; } | head -c "$2"; }
for i in 0 1 2 3 4 5 6 7; do rand "scale-$i" $((64 << 20)) > "$mnt/bulk/random-$i.bin"; done
for i in 0 1 2 3 4 5 6 7; do
  { yes "$i the quick brown fox jumps over the lazy dog; bmsnap scale test line" || true; } | head -c $((64 << 20)) > "$mnt/bulk/text-$i.txt"
done
umount "$mnt"; rmdir "$mnt"; mnt=
stat -c %s "$out"
