#!/usr/bin/env bash
# Scaling with the disk size (issue 11): the same ~1 GiB of files (test/lib/scale-disk.sh) on a
# small sparse disk and on a 2 TiB one, each imaged to a qcow2 with the page cache dropped first.
# Time and memory must follow the used bytes, not the disk size: prints both rows and the ratios.
#   test/bench/scale.sh [DIR]      (default ./tmp/bench/scale; needs root)
# Sourced by run.sh (which sets scale_* for its report) or run alone.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source test/bench/lib.sh
sdir=${1:-${BENCH_DIR:-$PWD/tmp/bench}/scale}
mkdir -p "$sdir"
small=${BENCH_SCALE_SMALL:-8G} big=${BENCH_SCALE_BIG:-2T}
for s in "$small" "$big"; do
  note "scale: building a $s disk with 1 GiB of files"
  bash test/lib/scale-disk.sh "$sdir/disk-$s.raw" "$s" >/dev/null
  drop_caches
  note "scale: bmsnap image ($s)"
  measure "scale_$s" node dist/agent/src/cli/main.js image "$sdir/disk-$s.raw" -o "$sdir/out-$s.qcow2" --quiet --manifest "$sdir/manifest-$s.json"
  printf -v "size_scale_$s" '%s' "$(stat -c %s "$sdir/out-$s.qcow2")"
  printf -v "used_scale_$s" '%s' "$(node -e 'console.log(JSON.parse(require("fs").readFileSync(process.argv[1])).usedBytes)' "$sdir/manifest-$s.json")"
  rm -f "$sdir/disk-$s.raw"
done
tv_s=time_scale_$small tv_b=time_scale_$big rv_s=rss_scale_$small rv_b=rss_scale_$big
sv_s=size_scale_$small sv_b=size_scale_$big uv_s=used_scale_$small uv_b=used_scale_$big
echo
printf '%-58s %9s %12s %10s\n' "same 1 GiB of files on a sparse disk of" "time (s)" "output" "peak RSS"
row "$small (map: $(mib "${!uv_s}") used)" "${!tv_s}" "${!sv_s}" "${!rv_s}"
row "$big (map: $(mib "${!uv_b}") used)" "${!tv_b}" "${!sv_b}" "${!rv_b}"
printf '%s / %s: time %sx, peak RSS %sx, output %sx, used bytes %sx\n' "$big" "$small" \
  "$(ratio "${!tv_b}" "${!tv_s}")" "$(ratio "${!rv_b}" "${!rv_s}")" "$(ratio "${!sv_b}" "${!sv_s}")" "$(ratio "${!uv_b}" "${!uv_s}")"
