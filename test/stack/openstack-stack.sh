#!/usr/bin/env bash
# Real Ironic 29 + Glance 30 (Debian trixie, from test/stack/trixie-chroot.sh) on 127.0.0.1, for
# end-to-end tests. sqlite, one process per service; no Keystone (noauth) unless
# BMSNAP_STACK_KEYSTONE=1 adds one (trixie's Keystone) that Glance and Ironic's [glance] use.
#
#   openstack-stack.sh start  DIR     # config + DBs in DIR, start, wait until healthy; prints DIR/stack.env
#   openstack-stack.sh stop   DIR     # stop by recorded PID (TERM, then KILL after 15 s)
#   openstack-stack.sh status DIR     # "name pid url" per service; rc 1 unless all are up
#   openstack-stack.sh restart DIR SERVICE  # (re)start one service (ironic|glance|keystone) with
#                                     # its existing config, e.g. after a test killed it
#   openstack-stack.sh run    DIR CMD...   # run CMD inside the chroot with OS_* set for the stack,
#                                          # e.g. run DIR openstack baremetal node list
#
# How it runs: each process is `unshare --mount` + `chroot`: a private mount namespace in which
# the cached chroot is bind-mounted read-only onto itself, with /proc, /sys, /dev, a tmpfs on
# /tmp and DIR bound at /stack (read-write: config, DBs, images, logs). The host sees none of
# these mounts, and they vanish with the process, so there is nothing to unmount, even after a
# SIGKILL. The network namespace is the host's: services listen on the host's 127.0.0.1.
# The recorded PID is the service's own PID (unshare, bash and chroot all exec).
#
# Ironic runs as the all-in-one `ironic` command (API + conductor in one process,
# rpc_transport = none): no message bus, no JSON-RPC port.
#
# Env knobs (read at start; the values used are written to DIR/stack.env):
#   BMSNAP_TRIXIE_ROOT          chroot to use (default: output of trixie-chroot.sh, builds if needed)
#   BMSNAP_IRONIC_PORT=16385    BMSNAP_GLANCE_PORT=19492
#   BMSNAP_IRONIC_HARDWARE_TYPES=fake-hardware
#   BMSNAP_IRONIC_DEPLOY_INTERFACES=fake,direct      (add e.g. bmsnap)
#   BMSNAP_IRONIC_BOOT_INTERFACES=fake
#   BMSNAP_IRONIC_REQUIRE_TLS=true    ([agent]require_tls, Ironic 29 default; false allows http callback_url)
#   BMSNAP_IRONIC_FAST_TRACK=false    ([deploy]fast_track; per node: driver_info/fast_track)
#   BMSNAP_IRONIC_RESTRICT_LOOKUP=true  ([api]restrict_lookup; Ironic's default, keep it)
#   BMSNAP_IRONIC_PLUGIN=PATH     a python project (pyproject.toml with entry points), e.g.
#                                 ironic-step-py: bound read-only at /plugin, put on PYTHONPATH,
#                                 with a generated dist-info so stevedore finds its entry points
#   BMSNAP_IRONIC_CONF_EXTRA=FILE  an ini file appended to ironic.conf (later sections win)
#   BMSNAP_STACK_KEYSTONE=0|1    1: a Keystone on 127.0.0.1:BMSNAP_KEYSTONE_PORT (default 15000),
#                                 sqlite + fernet, prepared by test/lib/keystone-init.sh; service
#                                 users glance + ironic (admin on project "service") and the image
#                                 endpoint in its catalog (keystone-accounts.py); Glance validates
#                                 tokens (keystonemiddleware), Ironic's [glance] logs in as "ironic"
#                                 (password auth, endpoint from the catalog). The Ironic API stays
#                                 noauth unless BMSNAP_IRONIC_AUTH=keystone. Passwords:
#                                 DIR/keystone/{admin,glance,ironic}-password (0600).
#   BMSNAP_IRONIC_AUTH=noauth|keystone   keystone (needs BMSNAP_STACK_KEYSTONE=1): the Ironic API
#                                 validates tokens (auth_strategy keystone, its stock policy) and is
#                                 the catalog's baremetal endpoint; `run` then talks to it as the
#                                 Keystone admin (OS_CLOUD=admin, DIR/.config/openstack/clouds.yaml,
#                                 HOME being /stack; add clouds there for other users)
#   BMSNAP_GLANCE_AUTH=noauth|headerauth|keystone   default keystone with BMSNAP_STACK_KEYSTONE=1,
#                                 else noauth. headerauth: X-Identity-Status: Confirmed, X-Project-Id,
#                                 X-Roles (member creates images owned by its project)
#   BMSNAP_GLANCE_ENFORCE_NEW_DEFAULTS   default false for noauth (required), true otherwise
#   BMSNAP_STACK_TIMEOUT=120     seconds to wait for health
# DIR/etc/ironic.conf.d/*.conf are read after ironic.conf as well (--config-dir).
set -euo pipefail

