#!/bin/bash
# Runs ironic-step-py/tests with the test chroot's python3 and its real ironic package (Ironic 29,
# Debian trixie; see test/stack/README.md). Needs root. The chroot stays read-only; the plugin is
# bound read-only at /plugin inside a private mount namespace.
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
REPO=$(cd "$HERE/.." && pwd)
ROOT=$(bash "$REPO/test/stack/trixie-chroot.sh" | tail -1)
[ -x "$ROOT/usr/bin/python3" ] || { echo "no chroot at $ROOT" >&2; exit 1; }
exec unshare --mount --propagation private -- bash -c '
  set -e
  ROOT=$1 PLUGIN=$2; shift 2
  mount --bind "$ROOT" "$ROOT"; mount -o remount,bind,ro "$ROOT"
  mount -t tmpfs tmpfs "$ROOT/tmp"
  mount -t proc proc "$ROOT/proc"
  mkdir "$ROOT/tmp/plugin"; mount --bind -o ro "$PLUGIN" "$ROOT/tmp/plugin"
  exec chroot "$ROOT" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp LANG=C.UTF-8 \
    PYTHONPATH=/tmp/plugin PYTHONDONTWRITEBYTECODE=1 \
    python3 -m unittest discover -s /tmp/plugin/tests "$@"
' bash "$ROOT" "$HERE" "$@"
