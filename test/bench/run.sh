#!/usr/bin/env bash
# npm run bench: bmsnap against `qemu-img convert -c` (what CC-Snapshot does) and the practical
# floor (partclone.ext4 of the root partition piped into zstd), on the 4 GiB reference disk of
# ../shared/bench/make-disk.sh. Page cache dropped before each run; wall time, output size and
# peak RSS (GNU time) of each; then the ratios and the targets with PASS/FAIL.
#
# Env: BENCH_DIR        outputs (default ./tmp/bench)
#      BENCH_SKIP_QEMU=1 skip qemu-img -c (~3 min); its last measured result is reused if cached
#      BENCH_SKIP_GLANCE=1 skip the end-to-end rows into a real glance-api (issue 3)
#      BENCH_MAKE_DISK  disk builder (default ../shared/bench/make-disk.sh)
#      BENCH_CACHE      reference disk cache (default /var/cache/bmsnap-bench)
#      BENCH_STRICT=1   exit 1 when a target fails
#      BENCH_SKIP_INCREMENTAL=1 skip the second-snapshot rows (incremental.sh: full vs delta after a 1 % change)
#      BENCH_SKIP_SCALE=1 skip the scaling rows (scale.sh: the same 1 GiB on an 8 GiB and a 2 TiB disk, ~1 min)
# Needs root (loop devices, drop_caches).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
repo=$PWD
source test/bench/lib.sh

bash test/setup.sh
[ -f dist/agent/src/cli/main.js ] || npm run --silent build

make_disk=${BENCH_MAKE_DISK:-$repo/../shared/bench/make-disk.sh}
cache=${BENCH_CACHE:-/var/cache/bmsnap-bench}
dir=${BENCH_DIR:-$repo/tmp/bench}
gib=4
[ -f "$make_disk" ] || die "reference disk builder not found: $make_disk (set BENCH_MAKE_DISK)"
mkdir -p "$cache" "$dir"
dir=$(cd "$dir" && pwd)

# --- reference disk, cached by the builder's sha256 ---------------------------------------------
key=$(sha256sum "$make_disk" | cut -c1-16)-${gib}G
ref=$cache/ref-$key.raw
if [ ! -f "$ref" ]; then
  note "building the reference disk $ref (once per version of $(basename "$make_disk"))"
  rm -f "$cache"/ref-*.partial
  bash "$make_disk" "$ref.partial" "$gib" >/dev/null
  mv "$ref.partial" "$ref"
else
  note "reference disk (cached): $ref"
fi
ref_size=$(stat -c %s "$ref")

# --- runs ---------------------------------------------------------------------------------------
load=$(cut -d' ' -f1 /proc/loadavg)
if awk -v l="$load" 'BEGIN { exit !(l > 0.5) }'; then
  note "load average $load: something else is running, timings will be noisy"
fi
out_bmsnap=$dir/out.qcow2 out_qemu=$dir/out-qemu.qcow2 out_pcl=$dir/out.pcl.zst
rm -f "$out_bmsnap" "$out_qemu" "$out_pcl"

drop_caches
note "1/3 bmsnap image"
measure bmsnap node dist/agent/src/cli/main.js image "$ref" -o "$out_bmsnap" --quiet
size_bmsnap=$(stat -c %s "$out_bmsnap")
qemu-img check -q "$out_bmsnap" || die "bmsnap's output fails qemu-img check"
note "    qemu-img check: clean"

qemu_cache=$cache/qemu-$key.result
if [ "${BENCH_SKIP_QEMU:-0}" = 1 ]; then
  if [ -f "$qemu_cache" ]; then
    read -r time_qemu rss_qemu size_qemu < "$qemu_cache"
    qemu_note="(cached from an earlier run)"
    note "2/3 qemu-img convert -c: skipped, using the cached result"
  else
    time_qemu= rss_qemu= size_qemu= qemu_note="(skipped)"
    note "2/3 qemu-img convert -c: skipped (BENCH_SKIP_QEMU=1), no cached result"
  fi
else
  drop_caches
  note "2/3 qemu-img convert -c -O qcow2 (about 3 minutes)"
  measure qemu qemu-img convert -c -O qcow2 "$ref" "$out_qemu"
  size_qemu=$(stat -c %s "$out_qemu")
  echo "$time_qemu $rss_qemu $size_qemu" > "$qemu_cache"
  qemu_note=
fi

