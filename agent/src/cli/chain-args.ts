// The chain `bmsnap flatten` and `bmsnap deploy` read: a Glance image and its parents (found
// from bmsnap_parent_image, each link checked), or local files (the delta first) with the top
// image's cluster index. Nothing is downloaded until open() is called.
import { createReadStream } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import type { Logger } from 'pino';
import { UsageError } from '../errors.js';
import { errnoText } from '../source/open-source.js';
import { parseIndex, type ClusterIndex } from '../incremental/cluster-index.js';
import type { ChainMember } from '../chain/chain-walk.js';
import { SequentialReader } from '../chain/sequential-reader.js';
import type { GlanceClient, GlanceImage } from '../glance/client.js';

export interface ChainArgs {
  index: ClusterIndex;
  /** The top image's index as stored (its SHA-256 names it). */
  indexBytes: Buffer;
  /** The top Glance image (none for local files). */
  topImage?: GlanceImage;
  open(): Promise<ChainMember[]>;
}

/** With INDEXPATH: local files IMAGES (top first); else IMAGES is one Glance image id. */
export async function chainArgs(images: string[], indexPath: string | undefined, client: GlanceClient | undefined, log: Logger, signal: AbortSignal): Promise<ChainArgs> {
  if (indexPath !== undefined) {
    for (const p of images) {
      const st = await stat(p).catch((err) => { throw new UsageError(`cannot read ${p}: ${errnoText(err)}`); });
      if (!st.isFile()) throw new UsageError(`${p} is not a regular file`);
    }
    const bytes = await readFile(indexPath).catch((err) => { throw new UsageError(`cannot read cluster index ${indexPath}: ${errnoText(err)}`); });
    return {
      index: parseIndex(bytes, `cluster index ${indexPath}`), indexBytes: bytes,
      open: async () => images.map((p) => ({ reader: new SequentialReader(createReadStream(p), `file ${p}`) })),
    };
  }
  if (images.length !== 1) throw new UsageError('give one Glance image id (its parents are found from its properties); local files need --index TOP.index');
  const { resolveGlanceChain, openGlanceChain } = await import('../chain/glance-chain.js');
  const chain = await resolveGlanceChain(client!, images[0]!, signal);
  log.info({ chain: chain.images.map((i) => i.id) }, 'chain resolved');
  return { index: chain.top.index, indexBytes: chain.top.bytes, topImage: chain.images[0]!, open: () => openGlanceChain(client!, chain, signal) };
}