SELF=$(readlink -f "${BASH_SOURCE[0]}")
HERE=$(dirname "$SELF")
SERVICES=(ironic glance keystone)   # keystone only with BMSNAP_STACK_KEYSTONE=1

log() { echo "openstack-stack: $*" >&2; }
die() { log "$*"; exit 1; }
usage() { sed -n '2,15p' "$SELF" >&2; exit 2; }

# ---------------------------------------------------------------------------------------------
# Internal: executed as `unshare --mount ... bash SELF __ns ROOT DIR PLUGIN CMD...`. Sets up the
# private mounts, then execs CMD in the chroot with a clean environment.
if [ "${1:-}" = __ns ]; then
  shift
  root=$1 dir=$2 plugin=$3; shift 3
  mount --make-rprivate /
  mount --bind "$root" "$root"
  mount -o remount,bind,ro "$root"
  mount -t proc proc "$root/proc"
  mount -t sysfs -o ro sysfs "$root/sys"
  mount --rbind /dev "$root/dev"
  mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
  mount -t tmpfs -o mode=755 tmpfs "$root/run"
  mount --bind "$dir" "$root/stack"
  pypath=/stack/pylib
  if [ -n "$plugin" ]; then
    mount --bind "$plugin" "$root/plugin"
    mount -o remount,bind,ro "$root/plugin"
    pypath=/plugin:$pypath
  fi
  exec chroot "$root" /usr/bin/env -i \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/stack LANG=C.UTF-8 PYTHONPATH="$pypath" PYTHONDONTWRITEBYTECODE=1 \
    BMSNAP_STACK_DIR="$dir" \
    $(if [ "${IRONIC_AUTH:-noauth}" = keystone ]; then echo OS_CLOUD=admin; \
      else echo OS_AUTH_TYPE=none OS_ENDPOINT="http://127.0.0.1:${IRONIC_PORT:-16385}"; fi) \
    OS_BAREMETAL_API_VERSION=latest \
    IRONIC_URL="http://127.0.0.1:${IRONIC_PORT:-16385}" GLANCE_URL="http://127.0.0.1:${GLANCE_PORT:-19492}" \
    "$@"
fi
# ---------------------------------------------------------------------------------------------

[ "$(id -u)" -eq 0 ] || die "needs root (unshare --mount, chroot)"

abs_dir() { mkdir -p "$1" && (cd "$1" && pwd -P); }

# Loads DIR/stack.env if it exists (values of the running stack).
load_env() {
  local dir=$1
  if [ -f "$dir/stack.env" ]; then
    # shellcheck disable=SC1091
    . "$dir/stack.env"
    ROOT=$BMSNAP_TRIXIE_ROOT PLUGIN=${BMSNAP_IRONIC_PLUGIN:-}
    KEYSTONE=${KEYSTONE:-0}
    IRONIC_AUTH=${IRONIC_AUTH:-noauth}
  fi
}

# Runs CMD inside the namespace + chroot, in the foreground.
ns_run() {
  local dir=$1; shift
  IRONIC_PORT=$IRONIC_PORT GLANCE_PORT=$GLANCE_PORT IRONIC_AUTH=${IRONIC_AUTH:-noauth} \
    unshare --mount --propagation private -- bash "$SELF" __ns "$ROOT" "$dir" "${PLUGIN:-}" "$@"
}