note "3/3 partclone.ext4 -c (root partition) | zstd -T0 -1"
loop=$(losetup -fP -r --show "$ref")
trap 'partx -d "$loop" 2>/dev/null || true; losetup -d "$loop" 2>/dev/null || true' EXIT
[ -e "/sys/block/${loop#/dev/}/${loop#/dev/}p2" ] || partx -a "$loop"
wait_for_node "${loop}p2"
drop_caches
measure_pipeline pcl "$out_pcl" "$dir/partclone.log" \
  -- partclone.ext4 -c -s "${loop}p2" -o - \
  -- zstd -q -T0 -1
size_pcl=$(stat -c %s "$out_pcl")
partx -d "$loop" 2>/dev/null || true
losetup -d "$loop"
trap - EXIT

# --- end to end into Glance (issue 3) ----------------------------------------------------------
# bmsnap streams the disk into a new image; CC-Snapshot's path is qemu-img convert -c, then an
# upload of the file. Both into the same real glance-api on loopback.
time_gb= rss_gb= time_up= glance_note=
if [ "${BENCH_SKIP_GLANCE:-0}" != 1 ]; then
  gdir=$dir/glance
  gport=${BENCH_GLANCE_PORT:-19598}
  rm -rf "$gdir"
  bash test/lib/glance-local.sh start "$gdir" "$gport" >/dev/null
  trap 'bash test/lib/glance-local.sh stop "$gdir" >/dev/null 2>&1 || true' EXIT
  gurl=http://127.0.0.1:$gport
  drop_caches
  note "4/5 bmsnap image --glance (disk -> Glance active, verified)"
  measure gb node dist/agent/src/cli/main.js image "$ref" --glance bench-bmsnap --glance-url "$gurl" --quiet
  if [ -f "$out_qemu" ]; then
    note "5/5 upload of qemu-img's output to the same Glance"
    id=$(curl -sf -X POST "$gurl/v2/images" -H 'Content-Type: application/json' \
      -d '{"name":"bench-qemu","disk_format":"qcow2","container_format":"bare"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
    drop_caches
    measure up curl -sf -T "$out_qemu" -H 'Content-Type: application/octet-stream' "$gurl/v2/images/$id/file"
  else
    glance_note="(no qemu-img output to upload)"
  fi
  bash test/lib/glance-local.sh stop "$gdir" >/dev/null 2>&1 || true
  trap - EXIT
fi

# --- report -------------------------------------------------------------------------------------
echo
printf 'reference disk: %s, %s; %s cores, load average at start %s\n\n' "$ref" "$(mib "$ref_size")" "$(nproc)" "$load"
printf '%-58s %9s %12s %10s\n' "pipeline" "time (s)" "output" "peak RSS"
row "bmsnap image (qcow2, zstd)" "$time_bmsnap" "$size_bmsnap" "$rss_bmsnap"
row "qemu-img convert -c -O qcow2 $qemu_note" "$time_qemu" "$size_qemu" "$rss_qemu"
row "partclone.ext4 root | zstd -1 (floor)" "$time_pcl" "$size_pcl" "$rss_pcl"
if [ -n "$time_gb" ]; then
  row "bmsnap image --glance (disk -> Glance active)" "$time_gb" "" "$rss_gb"
  [ -n "$time_up" ] && [ -n "$time_qemu" ] && time_cc=$(awk -v a="$time_qemu" -v b="$time_up" 'BEGIN { printf "%.2f", a + b }') \
    && row "qemu-img convert -c + upload (CC-Snapshot) $glance_note" "$time_cc" "" ""
fi
echo

fails=0
speedup=$(ratio "$time_qemu" "$time_bmsnap")
size_ratio=$(ratio "$size_bmsnap" "$size_qemu")
floor_ratio=$(ratio "$time_bmsnap" "$time_pcl")
rss_mib=$(awk -v k="$rss_bmsnap" 'BEGIN { printf "%.0f", k / 1024 }')
target "speedup vs qemu-img -c"      "$speedup"     ">=" 15  "x"
target "size vs qemu-img -c"         "$size_ratio"  "<=" 1   "x"
target "time vs the partclone floor" "$floor_ratio" "<=" 1.5 "x"
target "bmsnap peak RSS"             "$rss_mib"     "<=" 256 " MiB"
if [ -n "${time_cc:-}" ] && [ -n "$time_gb" ]; then
  target "end-to-end speedup into Glance" "$(ratio "$time_cc" "$time_gb")" ">=" 10 "x"
fi
if [ "${BENCH_SKIP_SCALE:-0}" != 1 ]; then
  bash test/bench/scale.sh "$dir/scale"
fi
if [ "${BENCH_SKIP_INCREMENTAL:-0}" != 1 ]; then
  source test/bench/incremental.sh "$ref" "$dir/incremental"
fi
echo
echo "outputs in $dir"
if [ "$fails" -gt 0 ] && [ "${BENCH_STRICT:-0}" = 1 ]; then exit 1; fi
