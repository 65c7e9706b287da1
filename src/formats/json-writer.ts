// JSON output for thin_dump, thin_delta and thin_ls (`--format json`; schema in
// docs/json-format.md). Streamed like the XML, one object a line: nothing is held per mapping.
// Every integer is written with all its digits, u64 values past 2^53 included (readers parse them
// as 64-bit integers; docs/decisions.md says why not strings). Always the flat form: no <def>/<ref>.
import { U64 } from '../pdata/le.js';
import { DeltaHeader, DeltaKind, DeltaSide, DeltaVisitor } from '../thin/delta.js';
import { DeviceInfo, MetadataVisitor, PoolInfo } from '../thin/events.js';
import { TextSink, withNumbers } from './output.js';

/** A JSON string literal (the uuid is the only free text). */
function str(s: string): string {
  return JSON.stringify(s);
}

/**
 * Arrays whose elements arrive one at a time: an element's line gets its comma (or not) when
 * the next element (or the array's end) shows whether another follows.
 */
class JsonStream {
  readonly out: Required<TextSink>;
  /** Per open array: whether it has an element yet. */
  private readonly arrays: boolean[] = [];

  constructor(sink: TextSink) {
    this.out = withNumbers(sink);
  }

  /** Starts an element of the innermost array: writes the separator and indent. */
  element(): void {
    const depth = this.arrays.length;
    this.out.write(this.arrays[depth - 1] ? ',\n' : '\n');
    this.arrays[depth - 1] = true;
    this.out.write('  '.repeat(depth));
  }

  /** Opens an array as the value being written (the caller wrote its key). */
  openArray(): void {
    this.out.write('[');
    this.arrays.push(false);
  }

  closeArray(): void {
    const hadElements = this.arrays.pop();
    this.out.write(hadElements ? `\n${'  '.repeat(this.arrays.length)}]` : ']');
  }

  number(v: U64): void {
    this.out.number(v);
  }
}

/** thin_dump --format json. */
export class JsonDumpWriter implements MetadataVisitor {
  private readonly j: JsonStream;

  constructor(sink: TextSink) {
    this.j = new JsonStream(sink);
  }

  superblockBegin(p: PoolInfo): void {
    const snap = p.metadataSnap === undefined ? '' : `, "metadata_snap": ${p.metadataSnap}`;
    this.j.out.write(
      `{"superblock": {"uuid": ${str(p.uuid)}, "time": ${p.time}, "transaction": ${p.transaction}, "flags": ${p.flags}, ` +
        `"version": ${p.version}, "data_block_size": ${p.dataBlockSize}, "nr_data_blocks": ${p.nrDataBlocks}${snap}, "devices": `,
    );
    this.j.openArray();
  }

  superblockEnd(): void {
    this.j.closeArray();
    this.j.out.write('}}\n');
  }

  deviceBegin(d: DeviceInfo): void {
    this.j.element();
    this.j.out.write(
      `{"dev_id": ${d.devId}, "mapped_blocks": ${d.mappedBlocks}, "transaction": ${d.transaction}, ` +
        `"creation_time": ${d.creationTime}, "snap_time": ${d.snapTime}, "mappings": `,
    );
    this.j.openArray();
  }

  deviceEnd(): void {
    this.j.closeArray();
    this.j.out.write('}');
  }

  mapRun(thinBegin: U64, dataBegin: number, length: number, time: number): void {
    const j = this.j;
    j.element();
    j.out.write('{"origin_begin": ');
    j.number(thinBegin);
    j.out.write(', "data_begin": ');
    j.number(dataBegin);
    j.out.write(', "length": ');
    j.number(length);
    j.out.write(', "time": ');
    j.number(time);
    j.out.write('}');
  }
}

function side(name: string, s: DeltaSide): string {
  return 'devId' in s ? `"${name}": ${s.devId}` : `"${name}_root": ${s.root}`;
}

/** thin_delta --format json: the ranges of either mode, with the data blocks when verbose. */
export class JsonDeltaWriter implements DeltaVisitor {
  private readonly j: JsonStream;

  constructor(sink: TextSink, private readonly verbose: boolean) {
    this.j = new JsonStream(sink);
  }

  begin(h: DeltaHeader): void {
    const snap = h.metadataSnap ? `, "metadata_snap": ${h.metadataSnap}` : '';
    this.j.out.write(
      `{"superblock": {"uuid": "", "time": ${h.time}, "transaction": ${h.transaction}, "data_block_size": ${h.dataBlockSize}, ` +
        `"nr_data_blocks": ${h.nrDataBlocks}${snap}}, "diff": {${side('left', h.left)}, ${side('right', h.right)}, "ranges": `,
    );
    this.j.openArray();
  }

  range(kind: DeltaKind, begin: U64, length: number, leftData: number, rightData: number): void {
    const j = this.j;
    j.element();
    j.out.write(`{"type": "${kind}", "begin": `);
    j.number(begin);
    j.out.write(', "length": ');
    j.number(length);
    if (this.verbose) {
      if (kind !== 'right_only') {
        j.out.write(', "left_data_begin": ');
        j.number(leftData);
      }
      if (kind !== 'left_only') {
        j.out.write(', "right_data_begin": ');
        j.number(rightData);
      }
    }
    j.out.write('}');
  }

  end(): void {
    this.j.closeArray();
    this.j.out.write('}}\n');
  }
}

/**
 * thin_ls --format json: one object per device, keyed by the fields asked for (lower case); the
 * fields `text` names (human-readable sizes) are strings, the others numbers.
 */
export class JsonTableWriter {
  private readonly j: JsonStream;

  constructor(sink: TextSink, private readonly fields: readonly string[], private readonly text: ReadonlySet<string>) {
    this.j = new JsonStream(sink);
    this.j.out.write('{"devices": ');
    this.j.openArray();
  }

  row(cells: readonly string[]): void {
    this.j.element();
    const members = cells.map((c, i) => `"${this.fields[i].toLowerCase()}": ${this.text.has(this.fields[i]) ? str(c) : c}`);
    this.j.out.write(`{${members.join(', ')}}`);
  }

  end(): void {
    this.j.closeArray();
    this.j.out.write('}\n');
  }
}
