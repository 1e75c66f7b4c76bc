#!/usr/bin/env bash
# Builds (once) or reuses a cached Debian trixie chroot holding real Ironic 29 + Glance 30 for the
# end-to-end stack (test/stack/openstack-stack.sh). Prints the chroot path on stdout, nothing else.
#
#   test/stack/trixie-chroot.sh            # build or reuse, print the path
#   test/stack/trixie-chroot.sh --path     # print the path it would use, build nothing (rc 1 if absent)
#
# Cache: ${BMSNAP_CACHE:-/var/cache/bmsnap}/trixie-<hash>, where <hash> covers this script (so the
# package list below) and BMSNAP_TRIXIE_EXTRA_PACKAGES. A directory, not a tarball: it is used in
# place (the stack runs it read-only), so a cached start costs nothing. Old trixie-* directories
# are left alone; delete them by hand (rm -rf --one-file-system).
#
# Needs root. Installs debootstrap on the host with apt if it is missing. Every mount the build
# needs (/proc, /sys, /dev inside the chroot) is made inside a private mount namespace
# (unshare --mount), so it disappears with the namespace even if the build is killed; the trap
# unmounts them explicitly as well. A half-built tree is never published: the build runs in
# trixie-<hash>.tmp.<pid> and is renamed when complete.
#
# Env: BMSNAP_CACHE, BMSNAP_DEBIAN_MIRROR (default: the host's first Debian mirror from
#      /etc/apt/sources.list*), BMSNAP_TRIXIE_EXTRA_PACKAGES (space-separated, part of the hash).
set -euo pipefail

PACKAGES=(
  ironic-api ironic-conductor   # Ironic 29 (2025.1); pulls ironic-common, python3-ironic
  python3-ironicclient          # `openstack baremetal ...` (>= 5.6 has `node service`)
  python3-openstackclient       # the `openstack` command
  glance-api                    # Glance 30 (2025.1); pulls python3-keystonemiddleware
  python3-keystone              # Keystone 27 (2025.1) for BMSNAP_STACK_KEYSTONE=1: keystone-manage +
                                # the WSGI app only (the `keystone` package would add uwsgi + debconf)
  sqlite3                       # poking at the DBs while debugging
  ca-certificates
)
SUITE=trixie
SCRIPT=$(readlink -f "${BASH_SOURCE[0]}")
CACHE=${BMSNAP_CACHE:-/var/cache/bmsnap}
EXTRA=${BMSNAP_TRIXIE_EXTRA_PACKAGES:-}

log() { echo "trixie-chroot: $*" >&2; }
die() { log "$*"; exit 1; }

HASH=$({ cat "$SCRIPT"; echo "extra=$EXTRA"; } | sha256sum | cut -c1-16)
ROOT=$CACHE/$SUITE-$HASH

is_complete() { [ -f "$1/.bmsnap-complete" ]; }

if [ "${1:-}" = --path ]; then
  echo "$ROOT"
  is_complete "$ROOT"
  exit
fi

if is_complete "$ROOT"; then echo "$ROOT"; exit 0; fi

[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, chroot)"
mkdir -p "$CACHE"

# One build per hash at a time; a second caller waits and then reuses the result.
exec 9>"$CACHE/.lock-$SUITE-$HASH"
flock 9
if is_complete "$ROOT"; then echo "$ROOT"; exit 0; fi

export DEBIAN_FRONTEND=noninteractive
APT_OPTS=(-y -q -o DPkg::Lock::Timeout=600)

host_mirror() {
  local f line
  # deb822 (*.sources) and one-line (*.list) formats; the first URI ending in /debian wins
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    while read -r line; do
      case $line in
        URIs:*) for u in ${line#URIs:}; do [[ $u =~ /debian/?$ ]] && { echo "${u%/}"; return; }; done ;;
        deb\ *) for u in $line; do [[ $u =~ ^(https?|file):.*/debian/?$ ]] && { echo "${u%/}"; return; }; done ;;
      esac
    done <"$f"
  done
  echo http://deb.debian.org/debian
}
MIRROR=${BMSNAP_DEBIAN_MIRROR:-$(host_mirror)}
SECURITY_MIRROR=${MIRROR%/debian}/debian-security

