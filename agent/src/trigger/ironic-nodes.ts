// The operator's side of the Ironic API that a snapshot needs: read a node (by UUID or name, or
// by the Nova instance on it) and start service steps on it (PUT .../states/provision, target
// "service": API 1.87, Ironic 23.0 / 2023.2).
import { IronicHttp, type Version } from '../ironic/http.js';

/** bmsnap_snapshot in driver_internal_info, as the bmsnap deploy interface records it. */
export interface SnapshotInfo {
  image_id?: string;
  image_name?: string;
  state?: 'uploading' | 'active' | 'deleted' | 'orphaned';
  size?: number;
  os_hash_value?: string;
  progress?: { phase?: string; bytes?: number; total?: number; percent?: number; mb_per_s?: number } | null;
  /** The hidden image holding the cluster index (with_index). */
  index_image_id?: string;
  /** A delta's parent (null when or_full fell back to a full image). */
  parent_image_id?: string | null;
  /** A delta's counts, as the agent reported them. */
  delta?: { changed_clusters?: number; dropped_clusters?: number; unchanged_clusters?: number } | null;
  warnings?: string[];
}

export interface IronicNode {
  uuid: string;
  name: string | null;
  provision_state: string;
  target_provision_state: string | null;
  last_error: string | null;
  maintenance: boolean;
  reservation: string | null;
  deploy_interface: string | null;
  instance_uuid: string | null;
  driver_internal_info: { bmsnap_snapshot?: SnapshotInfo; [k: string]: unknown };
  /** Fields Ironic's policy hid from this caller (set to null / {} above). */
  redacted?: string[];
}

export interface ServiceStep { interface: string; step: string; args: Record<string, unknown> }

const SERVICE: Version = [1, 87];
// owner and lessee too: Ironic checks a project's right to see last_error, reservation and
// driver_internal_info against the owner/lessee of the fields it returns; without them a member
// of the owner project gets those three redacted.
const FIELDS = 'uuid,name,provision_state,target_provision_state,last_error,maintenance,reservation,deploy_interface,instance_uuid,driver_internal_info,owner,lessee';

export class IronicNodes extends IronicHttp {
  private v(): Promise<string> { return this.version(SERVICE, SERVICE, 'servicing a node'); }

  /** The node IDENT (UUID or name); undefined if Ironic has none. */
  async getNode(ident: string): Promise<IronicNode | undefined> {
    const res = await this.send('GET', `/v1/nodes/${encodeURIComponent(ident)}?fields=${FIELDS}`, await this.v(), undefined);
    if (res.statusCode === 404) { await res.body.dump(); return undefined; }
    if (res.statusCode !== 200) return this.fail(res, `reading node ${ident}`);
    return unredact((await res.body.json()) as IronicNode);
  }

  /** The UUID of the node running Nova instance ID (node.instance_uuid), if any. */
  async nodeOfInstance(id: string): Promise<string | undefined> {
    const res = await this.send('GET', `/v1/nodes?instance_uuid=${encodeURIComponent(id)}&fields=uuid`, await this.v(), undefined);
    if (res.statusCode !== 200) return this.fail(res, `looking up the node of instance ${id}`);
    return ((await res.body.json()) as { nodes: { uuid: string }[] }).nodes[0]?.uuid;
  }

  /** Starts servicing NODE with STEPS; resolves once Ironic has accepted (202). */
  async service(node: string, steps: ServiceStep[]): Promise<void> {
    const res = await this.send('PUT', `/v1/nodes/${encodeURIComponent(node)}/states/provision`, await this.v(), { target: 'service', service_steps: steps });
    if (res.statusCode !== 202) return this.fail(res, `starting the snapshot on node ${node}`);
    await res.body.dump();
  }
}

// Ironic's stock policy hides some fields from project members ("** Redacted - requires
// baremetal:node:get:reservation permission. **", last_error "** Value Redacted - ...",
// driver_internal_info {"content": "** Redacted ..."}).
// A redacted value is unknown, not a value: a redacted reservation is not a held lock.
const REDACTED = /^\*\* (Value )?Redacted/;
const HIDEABLE = ['reservation', 'last_error', 'driver_internal_info'] as const;

export function unredact(n: IronicNode): IronicNode {
  const redacted = HIDEABLE.filter((k) => {
    const v: unknown = n[k];
    return typeof v === 'string' ? REDACTED.test(v)
      : typeof v === 'object' && v !== null && Object.values(v).some((x) => typeof x === 'string' && REDACTED.test(x));
  });
  for (const k of redacted) {
    if (k === 'driver_internal_info') n.driver_internal_info = {};
    else n[k] = null;
  }
  return { ...n, redacted };
}
