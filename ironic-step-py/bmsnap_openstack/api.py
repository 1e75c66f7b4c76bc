"""snapshot(): ``openstack server image create`` for bare metal, as a Python call on an
openstacksdk connection. Finds the Ironic node of a Nova server (or the node itself), starts the
bmsnap ``snapshot`` service step on it with the connection's credentials and, with ``wait``,
follows it to the Glance image. The same logic as agent/src/trigger/server-image-create.ts; the
``openstack baremetal node snapshot`` command is a thin front over it."""

import collections
import logging

from openstack import exceptions as sdk_exc
from openstack.image.v2.image import Image

from bmsnap_ironic.step_args import StepArgsError, check
from bmsnap_openstack.errors import SnapshotFailedError, UsageError
from bmsnap_openstack.follow import follow_snapshot, label
from bmsnap_openstack.http import sdk_errors
from bmsnap_openstack.ironic_nodes import IronicNodes
from bmsnap_openstack.targets import resolve_target

#: What start_snapshot() returns: the node (uuid, name), the Nova server if NODE_OR_SERVER was
#: one (id, name; else None), the image name, and the node's previous snapshot image id.
Started = collections.namedtuple("Started", "node_uuid node_name server_id server_name image_name previous_image_id")

MAX_TIMEOUT = 7 * 86400
LOG = logging.getLogger("bmsnap_openstack")
#: The image property naming a delta's parent (bmsnap_ironic.incremental.PARENT, which imports Ironic).
PARENT = "bmsnap_parent_image"


def snapshot(conn, node_or_server, name, wait=True, timeout=None, on_progress=None, poll_seconds=2.0,
             **step_options):
    """Snapshots a bare-metal server or node into a new Glance image.

    conn: an ``openstack.connection.Connection`` (``openstack.connect(cloud=...)``).
    node_or_server: Nova server id or name, Ironic node UUID or name, or a Nova instance UUID.
    name: the new image's name.
    wait: follow the snapshot to its end (else return once Ironic has accepted it).
    timeout: with wait, seconds to give up waiting after (the snapshot goes on); None: no limit.
    on_progress: with wait, called with a ``Progress`` whenever the state or progress changes.
    step_options: visibility, disk_format, compression, properties (dict), root_device_hints
    (dict), scrub (True or "op,op"), scrub_paths (list), parent (a Glance image id: a delta on
    that earlier snapshot), or_full (with parent: a full image if the parent has no usable
    index), with_index (False: store no cluster index beside a qcow2; default True).

    Returns the active Glance image (``openstack.image.v2.image.Image``) with wait, else None.
    A delta names its parent in ``image.properties["bmsnap_parent_image"]``; the node's warnings
    (e.g. or_full took a full image) are logged on the "bmsnap_openstack" logger.
    Raises a ``BmsnapError``: UsageError, AuthError, NotFoundError, ApiError, SnapshotFailedError
    (node not active / not bmsnap, or the step failed: ``.last_error``), WaitTimeoutError.
    """
    started = start_snapshot(conn, node_or_server, name, **step_options)
    if not wait:
        return None
    return wait_for_snapshot(conn, started, timeout=timeout, on_progress=on_progress, poll_seconds=poll_seconds)


def start_snapshot(conn, node_or_server, name, **step_options):
    """Checks the arguments and the node, starts the step; returns a ``Started``."""
    step = snapshot_step(node_or_server, name, **step_options)
    ironic = IronicNodes(conn)
    node, server = resolve_target(conn, node_or_server.strip(), ironic)
    check_node(node)
    previous = ((node.get("driver_internal_info") or {}).get("bmsnap_snapshot") or {}).get("image_id")
    ironic.service(node["uuid"], [step])
    return Started(node["uuid"], node.get("name"), server.id if server else None,
                   server.name if server else None, name, previous)


def wait_for_snapshot(conn, started, timeout=None, on_progress=None, poll_seconds=2.0):
    """Follows the snapshot START_SNAPSHOT began; returns its active Glance image."""
    image, info = wait_for_record(conn, started, timeout=timeout, on_progress=on_progress,
                                  poll_seconds=poll_seconds)
    for warning in info.get("warnings") or ():
        LOG.warning("snapshot %s of node %s: %s", image.id, started.node_name or started.node_uuid, warning)
    return image


