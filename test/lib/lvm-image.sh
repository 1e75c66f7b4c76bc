#!/usr/bin/env bash
# Where a logical volume lies in a raw disk image, from the image's own LVM metadata:
#   test/lib/lvm-image.sh RAW VG LV    prints "OFFSET SIZE" (bytes, from the start of the image)
# so that a test can reach the LV's file system with `losetup -r -o OFFSET --sizelimit SIZE RAW`
# on a host without device-mapper, and in a snapshot whose metadata may not be what
# bootable-disk.sh --lvm wrote. Linear LVs in one segment only (anything else: exit 1).
# The image is attached read-only and only its loop device is visible to lvm (--readonly: no
# metadata repair; --nolocking: not even the host's lock dir is created), so the host's own VGs,
# even one of the same name, play no part and no state is left on the host. Needs root (loop
# device).
set -euo pipefail
[ $# -eq 3 ] || { echo "usage: $0 RAW VG LV" >&2; exit 2; }
raw=$1 vg=$2 lv=$3
die() { echo "lvm-image: $*" >&2; exit 1; }
err=$(mktemp)
loop=
trap '[ -z "$loop" ] || losetup -d "$loop"; rm -f "$err"' EXIT
loop=$(losetup -r -f --show -P "$raw")
partx -a "$loop" 2>/dev/null || true
accept="\"a|^$loop(p[0-9]+)?\$|\",\"r|.*|\""
rows=$(LVM_SUPPRESS_FD_WARNINGS=1 lvm pvs --readonly --nolocking --config "devices{filter=[$accept]
    global_filter=[$accept] use_devicesfile=0 hints=\"none\" obtain_device_list_from_udev=0}" \
  --segments --noheadings --nosuffix --units b --separator ' ' \
  -o pv_name,vg_name,lv_name,pvseg_start,pvseg_size,pe_start,vg_extent_size,segtype 2>"$err" \
  | awk -v vg="$vg" -v lv="$lv" '$2 == vg && $3 == lv { $1 = $1; print }') || true
[ -n "$rows" ] || { cat "$err" >&2; die "no $vg/$lv in $raw"; }
[ "$(wc -l <<< "$rows")" -eq 1 ] || die "$vg/$lv has more than one segment"
read -r pv _ _ first count pe_start extent segtype <<< "$rows"
[ "$segtype" = linear ] || die "$vg/$lv is $segtype, not linear"
# (a PV on a partition: add where the partition starts; on the whole disk there is none)
start=0
[ "$pv" = "$loop" ] || start=$(( $(cat "/sys/class/block/${pv#/dev/}/start") * 512 ))
echo "$(( start + pe_start + first * extent )) $(( count * extent ))"
