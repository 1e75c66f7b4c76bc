#!/bin/sh
# bmsnap, self-contained (see docs/in-band.md). This POSIX sh stub is followed by a compressed
# tar: node with its own libraries and dynamic loader, the bmsnap agent, and the tools it calls.
# It unpacks into a private directory (mode 0700) under $TMPDIR, else /tmp (/dev/shm first when
# that is a tmpfs and /tmp is not), runs `bmsnap "$@"` from there and removes the directory when
# bmsnap ends - normally, with an error, or on SIGINT/SIGTERM/SIGHUP, which it passes on -
# exiting with bmsnap's status. Nothing is installed and nothing is written anywhere else.
# bundle/build.sh fills in the four values below.
key=@KEY@
offset=@OFFSET@
need_kib=@NEED_KIB@
unpack=@UNPACK@

die() { echo "bmsnap: $*" >&2; exit 1; }

case $(uname -sm 2>/dev/null) in
  'Linux x86_64') ;;
  *) die "this bundle runs on x86_64 Linux only, not on $(uname -sm 2>/dev/null || echo 'this system')" ;;
esac
for tool in tar "$unpack" tail mktemp; do
  command -v "$tool" >/dev/null 2>&1 || die "cannot unpack myself: $tool is not installed"
done
self=$0
[ -f "$self" ] && [ -r "$self" ] || die "cannot read myself as $0: run me by my path (e.g. sh ./bmsnap)"

# fs_of DIR: fs_type and fs_opts of the filesystem DIR is on (the longest mount point above it).
fs_of() {
  fs_type= fs_opts= _best=
  _d=$(cd "$1" 2>/dev/null && pwd -P) || return 0
  [ -r /proc/mounts ] || return 0
  while read -r _dev _mp _fs _opts _rest; do
    case $_d/ in "${_mp%/}"/*) [ ${#_mp} -ge ${#_best} ] && { _best=$_mp; fs_type=$_fs; fs_opts=$_opts; } ;; esac
  done < /proc/mounts
}

# free_kib DIR: KiB available there ('' if df cannot tell).
free_kib() {
  set -- $(df -Pk "$1" 2>/dev/null | tail -n 1)
  case ${4:-x} in *[!0-9]*) echo '' ;; *) echo "$4" ;; esac
}

# pick_base DIR...: base = the first that is a writable directory, not noexec, with room for the
# unpacked bundle; else why = what was wrong with the first one.
pick_base() {
  base= why=
  for c in "$@"; do
    if [ ! -d "$c" ] || [ ! -w "$c" ] || [ ! -x "$c" ]; then
      why=${why:-"$c is not a writable directory"}; continue
    fi
    fs_of "$c"
    case ,$fs_opts, in *,noexec,*) why=${why:-"$c is mounted noexec"}; continue ;; esac
    avail=$(free_kib "$c")
    if [ -n "$avail" ] && [ "$avail" -lt "$need_kib" ]; then
      why=${why:-"not enough space in $c: $((need_kib / 1024)) MiB needed, $((avail / 1024)) MiB free"}; continue
    fi
    base=$(cd "$c" && pwd -P); return 0
  done
  return 1
}

# the candidates: $TMPDIR if set; else /tmp and /dev/shm, a tmpfs first (no write to any disk)
choose_base() {
  if [ -n "${TMPDIR:-}" ]; then
    pick_base "$TMPDIR"
  else
    fs_of /tmp; tmp_fs=$fs_type
    fs_of /dev/shm
    if [ "$tmp_fs" != tmpfs ] && [ "$fs_type" = tmpfs ]; then pick_base /dev/shm /tmp; else pick_base /tmp /dev/shm; fi
  fi || die "cannot unpack: $why (set TMPDIR to another directory)"
}

# sweep: directories of earlier runs that were killed outright (SIGKILL) and whose processes are
# all gone (the .bmsnap-pids file in each names them)
sweep() {
  for old in "$base"/bmsnap-bundle-*; do
    [ -d "$old" ] && [ -w "$old" ] && [ -f "$old/.bmsnap-pids" ] || continue
    alive=
    for p in $(cat "$old/.bmsnap-pids" 2>/dev/null); do kill -0 "$p" 2>/dev/null && alive=1; done
    [ -n "$alive" ] || rm -rf "$old"
  done
}

dir= child=
cleanup() { if [ -n "$dir" ]; then rm -rf "$dir"; dir=; fi; }
# Once bmsnap runs, a signal is passed on to it (it stops and cleans up; the loop below waits);
# before that, the stub cleans up and dies of the signal itself.
on_signal() {
  if [ -n "$child" ]; then kill -s "$1" "$child" 2>/dev/null; return 0; fi
  cleanup; trap - "$1" EXIT; kill -s "$1" $$; exit 1
}
trap cleanup EXIT
trap 'on_signal INT' INT
trap 'on_signal TERM' TERM
trap 'on_signal HUP' HUP

choose_base
sweep
umask 077
dir=$(mktemp -d "$base/bmsnap-bundle-$$-XXXXXX") || { dir=; die "cannot create a directory in $base"; }
echo $$ > "$dir/.bmsnap-pids"

err=$( { { tail -c +"$offset" "$self" | "$unpack" -dc 2>/dev/null \
  || echo "the bundle is damaged ($unpack -d failed)" >&2; } | (cd "$dir" && tar -xf -); } 2>&1 ) ; rc=$?
if [ $rc -ne 0 ] || [ -n "$err" ] || [ ! -f "$dir/bmsnap-bundle.json" ]; then
  nl='
'
  err=${err%%"$nl"*}
  die "cannot unpack into $base: ${err:-incomplete payload}"
fi

# bmsnap, with the bundle's tools first on PATH; the user's node settings are not for this node
export BMSNAP_BUNDLE="$dir" PATH="$dir/bin:${PATH:-/usr/sbin:/usr/bin:/sbin:/bin}"
unset NODE_OPTIONS NODE_PATH
# (an asynchronous command's stdin would be /dev/null: hand it ours explicitly)
exec 3<&0
"$dir/bin/node" "$dir/app/dist/agent/src/cli/main.js" "$@" <&3 3<&- &
child=$!
exec 3<&-
echo "$child" >> "$dir/.bmsnap-pids"
# wait returns early when a trapped signal arrives; wait again until bmsnap has really ended
while :; do
  wait "$child"; status=$?
  kill -0 "$child" 2>/dev/null || break
done
child=
exit "$status"
