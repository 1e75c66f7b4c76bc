// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78): the checksum ext4's metadata_csum and
// XFS v5 put on their metadata. Node's zlib has only the IEEE CRC-32 (which GPT uses), and the
// inputs here are metadata blocks, so a table-driven loop is fast enough.

const TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0x82f63b78 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

/**
 * The raw register update: no pre- or post-inversion, so callers can chain calls and apply the
 * conventions of their format (ext4 seeds with ~0 and stores the register; XFS stores its
 * complement). crc32c(data) below is the standard one.
 */
export function crc32cUpdate(crc: number, data: Uint8Array): number {
  let c = crc >>> 0;
  for (let i = 0; i < data.length; i++) c = TABLE[(c ^ data[i]!) & 0xff]! ^ (c >>> 8);
  return c >>> 0;
}

/** Standard CRC-32C (init ~0, final xor ~0): crc32c("123456789") = 0xe3069283. */
export function crc32c(data: Uint8Array): number {
  return (crc32cUpdate(0xffffffff, data) ^ 0xffffffff) >>> 0;
}
