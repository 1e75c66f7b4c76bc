// TEMPORARY stub until the filesystem probes land.
import type { ByteReader } from '../../source/byte-reader.js';
import type { FsUsage } from './types.js';
export async function probeFilesystem(_r: ByteReader): Promise<FsUsage | null> { return null; }
