// The agent API as the conductor sees it (fastify inject: the real routes, schemas and hooks).
import t from 'tap';
import { buildServer } from '../../agent/src/ipa/server.js';
import { CommandRunner, type CommandSpec } from '../../agent/src/ipa/command-runner.js';
import { serviceExtension } from '../../agent/src/ipa/extensions/service.js';
import type { Extension } from '../../agent/src/ipa/extensions/types.js';

const TOKEN = 'x'.repeat(43);

function setup(extra: Extension[] = []) {
  const runner = new CommandRunner();
  const app = buildServer({ runner, extensions: [serviceExtension({}), ...extra], token: () => TOKEN, version: '9.9.9', startedAt: 1 });
  return { app, runner };
}

let release: () => void = () => {};
const slow: Extension = {
  name: 'test',
  commands: {
    wait: { async: true, run: () => new Promise((resolve) => { release = () => resolve({ ok: true }); }) } satisfies CommandSpec,
    boom: { async: false, run: async () => { throw new Error('kaput'); } } satisfies CommandSpec,
  },
};

t.test('root, v1 and status need no token', async (t) => {
  const { app } = setup();
  t.equal((await app.inject('/')).json().default_version.id, 'v1');
  t.equal((await app.inject('/v1/status')).json().version, '9.9.9');
  t.equal((await app.inject('/status')).statusCode, 200, 'routes exist without /v1 too');
});

t.test('commands need the agent token: 401 with a faultstring', async (t) => {
  const { app } = setup();
  for (const url of ['/v1/commands/', '/v1/commands/?agent_token=wrong', `/v1/commands/?agent_token=${'y'.repeat(43)}`]) {
    const r = await app.inject({ method: 'GET', url });
    t.equal(r.statusCode, 401, url);
    t.match(r.json(), { faultcode: 'Client', faultstring: /Token invalid/ });
  }
  const post = await app.inject({ method: 'POST', url: '/v1/commands/', payload: { name: 'service.get_service_steps', params: {} } });
  t.equal(post.statusCode, 401);
});

t.test('get_service_steps advertises deploy.snapshot with every arg in argsinfo', async (t) => {
  const { app } = setup();
  const r = await app.inject({ method: 'POST', url: `/v1/commands/?wait=true&agent_token=${TOKEN}`, payload: { name: 'service.get_service_steps', params: { node: {}, ports: [] } } });
  t.equal(r.statusCode, 200);
  const body = r.json();
  t.match(body, { command_name: 'get_service_steps', command_status: 'SUCCEEDED', command_error: null });
  const steps = Object.values(body.command_result.service_steps)[0] as { step: string; interface: string; argsinfo: Record<string, { required: boolean }> }[];
  t.equal(steps[0]!.step, 'snapshot');
  t.equal(steps[0]!.interface, 'deploy');
  t.ok(Object.keys(steps[0]!.argsinfo).includes('image_name'));
  t.ok(Object.values(body.command_result.hardware_manager_version)[0]);
});

t.test('malformed requests get 400 with a faultstring, never a crash', async (t) => {
  const { app } = setup();
  const cases = [
    { payload: '{not json', headers: { 'content-type': 'application/json' } },
    { payload: { params: {} } },
    { payload: { name: 'service.get_service_steps', params: [] } },
    { payload: { name: 'nodot', params: {} } },
    { payload: { name: 'service.nope', params: {} } },
  ];
  for (const c of cases) {
    const r = await app.inject({ method: 'POST', url: `/v1/commands/?agent_token=${TOKEN}`, ...c } as never);
    t.equal(r.statusCode, 400, JSON.stringify(c.payload));
    t.type(r.json().faultstring, 'string');
  }
  const unknownExt = await app.inject({ method: 'POST', url: `/v1/commands/?agent_token=${TOKEN}`, payload: { name: 'nope.thing', params: {} } });
  t.equal(unknownExt.statusCode, 404);
});

t.test('an async command answers RUNNING, makes the agent busy (409), then SUCCEEDED in history', async (t) => {
  const { app } = setup([slow]);
  const started = await app.inject({ method: 'POST', url: `/v1/commands/?agent_token=${TOKEN}`, payload: { name: 'test.wait', params: {} } });
  t.match(started.json(), { command_name: 'wait', command_status: 'RUNNING', command_result: null, command_error: null });
  const busy = await app.inject({ method: 'POST', url: `/v1/commands/?agent_token=${TOKEN}`, payload: { name: 'service.get_service_steps', params: {} } });
  t.equal(busy.statusCode, 409);
  t.match(busy.json().faultstring, /Agent is busy: executing command wait/);
  release();
  const one = await app.inject({ method: 'GET', url: `/v1/commands/${started.json().id}?wait=true&agent_token=${TOKEN}` });
  t.match(one.json(), { command_status: 'SUCCEEDED', command_result: { ok: true } });
  const list = await app.inject({ method: 'GET', url: `/v1/commands?agent_token=${TOKEN}` });
  t.equal(list.json().commands.length, 1);
});

