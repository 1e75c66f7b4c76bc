// SERVER -> the Ironic node to snapshot. Like `openstack server image create SERVER`, SERVER is a
// Nova server (id or name) where Nova is known; on bare metal it may also be the node itself
// (UUID or name), or the Nova instance UUID recorded on a node (no Nova needed for that).
//   Nova server -> node: Ironic's node.instance_uuid == server id; else the server's
//   OS-EXT-SRV-ATTR:hypervisor_hostname, which Nova's Ironic driver sets to the node UUID.
import { NotFoundError } from './errors.js';
import type { IronicNode, IronicNodes } from './ironic-nodes.js';
import { isUuid, type NovaClient, type NovaServer } from './nova.js';

export interface Target {
  node: IronicNode;
  /** The Nova server SERVER named, if it was one. */
  server?: NovaServer;
}

export async function resolveTarget(ident: string, ironic: IronicNodes, nova?: NovaClient): Promise<Target> {
  const server = await nova?.findServer(ident);
  if (server) {
    const hypervisor = server['OS-EXT-SRV-ATTR:hypervisor_hostname'];
    const uuid = (await ironic.nodeOfInstance(server.id)) ?? hypervisor ?? undefined;
    const node = uuid ? await ironic.getNode(uuid) : undefined;
    if (node) return { node, server };
    throw new NotFoundError(`server ${server.name} (${server.id}) is on no Ironic node: no node has instance_uuid ${server.id}` +
      (hypervisor ? ` and there is no node ${hypervisor}` : ' (and Nova shows its hypervisor_hostname to admins only)'));
  }
  const node = await ironic.getNode(ident);
  if (node) return { node };
  const byInstance = isUuid(ident) ? await ironic.nodeOfInstance(ident) : undefined;
  const instanceNode = byInstance ? await ironic.getNode(byInstance) : undefined;
  if (instanceNode) return { node: instanceNode };
  throw new NotFoundError(nova ? `no server or node "${ident}" (neither Nova nor Ironic knows it)` : `no node "${ident}" in Ironic (and no Nova endpoint to look for a server)`);
}
