// `bmsnap oneshot FILE`, in the ramdisk after `bmsnap now --mode kexec`: images the disk the
// job names (by its root device hints, read-only) into the image created beforehand, deletes
// that image on failure (no orphans), then kexecs back into the user's kernel with
// bmsnap.result=ok:IMAGE_ID or failed:REASON on its command line, or reboots when none was
// handed over. Console lines start with "bmsnap-oneshot:".
import { access } from 'node:fs/promises';
import { execa } from 'execa';
import { describeError, UsageError } from '../errors.js';
import { createLogger } from '../log.js';
import { logProgress } from './progress-display.js';

const say = (msg: string) => process.stdout.write(`bmsnap-oneshot: ${msg}\n`);
/** A kernel-parameter-safe reason: no spaces or quotes, short. */
export const resultWord = (msg: string) => msg.replace(/[^A-Za-z0-9._:/-]+/g, '_').slice(0, 120);

export async function oneshotCommand(argv: string[], signal: AbortSignal): Promise<void> {
  if (argv.length !== 1) throw new UsageError('usage: bmsnap oneshot /etc/bmsnap/oneshot.json (run by the ramdisk\'s /init)');
  const [{ takeOneshotJob, RETURN_KERNEL, RETURN_INITRD }, { chooseRootDevice }, { openSource }, { GlanceClient }, { publishToGlance }] = await Promise.all([
    import('../inband/oneshot-file.js'), import('../ipa/root-device.js'), import('../source/open-source.js'),
    import('../glance/client.js'), import('../glance/publish.js'),
  ]);
  const job = await takeOneshotJob(argv[0]!);
  const log = createLogger({ human: false, level: 'info' });
  const client = new GlanceClient(job.glance);
  const t0 = Date.now();
  let result: string;
  try {
    const path = await chooseRootDevice(job.disk.hints);
    const source = await openSource(path);
    try {
      if (source.size !== job.disk.bytes) throw new UsageError(`${path} has ${source.size} bytes, not the ${job.disk.bytes} of the disk handed over`);
      say(`imaging ${path} (${Math.round(source.size / 2 ** 20)} MiB, read-only) into glance image ${job.imageId}`);
      const progress = logProgress(log);
      const { manifest } = await publishToGlance(source, client, {
        name: job.imageId, imageId: job.imageId, format: job.format, codec: job.codec, captureMethod: 'inband-kexec', signal, log, progress,
        index: job.indexImageId !== undefined,
        ...(job.indexImageId ? { indexImageId: job.indexImageId } : {}),
        ...(job.parent ? { parent: job.parent } : {}),
      });
      progress.done();
      say(`image ${job.imageId} active: ${manifest.bytesWritten} bytes, sha512 verified, ${((Date.now() - t0) / 1000).toFixed(1)} s`);
      result = `ok:${job.imageId}`;
    } finally {
      await source.close();
    }
  } catch (err) {
    const why = describeError(err);
    say(`FAILED: ${why}`);
    for (const id of [job.imageId, ...(job.indexImageId ? [job.indexImageId] : [])]) {
      await client.deleteImage(id).then(() => say(`deleted image ${id}`), () => say(`could not delete image ${id}`));
    }
    result = `failed:${resultWord(why)}`;
  } finally {
    await client.close();
  }
  const exists = (p: string) => access(p).then(() => true, () => false);
  const kernel = `/${RETURN_KERNEL}`;
  if (job.returnCmdline !== undefined && await exists(kernel)) {
    const initrd = `/${RETURN_INITRD}`;
    const cmdline = `${job.returnCmdline} bmsnap.result=${result}`;
    say(`result ${result}; kexec back into the node's kernel`);
    const load = await execa('kexec', ['-l', kernel, ...(await exists(initrd) ? [`--initrd=${initrd}`] : []), `--command-line=${cmdline}`], { reject: false, all: true });
    if (load.exitCode === 0) {
      await execa('sync', { reject: false });
      await execa('kexec', ['-e'], { reject: false });
    }
    say(`kexec back failed (${String(load.all).trim().split('\n').pop()}); rebooting`);
  } else {
    say(`result ${result}; rebooting`);
  }
  await execa('reboot', ['-f'], { reject: false });
}