t.test('a failing command: FAILED with a command_error object', async (t) => {
  const { app } = setup([slow]);
  const r = await app.inject({ method: 'POST', url: `/v1/commands/?agent_token=${TOKEN}`, payload: { name: 'test.boom', params: {} } });
  t.equal(r.statusCode, 200);
  t.match(r.json(), { command_status: 'FAILED', command_error: { type: String, code: 500, message: String, details: /kaput/ } });
});

t.test('execute_service_step with bad args fails the command, and never echoes a token', async (t) => {
  const { app } = setup();
  const r = await app.inject({
    method: 'POST', url: `/v1/commands/?wait=true&agent_token=${TOKEN}`,
    payload: { name: 'service.execute_service_step', params: { step: { interface: 'deploy', step: 'snapshot', args: { disk_format: 'vmdk', glance_token: 'secret-token-123' } }, node: {}, ports: [] } },
  });
  t.match(r.json(), { command_status: 'FAILED', command_error: { details: /disk_format/ } });
  t.notMatch(r.body, /secret-token-123/);
});

t.test('the deploy extension: write_image advertised; only the bmsnap deploy interface may run it', async (t) => {
  const { deployExtension } = await import('../../agent/src/ipa/extensions/deploy.js');
  const { standbyExtension } = await import('../../agent/src/ipa/extensions/standby.js');
  const { app } = setup([deployExtension({}), standbyExtension()]);
  const call = async (name: string, params: Record<string, unknown>) => (await app.inject({
    method: 'POST', url: `/v1/commands/?wait=true&agent_token=${TOKEN}`, payload: { name, params },
  })).json();
  const steps = await call('deploy.get_deploy_steps', { node: {}, ports: [] });
  t.match(steps, { command_status: 'SUCCEEDED' });
  const list = Object.values(steps.command_result.deploy_steps)[0] as { step: string; interface: string; priority: number }[];
  t.same(list.map((s) => `${s.interface}.${s.step}:${s.priority}`), ['deploy.write_image:0'], 'write_image, priority 0 (run only when the conductor asks)');
  t.ok(Object.values(steps.command_result.hardware_manager_version)[0], 'with the hardware manager version Ironic caches');
  // stock `direct` deploy hands an image URL to convert: that is ironic-python-agent's job
  const stock = await call('deploy.execute_deploy_step', { step: { interface: 'deploy', step: 'write_image', args: { image_info: { id: 'x', urls: ['http://127.0.0.1:1/x'] } } }, node: {}, ports: [] });
  t.match(stock, { command_status: 'FAILED', command_error: { message: /bmsnap images for the bmsnap deploy interface only; deploy other images with ironic-python-agent/ } });
  const other = await call('deploy.execute_deploy_step', { step: { interface: 'deploy', step: 'erase_devices' }, node: {}, ports: [] });
  t.match(other, { command_status: 'FAILED', command_error: { message: /unknown deploy step deploy\.erase_devices/ } });
  t.same((await call('standby.get_partition_uuids', {})).command_result, {}, 'get_partition_uuids: nothing for a whole-disk image');
});

t.test('image.install_bootloader: nothing to do for a whole-disk image, a partition image refused', async (t) => {
  const { imageExtension } = await import('../../agent/src/ipa/extensions/image.js');
  const { app } = setup([imageExtension()]);
  const call = async (params: Record<string, unknown>) => (await app.inject({
    method: 'POST', url: `/v1/commands/?wait=true&agent_token=${TOKEN}`, payload: { name: 'image.install_bootloader', params },
  })).json();
  t.match(await call({ root_uuid: null, efi_system_part_uuid: null, target_boot_mode: 'uefi' }), { command_status: 'SUCCEEDED', command_result: { bootloader: /whole-disk/ } });
  t.match(await call({ root_uuid: 'abcd', target_boot_mode: 'uefi' }), { command_status: 'FAILED', command_error: { message: /whole-disk images only/ } });
});
