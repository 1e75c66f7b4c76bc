#!/usr/bin/env bash
# Builds `bmsnap` as ONE self-contained executable for in-band use on a node that has no Node.js
# and any glibc (issue 6):
#
#   bundle/build.sh [--out DIR] [--with-ramdisk] [--xz] [--quiet]
#
# Prints "bundle PATH". The file is bundle/stub.sh (POSIX sh) followed by a tar (gzip -9, or xz
# with --xz) of:
#   bin/      node and the tools, each a link to exec-wrapper.sh, which runs libexec/NAME as
#             `lib/ld-linux-x86-64.so.2 --library-path lib NAME ...`
#   libexec/  the host's node (stripped), kexec, dmsetup, lvm, fsfreeze, losetup, blkid, lsblk
#   lib/      every shared library they load, and the dynamic loader
#   app/      the agent: the files ramdisk-build/agent-files.mjs lists
#   ramdisk/  with --with-ramdisk: bmsnap.kernel + bmsnap.initramfs from ramdisk-build/build.sh
#             (for the kexec mode; off by default, it more than doubles the size)
#   bmsnap-bundle.json  key, versions, contents
# The result is cached under $BMSNAP_BUNDLE_CACHE (default /var/cache/bmsnap/bundle), keyed by
# the sha256 of every input, and reproducible: sorted ustar, owner 0:0, fixed modes and mtimes,
# gzip -n / xz single-threaded. With --out it is also copied to DIR/bmsnap.
# Needs root (apt-get) on Debian 12 and an `npm run build` of the agent.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
cache=${BMSNAP_BUNDLE_CACHE:-/var/cache/bmsnap/bundle}
out_dir= quiet=0 with_ramdisk=0 comp=gzip
while [ $# -gt 0 ]; do
  case $1 in
    --out) out_dir=$2; shift 2 ;;
    --with-ramdisk) with_ramdisk=1; shift ;;
    --xz) comp=xz; shift ;;
    --quiet) quiet=1; shift ;;
    -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bundle-build: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
say() { [ "$quiet" = 1 ] || echo "bundle-build: $*" >&2; }
die() { echo "bundle-build: $*" >&2; exit 1; }
export LC_ALL=C

source "$repo/ramdisk-build/lib.sh"   # EPOCH ensure_packages libs_of normalize_tree
ensure_packages kexec-tools lvm2 dmsetup util-linux binutils tar gzip xz-utils
[ -f "$repo/dist/agent/src/cli/main.js" ] || die "the agent is not built: run npm run build first"

# --- the inputs, and the cache key over all of them ----------------------------------------------
NODE=$(readlink -f "$(command -v node)")
TOOLS=(/usr/sbin/kexec /usr/sbin/dmsetup /usr/sbin/lvm /usr/sbin/fsfreeze /usr/sbin/losetup /usr/sbin/blkid /usr/bin/lsblk)
mapfile -t LIBS < <(libs_of "$NODE" "${TOOLS[@]}")
printf '%s\n' "${LIBS[@]}" | grep -q '/ld-linux-x86-64\.so\.2$' || die "no dynamic loader among the libraries of $NODE"
mapfile -t AGENT < <(node "$repo/ramdisk-build/agent-files.mjs" "$repo")
RAMDISK=()
if [ "$with_ramdisk" = 1 ]; then
  rd=$(bash "$repo/ramdisk-build/build.sh" --quiet) || die "ramdisk-build/build.sh failed"
  RAMDISK=("$(sed -n 's/^kernel //p' <<<"$rd")" "$(sed -n 's/^initramfs //p' <<<"$rd")")
fi
key=$( {
  echo "compress $comp"
  for f in "$NODE" "${TOOLS[@]}" "${LIBS[@]}" "${RAMDISK[@]}"; do echo "$f $(sha256sum < "$(readlink -f "$f")")"; done
  for f in "${AGENT[@]}"; do echo "agent/$f $(sha256sum < "$repo/$f")"; done
  for f in bundle/build.sh bundle/stub.sh bundle/exec-wrapper.sh ramdisk-build/lib.sh ramdisk-build/agent-files.mjs; do
    echo "script/$f $(sha256sum < "$repo/$f")"
  done
} | sha256sum | cut -c1-16)
dest=$cache/bundle-$key

