#!/usr/bin/env bash
# Test/demo disk builder, shared by `npm run demo` (test/demo.sh) and the e2e tests
# (test/lib/disks.ts). Needs root (loop devices, mount).
#
#   demo-disk.sh [gpt] OUT.raw           GPT disk, sparse, 660 MiB:
#       bytes 0..439 of LBA 0  boot-code marker          LBA 34..2047  gap marker
#       p1  1 MiB  BIOS boot (ef02), marker pattern      p2  64 MiB ESP (ef00), FAT32, mtools tree
#       p3 224 MiB ext4 root (8304), file tree           p4 320 MiB xfs data (8302), file tree
#       p5  32 MiB swap (8200)                           ~17 MiB unallocated, then backup GPT
#     every filesystem first gets stale data that is then deleted (24 + 96 + 128 MiB; env
#     DEMO_STALE_ESP_MIB, DEMO_STALE_ROOT_MIB, DEMO_STALE_DATA_MIB); every 512-byte sector of it
#     starts with "BMSNAP-STALE-SECTOR:" so tests can count what survives in an image.
#     Prints a JSON summary on stdout ({"path":…,"staleBytes":…}).
#   demo-disk.sh fill-tree DIR SEED                 file tree into a mounted ext4/xfs
#   demo-disk.sh fill-stale DIR SEED MIB            write MIB MiB of tagged random files, sync, delete
#   demo-disk.sh fill-vfat TARGET SEED STALE_MIB    stale data, then a tree, into a vfat
#                                                    (TARGET: device, or image@@byteoffset)
#   demo-disk.sh marker TAG SECTORS                 SECTORS*512 bytes of "TAG-<sector>|" pattern
#
# All content is deterministic (AES-CTR keystreams keyed by SEED), so the same disk is built twice
# with the same files; filesystem metadata (timestamps in superblocks) still differs per build.
set -euo pipefail
export MTOOLS_SKIP_CHECK=1 LC_ALL=C

die() { echo "demo-disk: $*" >&2; exit 1; }

# rand KEY BYTES: BYTES deterministic pseudo-random bytes for the string KEY
rand() {
  local key
  key=$(printf '%s' "$1" | sha256sum | cut -c1-32)
  { openssl enc -aes-128-ctr -nosalt -K "$key" -iv 0 -in /dev/zero 2>/dev/null || true; } | head -c "$2"
}

# stale KEY BYTES: pseudo-random bytes whose every 512-byte sector starts with STALE_TAG, so the
# tests can count exactly how many sectors of deleted data survive in an image
STALE_TAG='BMSNAP-STALE-SECTOR:'
stale() {
  rand "$1" "$2" | perl -e 'my $tag = shift; while (read(STDIN, my $b, 512)) { substr($b, 0, length $tag) = $tag if length $b >= length $tag; print $b }' "$STALE_TAG"
}

# text LINES: compressible text
text() { seq -f "%06g the quick brown fox jumps over the lazy dog; bmsnap compressible line" 1 "$1"; }

# marker TAG SECTORS: each 512-byte sector holds "TAG-<n>|" repeated, n = sector index from 0
marker() {
  awk -v tag="$1" -v n="$2" 'BEGIN {
    for (i = 0; i < n; i++) {
      s = sprintf("%s-%06d|", tag, i); line = ""
      while (length(line) < 512) line = line s
      printf "%s", substr(line, 1, 512)
    }
  }'
}

fill_stale() {
  local dir=$1 seed=$2 mib=$3 i=0 chunk
  while [ "$mib" -gt 0 ]; do
    chunk=$(( mib > 32 ? 32 : mib ))
    stale "$seed-stale-$i" $((chunk << 20)) > "$dir/.stale-$i"
    mib=$((mib - chunk)); i=$((i + 1))
  done
  sync -f "$dir"            # (syncfs) the stale bytes must reach the disk before they are deleted
  rm -f "$dir"/.stale-*
  sync -f "$dir"
}

