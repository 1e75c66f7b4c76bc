// The agent's REST API, the subset of ironic-python-agent's that an unmodified conductor uses:
//   GET /, GET /v1, GET /v1/status, POST /v1/commands, GET /v1/commands[/{id}]
// (also without the /v1 prefix). /v1/commands* needs ?agent_token=; errors are
// {"faultcode", "faultstring"} as Ironic's agent client parses them.
import { timingSafeEqual } from 'node:crypto';
import Fastify, { LogController, type FastifyError, type FastifyInstance, type FastifyServerOptions } from 'fastify';
import { Type, type TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { Logger } from 'pino';
import { BusyError, type CommandRunner } from './command-runner.js';
import type { Extension } from './extensions/types.js';

export interface ServerOptions {
  runner: CommandRunner;
  extensions: Extension[];
  /** The agent token, once known (lookup or kernel command line). */
  token: () => string | undefined;
  version: string;
  startedAt: number;
  /** Extra fields for /v1/status (e.g. the running step's progress). */
  status?: () => Record<string, unknown>;
  https?: { key: string; cert: string };
  log?: Logger;
}

const CommandBody = Type.Object({
  name: Type.String({ minLength: 3, maxLength: 255 }),
  params: Type.Record(Type.String(), Type.Unknown()),
});
const CommandQuery = Type.Object({
  wait: Type.Optional(Type.Union([Type.Literal('true'), Type.Literal('false'), Type.Literal('True'), Type.Literal('False'), Type.Literal('1'), Type.Literal('0')])),
  agent_token: Type.Optional(Type.String({ maxLength: 512 })),
});
const TokenQuery = Type.Object({ agent_token: Type.Optional(Type.String({ maxLength: 512 })), wait: Type.Optional(Type.String()) });

class HttpFault extends Error {
  constructor(readonly statusCode: number, message: string) { super(message); }
}

export function buildServer(opts: ServerOptions) {
  // One instance type for HTTP and HTTPS: the agent never uses HTTP/2.
  const app = (Fastify({
    ...(opts.log ? { loggerInstance: opts.log.child({ component: 'api' }) } : {}),
    logController: new LogController({ disableRequestLogging: true }),
    ...(opts.https ? { https: opts.https } : {}),
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false } },
  } as FastifyServerOptions) as unknown as FastifyInstance).withTypeProvider<TypeBoxTypeProvider>();

  const extensions = new Map(opts.extensions.map((e) => [e.name, e]));

  app.setErrorHandler((err: FastifyError | HttpFault, _req, reply) => {
    // Our faults carry their status; fastify's (validation, bad JSON, body too large) are 4xx.
    const status = err instanceof HttpFault ? err.statusCode : err.validation ? 400 : err.statusCode && err.statusCode < 500 ? err.statusCode : 500;
    const message = 'validation' in err && err.validation ? `Invalid request: ${err.message}` : status < 500 ? err.message : `Internal error: ${err.message}`;
    void reply.code(status).send({ faultcode: status < 500 ? 'Client' : 'Server', faultstring: message });
  });
  app.setNotFoundHandler((req, reply) => {
    void reply.code(404).send({ faultcode: 'Client', faultstring: `Not found: ${req.method} ${req.url.split('?')[0]}` });
  });

  const checkToken = (given: string | undefined) => {
    const expected = opts.token();
    const ok = !!expected && !!given && given.length === expected.length && timingSafeEqual(Buffer.from(given), Buffer.from(expected));
    if (!ok) throw new HttpFault(401, '401 Unauthorized: Token invalid.');
  };

  const root = { name: 'OpenStack Ironic Python Agent API', description: 'bmsnap agent, ironic-python-agent compatible (servicing subset)', versions: [{ id: 'v1', links: [{ href: '/v1/', rel: 'self' }] }], default_version: { id: 'v1', links: [{ href: '/v1/', rel: 'self' }] } };
  app.get('/', async () => root);
  for (const prefix of ['/v1', '']) {
    if (prefix) {
      app.get(`${prefix}`, async () => ({ id: 'v1', links: [{ href: '/v1/', rel: 'self' }], media_types: [{ base: 'application/json', type: 'application/vnd.openstack.ironic-python-agent.v1+json' }] }));
      app.get(`${prefix}/`, async () => ({ id: 'v1', links: [{ href: '/v1/', rel: 'self' }], media_types: [{ base: 'application/json', type: 'application/vnd.openstack.ironic-python-agent.v1+json' }] }));
    }
    app.get(`${prefix}/status`, async () => ({ started_at: opts.startedAt, version: opts.version, ...opts.status?.() }));

    app.get(`${prefix}/commands`, { schema: { querystring: TokenQuery } }, async (req) => {
      checkToken(req.query.agent_token);
      return { commands: opts.runner.list() };
    });
    app.get(`${prefix}/commands/`, { schema: { querystring: TokenQuery } }, async (req) => {
      checkToken(req.query.agent_token);
      return { commands: opts.runner.list() };
    });
    app.get(`${prefix}/commands/:id`, { schema: { querystring: TokenQuery, params: Type.Object({ id: Type.String({ maxLength: 64 }) }) } }, async (req) => {
      checkToken(req.query.agent_token);
      const entry = opts.runner.get(req.params.id);
      if (!entry) throw new HttpFault(404, `Command ${req.params.id} not found`);
      if (isTrue(req.query.wait)) await entry.done;
      return entry.result;
    });

    const post = async (req: { body: { name: string; params: Record<string, unknown> }; query: { wait?: string; agent_token?: string } }) => {
      checkToken(req.query.agent_token);
      const m = /^([A-Za-z_]\w*)\.([A-Za-z_]\w*)$/.exec(req.body.name);
      if (!m) throw new HttpFault(400, `Invalid command: "${req.body.name}" is not EXTENSION.COMMAND`);
      const [, extName, cmdName] = m as unknown as [string, string, string];
      const ext = extensions.get(extName);
      if (!ext) throw new HttpFault(404, `Extension ${extName} not found`);
      const spec = ext.commands[cmdName];
      if (!spec) throw new HttpFault(400, `Invalid command: ${extName} has no command ${cmdName}`);
      let entry;
      try {
        entry = opts.runner.start(cmdName, spec, req.body.params);
      } catch (err) {
        if (err instanceof BusyError) throw new HttpFault(409, err.message);
        throw err;
      }
      if (!spec.async || isTrue(req.query.wait)) await entry.done;
      return entry.result;
    };
    app.post(`${prefix}/commands`, { schema: { body: CommandBody, querystring: CommandQuery } }, post);
    app.post(`${prefix}/commands/`, { schema: { body: CommandBody, querystring: CommandQuery } }, post);
  }
  return app;
}

function isTrue(v: string | undefined): boolean {
  return v !== undefined && ['true', '1'].includes(v.toLowerCase());
}
