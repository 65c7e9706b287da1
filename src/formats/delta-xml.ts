// thin_delta's XML, byte for byte as the reference thin_delta 0.9.0 prints it: the plain form
// (one element per range, `begin` then `length`) and the --verbose form (ranges grouped by kind,
// with their data blocks). Backup tools read it line by line, so the bytes are the interface.
import { U64 } from '../pdata/le.js';
import { DeltaHeader, DeltaKind, DeltaSide, DeltaVisitor } from '../thin/delta.js';
import { Ascii, ascii } from './ascii.js';
import { TextSink, withNumbers } from './output.js';

function sideAttr(name: string, side: DeltaSide): string {
  return 'devId' in side ? `${name}="${side.devId}"` : `${name}_root="${side.root}"`;
}

abstract class DeltaXmlBase implements DeltaVisitor {
  protected readonly out: Required<TextSink>;

  constructor(sink: TextSink) {
    this.out = withNumbers(sink);
  }

  begin(h: DeltaHeader): void {
    const snap = h.metadataSnap ? ` metadata_snap="${h.metadataSnap}"` : '';
    this.out.write(
      `<superblock uuid="" time="${h.time}" transaction="${h.transaction}" data_block_size="${h.dataBlockSize}"` +
        ` nr_data_blocks="${h.nrDataBlocks}"${snap}>\n  <diff ${sideAttr('left', h.left)} ${sideAttr('right', h.right)}>\n`,
    );
  }

  abstract range(kind: DeltaKind, begin: U64, length: number, leftData: number, rightData: number): void;

  end(): void {
    this.out.write('  </diff>\n</superblock>\n');
  }
}

const LENGTH = ascii('" length="');
const LINE_END = ascii('"/>\n');
const RANGE_START: Record<DeltaKind, Ascii> = {
  left_only: ascii('    <left_only begin="'),
  right_only: ascii('    <right_only begin="'),
  different: ascii('    <different begin="'),
  same: ascii('    <same begin="'),
};

/** `<same begin="B" length="N"/>` and its kin, one a line. */
export class DeltaXmlWriter extends DeltaXmlBase {
  range(kind: DeltaKind, begin: U64, length: number): void {
    const o = this.out;
    o.bytes(RANGE_START[kind]);
    o.number(begin);
    o.bytes(LENGTH);
    o.number(length);
    o.bytes(LINE_END);
  }
}

const VERBOSE_START = ascii('      <range begin="');
const DATA_BEGIN = ascii('" data_begin="');
const LEFT_DATA_BEGIN = ascii('" left_data_begin="');
const RIGHT_DATA_BEGIN = ascii('" right_data_begin="');

/** Ranges inside `<same>` ... `</same>` blocks, with the data blocks each side maps them to. */
export class VerboseDeltaXmlWriter extends DeltaXmlBase {
  private open: DeltaKind | null = null;

  range(kind: DeltaKind, begin: U64, length: number, leftData: number, rightData: number): void {
    const o = this.out;
    if (kind !== this.open) {
      if (this.open !== null) o.write(`    </${this.open}>\n`);
      o.write(`    <${kind}>\n`);
      this.open = kind;
    }
    o.bytes(VERBOSE_START);
    o.number(begin);
    if (kind === 'different') {
      o.bytes(LEFT_DATA_BEGIN);
      o.number(leftData);
      o.bytes(RIGHT_DATA_BEGIN);
      o.number(rightData);
    } else {
      o.bytes(DATA_BEGIN);
      o.number(kind === 'right_only' ? rightData : leftData);
    }
    o.bytes(LENGTH);
    o.number(length);
    o.bytes(LINE_END);
  }

  end(): void {
    if (this.open !== null) this.out.write(`    </${this.open}>\n`);
    super.end();
  }
}
