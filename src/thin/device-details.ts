// A device-details leaf value (24 bytes): what the pool knows about one thin device.
import { U64, readU64, writeU64 } from '../pdata/le.js';

export const DEVICE_DETAILS_SIZE = 24;

export interface DeviceDetails {
  mappedBlocks: U64;
  transactionId: U64;
  creationTime: number;
  snapshottedTime: number;
}

export function decodeDeviceDetails(buf: Buffer, off: number): DeviceDetails {
  return {
    mappedBlocks: readU64(buf, off),
    transactionId: readU64(buf, off + 8),
    creationTime: buf.readUInt32LE(off + 16),
    snapshottedTime: buf.readUInt32LE(off + 20),
  };
}

export function encodeDeviceDetails(buf: Buffer, off: number, d: DeviceDetails): void {
  writeU64(buf, off, d.mappedBlocks);
  writeU64(buf, off + 8, d.transactionId);
  buf.writeUInt32LE(d.creationTime, off + 16);
  buf.writeUInt32LE(d.snapshottedTime, off + 20);
}