emit() {
  if [ -n "$out_dir" ]; then
    mkdir -p "$out_dir"
    cp "$dest/bmsnap" "$out_dir/bmsnap"
    echo "bundle $(cd "$out_dir" && pwd)/bmsnap"
  else
    echo "bundle $dest/bmsnap"
  fi
}
if [ -f "$dest/bmsnap" ]; then
  say "cached: $dest"
  emit
  exit 0
fi

mkdir -p "$cache"
stage=$(mktemp -d "$cache/.stage-XXXXXX")
trap 'rm -rf "$stage"' EXIT
root=$stage/root
say "staging into $root"
mkdir -p "$root"/{bin,libexec,lib,app}

# binaries (node stripped: 86 of its 99 MB are code), all started through exec-wrapper.sh
install -m 755 "$here/exec-wrapper.sh" "$root/bin/.exec-wrapper"
for b in "$NODE" "${TOOLS[@]}"; do
  name=$(basename "$b")
  cp -L "$b" "$root/libexec/$name"
  ln -s .exec-wrapper "$root/bin/$name"
done
strip --strip-all "$root/libexec/node"
for l in "${LIBS[@]}"; do cp -L "$l" "$root/lib/$(basename "$l")"; done

(cd "$repo" && printf '%s\n' "${AGENT[@]}" | cpio -pdm --quiet "$root/app")
if [ "$with_ramdisk" = 1 ]; then
  mkdir -p "$root/ramdisk"
  cp "${RAMDISK[0]}" "$root/ramdisk/bmsnap.kernel"
  cp "${RAMDISK[1]}" "$root/ramdisk/bmsnap.initramfs"
fi
cat > "$root/bmsnap-bundle.json" <<EOF
{"key": "$key", "bmsnap": "$(node -p 'require(process.argv[1]).version' "$repo/package.json")", "node": "$(node -v)",
 "glibc": "$(ldd --version | sed -n '1s/.* //p')", "tools": [$(for b in "${TOOLS[@]}"; do printf '"%s",' "$(basename "$b")"; done | sed 's/,$//')],
 "ramdisk": $([ "$with_ramdisk" = 1 ] && echo true || echo false)}
EOF

say "packing ($comp)"
normalize_tree "$root"
unpacked_kib=$(du -sk "$root" | cut -f1)
(cd "$root" && find . -mindepth 1 | sed 's|^\./||' | LC_ALL=C sort \
  | tar --format=ustar --no-recursion --owner=0 --group=0 --numeric-owner --mtime="@$EPOCH" -cf - -T -) \
  | if [ "$comp" = xz ]; then xz -T1 -6 -c; else gzip -n -9 -c; fi > "$stage/payload"

# the stub, with the payload's byte offset (1-based, for tail -c +N) written into it: iterate
# until the offset no longer changes the stub's length
need_kib=$(( unpacked_kib + unpacked_kib / 20 + 1024 ))
render() { sed -e "s/@KEY@/$key/" -e "s/@OFFSET@/$1/" -e "s/@NEED_KIB@/$need_kib/" -e "s/@UNPACK@/$comp/" "$here/stub.sh"; }
offset=1
while :; do
  next=$(( $(render "$offset" | wc -c) + 1 ))
  [ "$next" = "$offset" ] && break
  offset=$next
done
{ render "$offset"; cat "$stage/payload"; } > "$stage/bmsnap"
chmod 755 "$stage/bmsnap"
cat > "$stage/build-info.json" <<EOF
{"key": "$key", "bytes": $(stat -c %s "$stage/bmsnap"), "unpacked_kib": $unpacked_kib, "compress": "$comp",
 "with_ramdisk": $([ "$with_ramdisk" = 1 ] && echo true || echo false), "sha256": "$(sha256sum < "$stage/bmsnap" | cut -d' ' -f1)"}
EOF
rm -rf "$root" "$stage/payload"
rm -rf "$dest" && mv "$stage" "$dest" && chmod 755 "$dest"
trap - EXIT
say "built $dest/bmsnap ($(( $(stat -c %s "$dest/bmsnap") / 1048576 )) MiB, $(( unpacked_kib / 1024 )) MiB unpacked)"
emit
