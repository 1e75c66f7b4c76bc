#!/usr/bin/env bash
# glance-local.sh - run a real OpenStack Glance (Debian bookworm package,
# glance-api 2:25.1.0, "Zed") on loopback, without Keystone, for tests.
#
#   glance-local.sh start DIR [PORT]   install if missing, configure, start,
#                                      wait until healthy, print the PID
#   glance-local.sh stop DIR           stop the instance started in DIR
#   glance-local.sh status DIR         print PID and URL if running (rc 0), else rc 1
#
# Everything (config, sqlite db, image files, staging, logs, pid file) lives
# in DIR; nothing under /etc/glance is used except what the package itself
# reads by default (an empty policy.d).
#
# Environment knobs (all optional):
#   GLANCE_AUTH=noauth|headers  noauth (default): no headers needed, every
#                 request is admin, owner=null; stage+import (glance-direct)
#                 does NOT work in this mode (tasks.owner NOT NULL).
#                 headers: identity from trusted headers, no token check:
#                 send "X-Identity-Status: Confirmed", "X-Project-Id: <id>",
#                 "X-Roles: admin" (or member). Without them: 401.
#                 keystone: real Keystone tokens (keystonemiddleware authtoken),
#                 checked against GLANCE_KEYSTONE_URL (e.g. http://127.0.0.1:5000)
#                 with the service user GLANCE_KEYSTONE_USER / _PASSWORD in
#                 project GLANCE_KEYSTONE_PROJECT (default "admin"), domain Default.
#   GLANCE_BIND=127.0.0.1       bind address
#   GLANCE_IMAGE_SIZE_CAP=N     max image size in bytes (default 10 GiB)
#   GLANCE_START_TIMEOUT=90     seconds to wait for /healthcheck
#   GLANCE_SOCKET_TIMEOUT=900   seconds an idle/stalled client connection is
#                 kept (glance's client_socket_timeout; a stalled upload keeps
#                 its image in 'saving' that long)
#   GLANCE_NO_INSTALL=1         fail instead of running apt-get
#
# stdout: only the PID (start) - diagnostics go to stderr.
#
# Kept in the repo for the e2e tests (test/lib/glance.ts wraps it); the original, with the
# notes on how it was worked out, is ../shared/tools/glance-local.sh.
set -euo pipefail

PKG_VERSION_HINT="2:25.1.0"     # bookworm's glance; informative only

