// thin_dump --format human_readable, byte for byte as the reference prints it. Not readable back
// by thin_restore; meant for people.
import { DeviceInfo, MetadataVisitor, PoolInfo } from '../thin/events.js';
import { TextSink } from './output.js';

export class HumanReadableWriter implements MetadataVisitor {
  constructor(private readonly out: TextSink) {}

  superblockBegin(p: PoolInfo): void {
    const snap = p.metadataSnap === undefined ? '' : `, ${p.metadataSnap}`;
    this.out.write(
      `begin superblock: "${p.uuid}", ${p.time}, ${p.transaction}, ${p.flags}, ${p.version}, ` +
        `${p.dataBlockSize}, ${p.nrDataBlocks}${snap}\n`,
    );
  }

  superblockEnd(): void {
    this.out.write('end superblock\n');
  }

  deviceBegin(d: DeviceInfo): void {
    this.out.write(
      `device: ${d.devId}\nmapped_blocks: ${d.mappedBlocks}\ntransaction: ${d.transaction}\n` +
        `creation time: ${d.creationTime}\nsnap time: ${d.snapTime}\n`,
    );
  }

  deviceEnd(): void {
    this.out.write('\n');
  }

  mapRun(thinBegin: number, dataBegin: number, length: number, time: number): void {
    this.out.write(
      length === 1
        ? `    ${thinBegin} -> ${dataBegin}, ${time}\n`
        : `    (${thinBegin}..${thinBegin + length - 1}) -> (${dataBegin}..${dataBegin + length - 1}), ${time}\n`,
    );
  }
}
