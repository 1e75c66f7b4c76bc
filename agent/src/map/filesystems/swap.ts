// Linux swap: only the header page matters; the rest is scratch space that a restored system
// will not read back. The signature sits in the last 10 bytes of the first page, whose size
// is the page size of the machine that ran mkswap.
//
// A hibernation image replaces the signature with its own; that swap area holds a suspended
// system, so it is kept whole.
import { FilesystemError } from '../../errors.js';
import { readBytes, type ByteReader } from '../../source/byte-reader.js';
import type { FsProbe, FsUsage } from './types.js';

const PAGE_SIZES = [4096, 8192, 16384, 32768, 65536];
const SWAP_SIGNATURES = ['SWAPSPACE2', 'SWAP-SPACE'];
/** Kernel swsusp and userspace uswsusp signatures, written where the swap one was. */
const HIBERNATION_SIGNATURES = ['S1SUSPEND', 'S2SUSPEND', 'ULSUSPEND', 'LINHIB0001'];

export const swapProbe: FsProbe = {
  name: 'swap',
  async probe(r: ByteReader): Promise<FsUsage | null> {
    for (const pageSize of PAGE_SIZES) {
      if (r.size < pageSize) break;
      const tail = (await readBytes(r, pageSize - 10, 10)).toString('latin1');
      if (SWAP_SIGNATURES.includes(tail)) return swapHeader(r, pageSize, tail);
      if (HIBERNATION_SIGNATURES.some((s) => tail.startsWith(s))) {
        return {
          fs: 'swap',
          used: [{ offset: 0, length: r.size }],
          blockSize: pageSize,
          method: 'swap with hibernation image (whole partition)',
          warnings: ['swap: holds a hibernation image; mapping the whole partition'],
        };
      }
    }
    return null;
  },
};

async function swapHeader(r: ByteReader, pageSize: number, signature: string): Promise<FsUsage> {
  const usage: FsUsage = {
    fs: 'swap',
    used: [{ offset: 0, length: pageSize }],
    blockSize: pageSize,
    method: 'swap header',
  };
  if (signature !== 'SWAPSPACE2') return usage; // the old v0 format has no label or uuid
  // Version-1 header right after the 1 KiB boot block: version, last page, bad-page count,
  // uuid, label, in the byte order of the machine that made it.
  const h = await readBytes(r, 1024, 44);
  const le = h.readUInt32LE(0) === 1;
  if (!le && h.readUInt32BE(0) !== 1) throw new FilesystemError(`swap: unknown header version ${h.readUInt32LE(0)}`);
  const lastPage = le ? h.readUInt32LE(4) : h.readUInt32BE(4);
  if (lastPage === 0) throw new FilesystemError('swap: header says the area has no pages');
  const uuid = h.subarray(12, 28).toString('hex');
  if (uuid !== '0'.repeat(32)) {
    usage.uuid = `${uuid.slice(0, 8)}-${uuid.slice(8, 12)}-${uuid.slice(12, 16)}-${uuid.slice(16, 20)}-${uuid.slice(20)}`;
  }
  const labelRaw = h.subarray(28, 44);
  const nul = labelRaw.indexOf(0);
  const label = labelRaw.subarray(0, nul < 0 ? 16 : nul).toString('utf8').trim();
  if (label) usage.label = label;
  if ((lastPage + 1) * pageSize > r.size) {
    // The kernel truncates such an area and carries on; nothing of it is kept anyway.
    usage.warnings = [`swap: header claims ${lastPage + 1} pages, more than the partition holds`];
  }
  return usage;
}