log() { printf 'glance-local: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

usage() {
  sed -n '2,12p' "$0" >&2
  exit 2
}

# ---------------------------------------------------------------- install
ensure_installed() {
  if [ -x /usr/bin/glance-api ] && [ -x /usr/bin/glance-manage ] \
     && dpkg-query -W -f='${Status}' glance-api 2>/dev/null | grep -q 'ok installed'; then
    return 0
  fi
  [ "${GLANCE_NO_INSTALL:-0}" = 1 ] && die "glance-api not installed and GLANCE_NO_INSTALL=1"
  [ "$(id -u)" = 0 ] || die "glance-api not installed; need root to apt-get install it"

  log "installing glance-api (${PKG_VERSION_HINT}x from Debian) ..."
  local t0=$SECONDS
  # Answer every debconf question up front: no db, no rabbit, no keystone
  # auth token, no endpoint registration. (These are also the defaults.)
  debconf-set-selections <<'EOF'
glance-common glance/configure_db boolean false
glance-common glance/configure_rabbit boolean false
glance-common glance/configure_ksat boolean false
glance-api glance/configure_api-endpoint boolean false
EOF
  # Keep the package's postinst from starting the init.d service on :9292.
  local made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
  fi
  local apt_opts=(-y -q --no-install-recommends
                  -o DPkg::Lock::Timeout=600
                  -o Dpkg::Options::=--force-confdef
                  -o Dpkg::Options::=--force-confold)
  local rc=0
  if ! apt-cache policy glance-api 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=600 update >&2 || rc=$?
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install "${apt_opts[@]}" glance-api >&2 || rc=$?
  if [ "$rc" != 0 ]; then   # stale lists? refresh once and retry
    rc=0
    DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=600 update >&2 || true
    DEBIAN_FRONTEND=noninteractive apt-get install "${apt_opts[@]}" glance-api >&2 || rc=$?
  fi
  [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
  [ "$rc" = 0 ] || die "apt-get install glance-api failed (rc=$rc)"
  log "installed in $((SECONDS - t0))s: $(dpkg-query -W -f='${Version}' glance-api)"
}

# ---------------------------------------------------------------- config
write_config() {
  local dir=$1 port=$2 bind=$3 flavor=$4 cap=$5 sock_to=$6
  mkdir -p "$dir"/{etc,images,staging,tasks,lock,log}

  # Own minimal paste pipeline file (same factories as the packaged one).
  cat > "$dir/etc/glance-api-paste.ini" <<EOF
# flavor "" : no auth at all, every request gets an admin context
[pipeline:glance-api]
pipeline = healthcheck versionnegotiation unauthenticated-context rootapp

# flavor "headerauth" : keystone-less, identity read from X-* headers
[pipeline:glance-api-headerauth]
pipeline = healthcheck versionnegotiation context rootapp

# flavor "keystone" : tokens validated by Keystone
[pipeline:glance-api-keystone]
pipeline = healthcheck versionnegotiation authtoken context rootapp

[filter:authtoken]
paste.filter_factory = keystonemiddleware.auth_token:filter_factory
delay_auth_decision = true

[composite:rootapp]
paste.composite_factory = glance.api:root_app_factory
/: apiversions
/v2: apiv2app

[app:apiversions]
paste.app_factory = glance.api.versions:create_resource

[app:apiv2app]
paste.app_factory = glance.api.v2.router:API.factory

[filter:healthcheck]
paste.filter_factory = oslo_middleware:Healthcheck.factory
backends = disable_by_file
disable_by_file_path = $dir/healthcheck_disable

[filter:versionnegotiation]
paste.filter_factory = glance.api.middleware.version_negotiation:VersionNegotiationFilter.factory

[filter:context]
paste.filter_factory = glance.api.middleware.context:ContextMiddleware.factory

[filter:unauthenticated-context]
paste.filter_factory = glance.api.middleware.context:UnauthenticatedContextMiddleware.factory
EOF

  cat > "$dir/etc/glance-api.conf" <<EOF
[DEFAULT]
bind_host = $bind
bind_port = $port
# 0 = one process, no forked workers: one PID to manage
workers = 0
log_file = $dir/log/glance-api.log
debug = false
image_size_cap = $cap
client_socket_timeout = $sock_to
enabled_import_methods = [glance-direct]
node_staging_uri = file://$dir/staging

[database]
connection = sqlite:///$dir/glance.sqlite

[glance_store]
stores = file
default_store = file
filesystem_store_datadir = $dir/images

[paste_deploy]
flavor = $flavor
config_file = $dir/etc/glance-api-paste.ini

[oslo_concurrency]
lock_path = $dir/lock

[task]
work_dir = $dir/tasks
EOF
  if [ "$flavor" = keystone ]; then
    cat >> "$dir/etc/glance-api.conf" <<EOF

[keystone_authtoken]
www_authenticate_uri = $GLANCE_KEYSTONE_URL
auth_url = $GLANCE_KEYSTONE_URL
auth_type = password
username = $GLANCE_KEYSTONE_USER
password = $GLANCE_KEYSTONE_PASSWORD
project_name = ${GLANCE_KEYSTONE_PROJECT:-admin}
user_domain_name = Default
project_domain_name = Default
EOF
  fi
}

# ---------------------------------------------------------------- helpers
pid_of() {   # prints the PID recorded in DIR if that process is our glance-api
  local dir=$1 pid
  [ -f "$dir/glance-api.pid" ] || return 1
  pid=$(cat "$dir/glance-api.pid")
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' < "/proc/$pid/cmdline" | grep -qF -- "glance-api --config-file $dir/etc/glance-api.conf" || return 1
  echo "$pid"
}

port_busy() {   # 0 if something accepts TCP connections on bind:port
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

# ---------------------------------------------------------------- commands
cmd_start() {
  local dir=${1:-} port=${2:-19292}
  [ -n "$dir" ] || usage
  mkdir -p "$dir"; dir=$(cd "$dir" && pwd)
  local bind=${GLANCE_BIND:-127.0.0.1}
  local cap=${GLANCE_IMAGE_SIZE_CAP:-10737418240}
  local timeout=${GLANCE_START_TIMEOUT:-90}
  local sock_to=${GLANCE_SOCKET_TIMEOUT:-900}
  local flavor
  case "${GLANCE_AUTH:-noauth}" in
    noauth)  flavor="" ;;
    headers) flavor="headerauth" ;;
    keystone)
      flavor="keystone"
      [ -n "${GLANCE_KEYSTONE_URL:-}" ] && [ -n "${GLANCE_KEYSTONE_USER:-}" ] && [ -n "${GLANCE_KEYSTONE_PASSWORD:-}" ] \
        || die "GLANCE_AUTH=keystone needs GLANCE_KEYSTONE_URL, GLANCE_KEYSTONE_USER and GLANCE_KEYSTONE_PASSWORD" ;;
    *) die "GLANCE_AUTH must be noauth, headers or keystone" ;;
  esac

  if pid=$(pid_of "$dir"); then
    log "already running in $dir"; echo "$pid"; return 0
  fi
  port_busy "$bind" "$port" && die "port $bind:$port is already in use"

  ensure_installed
  write_config "$dir" "$port" "$bind" "$flavor" "$cap" "$sock_to"

  if [ ! -s "$dir/glance.sqlite" ]; then
    log "creating sqlite schema (glance-manage db_sync) ..."
    glance-manage --config-file "$dir/etc/glance-api.conf" db_sync \
      > "$dir/log/db_sync.log" 2>&1 \
      || { tail -n 20 "$dir/log/db_sync.log" >&2; die "db_sync failed"; }
  fi

  local t0; t0=$(date +%s%N)
  # stdin/stdout/stderr detached so a caller reading our stdout sees EOF.
  nohup /usr/bin/glance-api --config-file "$dir/etc/glance-api.conf" \
    >> "$dir/log/stdout.log" 2>&1 < /dev/null &
  local pid=$!
  echo "$pid" > "$dir/glance-api.pid"

  local url="http://$bind:$port"
  [[ "$bind" == *:* ]] && url="http://[$bind]:$port"
  local deadline=$((SECONDS + timeout))
  until [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url/healthcheck" 2>/dev/null)" = 200 ]; do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$dir/glance-api.pid"
      tail -n 30 "$dir/log/stdout.log" "$dir/log/glance-api.log" >&2 2>/dev/null || true
      die "glance-api exited during startup (see $dir/log/)"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      kill -TERM "$pid" 2>/dev/null || true
      rm -f "$dir/glance-api.pid"
      die "glance-api not healthy after ${timeout}s (see $dir/log/)"
    fi
    sleep 0.2
  done
  log "healthy after $(( ($(date +%s%N) - t0) / 1000000 )) ms: $url (auth=${GLANCE_AUTH:-noauth}, pid $pid)"
  echo "$pid"
}

