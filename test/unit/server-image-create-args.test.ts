// serverImageCreate()'s incremental options (issue 12): parent / orFull / withIndex become the
// snapshot step's parent / or_full / with_index, checked by the agent's own argcheck before
// anything is contacted; with wait, a delta's parent, counts and warnings come back from the
// node's bmsnap_snapshot record. A loopback server plays a no-auth Ironic (versions, the node,
// the provision PUT); test/e2e/server-image-create.test.ts runs the real stack.
import t from 'tap';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { UsageError } from '../../agent/src/errors.js';
import { serverImageCreate } from '../../agent/src/trigger/server-image-create.js';

const PARENT = '0c1d5e8a-3f2b-4a6c-9e7d-1b2c3d4e5f60';
const UUID = '5b0e9d2c-7f41-4c8a-9d36-0a1c2e3f4b51';

/** A no-auth Ironic with one active bmsnap node; the PUT's body is kept, and RECORD then shows. */
async function fakeIronic(record: Record<string, unknown>) {
  const puts: any[] = [];
  const requests: string[] = [];
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    let body = '';
    req.on('data', (c: Buffer) => { body += c.toString(); });
    req.on('end', () => {
      requests.push(`${req.method} ${req.url}`);
      const json = (status: number, value: unknown) => { res.writeHead(status, { 'content-type': 'application/json' }); res.end(JSON.stringify(value)); };
      if (req.url === '/') return json(200, { default_version: { version: '1.95' } });
      if (req.method === 'PUT') { puts.push(JSON.parse(body)); return json(202, {}); }
      if (req.url?.startsWith('/v1/nodes/n?') || req.url?.startsWith(`/v1/nodes/${UUID}?`)) {
        return json(200, { uuid: UUID, name: 'n', provision_state: 'active', target_provision_state: null, last_error: null,
          maintenance: false, reservation: null, deploy_interface: 'bmsnap', instance_uuid: null,
          driver_internal_info: puts.length ? { bmsnap_snapshot: record } : {} });
      }
      return json(404, {});
    });
  });
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  t.teardown(() => new Promise<void>((ok) => server.close(() => ok())));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, puts, requests };
}

const opts = (ironicUrl: string) => ({ server: 'n', name: 'img', auth: { ironicUrl, env: {} } });

t.test('bad combinations: one line, before Ironic is asked', async (t) => {
  const ironic = await fakeIronic({});
  for (const [extra, want] of [
    [{ orFull: true }, /or_full goes with parent/],
    [{ parent: PARENT, withIndex: false }, /parent needs with_index/],
    [{ parent: PARENT, diskFormat: 'raw' }, /parent and with_index need disk_format qcow2/],
    [{ parent: 'yesterday' }, /argument parent: must match/],
  ] as const) {
    const err = await serverImageCreate({ ...opts(ironic.url), ...extra }).then(() => undefined, (e: Error) => e);
    t.type(err, UsageError, JSON.stringify(extra));
    t.match(err?.message, want);
    t.notMatch(err?.message, /\n/, 'one line');
  }
  t.same(ironic.requests, [], 'Ironic was not contacted');
});

t.test('parent and or_full are sent; the defaults stay the step\'s', async (t) => {
  const ironic = await fakeIronic({ state: 'active', image_id: 'new', image_name: 'img', size: 5 });
  await serverImageCreate({ ...opts(ironic.url), parent: PARENT, orFull: true, withIndex: true });
  await serverImageCreate({ ...opts(ironic.url), diskFormat: 'raw', orFull: false, withIndex: false });
  t.same(ironic.puts.map((p) => p.service_steps[0].args), [
    { image_name: 'img', parent: PARENT, or_full: true },
    { image_name: 'img', disk_format: 'raw', with_index: false },
  ]);
});

t.test('with wait: a delta\'s parent, counts and warnings', async (t) => {
  const delta = { changed_clusters: 25, dropped_clusters: 1, unchanged_clusters: 600 };
  const ironic = await fakeIronic({ state: 'active', image_id: 'new', image_name: 'img', size: 5, parent_image_id: PARENT,
    index_image_id: 'idx', delta, warnings: ['parent could not be protected'] });
  const r = await serverImageCreate({ ...opts(ironic.url), parent: PARENT, wait: true, pollSeconds: 0.01 });
  t.match(r, { state: 'active', imageId: 'new', parentImageId: PARENT, delta, warnings: ['parent could not be protected'] });
  // or_full fell back to a full image: no parent, the warning says why
  const full = await fakeIronic({ state: 'active', image_id: 'new', parent_image_id: null, warnings: ['no index; a full image was taken instead (or_full)'] });
  const f = await serverImageCreate({ ...opts(full.url), parent: PARENT, orFull: true, wait: true, pollSeconds: 0.01 });
  t.equal(f.parentImageId, undefined);
  t.same(f.warnings, ['no index; a full image was taken instead (or_full)']);
});