fill_tree() {
  local d=$1 s=$2 i
  mkdir -p "$d"/{etc,home/alice/.config,var/log,usr/bin,tmp,srv/empty-dir,data/many,deep/a/b/c/d/e/f}
  printf 'root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/sh\n' > "$d/etc/passwd"
  printf 'root:*:19000:0:99999:7:::\n' > "$d/etc/shadow"
  text 40000 > "$d/var/log/syslog"                       # ~2.9 MB, compressible
  rand "$s-1M" $((1 << 20)) > "$d/data/random-1M.bin"
  rand "$s-3M" $((3 * 1048576 + 123)) > "$d/data/random-3M-odd.bin"
  : > "$d/data/empty"
  printf x > "$d/data/one-byte"
  for n in 4095 4097 12345; do rand "$s-$n" "$n" > "$d/data/size-$n"; done
  # sparse: 64 MiB apparent size, two 4 KiB islands, ends in a hole
  truncate -s 64M "$d/data/sparse.img"
  rand "$s-island1" 4096 | dd of="$d/data/sparse.img" bs=4096 seek=256 conv=notrunc status=none
  rand "$s-island2" 4096 | dd of="$d/data/sparse.img" bs=4096 seek=10000 conv=notrunc status=none
  # two files written in alternation with syncs in between, so both are fragmented
  for i in 0 1 2 3 4 5 6 7; do
    rand "$s-fragA-$i" 65536 >> "$d/data/frag-a.bin"; sync "$d/data/frag-a.bin"
    rand "$s-fragB-$i" 65536 >> "$d/data/frag-b.bin"; sync "$d/data/frag-b.bin"
  done
  # a directory big enough to need an index (ext4 htree, xfs node directory)
  for i in $(seq 1 400); do printf 'small file %d\n' "$i" > "$d/data/many/file-with-a-longish-name-$i.txt"; done
  rand "$s-tool" 70001 > "$d/usr/bin/tool"
  # hard links
  ln "$d/data/random-1M.bin" "$d/data/hardlink-a"
  ln "$d/data/random-1M.bin" "$d/home/alice/hardlink-b"
  # symlinks: relative, absolute, dangling, to a directory, long (not stored in the inode)
  ln -s ../data/random-1M.bin "$d/etc/rel-link"
  ln -s /etc/passwd "$d/etc/abs-link"
  ln -s does-not-exist "$d/etc/dangling"
  ln -s ../../data "$d/deep/a/dir-link"
  ln -s "$(printf 'long-component-%03d/' $(seq 1 12))target" "$d/etc/long-link"
  printf 'deep\n' > "$d/deep/a/b/c/d/e/f/leaf.txt"
  text 300 > "$d/home/alice/.config/settings"
  # modes and owners
  chmod 0755 "$d"
  chmod 0640 "$d/etc/shadow"; chown 0:42 "$d/etc/shadow"
  chmod 4755 "$d/usr/bin/tool"
  chmod 1777 "$d/tmp"
  chmod 0000 "$d/data/size-12345"
  chmod 2750 "$d/srv/empty-dir"
  chown -R 1000:1000 "$d/home/alice"
  chown 12345:54321 "$d/data/size-4097"
  chown -h 777:888 "$d/etc/rel-link"
  # xattrs: a small one (in the inode) and a big one (ext4: external xattr block; fits 1 KiB blocks)
  setfattr -n user.comment -v "bmsnap test file" "$d/data/random-1M.bin"
  setfattr -n user.big -v "0s$(rand "$s-xattr" 900 | base64 -w0)" "$d/data/size-4097"
  setfattr -n trusted.marker -v "trusted value" "$d/etc/passwd"
  setfattr -n user.on-dir -v "directory xattr" "$d/deep/a"
  # mtimes (nanoseconds; one after 2038 and one before 1970), directories last
  find "$d" -depth -exec touch -h -d '@981173106.123456789' {} +
  touch -d '@2240524800.5' "$d/data/random-3M-odd.bin"
  touch -d '@-14182940' "$d/etc/passwd"
  touch -h -d '@1234567890.987654321' "$d/etc/long-link"
  touch -d '@1000000000' "$d/data/many" "$d"
}