cmd_stop() {
  local dir=${1:-}
  [ -n "$dir" ] || usage
  [ -d "$dir" ] || { log "no such dir $dir"; return 0; }
  dir=$(cd "$dir" && pwd)
  local pid
  if ! pid=$(pid_of "$dir"); then
    log "not running ($dir)"; rm -f "$dir/glance-api.pid"; return 0
  fi
  kill -TERM "$pid"
  local i
  for i in $(seq 1 100); do          # up to ~10 s
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "pid $pid ignored SIGTERM for 10s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$dir/glance-api.pid"
  log "stopped pid $pid"
}

cmd_status() {
  local dir=${1:-}
  [ -n "$dir" ] || usage
  [ -d "$dir" ] || return 1
  dir=$(cd "$dir" && pwd)
  local pid
  pid=$(pid_of "$dir") || { log "not running"; return 1; }
  local port
  port=$(sed -n 's/^bind_port = //p' "$dir/etc/glance-api.conf")
  echo "$pid $(sed -n 's/^bind_host = //p' "$dir/etc/glance-api.conf"):$port"
}

case "${1:-}" in
  start)  shift; cmd_start "$@" ;;
  stop)   shift; cmd_stop "$@" ;;
  status) shift; cmd_status "$@" ;;
  *) usage ;;
esac
