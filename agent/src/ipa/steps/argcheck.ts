// Validation of the snapshot step's arguments (typebox): a clear one-line failure per bad arg.
import { Type, type Static } from 'typebox';
import { Check, Errors } from 'typebox/value';
import { CommandFailure } from '../command-runner.js';

const Args = Type.Object({
  image_name: Type.Optional(Type.String({ minLength: 1, maxLength: 255 })),
  visibility: Type.Optional(Type.Union([Type.Literal('private'), Type.Literal('shared'), Type.Literal('community'), Type.Literal('public')])),
  disk_format: Type.Optional(Type.Union([Type.Literal('qcow2'), Type.Literal('raw')])),
  compression: Type.Optional(Type.Union([Type.Literal('zstd'), Type.Literal('zlib'), Type.Literal('none')])),
  properties: Type.Optional(Type.Record(Type.String({ pattern: '^[A-Za-z0-9_:.-]{1,255}$' }), Type.String({ maxLength: 65535 }))),
  root_device_hints: Type.Optional(Type.Record(Type.String(), Type.Union([Type.String(), Type.Number(), Type.Boolean()]))),
  glance_url: Type.Optional(Type.String({ pattern: '^https?://' })),
  glance_token: Type.Optional(Type.String({ minLength: 1 })),
  scrub: Type.Optional(Type.Union([Type.Boolean(), Type.String({ pattern: '^[a-z-]+(,[a-z-]+)*$' })])),
  scrub_paths: Type.Optional(Type.Array(Type.String({ minLength: 1, maxLength: 4096 }), { maxItems: 256 })),
  parent: Type.Optional(Type.String({ pattern: '^[0-9a-fA-F-]{32,36}$' })),
  or_full: Type.Optional(Type.Boolean()),
  with_index: Type.Optional(Type.Boolean()),
}, { additionalProperties: false });

export type SnapshotArgs = Static<typeof Args>;

/** The combinations typebox cannot say: a delta needs qcow2 and its own index. */
function combinations(a: SnapshotArgs): string | undefined {
  if (a.or_full !== undefined && !a.parent) return 'or_full goes with parent';
  if (a.parent && a.with_index === false) return 'parent needs with_index (a delta stores its own index)';
  if ((a.parent || a.with_index === true) && a.disk_format === 'raw') return 'parent and with_index need disk_format qcow2';
  return undefined;
}

export const z = {
  parse(args: unknown): SnapshotArgs {
    if (Check(Args, args)) {
      const bad = combinations(args);
      if (bad) throw new CommandFailure(`invalid snapshot step arguments: ${bad}`, 'InvalidArguments');
      return args;
    }
    const first = [...Errors(Args, args)][0];
    // Never echo values: glance_token is one of them.
    const where = first?.instancePath ? `argument ${first.instancePath.replace(/^\//, '').replace(/\//g, '.')}` : 'arguments';
    throw new CommandFailure(`invalid snapshot step ${where}: ${first?.message ?? 'not valid'}`, 'InvalidArguments');
  },
};
