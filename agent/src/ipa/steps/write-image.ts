// The in-band deploy step `write_image`, as the bmsnap deploy interface drives it: write a bmsnap
// image chain from Glance (a delta and its parents, or one full image) onto the node's root disk,
// used clusters only, each checked against the top image's cluster index. The conductor passes
// the Glance endpoint and a read-only token in the command parameters (never in step args,
// which Ironic stores and shows); stock `direct` deploy, which hands IPA an image URL to
// convert, is for ironic-python-agent and is refused here in one line.
import type { Logger } from 'pino';
import { CommandFailure, type CommandContext } from '../command-runner.js';
import { resolveGlance } from '../../glance/auth.js';
import { GlanceClient } from '../../glance/client.js';
import { describeError } from '../../errors.js';
import { chooseRootDevice, type RootDeviceHints } from '../root-device.js';
import { resolveGlanceChain, openGlanceChain } from '../../chain/glance-chain.js';
import { writeChain } from '../../deploy/write-chain.js';
import { stepProgress } from './step-progress.js';

export const WRITE_IMAGE_STEP = {
  step: 'write_image',
  interface: 'deploy',
  // 0: runs only when the conductor asks for it (its own write_image, priority 80, calls it)
  priority: 0,
  reboot_requested: false,
  abortable: false,
  argsinfo: {
    image_info: { description: 'The image to write (the bmsnap deploy interface adds a Glance credential in the command parameters)', required: true },
  },
} as const;

/** What the bmsnap deploy interface adds to the command parameters. */
export interface DeployCredentials { glance_url: string; token?: string; image_id: string }

export async function runWriteImage(params: Record<string, unknown>, ctx: CommandContext, deps: { log?: Logger }): Promise<unknown> {
  const creds = params.bmsnap as DeployCredentials | undefined;
  if (!creds?.glance_url || !creds.image_id) {
    throw new CommandFailure('the bmsnap ramdisk writes bmsnap images for the bmsnap deploy interface only; deploy other images with ironic-python-agent', 'InvalidArguments');
  }
  const node = (params.node ?? {}) as { properties?: { root_device?: RootDeviceHints } };
  const device = await chooseRootDevice(node.properties?.root_device).catch((err: unknown) => {
    throw new CommandFailure(describeError(err), 'DeviceNotFound');
  });
  const client = new GlanceClient(await resolveGlance({ endpoint: creds.glance_url, ...(creds.token ? { token: creds.token } : {}), env: {} }));
  try {
    const chain = await resolveGlanceChain(client, creds.image_id, ctx.signal);
    deps.log?.info({ chain: chain.images.map((i) => i.id), device }, 'writing the image chain');
    const stats = await writeChain(await openGlanceChain(client, chain, ctx.signal), chain.top.index, device, { progress: stepProgress(ctx), signal: ctx.signal });
    return { image_id: creds.image_id, chain: chain.images.map((i) => i.id), device, ...stats, seconds: Math.round(stats.seconds * 10) / 10 };
  } catch (err) {
    throw new CommandFailure('Writing the image failed', 'ImageWriteError', describeError(err));
  } finally {
    await client.close();
  }
}