pid_of() {  # prints the live PID of service $2 in stack $1, rc 1 if not running
  local dir=$1 name=$2 pid
  [ -f "$dir/run/$name.pid" ] || return 1
  pid=$(cat "$dir/run/$name.pid")
  [ -n "$pid" ] && [ -r "/proc/$pid/environ" ] || return 1
  # the PID must still be our process (not a recycled one): it carries BMSNAP_STACK_DIR=DIR
  tr '\0' '\n' 2>/dev/null <"/proc/$pid/environ" | grep -qxF "BMSNAP_STACK_DIR=$dir" || return 1
  echo "$pid"
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

http_code() { curl -s -o /dev/null -w '%{http_code}' --max-time 3 "$@" 2>/dev/null || true; }

# ---------------------------------------------------------------------------------------------
# Ironic's [glance]: the stack's Glance, without auth, or through Keystone as an operator would
# configure it (service user, endpoint from the catalog; see docs/runbook.md).
ironic_glance_section() {
  local dir=$1
  if [ "$KEYSTONE" = 1 ]; then
    cat <<EOF
[glance]
auth_type = password
auth_url = http://127.0.0.1:$KEYSTONE_PORT/v3
username = ironic
password = $(cat "$dir/keystone/ironic-password")
project_name = service
user_domain_name = Default
project_domain_name = Default
region_name = RegionOne
EOF
  else
    printf '[glance]\nauth_type = none\nendpoint_override = http://127.0.0.1:%s\n' "$GLANCE_PORT"
  fi
}

# [keystone_authtoken] of a service validating tokens for SERVICE_TYPE as service user USER
# (password in DIR/keystone/USER-password).
authtoken_section() {
  local dir=$1 user=$2 service_type=$3
  cat <<EOF
[keystone_authtoken]
www_authenticate_uri = http://127.0.0.1:$KEYSTONE_PORT
auth_url = http://127.0.0.1:$KEYSTONE_PORT
auth_type = password
username = $user
password = $(cat "$dir/keystone/$user-password")
project_name = service
user_domain_name = Default
project_domain_name = Default
service_type = $service_type
EOF
}

# With BMSNAP_IRONIC_AUTH=keystone: the API validates tokens as the service user "ironic".
ironic_authtoken_section() {
  [ "$IRONIC_AUTH" = keystone ] || return 0
  authtoken_section "$1" ironic baremetal
}

# With BMSNAP_IRONIC_AUTH=keystone: clouds.yaml (JSON, which is YAML too) with the cloud "admin"
# that `run` uses; tests add their users' clouds to it. The admin is system-scoped, as Ironic's
# policy wants of an operator: baremetal:node:set_provision_state:service_steps has no rule for a
# project admin of another project (the bootstrap admin holds the admin role on the system).
write_clouds_yaml() {
  local dir=$1
  [ "$IRONIC_AUTH" = keystone ] || return 0
  mkdir -p "$dir/.config/openstack"
  (umask 077; cat >"$dir/.config/openstack/clouds.yaml" <<EOF
{"clouds": {"admin": {"auth_type": "password", "region_name": "RegionOne", "auth": {
  "auth_url": "$KEYSTONE_URL/v3", "username": "admin", "password": "$(cat "$dir/keystone/admin-password")",
  "user_domain_name": "Default", "system_scope": "all"}}}}
EOF
  )
}

# curl of Ironic's API; with BMSNAP_IRONIC_AUTH=keystone, with an admin token (the password goes
# to Keystone on stdin, not on a command line)
ironic_curl() {
  local dir=$1; shift
  if [ "$IRONIC_AUTH" = keystone ]; then
    local token
    token=$(printf '{"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": "admin", "domain": {"id": "default"}, "password": "%s"}}}, "scope": {"project": {"name": "admin", "domain": {"id": "default"}}}}}' \
      "$(cat "$dir/keystone/admin-password")" | curl -s --max-time 10 -D - -o /dev/null -H 'content-type: application/json' -d @- "$KEYSTONE_URL/v3/auth/tokens" \
      | tr -d '\r' | sed -n 's/^[Xx]-[Ss]ubject-[Tt]oken: //p')
    curl -s --max-time 5 -H "X-Auth-Token: $token" "$@" || true
  else
    curl -s --max-time 5 "$@" || true
  fi
}

write_ironic_conf() {
  local dir=$1
  mkdir -p "$dir"/{etc/ironic.conf.d,ironic/certificates,ironic/httpboot,ironic/tftpboot,ironic/images,ironic/master_images,tmp,lock}
  cat >"$dir/etc/ironic.conf" <<EOF
# generated by test/stack/openstack-stack.sh; paths are as seen inside the chroot (/stack = $dir)
[DEFAULT]
host = bmsnap-stack
debug = true
log_dir = /stack/log
log_file = ironic.log
use_stderr = false
state_path = /stack/ironic
tempdir = /stack/tmp
auth_strategy = $IRONIC_AUTH
rpc_transport = none
graceful_shutdown_timeout = 5
enabled_hardware_types = $HW_TYPES
enabled_deploy_interfaces = $DEPLOY_IFACES
enabled_boot_interfaces = $BOOT_IFACES
enabled_power_interfaces = fake
enabled_management_interfaces = fake,noop
enabled_network_interfaces = noop
default_network_interface = noop
enabled_inspect_interfaces = fake,no-inspect
default_inspect_interface = no-inspect
enabled_console_interfaces = fake,no-console
enabled_vendor_interfaces = fake,no-vendor
enabled_raid_interfaces = fake,no-raid,agent
enabled_rescue_interfaces = fake,no-rescue
enabled_bios_interfaces = fake,no-bios
enabled_firmware_interfaces = fake,no-firmware
enabled_storage_interfaces = noop
minimum_memory_warning_only = true

[api]
host_ip = 127.0.0.1
port = $IRONIC_PORT
api_workers = 1
# Ironic's default, and the point of the tests: in 29.x lookup in "service wait" is refused
# unless the node is fast-track. See test/stack/README.md.
restrict_lookup = $RESTRICT_LOOKUP
# what lookup hands the agent as config.heartbeat_timeout (default 300)
ramdisk_heartbeat_timeout = 30
# The API is noauth (a project-less admin): with the default (True) Ironic takes that for a
# project-scoped admin and refuses \`node create --owner P\` ("... with an owner other than your
# own project"); off, node create --owner/--lessee work as for a system-scoped admin.
project_admin_can_manage_own_nodes = false

[conductor]
# short intervals for tests
sync_power_state_interval = 10
check_provision_state_interval = 5
heartbeat_interval = 5
service_callback_timeout = 300
deploy_callback_timeout = 300
clean_callback_timeout = 300
automated_clean = false
force_power_state_during_sync = false
# placeholders so "direct" validates; the fake boot interface never fetches them
deploy_kernel = file:///stack/ironic/deploy.kernel
deploy_ramdisk = file:///stack/ironic/deploy.initramfs

[agent]
require_tls = $REQUIRE_TLS
certificates_path = /stack/ironic/certificates
command_timeout = 60
max_command_attempts = 3
deploy_logs_collect = never

[deploy]
fast_track = $FAST_TRACK
# how long after the last heartbeat a fast-track agent is considered alive (default 300)
fast_track_timeout = 60
http_root = /stack/ironic/httpboot
http_url = http://127.0.0.1:$IRONIC_PORT/httpboot-unused
default_boot_option = local
erase_devices_priority = 0
erase_devices_metadata_priority = 0

[database]
connection = sqlite:////stack/ironic/ironic.sqlite

[dhcp]
dhcp_provider = none

[pxe]
tftp_root = /stack/ironic/tftpboot
tftp_master_path = /stack/ironic/tftpboot/master_images
images_path = /stack/ironic/images
instance_master_path = /stack/ironic/master_images

[service_catalog]
auth_type = none
endpoint_override = http://127.0.0.1:$IRONIC_PORT

$(ironic_glance_section "$dir")
$(ironic_authtoken_section "$dir")

[oslo_concurrency]
lock_path = /stack/lock

[oslo_policy]
# the new RBAC defaults would need a project scope; noauth is admin everywhere
enforce_scope = false
enforce_new_defaults = false
EOF
  : >"$dir/ironic/deploy.kernel"; : >"$dir/ironic/deploy.initramfs"
  if [ -n "${BMSNAP_IRONIC_CONF_EXTRA:-}" ]; then
    { echo; echo "# ---- appended from $BMSNAP_IRONIC_CONF_EXTRA"; cat "$BMSNAP_IRONIC_CONF_EXTRA"; } >>"$dir/etc/ironic.conf"
  fi
}

write_glance_conf() {
  local dir=$1 flavor= new_defaults=false
  # Glance 30 enforces the new RBAC defaults: the noauth context (no roles, no project) gets 403
  # on add_image unless the legacy rules are used. headerauth works with the new defaults.
  [ "$GLANCE_AUTH" = headerauth ] && flavor=headerauth new_defaults=true
  [ "$GLANCE_AUTH" = keystone ] && flavor=keystone new_defaults=true
  new_defaults=${BMSNAP_GLANCE_ENFORCE_NEW_DEFAULTS:-$new_defaults}
  mkdir -p "$dir"/glance/{images,staging,tasks,cache}
  cat >"$dir/etc/glance-api.conf" <<EOF
# generated by test/stack/openstack-stack.sh; paths are as seen inside the chroot (/stack = $dir)
[DEFAULT]
bind_host = 127.0.0.1
bind_port = $GLANCE_PORT
workers = 0
debug = false
log_file = /stack/log/glance-api.log
use_stderr = false
image_size_cap = 10737418240
client_socket_timeout = 900
enabled_import_methods = [glance-direct]
node_staging_uri = file:///stack/glance/staging
image_cache_dir = /stack/glance/cache

[database]
connection = sqlite:////stack/glance/glance.sqlite

[glance_store]
stores = file
default_store = file
filesystem_store_datadir = /stack/glance/images

[paste_deploy]
flavor = $flavor
config_file = /stack/etc/glance-api-paste.ini

[oslo_concurrency]
lock_path = /stack/lock

[task]
work_dir = /stack/glance/tasks

[oslo_policy]
enforce_new_defaults = $new_defaults
enforce_scope = $new_defaults
EOF
  if [ "$GLANCE_AUTH" = keystone ]; then
    # service type "image": tokens of application credentials with access rules (the plugin's
    # per-snapshot upload credential) are checked against it
    { echo; authtoken_section "$dir" glance image; } >>"$dir/etc/glance-api.conf"
  fi
  # flavor "" (noauth): every request is admin; "headerauth": identity from X-* headers
  # (X-Identity-Status: Confirmed, X-Project-Id, X-Roles), i.e. keystone's pipeline minus authtoken;
  # "keystone": tokens validated by the stack's Keystone (keystonemiddleware authtoken).
  cat >"$dir/etc/glance-api-paste.ini" <<'EOF'
[composite:glance-api]
paste.composite_factory = glance.api:root_app_factory
/: api
/healthcheck: healthcheck

[composite:glance-api-headerauth]
paste.composite_factory = glance.api:root_app_factory
/: api
/healthcheck: healthcheck

[composite:glance-api-keystone]
paste.composite_factory = glance.api:root_app_factory
/: api
/healthcheck: healthcheck

[composite:api]
paste.composite_factory = glance.api:pipeline_factory
default = versionnegotiation unauthenticated-context rootapp
headerauth = versionnegotiation context rootapp
keystone = versionnegotiation authtoken context rootapp

[composite:rootapp]
paste.composite_factory = glance.api:root_app_factory
/: apiversions
/v2: apiv2app

[app:apiversions]
paste.app_factory = glance.api.versions:create_resource

[app:apiv2app]
paste.app_factory = glance.api.v2.router:API.factory

[app:healthcheck]
paste.app_factory = oslo_middleware:Healthcheck.app_factory
backends = disable_by_file
disable_by_file_path = /stack/glance/healthcheck_disable

[filter:versionnegotiation]
paste.filter_factory = glance.api.middleware.version_negotiation:VersionNegotiationFilter.factory

[filter:context]
paste.filter_factory = glance.api.middleware.context:ContextMiddleware.factory

[filter:unauthenticated-context]
paste.filter_factory = glance.api.middleware.context:UnauthenticatedContextMiddleware.factory

[filter:authtoken]
paste.filter_factory = keystonemiddleware.auth_token:filter_factory
EOF
}

# Keystone (BMSNAP_STACK_KEYSTONE=1): passwords, made once per DIR and kept with the DB, and the
# scripts the chroot runs in DIR/bin: test/lib/keystone-init.sh (shared with test/lib/keystone.ts)
# and keystone-accounts.py.
keystone_prepare() {
  local dir=$1 n
  mkdir -p "$dir/bin" "$dir/keystone"
  chmod 700 "$dir/keystone"
  for n in admin glance ironic; do
    [ -s "$dir/keystone/$n-password" ] && continue
    (umask 077; head -c 24 /dev/urandom | base64 | tr -d '/+=\n' >"$dir/keystone/$n-password")
  done
  cp "$HERE/../lib/keystone-init.sh" "$HERE/keystone-accounts.py" "$dir/bin/"
}

# dist-info for the plugin so that importlib.metadata / stevedore see its entry points
write_plugin_metadata() {
  local dir=$1
  rm -rf "$dir/pylib"; mkdir -p "$dir/pylib"
  [ -n "$PLUGIN" ] || return 0
  [ -f "$PLUGIN/pyproject.toml" ] || die "BMSNAP_IRONIC_PLUGIN=$PLUGIN has no pyproject.toml"
  ns_run "$dir" /usr/bin/python3 - <<'EOF'
import tomllib, pathlib
p = tomllib.loads(pathlib.Path('/plugin/pyproject.toml').read_text())['project']
name, ver = p['name'], p.get('version', '0')
d = pathlib.Path('/stack/pylib') / f"{name.replace('-', '_')}-{ver}.dist-info"
d.mkdir(parents=True)
(d / 'METADATA').write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {ver}\n")
eps = ''.join(f"[{g}]\n" + ''.join(f"{k} = {v}\n" for k, v in e.items()) + "\n"
              for g, e in p.get('entry-points', {}).items())
(d / 'entry_points.txt').write_text(eps)
print(f"plugin {name} {ver}: {sum(len(e) for e in p.get('entry-points', {}).values())} entry points")
EOF
}

# ---------------------------------------------------------------------------------------------
# Starts a service in the background; records its PID.
launch() {
  local dir=$1 name=$2; shift 2
  IRONIC_PORT=$IRONIC_PORT GLANCE_PORT=$GLANCE_PORT IRONIC_AUTH=${IRONIC_AUTH:-noauth} \
    unshare --mount --propagation private -- bash "$SELF" __ns "$ROOT" "$dir" "${PLUGIN:-}" "$@" \
    >>"$dir/log/$name.stdout.log" 2>&1 </dev/null &
  echo $! >"$dir/run/$name.pid"
}

launch_service() {
  local dir=$1 name=$2
  case $name in
    ironic)   launch "$dir" ironic ironic --config-file /stack/etc/ironic.conf --config-dir /stack/etc/ironic.conf.d ;;
    glance)   launch "$dir" glance glance-api --config-file /stack/etc/glance-api.conf ;;
    keystone) launch "$dir" keystone env OS_KEYSTONE_CONFIG_FILES=/stack/keystone/keystone.conf \
                keystone-wsgi-public --host 127.0.0.1 --port "$KEYSTONE_PORT" ;;
  esac
}

