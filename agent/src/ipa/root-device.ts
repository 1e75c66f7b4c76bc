// Picks the disk to snapshot from Ironic root device hints (node.properties.root_device or the
// step's root_device_hints), as ironic-python-agent does: every given hint must match; with no
// hints, the smallest disk of at least 4 GiB.
import { readdir, readFile, realpath, stat } from 'node:fs/promises';
import { SourceError } from '../errors.js';

export interface BlockDevice {
  name: string;
  path: string;
  size: number;
  model?: string;
  vendor?: string;
  serial?: string;
  wwn?: string;
  rotational?: boolean;
}

export type RootDeviceHints = Record<string, string | number | boolean>;

const read = (p: string) => readFile(p, 'utf8').then((s) => s.trim()).catch(() => undefined);

export async function listDisks(sys = '/sys/block'): Promise<BlockDevice[]> {
  const names = await readdir(sys).catch(() => [] as string[]);
  const out: BlockDevice[] = [];
  for (const name of names) {
    if (/^(loop|ram|zram|sr|fd|dm-|md|nbd)/.test(name)) continue;
    const size = Number(await read(`${sys}/${name}/size`)) * 512;
    if (!size) continue;
    const dev: BlockDevice = { name, path: `/dev/${name}`, size };
    const model = await read(`${sys}/${name}/device/model`); if (model) dev.model = model;
    const vendor = await read(`${sys}/${name}/device/vendor`); if (vendor) dev.vendor = vendor;
    const serial = (await read(`${sys}/${name}/device/serial`)) ?? (await read(`${sys}/${name}/serial`)); if (serial) dev.serial = serial;
    const wwid = await read(`${sys}/${name}/wwid`) ?? await read(`${sys}/${name}/device/wwid`); if (wwid) dev.wwn = wwid.replace(/^naa\./, '0x');
    const rot = await read(`${sys}/${name}/queue/rotational`); if (rot) dev.rotational = rot === '1';
    out.push(dev);
  }
  return out.sort((a, b) => a.name.localeCompare(b.name));
}

const GiB = 2 ** 30;

function matches(dev: BlockDevice, key: string, want: string | number | boolean): boolean {
  const v = String(want).trim();
  switch (key) {
    case 'name': return dev.path === v || dev.name === v.replace(/^\/dev\//, '');
    case 'size': {
      // IPA allows operators like ">= 100"; plain numbers are GiB.
      const m = /^(<=|>=|<|>|==|=)?\s*(\d+)$/.exec(v);
      if (!m) return false;
      const gib = Math.floor(dev.size / GiB);
      const n = Number(m[2]);
      return ({ '<=': gib <= n, '>=': gib >= n, '<': gib < n, '>': gib > n } as Record<string, boolean>)[m[1] ?? ''] ?? gib === n;
    }
    case 'rotational': return dev.rotational === (v === 'true' || v === '1');
    case 'serial': case 'wwn': case 'model': case 'vendor': {
      const have = dev[key];
      return !!have && (have.toLowerCase() === v.toLowerCase() || (key === 'model' || key === 'vendor') && have.toLowerCase().includes(v.toLowerCase()));
    }
    default: return false;
  }
}

/** The device to image. A `name` hint may also be a path to an image file or a device node. */
export async function chooseRootDevice(hints: RootDeviceHints | undefined, disks?: BlockDevice[]): Promise<string> {
  const keys = Object.keys(hints ?? {});
  const unsupported = keys.filter((k) => !['name', 'size', 'serial', 'wwn', 'model', 'vendor', 'rotational', 'by_path'].includes(k));
  if (unsupported.length) throw new SourceError(`unsupported root device hint(s): ${unsupported.join(', ')}`);
  if (hints?.by_path) return realpath(String(hints.by_path)).catch(() => { throw new SourceError(`root device hint by_path ${hints.by_path} does not exist`); });
  if (keys.length === 1 && hints?.name && String(hints.name).startsWith('/')) {
    // A path: a device node or (in tests, and for imaging a file) a raw image.
    const p = String(hints.name);
    await stat(p).catch(() => { throw new SourceError(`root device ${p} does not exist`); });
    return p;
  }
  const all = disks ?? await listDisks();
  const found = keys.length
    ? all.filter((d) => keys.every((k) => matches(d, k, hints![k]!)))
    : all.filter((d) => d.size >= 4 * GiB).sort((a, b) => a.size - b.size);
  if (!found.length) throw new SourceError(keys.length ? `no disk matches the root device hints ${JSON.stringify(hints)}` : 'no disk of at least 4 GiB found');
  return found[0]!.path;
}
