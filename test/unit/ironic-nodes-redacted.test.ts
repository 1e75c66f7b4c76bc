// What Ironic 29's stock policy shows a project member of a node (api/controllers/v1/node.py
// redacts reservation, last_error and driver_internal_info): unredact() turns those into
// "unknown" so that following a snapshot as a member does not wait forever on a "lock" that is
// only a redaction notice. The member case of test/e2e/openstack-cli.test.ts runs it for real.
import t from 'tap';
import { unredact, type IronicNode } from '../../agent/src/trigger/ironic-nodes.js';

const node = (over: Partial<IronicNode>): IronicNode => ({
  uuid: 'u', name: 'n', provision_state: 'active', target_provision_state: null, last_error: null, maintenance: false,
  reservation: null, deploy_interface: 'bmsnap', instance_uuid: null, driver_internal_info: {}, ...over,
});

t.test('redacted fields become unknown and are listed', async (t) => {
  const n = unredact(node({
    reservation: '** Redacted - requires baremetal:node:get:reservation permission. **',
    last_error: '** Value Redacted - Requires baremetal:node:get:last_error permission. **',
    driver_internal_info: { content: '** Redacted - Requires baremetal:node:get:driver_internal_info permission. **' },
  }));
  t.same(n.redacted, ['reservation', 'last_error', 'driver_internal_info']);
  t.equal(n.reservation, null);
  t.equal(n.last_error, null);
  t.same(n.driver_internal_info, {});
});

t.test('real values are kept', async (t) => {
  const n = unredact(node({ reservation: 'conductor-1', last_error: 'Service step failed: no disk', driver_internal_info: { bmsnap_snapshot: { image_id: 'i' } } }));
  t.same(n.redacted, []);
  t.equal(n.reservation, 'conductor-1');
  t.equal(n.last_error, 'Service step failed: no disk');
  t.equal(n.driver_internal_info.bmsnap_snapshot?.image_id, 'i');
});