health_url() {
  case $1 in
    ironic)   echo "http://127.0.0.1:$IRONIC_PORT/" ;;
    glance)   echo "http://127.0.0.1:$GLANCE_PORT/healthcheck" ;;
    keystone) echo "http://127.0.0.1:$KEYSTONE_PORT/v3" ;;
  esac
}

wait_healthy() {
  local dir=$1 name=$2 url=$3 deadline=$((SECONDS + TIMEOUT)) pid
  pid=$(cat "$dir/run/$name.pid")
  until [ "$(http_code "$url")" = 200 ]; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 30 "$dir/log/$name.stdout.log" >&2 || true
      [ "$name" = ironic ] && { grep -E "ERROR|CRITICAL" "$dir/log/ironic.log" | tail -n 20 >&2 || true; }
      rm -f "$dir/run/$name.pid"
      return 1
    fi
    if [ $SECONDS -ge $deadline ]; then log "$name not healthy after ${TIMEOUT}s"; return 1; fi
    sleep 0.3
  done
}

stop_one() {
  local dir=$1 name=$2 pid i
  if ! pid=$(pid_of "$dir" "$name"); then rm -f "$dir/run/$name.pid"; return 0; fi
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name (pid $pid) ignored SIGTERM for 15 s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$dir/run/$name.pid"
  log "stopped $name (pid $pid)"
}

