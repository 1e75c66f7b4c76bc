// `bmsnap now --mode live --glance NAME`: the node keeps running. Plans the capture (refusing
// what it cannot copy consistently) before creating anything, takes the point-in-time copy
// (inband/live/), streams the disk as it was at that instant into a new Glance image (verified,
// deleted on failure), and releases every snapshot, freeze and store, whatever happens.
import { readFile, stat } from 'node:fs/promises';
import { RefusedError } from '../errors.js';
import { disksBeneath } from '../inband/root-disk.js';
import { mountedDevices } from '../inband/live/disk-mounts.js';
import { devMajMin, openSource } from '../source/open-source.js';
import { createLogger } from '../log.js';
import { mapVolumes } from '../map/volumes.js';
import { buildDiskMap } from '../map/build-map.js';
import type { GlanceOptionValues } from './glance-options.js';
import { glanceConnection } from './glance-options.js';
import type { NowCommon } from './now-command.js';
import { logProgress, terminalProgress } from './progress-display.js';

const say = (msg: string) => process.stderr.write(`bmsnap: ${msg}\n`);

export async function liveNow(values: GlanceOptionValues & { 'cow-device'?: string | undefined; quiet?: boolean | undefined }, common: NowCommon, signal: AbortSignal): Promise<void> {
  const [pre, { rootDisk }, { listDisks }, live, { requireSnapshotTarget }] = await Promise.all([
    import('../inband/preflight.js'), import('../inband/root-disk.js'), import('../ipa/root-device.js'),
    import('../inband/live/live-capture.js'), import('../blockdev/dmsetup.js'),
  ]);
  // --- everything that can refuse, before anything is created or frozen ---
  pre.checkRoot('live');
  const disk = await rootDisk();
  const dev = (await listDisks()).find((d) => d.name === disk);
  if (!dev) throw new RefusedError(`the disk holding / (${disk}) is not in /sys/block`);
  const plan = await live.planForDisk(disk);
  await requireSnapshotTarget('live mode', (m) => new RefusedError(`${m}; use --mode kexec`));
  const cowDevice = values['cow-device'];
  const cowBytes = cowDevice ? await checkSpareDevice(cowDevice, disk) : 0;
  const ram = cowDevice ? undefined : await live.ramDirForCow();
  const log = createLogger({ human: process.stderr.isTTY === true, level: values.quiet ? 'warn' : 'info' });
  const progress = values.quiet ? undefined : process.stderr.isTTY ? terminalProgress() : logProgress(log);
  const [{ GlanceClient }, { publishToGlance }] = await Promise.all([import('../glance/client.js'), import('../glance/publish.js')]);
  const client = new GlanceClient(await glanceConnection(values));
  try {
    signal.throwIfAborted();
    const capture = await live.startLiveCapture(plan, cowDevice ? { device: cowDevice, bytes: cowBytes } : { ram: ram!.dir }, log);
    let left: string[] = [];
    try {
      const held = capture.held.map((h) => `${h.mountpoint} ${h.how}`).join(', ');
      say(`point-in-time copy of ${plan.volumes.map((v) => v.mountpoints[0]).join(', ')} taken: frozen for ${capture.freezeSeconds.toFixed(3)} s${held ? `; held for the capture: ${held}` : ''}`);
      // A store that fills up makes the snapshot unreadable (I/O errors): check() says that instead.
      const { image, manifest } = await (async () => {
        const map = await mapVolumes(await buildDiskMap(capture.source, capture.source.sectorSize), capture.volumes);
        for (const w of map.warnings) log.warn(w);
        return publishToGlance(capture.source, client, {
          name: common.name, visibility: common.visibility, format: 'qcow2', codec: common.codec, map, captureMethod: 'inband-live', signal, log,
          index: common.index, ...(common.parent ? { parent: common.parent } : {}),
          properties: {
            bmsnap_point_in_time: capture.pointInTime.toISOString(),
            bmsnap_freeze_seconds: capture.freezeSeconds.toFixed(3),
            bmsnap_volumes: (map.volumes ?? []).map((v) => `${v.name}:${v.fs ?? 'unknown'}`).join(','),
            ...common.properties,
          },
          ...(progress ? { progress } : {}),
        });
      })().catch(async (err: unknown) => {
        await capture.check();
        throw err;
      });
      progress?.done();
      process.stdout.write(`${image.id}\n`);
      say(`glance image ${image.id} active: ${manifest.bytesWritten} bytes, sha512 verified; the disk as it was at ${capture.pointInTime.toISOString()}`);
    } finally {
      left = await capture.release();
      if (left.length) say(`warning: ${left.join('; ')}`);
    }
  } finally {
    await client.close();
    await ram?.dispose();
  }
}

/**
 * A spare device for the copy-on-write store (its size): a block device, not on the disk being
 * imaged, not mounted.
 */
async function checkSpareDevice(path: string, disk: string): Promise<number> {
  const st = await stat(path).catch(() => undefined);
  if (!st?.isBlockDevice()) throw new RefusedError(`--cow-device ${path} is not a block device`);
  const majMin = devMajMin(st.rdev);
  if ((await disksBeneath(majMin)).includes(disk)) throw new RefusedError(`--cow-device ${path} is on ${disk}, the disk being imaged: give a spare device`);
  if (mountedDevices(await readFile('/proc/self/mountinfo', 'utf8')).some((d) => d.majMin === majMin)) throw new RefusedError(`--cow-device ${path} is mounted: give an unused spare device (its content is overwritten)`);
  const dev = await openSource(path);
  await dev.close();
  return dev.size;
}
