"""The part of the Ironic API a snapshot needs, as agent/src/trigger/ironic-nodes.ts has it:
read a node (UUID or name, or by the Nova instance on it) and start service steps on it
(PUT /v1/nodes/{node}/states/provision, target "service": API 1.87, Ironic 23.0 / 2023.2)."""

import re
from urllib.parse import quote

from bmsnap_openstack.http import check, send

SERVICE_VERSION = "1.87"
#: Fields Ironic's stock policy may hide from a project member, and how it says so
#: ("** Redacted - requires baremetal:node:get:reservation permission. **", last_error "** Value
#: Redacted - ...", driver_internal_info {"content": "** Redacted ..."}).
HIDEABLE = ("reservation", "last_error", "driver_internal_info")
REDACTED = re.compile(r"^\*\* (Value )?Redacted")
#: owner and lessee too: Ironic checks a project's right to see last_error, reservation and
#: driver_internal_info against the owner/lessee of the fields it returns; without them a member
#: of the owner project gets those three redacted.
FIELDS = ("uuid,name,provision_state,target_provision_state,last_error,maintenance,reservation,"
          "deploy_interface,instance_uuid,driver_internal_info,owner,lessee")


class IronicNodes:
    def __init__(self, conn):
        self._proxy = conn.baremetal

    def _send(self, method, path, what, **kwargs):
        return send(self._proxy, "Ironic", method, path, what, microversion=SERVICE_VERSION, **kwargs)

    def get_node(self, ident):
        """The node IDENT (a dict of FIELDS); None if Ironic has none this user may see."""
        what = "reading node %s" % ident
        resp = self._send("GET", "/nodes/%s?fields=%s" % (quote(ident, safe=""), FIELDS), what)
        if resp.status_code == 404:
            return None
        return unredact(check(resp, "Ironic", what).json())

    def node_of_instance(self, instance_id):
        """The UUID of the node running Nova instance INSTANCE_ID, if any."""
        what = "looking up the node of instance %s" % instance_id
        resp = check(self._send("GET", "/nodes?instance_uuid=%s&fields=uuid" % quote(instance_id, safe=""), what),
                     "Ironic", what)
        nodes = resp.json().get("nodes") or []
        return nodes[0]["uuid"] if nodes else None

    def service(self, node, steps):
        """Starts servicing NODE with STEPS; returns once Ironic has accepted (202)."""
        what = "starting the snapshot on node %s" % node
        check(self._send("PUT", "/nodes/%s/states/provision" % quote(node, safe=""), what,
                         json={"target": "service", "service_steps": steps}), "Ironic", what, ok=(202,))


def unredact(node):
    """NODE with the fields Ironic's policy hid set to None / {} and listed in node["redacted"]:
    a redacted value is unknown, not a value (a redacted reservation is not a held lock)."""
    def hidden(value):
        if isinstance(value, str):
            return bool(REDACTED.match(value))
        return isinstance(value, dict) and any(isinstance(v, str) and REDACTED.match(v) for v in value.values())
    node["redacted"] = [k for k in HIDEABLE if hidden(node.get(k))]
    for k in node["redacted"]:
        node[k] = {} if k == "driver_internal_info" else None
    return node