cmd_stop() {
  local dir=$1
  [ -d "$dir" ] || return 0
  dir=$(abs_dir "$dir")
  local s
  for s in "${SERVICES[@]}"; do stop_one "$dir" "$s"; done
}

stack_services() { if [ "${KEYSTONE:-0}" = 1 ]; then echo keystone ironic glance; else echo ironic glance; fi; }

cmd_status() {
  local dir rc=0 pid s
  dir=$(abs_dir "$1")
  load_env "$dir"
  [ -f "$dir/stack.env" ] || { log "no stack in $dir"; return 1; }
  for s in $(stack_services); do
    local url=$IRONIC_URL
    [ "$s" = glance ] && url=$GLANCE_URL
    [ "$s" = keystone ] && url=$KEYSTONE_URL
    if pid=$(pid_of "$dir" "$s"); then echo "$s $pid $url"; else echo "$s - $url"; rc=1; fi
  done
  return $rc
}

cmd_start() {
  local dir t0 s
  dir=$(abs_dir "$1")
  mkdir -p "$dir"/{log,run,etc}
  for s in "${SERVICES[@]}"; do
    if pid_of "$dir" "$s" >/dev/null; then die "$s already running in $dir (stop it first)"; fi
  done
  t0=$(date +%s%N)

  if ! command -v curl >/dev/null; then
    log "installing curl on the host (health checks)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends curl </dev/null >&2 \
      || { apt-get -q update </dev/null >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends curl </dev/null >&2; }
  fi
  ROOT=${BMSNAP_TRIXIE_ROOT:-$("$HERE/trixie-chroot.sh")}
  [ -f "$ROOT/.bmsnap-complete" ] || die "$ROOT is not a complete chroot"
  for m in stack plugin; do [ -d "$ROOT/$m" ] || mkdir "$ROOT/$m"; done
  PLUGIN=${BMSNAP_IRONIC_PLUGIN:+$(readlink -f "$BMSNAP_IRONIC_PLUGIN")}
  IRONIC_PORT=${BMSNAP_IRONIC_PORT:-16385}
  GLANCE_PORT=${BMSNAP_GLANCE_PORT:-19492}
  HW_TYPES=${BMSNAP_IRONIC_HARDWARE_TYPES:-fake-hardware}
  DEPLOY_IFACES=${BMSNAP_IRONIC_DEPLOY_INTERFACES:-fake,direct}
  BOOT_IFACES=${BMSNAP_IRONIC_BOOT_INTERFACES:-fake}
  REQUIRE_TLS=${BMSNAP_IRONIC_REQUIRE_TLS:-true}
  FAST_TRACK=${BMSNAP_IRONIC_FAST_TRACK:-false}
  RESTRICT_LOOKUP=${BMSNAP_IRONIC_RESTRICT_LOOKUP:-true}
  KEYSTONE=${BMSNAP_STACK_KEYSTONE:-0}
  KEYSTONE_PORT=${BMSNAP_KEYSTONE_PORT:-15000}
  KEYSTONE_URL=
  [ "$KEYSTONE" = 1 ] && KEYSTONE_URL=http://127.0.0.1:$KEYSTONE_PORT
  IRONIC_AUTH=${BMSNAP_IRONIC_AUTH:-noauth}
  [ "$IRONIC_AUTH" != keystone ] || [ "$KEYSTONE" = 1 ] || die "BMSNAP_IRONIC_AUTH=keystone needs BMSNAP_STACK_KEYSTONE=1"
  GLANCE_AUTH=${BMSNAP_GLANCE_AUTH:-$([ "$KEYSTONE" = 1 ] && echo keystone || echo noauth)}
  [ "$GLANCE_AUTH" != keystone ] || [ "$KEYSTONE" = 1 ] || die "BMSNAP_GLANCE_AUTH=keystone needs BMSNAP_STACK_KEYSTONE=1"
  TIMEOUT=${BMSNAP_STACK_TIMEOUT:-120}
  for p in "$IRONIC_PORT" "$GLANCE_PORT" ${KEYSTONE_URL:+"$KEYSTONE_PORT"}; do
    port_busy "$p" && die "port 127.0.0.1:$p is already in use"
  done

  cat >"$dir/stack.env" <<EOF
BMSNAP_TRIXIE_ROOT=$ROOT
BMSNAP_IRONIC_PLUGIN=$PLUGIN
IRONIC_PORT=$IRONIC_PORT
GLANCE_PORT=$GLANCE_PORT
IRONIC_URL=http://127.0.0.1:$IRONIC_PORT
GLANCE_URL=http://127.0.0.1:$GLANCE_PORT
IRONIC_REQUIRE_TLS=$REQUIRE_TLS
IRONIC_FAST_TRACK=$FAST_TRACK
IRONIC_RESTRICT_LOOKUP=$RESTRICT_LOOKUP
GLANCE_AUTH=$GLANCE_AUTH
IRONIC_AUTH=$IRONIC_AUTH
KEYSTONE=$KEYSTONE
KEYSTONE_PORT=$KEYSTONE_PORT
KEYSTONE_URL=$KEYSTONE_URL
EOF
  local kinit=
  if [ "$KEYSTONE" = 1 ]; then
    keystone_prepare "$dir"
    write_clouds_yaml "$dir"
    # in the background, during the other dbsyncs (creates the DB once, then only bootstrap)
    ns_run "$dir" sh /stack/bin/keystone-init.sh /stack/keystone "$KEYSTONE_URL" RegionOne /stack/log/keystone.log \
      >"$dir/log/keystone-init.log" 2>&1 &
    kinit=$!
  fi
  write_ironic_conf "$dir"
  write_glance_conf "$dir"
  write_plugin_metadata "$dir"

  # DBs: created once per DIR (a restart keeps nodes and images)
  if [ ! -s "$dir/ironic/ironic.sqlite" ]; then
    ns_run "$dir" ironic-dbsync --config-file /stack/etc/ironic.conf create_schema \
      >"$dir/log/ironic-dbsync.log" 2>&1 || { tail -n 20 "$dir/log/ironic-dbsync.log" >&2; die "ironic-dbsync failed"; }
  else
    ns_run "$dir" ironic-dbsync --config-file /stack/etc/ironic.conf upgrade \
      >"$dir/log/ironic-dbsync.log" 2>&1 || { tail -n 20 "$dir/log/ironic-dbsync.log" >&2; die "ironic-dbsync upgrade failed"; }
  fi
  if [ ! -s "$dir/glance/glance.sqlite" ]; then
    ns_run "$dir" glance-manage --config-file /stack/etc/glance-api.conf db_sync \
      >"$dir/log/glance-db_sync.log" 2>&1 || { tail -n 20 "$dir/log/glance-db_sync.log" >&2; die "glance db_sync failed"; }
  fi

  if [ -n "$kinit" ] && ! wait "$kinit"; then
    tail -n 30 "$dir/log/keystone-init.log" >&2
    die "keystone-init.sh failed (see $dir/log/keystone-init.log)"
  fi

  # whatever goes wrong from here on (even an unexpected error or a signal), stop what we started
  trap "cmd_stop '$dir'" EXIT
  trap 'exit 1' INT TERM HUP
  for s in $(stack_services); do launch_service "$dir" "$s"; done
  local ok=1
  if [ "$KEYSTONE" = 1 ]; then
    # Glance and Ironic only talk to Keystone on requests, so they start meanwhile
    wait_healthy "$dir" keystone "$(health_url keystone)" || { log "keystone failed to start (see $dir/log)"; exit 1; }
    ns_run "$dir" python3 /stack/bin/keystone-accounts.py "$KEYSTONE_URL" "http://127.0.0.1:$GLANCE_PORT" RegionOne /stack/keystone \
      "$([ "$IRONIC_AUTH" = keystone ] && echo "http://127.0.0.1:$IRONIC_PORT")" \
      >>"$dir/log/keystone-init.log" 2>&1 || { tail -n 30 "$dir/log/keystone-init.log" >&2; log "keystone-accounts.py failed"; exit 1; }
  fi
  wait_healthy "$dir" ironic "http://127.0.0.1:$IRONIC_PORT/" || { log "ironic failed to start (see $dir/log)"; ok=0; }
  wait_healthy "$dir" glance "http://127.0.0.1:$GLANCE_PORT/healthcheck" || { log "glance failed to start (see $dir/log)"; ok=0; }
  if [ $ok = 1 ]; then
    # the all-in-one process starts the conductor before the API, but check the drivers anyway
    local drivers
    drivers=$(ironic_curl "$dir" -H 'X-OpenStack-Ironic-API-Version: 1.30' "http://127.0.0.1:$IRONIC_PORT/v1/drivers")
    [[ $drivers == *"\"${HW_TYPES%%,*}\""* ]] || { log "ironic has no ${HW_TYPES%%,*} driver: $drivers"; ok=0; }
  fi
  [ $ok = 1 ] || exit 1
  trap - EXIT INT TERM HUP
  log "healthy after $(( ($(date +%s%N) - t0) / 1000000 )) ms: ironic pid $(cat "$dir/run/ironic.pid") http://127.0.0.1:$IRONIC_PORT, glance pid $(cat "$dir/run/glance.pid") http://127.0.0.1:$GLANCE_PORT${KEYSTONE_URL:+, keystone pid $(cat "$dir/run/keystone.pid") $KEYSTONE_URL}"
  cat "$dir/stack.env"
}

