// Device-mapper tables of the volumes live capture snapshots. Only linear segments are
// understood (what LVM makes by default): each maps a run of the volume's sectors onto a run of
// a partition's, which is what lets the capture put the snapshot's bytes back at the right place
// on the disk. Anything else (striped, thin, crypt, raid, ...) is refused by the caller.

export interface LinearSegment {
  /** Sector (512 bytes) in the volume where the segment starts, and its length in sectors. */
  start: number;
  length: number;
  /** MAJ:MIN of the device beneath and the sector there where the segment starts. */
  device: string;
  offset: number;
}

export type ParsedTable = { segments: LinearSegment[] } | { unsupported: string };

/** Parses `dmsetup table NAME` output (devices as MAJ:MIN). */
export function parseTable(text: string): ParsedTable {
  const segments: LinearSegment[] = [];
  for (const line of text.split('\n').map((l) => l.trim()).filter(Boolean)) {
    const f = line.split(/\s+/);
    const [start, length] = [Number(f[0]), Number(f[1])];
    const target = f[2] ?? '';
    if (!Number.isSafeInteger(start) || !Number.isSafeInteger(length)) return { unsupported: `unreadable table line "${line}"` };
    if (target !== 'linear') return { unsupported: `a ${target || 'empty'} target` };
    if (f.length !== 5 || !/^\d+:\d+$/.test(f[3]!) || !/^\d+$/.test(f[4]!)) return { unsupported: `unreadable linear line "${line}"` };
    segments.push({ start, length, device: f[3]!, offset: Number(f[4]) });
  }
  if (!segments.length) return { unsupported: 'an empty table' };
  return { segments };
}

/** The table text with every segment, for `dmsetup create/reload --table` (one line per segment). */
export function tableText(segments: readonly LinearSegment[]): string {
  return segments.map((s) => `${s.start} ${s.length} linear ${s.device} ${s.offset}`).join('\n');
}

export function tableSectors(segments: readonly LinearSegment[]): number {
  return segments.reduce((n, s) => Math.max(n, s.start + s.length), 0);
}
