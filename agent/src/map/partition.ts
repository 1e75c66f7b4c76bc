// A partition as found in the partition table, in bytes from the start of the disk.
export interface Partition {
  /** 1-based number as Linux names it (sda1, sda5 for the first MBR logical partition). */
  index: number;
  start: number;
  size: number;
  /** GPT type GUID (lower case) or MBR type byte as "0x83". */
  type: string;
  /** Human name of the type, when known ("Linux filesystem", "EFI System", "BIOS boot", ...). */
  typeName?: string;
  /** GPT partition name, if any. */
  name?: string;
  /** GPT unique partition GUID. */
  uuid?: string;
  /** True for partitions that hold raw bootloader code and must be copied whole (BIOS boot). */
  copyWhole?: boolean;
}

export interface PartitionTable {
  type: 'gpt' | 'mbr' | 'none';
  sectorSize: number;
  /** GPT disk GUID or MBR disk signature. */
  diskId?: string;
  partitions: Partition[];
  warnings: string[];
}
