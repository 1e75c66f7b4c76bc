# Shared by ramdisk-build/build.sh and the tests that build small boot images (bash, sourced).
# Expects: $cache (a directory for downloads and extracted kernels), say(), die().

EPOCH=1700000000   # every mtime in an archive (reproducible builds)

# ensure_packages PKG... : apt-get installs the Debian packages that are missing (needs root).
ensure_packages() {
  local missing=() p
  # "installed", not merely known to dpkg: a removed package keeps its config files and
  # `dpkg -s` still succeeds for it, though its programs are gone.
  for p in "$@"; do
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)" = installed ] || missing+=("$p")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  say "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; } \
    || die "apt-get install ${missing[*]} failed"
}

# The kernel linux-image-amd64 currently points at, downloaded as a .deb (never installed).
# Sets kpkg, kver, kdeb.
fetch_kernel_deb() {
  mkdir -p "$cache/debs"
  local resolve='apt-cache depends linux-image-amd64 2>/dev/null | awk "/Depends: linux-image-[0-9]/ { print \$2; exit }"'
  kpkg=$(eval "$resolve")
  if [ -z "$kpkg" ]; then   # a fresh machine may have no package lists yet
    say "apt-get update (linux-image-amd64 unknown)"
    apt-get update -q >/dev/null 2>&1 || true
    kpkg=$(eval "$resolve")
  fi
  [ -n "$kpkg" ] || die "cannot resolve linux-image-amd64 from the Debian package lists"
  kver=${kpkg#linux-image-}
  kdeb=$(ls "$cache/debs/${kpkg}_"*.deb 2>/dev/null | head -1 || true)
  if [ -z "$kdeb" ]; then
    say "downloading $kpkg"
    (cd "$cache/debs" && { apt-get download -q "$kpkg" >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1; apt-get download -q "$kpkg" >/dev/null 2>&1; }; }) || die "apt-get download $kpkg failed"
    kdeb=$(ls "$cache/debs/${kpkg}_"*.deb | head -1)
  fi
}

# Extracts $kdeb once into $cache/kernel-$kver, with a modules.dep from busybox depmod (the
# package ships none and the host may have no kmod). Sets ktree.
extract_kernel() {
  ktree=$cache/kernel-$kver
  if [ ! -f "$ktree/.done" ]; then
    # Extracted beside the cache entry and renamed into place, so two builds at once (or one
    # killed half way) never see, or delete, each other's half-extracted tree.
    say "extracting $kpkg"
    local tmp
    tmp=$(mktemp -d "$ktree.tmp.XXXXXX")
    dpkg -x "$kdeb" "$tmp"
    busybox depmod -b "$tmp" "$kver"
    touch "$tmp/.done"
    [ -f "$ktree/.done" ] || { rm -rf "$ktree"; mv -T "$tmp" "$ktree" 2>/dev/null || true; }
    rm -rf "$tmp"
    [ -f "$ktree/.done" ] || die "extracting $kpkg into $ktree failed"
  fi
}

# copy_modules ROOT NAME... : the named modules and all they depend on, into ROOT/lib/modules,
# with ROOT's own modules.dep. Names use _ or - alike; names this kernel lacks are reported.
copy_modules() {
  local root=$1; shift
  local kmods=$ktree/lib/modules/$kver
  local missing ko
  missing=$(mktemp)
  ko=$(awk -v want=" $(echo "$*" | tr '-' '_') " -F': *' '
    function base(p,   n, a, s) { n = split(p, a, "/"); s = a[n]; sub(/\.ko(\.[a-z]+)?$/, "", s); gsub(/-/, "_", s); return s }
    { name = base($1); deps[name] = $2; file[name] = $1 }
    END {
      n = split(want, w, " "); for (i = 1; i <= n; i++) todo[++t] = w[i]
      for (h = 1; h <= t; h++) {
        m = todo[h]; if (m in done) continue; done[m] = 1
        if (!(m in file)) { print "missing " m > "/dev/stderr"; continue }
        print file[m]
        k = split(deps[m], d, " "); for (j = 1; j <= k; j++) todo[++t] = base(d[j])
      }
    }' "$kmods/modules.dep" 2> "$missing" | sort -u)
  [ -s "$missing" ] && say "not in kernel $kver (skipped): $(sed 's/^missing //' "$missing" | sort -u | tr '\n' ' ')"
  rm -f "$missing"
  mkdir -p "$root/lib/modules/$kver"
  (cd "$kmods" && { echo "$ko"; ls modules.builtin modules.builtin.modinfo 2>/dev/null || true; } | cpio -pdm --quiet "$root/lib/modules/$kver")
  busybox depmod -b "$root" "$kver"
}

# libs_of BINARY... : the shared libraries the binaries load, the dynamic loader included, one
# path a line.
libs_of() { ldd "$@" 2>/dev/null | awk '/=> \// { print $3 } /^\t\/lib/ { print $1 }' | sort -u; }

# normalize_tree ROOT : modes 755 (directories, executables) or 644, every mtime $EPOCH, so an
# archive of ROOT depends on the contents alone.
normalize_tree() {
  local root=$1
  find "$root" -type d -exec chmod 755 {} +
  find "$root" -type f -perm /111 -exec chmod 755 {} +
  find "$root" -type f ! -perm /111 -exec chmod 644 {} +
  find "$root" -exec touch -h -d "@$EPOCH" {} +
}

# pack_initramfs ROOT OUT.zst : newc cpio of ROOT (sorted, owner 0:0, fixed modes and mtimes),
# zstd -10 single-threaded, so the same tree gives the same bytes. Prints the uncompressed size.
pack_initramfs() {
  local root=$1 out=$2
  normalize_tree "$root"
  (cd "$root" && find . -mindepth 1 | sed 's|^\./||' | LC_ALL=C sort | cpio --reproducible -o -H newc -R 0:0 --quiet) > "$out.cpio"
  zstd -q -f -T1 -10 "$out.cpio" -o "$out"
  stat -c %s "$out.cpio"
  rm -f "$out.cpio"
}