if ! command -v debootstrap >/dev/null; then
  log "installing debootstrap on the host"
  if ! apt-get "${APT_OPTS[@]}" install --no-install-recommends debootstrap </dev/null >&2; then
    apt-get -q update </dev/null >&2
    apt-get "${APT_OPTS[@]}" install --no-install-recommends debootstrap </dev/null >&2
  fi
fi

# Leftovers of killed builds of this hash (we hold the lock, so nobody is using them). Never
# cross into another filesystem, in case something is still mounted there.
for old in "$ROOT".tmp.*; do
  [ -e "$old" ] || continue
  if grep -q " $old/" /proc/self/mounts; then die "$old still has mounts; unmount them first"; fi
  log "removing stale $old"
  rm -rf --one-file-system "$old"
done

TMP=$ROOT.tmp.$$
BUILD_LOG=$CACHE/$SUITE-$HASH.build.log
log "building $ROOT from $MIRROR (log: $BUILD_LOG); takes a few minutes"
START=$(date +%s)

# The build itself, run inside a private mount namespace: stage 1 debootstrap, stage 2 apt.
build() {
  set -euo pipefail
  local root=$1
  mounted=()
  umount_all() {
    local i
    for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[$i]}" 2>/dev/null || true; done
    mounted=()
  }
  trap umount_all EXIT
  mount --make-rprivate /

  debootstrap --variant=minbase --components=main "$SUITE" "$root" "$MIRROR"

  # no service may start while packages install (and none later: the stack starts them itself)
  printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
  chmod 755 "$root/usr/sbin/policy-rc.d"
  cat >"$root/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
EOF
  printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' >"$root/etc/apt/apt.conf.d/90bmsnap"
  cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true

  mount -t proc proc "$root/proc" && mounted+=("$root/proc")
  mount -t sysfs sysfs "$root/sys" && mounted+=("$root/sys")
  mount --bind /dev "$root/dev" && mounted+=("$root/dev")

  # Answer every debconf question up front: no DB, no rabbit, no keystone, no endpoint registration.
  chroot "$root" debconf-set-selections <<'EOF'
glance-common glance/configure_db boolean false
glance-common glance/configure_rabbit boolean false
glance-common glance/configure_ksat boolean false
glance-api glance/configure_api-endpoint boolean false
ironic-common ironic/configure_db boolean false
ironic-common ironic/configure_rabbit boolean false
ironic-common ironic/configure_ksat boolean false
ironic-api ironic/configure_api-endpoint boolean false
EOF
  chroot "$root" apt-get -q update
  # shellcheck disable=SC2086
  chroot "$root" apt-get "${APT_OPTS[@]}" install "${PACKAGES[@]}" $EXTRA
  chroot "$root" apt-get clean
  rm -rf "$root"/var/lib/apt/lists/*_dists_* "$root"/var/log/apt/* "$root"/var/cache/debconf/*-old
  # mount points for openstack-stack.sh (the stack DIR and an optional Ironic plugin)
  mkdir -p "$root/stack" "$root/plugin"
  # what we got, for the record and for the stack's README checks
  chroot "$root" dpkg-query -W -f='${Package} ${Version}\n' >"$root/.bmsnap-packages"
  umount_all
  trap - EXIT
}
export -f build
export SUITE MIRROR SECURITY_MIRROR EXTRA DEBIAN_FRONTEND
export PACKAGES_STR="${PACKAGES[*]}"
export APT_OPTS_STR="${APT_OPTS[*]}"

if ! unshare --mount --propagation private bash -c '
      PACKAGES=($PACKAGES_STR); APT_OPTS=($APT_OPTS_STR); build "$1"' _ "$TMP" >"$BUILD_LOG" 2>&1 </dev/null; then
  tail -n 40 "$BUILD_LOG" >&2
  if grep -q " $TMP/" /proc/self/mounts; then log "mounts left under $TMP (not removed)"
  else rm -rf --one-file-system "$TMP"; fi
  die "build failed (full log: $BUILD_LOG)"
fi

{
  echo "suite=$SUITE"; echo "mirror=$MIRROR"; echo "hash=$HASH"; echo "built=$(date -u +%FT%TZ)"
  echo "seconds=$(($(date +%s) - START))"
} >"$TMP/.bmsnap-complete"
mv "$TMP" "$ROOT"
log "built in $(($(date +%s) - START)) s: $(du -sh --one-file-system "$ROOT" | cut -f1)"
echo "$ROOT"
