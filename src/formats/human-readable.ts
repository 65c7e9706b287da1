// thin_dump --format human_readable, byte for byte as the reference prints it. Not readable back
// by thin_restore; meant for people.
import { U64, u64Add } from '../pdata/le.js';
import { DeviceInfo, MetadataVisitor, PoolInfo } from '../thin/events.js';
import { TextSink, withNumbers } from './output.js';

export class HumanReadableWriter implements MetadataVisitor {
  private readonly out: Required<TextSink>;

  constructor(sink: TextSink) {
    this.out = withNumbers(sink);
  }

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

  mapRun(thinBegin: U64, dataBegin: number, length: number, time: number): void {
    const o = this.out;
    if (length === 1) {
      o.write('    ');
      o.number(thinBegin);
      o.write(' -> ');
      o.number(dataBegin);
    } else {
      o.write('    (');
      o.number(thinBegin);
      o.write('..');
      o.number(u64Add(thinBegin, length - 1));
      o.write(') -> (');
      o.number(dataBegin);
      o.write('..');
      o.number(dataBegin + length - 1);
      o.write(')');
    }
    o.write(', ');
    o.number(time);
    o.write('\n');
  }
}
