#!/usr/bin/env node
// bmsnap command line. Every failure ends as one line on stderr and a non-zero exit status.
import { describeError, UsageError, AbortedError, BmsnapError } from '../errors.js';
import { VERSION } from '../version.js';

const USAGE = `usage: bmsnap <command> [options]

commands:
  image SOURCE -o OUT    image a disk or raw image file into a compressed qcow2 (or raw)
  image SOURCE --glance NAME   ... straight into a new Glance image
  flatten IMAGE --glance NAME
                         make one standalone image of a delta and its parents
  delete IMAGE           delete a snapshot and its index (refused while deltas need it)
  deploy IMAGE --to DEVICE
                         write an image (a delta with its parents) onto a disk, used clusters only
  agent                  run the ironic-python-agent compatible agent (ramdisk)
  now --mode kexec --glance NAME
                         snapshot this running node into Glance: kexec into the bmsnap
                         ramdisk, image the idle disk, kexec back (as root)
  server-image-create SERVER NAME [--wait]
                         snapshot a bare-metal server (Nova server or Ironic node) into a new
                         Glance image through Ironic, like \`openstack server image create\`

bmsnap <command> --help for the command's options; bmsnap --version for the version.`;

type Command = (argv: string[], signal: AbortSignal) => Promise<void>;

// Commands load on demand: `bmsnap --version` should not pay for fastify and undici.
const COMMANDS: Record<string, () => Promise<Command>> = {
  image: async () => (await import('./image-command.js')).imageCommand,
  flatten: async () => (await import('./flatten-command.js')).flattenCommand,
  delete: async () => (await import('./delete-command.js')).deleteCommand,
  deploy: async () => (await import('./deploy-command.js')).deployCommand,
  agent: async () => (await import('./agent-command.js')).agentCommand,
  now: async () => (await import('./now-command.js')).nowCommand,
  oneshot: async () => (await import('./oneshot-command.js')).oneshotCommand,
  'server-image-create': async () => (await import('./server-image-create-command.js')).serverImageCreateCommand,
};

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (!command || command === '-h' || command === '--help' || command === 'help') {
    process.stdout.write(USAGE + '\n');
    return command ? 0 : 2;
  }
  if (command === '--version' || command === '-V') {
    process.stdout.write(`bmsnap ${VERSION}\n`);
    return 0;
  }
  const controller = new AbortController();
  // SIGINT/SIGTERM/SIGHUP (a closed ssh session) stop the run cleanly; a second signal quits at
  // once. One sent to the process group reaches the self-contained bundle's stub too, which
  // passes it on: a repeat within 2 s is that same signal.
  let firstSignalAt = 0;
  const onSignal = (sig: NodeJS.Signals) => {
    if (controller.signal.aborted) {
      if (Date.now() - firstSignalAt > 2000) process.exit(sig === 'SIGINT' ? 130 : sig === 'SIGHUP' ? 129 : 143);
      return;
    }
    firstSignalAt = Date.now();
    controller.abort(new AbortedError(`interrupted by ${sig}`));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  process.on('SIGHUP', onSignal);
  const load = Object.hasOwn(COMMANDS, command) ? COMMANDS[command] : undefined;
  if (!load) throw new UsageError(`unknown command "${command}" (try bmsnap --help)`);
  await (await load())(rest, controller.signal);
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => { process.exitCode = code; },
  (err: unknown) => {
    process.stderr.write(`\r\x1b[K`.repeat(process.stderr.isTTY ? 1 : 0) + `bmsnap: ${describeError(err)}\n`);
    if (!(err instanceof BmsnapError) && process.env.BMSNAP_DEBUG) console.error(err);
    process.exitCode = err instanceof UsageError ? 2 : err instanceof AbortedError ? 130 : 1;
  },
);
