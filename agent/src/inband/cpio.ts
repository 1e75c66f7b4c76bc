// A minimal writer for the kernel's initramfs format: "newc" cpio (ASCII hex headers, 4-byte
// alignment, a TRAILER!!! entry). Enough for the few files bmsnap hands to the ramdisk; the
// kernel unpacks such an archive appended (uncompressed) after a compressed one.

export interface CpioEntry {
  /** Path inside the archive, without a leading slash. */
  name: string;
  /** Directories: 'dir'; files carry data. */
  type: 'dir' | 'file';
  /** Permission bits, e.g. 0o600. */
  mode: number;
  data?: Uint8Array;
}

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const hex8 = (n: number) => n.toString(16).padStart(8, '0');
const pad4 = (n: number) => (4 - (n % 4)) % 4;

function header(ino: number, mode: number, size: number, name: string): Buffer {
  const nameBytes = Buffer.from(name + '\0');
  // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor, namesize, check
  const fields = [ino, mode, 0, 0, mode & S_IFDIR ? 2 : 1, 0, size, 0, 0, 0, 0, nameBytes.length, 0];
  const head = Buffer.from('070701' + fields.map(hex8).join(''), 'ascii');
  return Buffer.concat([head, nameBytes, Buffer.alloc(pad4(head.length + nameBytes.length))]);
}

/** The archive as a list of buffers (file data is not copied). */
export function newcArchive(entries: CpioEntry[]): Buffer[] {
  const out: Buffer[] = [];
  let ino = 1;
  for (const e of entries) {
    if (!e.name || e.name.startsWith('/')) throw new Error(`cpio: bad name "${e.name}"`);
    const data = e.type === 'file' ? e.data ?? new Uint8Array() : new Uint8Array();
    out.push(header(ino++, (e.type === 'dir' ? S_IFDIR : S_IFREG) | (e.mode & 0o7777), data.length, e.name));
    if (data.length) out.push(Buffer.from(data.buffer, data.byteOffset, data.length), Buffer.alloc(pad4(data.length)));
  }
  out.push(header(0, 0, 0, 'TRAILER!!!'));
  return out;
}
