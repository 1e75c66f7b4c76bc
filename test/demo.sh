#!/usr/bin/env bash
# npm run demo [-- SOURCE]: bmsnap's main job on a built-in sample disk.
# Builds (once) a 660 MiB GPT sample disk with test/demo-disk.sh: BIOS boot, ESP (FAT32), ext4
# root, xfs data, swap, each filesystem with deleted "stale" data in its free space. Then images
# it with `bmsnap image … --json`, and shows qemu-img info/check, the sizes and the manifest.
# With SOURCE (a raw image or a block device) it images that instead.
# Env: DEMO_DIR (default ./tmp/demo), DEMO_REBUILD=1 to rebuild the sample disk. Needs root.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$PWD

bash test/setup.sh
[ -f dist/agent/src/cli/main.js ] || npm run --silent build

dir=${DEMO_DIR:-$repo/tmp/demo}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
out=$dir/disk.qcow2
manifest=$dir/manifest.json
loop=
cleanup() { [ -z "$loop" ] || losetup -d "$loop" 2>/dev/null || true; }
trap cleanup EXIT

section() { printf '\n== %s\n' "$*"; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }

if [ $# -ge 1 ]; then
  src=$1
else
  src=$dir/disk.raw
  if [ ! -f "$src" ] || [ "${DEMO_REBUILD:-0}" = 1 ]; then
    section "building the sample disk $src"
    bash test/demo-disk.sh gpt "$src" >/dev/null
  fi
  sgdisk -p "$src" | sed -n '/^Number/,$p'
fi

section "bmsnap image $src -o $out --json"
rm -f "$out"
start=$(date +%s.%N)
node dist/agent/src/cli/main.js image "$src" -o "$out" --json --quiet > "$manifest"
end=$(date +%s.%N)
awk -v s="$start" -v e="$end" 'BEGIN { printf "done in %.1f s\n", e - s }'

section "qemu-img info"
qemu-img info "$out"
section "qemu-img check"
qemu-img check "$out"

section "sizes"
if [ -b "$src" ]; then src_size=$(blockdev --getsize64 "$src"); src_alloc=$src_size
else src_size=$(stat -c %s "$src"); src_alloc=$(( $(stat -c %b "$src") * $(stat -c %B "$src") )); fi
out_size=$(stat -c %s "$out")
printf '%-34s %s\n' "source (virtual size)" "$(mib "$src_size")"
printf '%-34s %s\n' "source (allocated: data + stale)" "$(mib "$src_alloc")"
printf '%-34s %s  (%s of the allocated source)\n' "bmsnap qcow2" "$(mib "$out_size")" \
  "$(awk -v a="$out_size" -v b="$src_alloc" 'BEGIN { printf "%.1f%%", 100 * a / b }')"
naive=$dir/naive.qcow2
qemu-img convert -O qcow2 "$src" "$naive"
printf '%-34s %s  (copies the deleted data too)\n' "qemu-img convert -O qcow2" "$(mib "$(stat -c %s "$naive")")"
rm -f "$naive"

section "manifest ($manifest)"
node -e '
const m = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
const mib = (b) => (b / 1048576).toFixed(1) + " MiB";
console.log(`${m.tool} ${m.version}: ${m.source.path} (${mib(m.source.size)}) -> ${m.format}/${m.compression}, ${mib(m.bytesWritten)} written`);
console.log(`partition table: ${m.partitionTable.type}; used ${mib(m.usedBytes)} of ${mib(m.virtualSize)}`);
for (const p of m.partitions)
  console.log(`  #${String(p.index).padEnd(2)} ${(p.fs ?? "-").padEnd(5)} ${mib(p.size).padStart(11)}  used ${mib(p.usedBytes).padStart(10)}  ${p.method}`);
console.log(`sha512 ${m.sha512}\nmd5    ${m.md5}`);
' "$manifest"

if [ $# -eq 0 ]; then
  section "round trip: the root filesystem of the image passes e2fsck"
  back=$dir/back.raw
  qemu-img convert -O raw "$out" "$back"
  start_sector=$(sfdisk --json "$back" | node -e 'const t = JSON.parse(require("fs").readFileSync(0, "utf8")); const p = t.partitiontable.partitions.find((x) => x.name === "root"); console.log(p.start, p.size)')
  read -r s n <<<"$start_sector"
  loop=$(losetup -r -f --show -o $((s * 512)) --sizelimit $((n * 512)) "$back")
  e2fsck -fn "$loop" 2>&1 | tail -1
  losetup -d "$loop"; loop=
  rm -f "$back"
fi

section "files"
echo "source:   $src"
echo "image:    $out"
echo "manifest: $manifest"
