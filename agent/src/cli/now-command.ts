// `bmsnap now --mode kexec --glance NAME`: snapshot this running node from the inside. Checks
// that the node can kexec, creates the Glance image (its id is printed), hands the ramdisk a
// one-shot job (Glance token included) in an extra initramfs archive that lives only in RAM,
// loads the ramdisk with kexec and shuts the node down into it. The ramdisk images the now idle
// disk (read-only) into that image and kexecs back into this kernel with bmsnap.result=ok:ID
// (or failed:WHY) added to its command line; see docs/in-band.md.
import { access, readFile, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { RefusedError, UsageError } from '../errors.js';
import { choice, keyValues, oneLine } from '../options.js';
import { VERSION } from '../version.js';
import type { CodecName } from '../encoder/compress/codecs.js';
import { GLANCE_OPTIONS, GLANCE_USAGE, glanceConnection } from './glance-options.js';

/** What both modes take from the command line. */
export interface NowCommon {
  name: string;
  codec: CodecName;
  properties: Record<string, string>;
  visibility: 'private' | 'shared' | 'community' | 'public';
  /** Store the cluster index beside the image (default; --no-index: not). */
  index: boolean;
  /** --parent IMAGE [--or-full]: a delta on IMAGE (docs/incremental.md). */
  parent?: { imageId: string; orFull: boolean };
}

export const NOW_USAGE = `usage: bmsnap now --mode kexec|live --glance NAME [glance options] [options]

Snapshots this node into a new Glance image from inside its running OS (as root).

--mode live: keeps the node running. Filesystems on LVM volumes get a point-in-time copy
(device-mapper snapshot, copy-on-write store in RAM or on --cow-device) taken in a freeze of
well under a second; read-write plain partitions (/boot, the ESP) stay frozen or read-only for
the capture. The image is the disk as it was at that instant. Refused when / is not on LVM.

--mode kexec: creates the image (prints its id), loads the bmsnap ramdisk with kexec and shuts
the node down into it; the ramdisk images the idle disk holding / and kexecs back into this
kernel, adding bmsnap.result=ok:IMAGE_ID (or failed:REASON) to /proc/cmdline. Downtime: the
snapshot plus two kexecs. Refused when not root, without kexec, under kernel lockdown or Secure
Boot, or when the disk holding / cannot be found.

options:
      --mode MODE             live or kexec
  -c, --compress CODEC        zstd (default), zlib (any qemu), none
      --ramdisk-kernel PATH   the bmsnap ramdisk (default: the bundle's ramdisk/bmsnap.kernel)
      --ramdisk-initramfs PATH                (default: the bundle's ramdisk/bmsnap.initramfs)
      --ramdisk-append ARGS   extra ramdisk kernel parameters (e.g. ip=... for a static address)
      --return-kernel PATH    kernel to come back to (default: the running one, from /boot)
      --return-initrd PATH    its initrd (default: /boot/initrd.img-$(uname -r) and the like)
      --no-return             reboot through the firmware after the snapshot instead
      --cow-device DEV        live: a spare block device (not on the disk imaged) for the
                              copy-on-write store instead of RAM; its content is overwritten
  -q, --quiet                 live: no progress output
      --parent IMAGE          a delta: upload only the clusters changed since Glance image IMAGE
                              (an earlier snapshot of this disk, with its index)
      --or-full               with --parent: a full image if IMAGE has no usable index
      --no-index              store no cluster index beside the image (by default a hidden
                              image holds it, for later deltas)
  -h, --help                  this help

glance options (the token is handed over in RAM only, never written to a disk):
${GLANCE_USAGE}`;

const GiB = 2 ** 30;
const say = (msg: string) => process.stderr.write(`bmsnap: ${msg}\n`);

export async function nowCommand(argv: string[], signal: AbortSignal): Promise<void> {
  const { values, positionals } = oneLine(() => parseArgs({
    args: argv, allowPositionals: true,
    options: {
      mode: { type: 'string' }, compress: { type: 'string', short: 'c' }, help: { type: 'boolean', short: 'h' },
      'ramdisk-kernel': { type: 'string' }, 'ramdisk-initramfs': { type: 'string' }, 'ramdisk-append': { type: 'string' },
      'return-kernel': { type: 'string' }, 'return-initrd': { type: 'string' }, 'no-return': { type: 'boolean' },
      'cow-device': { type: 'string' }, quiet: { type: 'boolean', short: 'q' },
      parent: { type: 'string' }, 'or-full': { type: 'boolean' }, 'no-index': { type: 'boolean' },
      ...GLANCE_OPTIONS,
    },
  }));
  if (values.help) { process.stdout.write(NOW_USAGE + '\n'); return; }
  if (positionals.length) throw new UsageError(`now takes no SOURCE: it images the disk holding / (got "${positionals[0]}")`);
  if (!values.mode) throw new UsageError('missing --mode live or --mode kexec (see bmsnap now --help)');
  const mode = choice(values.mode, ['live', 'kexec'], '--mode');
  if (!values.glance) throw new UsageError('missing --glance NAME');
  const common: NowCommon = {
    name: values.glance,
    codec: choice(values.compress ?? 'zstd', ['zstd', 'zlib', 'none'], '--compress') as CodecName,
    properties: keyValues(values.property ?? [], '--property'),
    visibility: choice(values.visibility ?? 'private', ['private', 'shared', 'community', 'public'], '--visibility') as NowCommon['visibility'],
    index: values['no-index'] !== true,
    ...(values.parent ? { parent: { imageId: values.parent, orFull: values['or-full'] === true } } : {}),
  };
  if (values['or-full'] && !values.parent) throw new UsageError('--or-full goes with --parent IMAGE');
  if (values['no-index'] && values.parent) throw new UsageError('--no-index excludes --parent (a delta stores its index)');
  const misplaced = (flags: string[]) => flags.filter((f) => values[f as keyof typeof values] !== undefined).map((f) => `--${f}`);
  if (mode === 'live') {
    const wrong = misplaced(['ramdisk-kernel', 'ramdisk-initramfs', 'ramdisk-append', 'return-kernel', 'return-initrd', 'no-return']);
    if (wrong.length) throw new UsageError(`${wrong.join(', ')}: kexec mode only`);
    const { liveNow } = await import('./now-live.js');
    return liveNow(values, common, signal);
  }
  const wrong = misplaced(['cow-device', 'quiet']);
  if (wrong.length) throw new UsageError(`${wrong.join(', ')}: live mode only`);
  const { codec, properties, visibility, parent } = common;
  if (values['no-return'] && (values['return-kernel'] || values['return-initrd'])) throw new UsageError('--no-return and --return-kernel/--return-initrd exclude each other');

  // --- can this node do it? (every check before anything is created) ---
  const pre = await import('../inband/preflight.js');
  pre.checkRoot('kexec');
  await pre.checkKexecKernel();
  const kexec = await pre.findKexec();
  await pre.checkNotLockedDown();
  const { rootDisk } = await import('../inband/root-disk.js');
  const disk = await rootDisk();
  const { listDisks } = await import('../ipa/root-device.js');
  const dev = (await listDisks()).find((d) => d.name === disk);
  if (!dev) throw new RefusedError(`the disk holding / (${disk}) is not in /sys/block`);
  const bundled = process.env.BMSNAP_BUNDLE ? join(process.env.BMSNAP_BUNDLE, 'ramdisk') : undefined;
  const rdKernel = values['ramdisk-kernel'] ?? (bundled && join(bundled, 'bmsnap.kernel'));
  const rdInitramfs = values['ramdisk-initramfs'] ?? (bundled && join(bundled, 'bmsnap.initramfs'));
  for (const [p, flag] of [[rdKernel, '--ramdisk-kernel'], [rdInitramfs, '--ramdisk-initramfs']] as const) {
    if (!p) throw new RefusedError(`no bmsnap ramdisk: give ${flag} (or run the bundle built with --with-ramdisk)`);
    await access(p).catch(() => { throw new RefusedError(`the ramdisk file ${p} does not exist (${flag}; a bundle built without --with-ramdisk has none)`); });
  }
  const { findReturnKernel } = await import('../inband/return-kernel.js');
  const back = values['no-return'] ? undefined : await findReturnKernel({
    ...(values['return-kernel'] ? { kernel: values['return-kernel'] } : {}),
    ...(values['return-initrd'] ? { initrd: values['return-initrd'] } : {}),
  });
  const handover = await import('../inband/handover.js');
  const stageDir = await handover.ramDir();
  signal.throwIfAborted();

  // --- the image, created here so its id is known before the node goes down ---
  const conn = await glanceConnection(values);
  const { GlanceClient } = await import('../glance/client.js');
  const client = new GlanceClient(conn);
  // A parent without a usable index is refused here, before the node goes down (the ramdisk
  // loads the index again); --or-full drops it.
  const usable = parent && await checkParent(client, parent, signal);
  const { createIndexImage, PROP } = await import('../incremental/glance-index.js');
  const indexImage = common.index ? await createIndexImage(client, values.glance, visibility, signal) : undefined;
  const image = await client.createImage({
    name: values.glance, disk_format: 'qcow2', container_format: 'bare', visibility, min_disk: Math.ceil(dev.size / GiB),
    bmsnap_version: VERSION, bmsnap_capture_method: 'inband-kexec', bmsnap_captured_at: new Date().toISOString(),
    bmsnap_source: dev.path, bmsnap_source_size: String(dev.size), bmsnap_compression: codec,
    ...(indexImage ? { [PROP.index]: indexImage.id } : {}), ...properties,
  }, signal).catch(async (err: unknown) => {
    if (indexImage) await client.deleteImage(indexImage.id).catch(() => say(`warning: could not delete image ${indexImage.id}; remove it yourself`));
    throw err;
  });
  process.stdout.write(`${image.id}\n`);
  say(`glance image ${image.id} created (queued); imaging ${dev.path} (${Math.round(dev.size / 2 ** 20)} MiB) from the bmsnap ramdisk`);
  const staged = join(stageDir, `.bmsnap-handover-${process.pid}`);
  try {
    const hints: Record<string, string> = dev.serial ? { serial: dev.serial } : dev.wwn ? { wwn: dev.wwn } : { name: dev.name };
    const job: import('../inband/oneshot-file.js').OneshotJob = {
      glance: conn, imageId: image.id, disk: { hints, bytes: dev.size }, format: 'qcow2', codec,
      ...(indexImage ? { indexImageId: indexImage.id } : {}),
      ...(usable ? { parent: usable } : {}),
      ...(back ? { returnCmdline: back.cmdline } : {}),
    };
    const consoles = (await readFile('/proc/cmdline', 'utf8')).split(/\s+/).filter((w) => /^(console|earlyprintk)=|^quiet$/.test(w));
    const cmdline = [...consoles, 'bmsnap.oneshot=1', ...(values['ramdisk-append'] ? [values['ramdisk-append']] : [])].join(' ');
    try {
      await handover.writeHandoverInitramfs(staged, rdInitramfs!, await handover.handoverEntries(job, back));
      const { kexecLoad } = await import('../inband/kexec.js');
      await kexecLoad(kexec, { kernel: rdKernel!, initrd: staged, cmdline });
    } finally {
      await unlink(staged).catch(() => {});
    }
    signal.throwIfAborted();
    say(back ? `kexec into the bmsnap ramdisk now; back in this OS afterwards, /proc/cmdline carries bmsnap.result=ok:${image.id} (or failed:...)`
      : 'kexec into the bmsnap ramdisk now; the node reboots through its firmware afterwards');
    const { kexecReboot } = await import('../inband/kexec.js');
    await kexecReboot(kexec, (m) => say(`warning: ${m}`));
  } catch (err) {
    const { kexecUnload } = await import('../inband/kexec.js');
    await kexecUnload(kexec);
    for (const id of [image.id, ...(indexImage ? [indexImage.id] : [])]) {
      await client.deleteImage(id).catch(() => say(`warning: could not delete image ${id}; remove it yourself`));
    }
    throw err;
  } finally {
    await client.close();
  }
}

/** PARENT if its index is usable; undefined with --or-full (saying so); else the one-line refusal. */
async function checkParent(client: import('../glance/client.js').GlanceClient, parent: NonNullable<NowCommon['parent']>, signal: AbortSignal): Promise<NowCommon['parent']> {
  const [{ loadParentIndex }, { ClusterIndexError }] = await Promise.all([import('../incremental/glance-index.js'), import('../incremental/errors.js')]);
  try {
    await loadParentIndex(client, parent.imageId, signal);
    return parent;
  } catch (err) {
    if (!(err instanceof ClusterIndexError) || !parent.orFull) throw err;
    say(`warning: ${err.message}; a full image is taken instead (--or-full)`);
    return undefined;
  }
}
