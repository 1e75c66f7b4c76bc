"""NODE_OR_SERVER -> the Ironic node to snapshot, as agent/src/trigger/resolve-target.ts does it.
Like ``openstack server image create SERVER``, it is a Nova server (id or name) where the cloud
has Nova; on bare metal it may also be the node itself (UUID or name), or the Nova instance UUID
recorded on a node (no Nova needed for that).
  Nova server -> node: Ironic's node.instance_uuid == server id; else the server's
  OS-EXT-SRV-ATTR:hypervisor_hostname, which Nova's Ironic driver sets to the node UUID."""

import re

from keystoneauth1 import exceptions as ks_exc
from openstack import exceptions as sdk_exc

from bmsnap_openstack.errors import ApiError, NotFoundError
from bmsnap_openstack.http import sdk_errors

_UUID = re.compile(r"^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$", re.I)


def is_uuid(text):
    return bool(_UUID.match(text))


def has_nova(conn):
    """Whether to look for a Nova server: a compute endpoint in the catalog, or configured.

    (A no-auth cloud has no catalog, and its one endpoint would answer for every service.)
    """
    if conn.config.config.get("auth_type") in ("none", "noauth"):
        return bool(conn.config.get_endpoint("compute"))
    # the catalog itself: conn.has_service() logs a warning on stderr when compute is missing
    try:
        return bool(conn.session.get_endpoint(service_type="compute", interface=conn.config.get_interface(),
                                              region_name=conn.config.get_region_name("compute")))
    except ks_exc.EndpointNotFound:
        return False


def find_server(conn, ident):
    """The Nova server IDENT names (id, else exact name); None if none; ApiError if several."""
    with sdk_errors("Nova", "looking up server %s" % ident):
        try:
            return conn.compute.find_server(ident, ignore_missing=True, details=True)
        except sdk_exc.DuplicateResource:
            raise ApiError("several servers are named %s: give the server id" % ident) from None


def resolve_target(conn, ident, ironic):
    """(node, server): the node dict, and the Nova server IDENT named (or None)."""
    nova = has_nova(conn)
    server = find_server(conn, ident) if nova else None
    if server is not None:
        hypervisor = server.hypervisor_hostname
        uuid = ironic.node_of_instance(server.id) or hypervisor
        node = ironic.get_node(uuid) if uuid else None
        if node:
            return node, server
        raise NotFoundError("server %s (%s) is on no Ironic node: no node has instance_uuid %s%s" % (
            server.name, server.id, server.id,
            " and there is no node %s" % hypervisor if hypervisor
            else " (and Nova shows its hypervisor_hostname to admins only)"))
    node = ironic.get_node(ident)
    if node:
        return node, None
    by_instance = ironic.node_of_instance(ident) if is_uuid(ident) else None
    node = ironic.get_node(by_instance) if by_instance else None
    if node:
        return node, None
    raise NotFoundError(
        'no server or node "%s" (neither Nova nor Ironic knows it, or not for your project)' % ident if nova
        else 'no node "%s" in Ironic that your project may see (and no Nova endpoint to look for a server)' % ident)
