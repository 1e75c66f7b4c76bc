#!/bin/busybox sh
# The guest half of test/e2e/bundle-footprint.test.ts. The bootable test disk's marker runs it
# from the job disk, mounted at $1 (/dev/job); job.env there sets GLANCE_URL and IMAGE_NAME.
# The "user OS" is busybox alone: no libc, no node. The job brings up what a distribution would
# (sysfs, a tmpfs on /dev/shm, DHCP), records the package database and every entry of the root
# tree outside /tmp /proc /sys /dev /run, runs the bundle - `--version`, then imaging its own
# disk into Glance - and records them again. Lists and logs go to the job disk; the console gets
# BMSNAP-JOB lines. Its own helpers live on /dev (devtmpfs), not on the root tree.
job=$1
. "$job/guest-lib.sh"
now() { cut -d' ' -f1 /proc/uptime; }

shm_up
os_up

# every entry of the root tree: name (and link target), type, mode, owner, size, mtime, ctime, sha256
tree() {
  find / -xdev \( -path /tmp -o -path /proc -o -path /sys -o -path /dev -o -path /run \) -prune -o -print | sort |
    while read -r p; do
      if [ -f "$p" ] && [ ! -L "$p" ]; then h=$(sha256sum "$p" | cut -c1-64); else h=-; fi
      echo "$(stat -c '%N|%F|%a|%u|%g|%s|%Y|%Z' "$p")|$h"
    done
}
# the package database: dpkg's view, the status file, and every file under /etc and /var/lib
pkgdb() {
  dpkg -l 2>&1
  find /etc /var/lib -xdev -type f | sort | xargs sha256sum
}
record() {
  tree > "$job/$1.tree"
  pkgdb > "$job/$1.pkg"
  ls -A /tmp > "$job/$1.tmp"
  ls -A /dev/shm > "$job/$1.shm"
  h() { sha256sum < "$job/$1" | cut -c1-16; }
  say "$1 entries=$(wc -l < "$job/$1.tree") tree=$(h "$1.tree") pkg=$(h "$1.pkg") tmp=$(h "$1.tmp") shm=$(h "$1.shm")"
}

sync
record before
t0=$(now)
"$job/bmsnap" --version > "$job/version.out" 2>&1
say "version rc=$? seconds=$(awk "BEGIN { print $(now) - $t0 }") out=$(head -n 1 "$job/version.out")"
t0=$(now)
"$job/bmsnap" image /dev/vda --glance "$IMAGE_NAME" --glance-url "$GLANCE_URL" --json > "$job/manifest.json" 2> "$job/bmsnap.log"
say "image rc=$? seconds=$(awk "BEGIN { print $(now) - $t0 }")"
tail -n 3 "$job/bmsnap.log"
sync
record after
say "leftovers $(ls -d /tmp/bmsnap-bundle-* /dev/shm/bmsnap-bundle-* 2>/dev/null | wc -l)"
say done