cmd_restart() {
  local dir name=$2 pid
  dir=$(abs_dir "$1")
  [ -f "$dir/stack.env" ] || die "no stack in $dir (start it first)"
  load_env "$dir"
  [[ " $(stack_services) " == *" $name "* ]] || die "restart: no service '$name' in this stack ($(stack_services))"
  TIMEOUT=${BMSNAP_STACK_TIMEOUT:-120}
  stop_one "$dir" "$name"
  local port=${IRONIC_PORT}
  [ "$name" = glance ] && port=$GLANCE_PORT
  [ "$name" = keystone ] && port=$KEYSTONE_PORT
  port_busy "$port" && die "port 127.0.0.1:$port is already in use"
  launch_service "$dir" "$name"
  wait_healthy "$dir" "$name" "$(health_url "$name")" || { stop_one "$dir" "$name"; die "$name failed to restart (see $dir/log)"; }
  pid=$(cat "$dir/run/$name.pid")
  log "restarted $name (pid $pid)"
}

cmd_run() {
  local dir
  dir=$(abs_dir "$1"); shift
  [ -f "$dir/stack.env" ] || die "no stack in $dir (start it first)"
  load_env "$dir"
  [ $# -gt 0 ] || die "run: no command"
  ns_run "$dir" "$@"
}

case "${1:-}" in
  start)  [ $# -eq 2 ] || usage; cmd_start "$2" ;;
  stop)   [ $# -eq 2 ] || usage; cmd_stop "$2" ;;
  status) [ $# -eq 2 ] || usage; cmd_status "$2" ;;
  restart) [ $# -eq 3 ] || usage; cmd_restart "$2" "$3" ;;
  run)    [ $# -ge 3 ] || usage; d=$2; shift 2; cmd_run "$d" "$@" ;;
  *) usage ;;
esac
