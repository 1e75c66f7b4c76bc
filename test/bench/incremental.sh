#!/usr/bin/env bash
# Incremental snapshots (issue 12): on a copy of the reference disk, a full snapshot with its
# cluster index, then 1 % of the used bytes rewritten on the root filesystem, then the second
# snapshot as a delta (--parent-index) against a second full snapshot. Bytes written and time
# of each, the ratios, and the targets (>= 10x fewer bytes, >= 5x faster). Local files (-o); the
# Glance path uploads the same bytes.
#   test/bench/incremental.sh REF.raw [DIR]    (needs root: loop devices, mount)
# Sourced by run.sh (which passes its reference disk and counts failed targets) or run alone.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source test/bench/lib.sh
ref=${1:?usage: incremental.sh REF.raw [DIR]}
idir=${2:-${BENCH_DIR:-$PWD/tmp/bench}/incremental}
fails=${fails:-0}
mkdir -p "$idir"
disk=$idir/disk.raw
bmsnap=(node dist/agent/src/cli/main.js image)
note "incremental: copying the reference disk (the copy is changed, never the reference)"
cp --sparse=always "$ref" "$disk"

drop_caches
note "incremental: full snapshot with --index"
measure inc_full "${bmsnap[@]}" "$disk" -o "$idir/full1.qcow2" --index "$idir/full1.idx" --quiet --manifest "$idir/full1.json"
used=$(node -e 'console.log(JSON.parse(require("fs").readFileSync(process.argv[1])).usedBytes)' "$idir/full1.json")

note "incremental: rewriting 1 % of the used bytes ($(mib $((used / 100)))) on the root filesystem"
loop=$(losetup -fP --show "$disk")
mnt=$(mktemp -d)
cleanup() { umount "$mnt" 2>/dev/null || true; losetup -d "$loop" 2>/dev/null || true; rmdir "$mnt" 2>/dev/null || true; }
trap cleanup EXIT
[ -e "${loop}p2" ] || partx -a "$loop"
wait_for_node "${loop}p2"
mount "${loop}p2" "$mnt"
head -c $((used / 100)) /dev/urandom > "$mnt/new-results.bin"
umount "$mnt"
losetup -d "$loop"
trap - EXIT
rmdir "$mnt"

drop_caches
note "incremental: second snapshot as a delta (--parent-index)"
measure inc_delta "${bmsnap[@]}" "$disk" -o "$idir/delta.qcow2" --parent-index "$idir/full1.idx" --quiet --manifest "$idir/delta.json"
drop_caches
note "incremental: second snapshot in full, for comparison"
measure inc_full2 "${bmsnap[@]}" "$disk" -o "$idir/full2.qcow2" --quiet
size_full2=$(stat -c %s "$idir/full2.qcow2") size_delta=$(stat -c %s "$idir/delta.qcow2")
qemu-img check -q "$idir/delta.qcow2" || die "the delta fails qemu-img check"
rm -f "$disk"

echo
printf '%-58s %9s %12s %10s\n' "second snapshot after a 1 % change" "time (s)" "output" "peak RSS"
row "full (bmsnap image)" "$time_inc_full2" "$size_full2" "$rss_inc_full2"
row "delta (bmsnap image --parent-index)" "$time_inc_delta" "$size_delta" "$rss_inc_delta"
target "delta: fewer bytes than full" "$(ratio "$size_full2" "$size_delta")" ">=" 10 "x"
target "delta: faster than full"      "$(ratio "$time_inc_full2" "$time_inc_delta")" ">=" 5 "x"