def wait_for_record(conn, started, timeout=None, on_progress=None, poll_seconds=2.0):
    """wait_for_snapshot(), returning the image and the node's bmsnap_snapshot record (with
    parent_image_id, delta and warnings for a delta; see bmsnap_ironic/deploy.py)."""
    check_timeout(timeout)
    info = follow_snapshot(IronicNodes(conn), started.node_uuid, previous_image_id=started.previous_image_id,
                           poll_seconds=poll_seconds, timeout=timeout, on_progress=on_progress)
    return _image(conn, info), info


def snapshot_step(node_or_server, name, visibility=None, disk_format=None, compression=None,
                  properties=None, root_device_hints=None, scrub=None, scrub_paths=None,
                  parent=None, or_full=False, with_index=True):
    """The service step, checked here with the conductor's own checks (step_args.check), so that
    bad arguments fail in one line before anything is contacted or started."""
    if not isinstance(node_or_server, str) or not node_or_server.strip():
        raise UsageError("missing NODE_OR_SERVER (a Nova server or Ironic node, by id or name)")
    if not isinstance(name, str) or not name.strip():
        raise UsageError("missing the image name")
    given = {"image_name": name, "visibility": visibility, "disk_format": disk_format, "compression": compression,
             "properties": properties, "root_device_hints": root_device_hints, "scrub": scrub,
             "scrub_paths": scrub_paths, "parent": parent}
    args = {k: v for k, v in given.items() if v is not None and v != {} and v != [] and v is not False}
    # the defaults are left to the step (with_index: true for qcow2 only); anything else is sent,
    # so that check() refuses a bad value or combination (or_full without parent, ...)
    if or_full is not False:
        args["or_full"] = or_full
    if with_index is not True:
        args["with_index"] = with_index
    try:
        check(args)
    except StepArgsError as e:
        raise UsageError(str(e)) from None
    return {"interface": "deploy", "step": "snapshot", "args": args}


def check_timeout(timeout):
    if timeout is not None and (not isinstance(timeout, (int, float)) or not 0 <= timeout <= MAX_TIMEOUT):
        raise UsageError("timeout must be a number of seconds from 0 to %d" % MAX_TIMEOUT)


def check_node(node):
    """Only a deployed node can be serviced, and only the bmsnap deploy interface records the image."""
    state, target = node["provision_state"], node.get("target_provision_state")
    if state != "active" or target:
        what = 'busy ("active" -> "%s")' % target if state == "active" else '"%s"' % state
        raise SnapshotFailedError("node %s is %s; only an active node can be snapshotted" % (label(node), what),
                                  node["uuid"], node.get("last_error"))
    if node.get("deploy_interface") != "bmsnap":
        # The agent alone could run the step through stock "direct" deploy, but only with a Glance
        # token in the step args, which Ironic stores in the node's fields: not done from here.
        raise SnapshotFailedError(
            'node %s uses deploy interface "%s"; the snapshot step needs "bmsnap" (see docs/runbook.md)'
            % (label(node), node.get("deploy_interface")), node["uuid"])


def _image(conn, info):
    """The Glance image of the snapshot record INFO. The conductor creates it in the node's lessee
    (else owner) project, which may not be the caller's, and a system-scoped token (what Ironic's
    policy wants of an operator) may not read Glance at all: then what the node recorded."""
    with sdk_errors("Glance", "reading image %s" % info["image_id"]):
        try:
            return conn.image.get_image(info["image_id"])
        except (sdk_exc.NotFoundException, sdk_exc.ForbiddenException):
            return Image(id=info["image_id"], name=info.get("image_name"), status="active",
                         size=info.get("size"), os_hash_algo="sha512" if info.get("os_hash_value") else None,
                         os_hash_value=info.get("os_hash_value"),
                         properties={PARENT: info["parent_image_id"]} if info.get("parent_image_id") else {})