# fill_vfat TARGET SEED STALE_MIB: stale data (copied in, then deleted), then a boot-partition tree
fill_vfat() {
  local target=$1 s=$2 stale_mib=$3 stage
  stage=$(mktemp -d)
  if [ "$stale_mib" -gt 0 ]; then
    stale "$s-vfat-stale" $((stale_mib << 20)) > "$stage/STALE.BIN"
    mcopy -i "$target" "$stage/STALE.BIN" ::/STALE.BIN
    mdel -i "$target" ::/STALE.BIN
    rm -f "$stage/STALE.BIN"
  fi
  mkdir -p "$stage/EFI/BOOT" "$stage/EFI/debian" "$stage/loader/entries" "$stage/many"
  rand "$s-bootx64" $((300 * 1024 + 7)) > "$stage/EFI/BOOT/BOOTX64.EFI"
  rand "$s-grubx64" $((1 << 20)) > "$stage/EFI/debian/grubx64.efi"
  text 500 > "$stage/EFI/debian/grub.cfg"
  printf 'title Debian\nlinux /vmlinuz\n' > "$stage/loader/entries/debian.conf"
  text 20 > "$stage/Long File Name with spaces.txt"
  : > "$stage/EMPTY.TXT"
  for i in $(seq 1 60); do printf 'entry %d\n' "$i" > "$stage/many/entry-number-$i.conf"; done
  find "$stage" -exec touch -d '2023-04-05 06:07:08' {} +
  touch -d '2010-01-01 00:00:00' "$stage/EFI/BOOT/BOOTX64.EFI"
  mcopy -s -m -i "$target" "$stage"/* ::/
  mattrib -i "$target" +h ::/EMPTY.TXT
  mattrib -i "$target" +r +s ::/EFI/BOOT/BOOTX64.EFI
  rm -rf "$stage"
}

# --- the GPT layout -------------------------------------------------------------------------
GPT_STALE_ESP_MIB=${DEMO_STALE_ESP_MIB:-24} GPT_STALE_ROOT_MIB=${DEMO_STALE_ROOT_MIB:-96} GPT_STALE_DATA_MIB=${DEMO_STALE_DATA_MIB:-128}

build_gpt() {
  local out=$1 loop mnt stale_bytes
  for tool in sgdisk partx losetup mkfs.vfat mkfs.ext4 mkfs.xfs mkswap mcopy setfattr openssl; do
    command -v "$tool" >/dev/null || die "missing $tool (run test/setup.sh)"
  done
  rm -f "$out"
  truncate -s 660M "$out"
  sgdisk -U 8e0f3a51-43b2-4c3e-9a4e-0d1b5c6a7e01 \
    -n1:2048:+1M   -t1:ef02 -c1:bios-boot -u1:8e0f3a51-43b2-4c3e-9a4e-0d1b5c6a7e11 \
    -n2:0:+64M     -t2:ef00 -c2:esp       -u2:8e0f3a51-43b2-4c3e-9a4e-0d1b5c6a7e12 \
    -n3:0:+224M    -t3:8304 -c3:root      -u3:8e0f3a51-43b2-4c3e-9a4e-0d1b5c6a7e13 \
    -n4:0:+320M    -t4:8302 -c4:data      -u4:8e0f3a51-43b2-4c3e-9a4e-0d1b5c6a7e14 \
    -n5:0:+32M     -t5:8200 -c5:swap      -u5:8e0f3a51-43b2-4c3e-9a4e-0d1b5c6a7e15 \
    "$out" >/dev/null
  # boot code (not the disk signature or the table), the post-GPT gap, the BIOS boot partition
  marker BOOTCODE 1 | head -c 440 | dd of="$out" bs=440 count=1 conv=notrunc status=none
  marker GAP 2048 | tail -c $(((2048 - 34) * 512)) | dd of="$out" bs=512 seek=34 conv=notrunc status=none
  marker BIOSBOOT 2048 | dd of="$out" bs=512 seek=2048 conv=notrunc status=none

  loop=$(losetup -fP --show "$out")
  mnt=$(mktemp -d)
  # shellcheck disable=SC2064
  trap "umount '$mnt' 2>/dev/null || true; partx -d '$loop' 2>/dev/null || true; losetup -d '$loop' 2>/dev/null || true; rmdir '$mnt' 2>/dev/null || true" EXIT
  [ -e "/sys/block/${loop#/dev/}/${loop#/dev/}p5" ] || partx -a "$loop"
  for i in 1 2 3 4 5; do udev_wait "${loop}p$i"; done

  mkfs.vfat -F 32 -s 1 -n ESP -i 1234ABCD "${loop}p2" >/dev/null
  mkfs.ext4 -q -F -b 4096 -L root -U 6f1f7e0a-1b7c-4a55-9d4e-2f5c0b9d1a03 \
    -E hash_seed=6f1f7e0a-1b7c-4a55-9d4e-2f5c0b9d1a33,lazy_itable_init=0,lazy_journal_init=0 "${loop}p3"
  mkfs.xfs -q -f -L data -m uuid=6f1f7e0a-1b7c-4a55-9d4e-2f5c0b9d1a04 "${loop}p4"
  mkswap -L swap -U 6f1f7e0a-1b7c-4a55-9d4e-2f5c0b9d1a05 "${loop}p5" >/dev/null

  fill_vfat "$out@@$((4096 * 512))" esp "$GPT_STALE_ESP_MIB"   # (mtools warns about geometry on devices)
  mount "${loop}p3" "$mnt"
  fill_stale "$mnt" root "$GPT_STALE_ROOT_MIB"
  fill_tree "$mnt" root
  umount "$mnt"
  mount "${loop}p4" "$mnt"
  fill_stale "$mnt" data "$GPT_STALE_DATA_MIB"
  fill_tree "$mnt" data
  umount "$mnt"
  stale_bytes=$(((GPT_STALE_ESP_MIB + GPT_STALE_ROOT_MIB + GPT_STALE_DATA_MIB) << 20))
  printf '{"path":"%s","layout":"gpt","staleBytes":%d}\n' "$out" "$stale_bytes"
}

# udev_wait DEV: partition nodes appear asynchronously on devtmpfs
udev_wait() {
  local i
  for i in $(seq 1 100); do [ -b "$1" ] && return 0; sleep 0.05; done
  die "$1 did not appear"
}

cmd=${1:-}
case "$cmd" in
  fill-tree)  [ $# -eq 3 ] || die "usage: fill-tree DIR SEED"; fill_tree "$2" "$3" ;;
  fill-stale) [ $# -eq 4 ] || die "usage: fill-stale DIR SEED MIB"; fill_stale "$2" "$3" "$4" ;;
  fill-vfat)  [ $# -eq 4 ] || die "usage: fill-vfat TARGET SEED STALE_MIB"; fill_vfat "$2" "$3" "$4" ;;
  marker)     [ $# -eq 3 ] || die "usage: marker TAG SECTORS"; marker "$2" "$3" ;;
  gpt)        [ $# -eq 2 ] || die "usage: gpt OUT.raw"; build_gpt "$2" ;;
  ''|-h|--help) sed -n '2,20p' "$0"; [ -n "$cmd" ] || exit 2 ;;
  *)          [ $# -eq 1 ] || die "usage: demo-disk.sh [gpt] OUT.raw"; build_gpt "$1" ;;
esac
