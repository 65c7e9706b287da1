// The thin_dump XML format, byte for byte as the reference tools print it: one element per line,
// two spaces of indent per level, attributes in a fixed order, mappings as self-closing tags.
import { U64 } from '../pdata/le.js';
import { DeviceInfo, MetadataVisitor, PoolInfo } from '../thin/events.js';
import { ascii } from './ascii.js';
import { TextSink, withNumbers } from './output.js';

/** Indents by nesting depth rather than by element, so nested forms (<def>) indent correctly. */
const INDENT = ['', '  ', '    ', '      ', '        '];

/** The pieces of every mapping line after the first number, encoded once. */
const DATA_BLOCK = ascii('" data_block="');
const DATA_BEGIN = ascii('" data_begin="');
const LENGTH = ascii('" length="');
const TIME = ascii('" time="');
const LINE_END = ascii('"/>\n');

export class XmlWriter implements MetadataVisitor {
  private depth = 0;
  private pad = '';
  /** Indent and tag of the mapping lines at the current depth, encoded. */
  private singleStart = ascii('<single_mapping origin_block="');
  private rangeStart = ascii('<range_mapping origin_begin="');
  private readonly out: Required<TextSink>;

  constructor(sink: TextSink) {
    this.out = withNumbers(sink);
  }

  private open(): void {
    this.indent(this.depth + 1);
  }

  private close(): void {
    this.indent(this.depth - 1);
  }

  private indent(depth: number): void {
    this.depth = depth;
    this.pad = INDENT[depth] ?? '  '.repeat(depth);
    this.singleStart = ascii(`${this.pad}<single_mapping origin_block="`);
    this.rangeStart = ascii(`${this.pad}<range_mapping origin_begin="`);
  }

  superblockBegin(p: PoolInfo): void {
    const snap = p.metadataSnap === undefined ? '' : ` metadata_snap="${p.metadataSnap}"`;
    this.out.write(
      `${this.pad}<superblock uuid="${escapeAttr(p.uuid)}" time="${p.time}" transaction="${p.transaction}"` +
        ` flags="${p.flags}" version="${p.version}" data_block_size="${p.dataBlockSize}"` +
        ` nr_data_blocks="${p.nrDataBlocks}"${snap}>\n`,
    );
    this.open();
  }

  superblockEnd(): void {
    this.close();
    this.out.write(`${this.pad}</superblock>\n`);
  }

  deviceBegin(d: DeviceInfo): void {
    this.out.write(
      `${this.pad}<device dev_id="${d.devId}" mapped_blocks="${d.mappedBlocks}" transaction="${d.transaction}"` +
        ` creation_time="${d.creationTime}" snap_time="${d.snapTime}">\n`,
    );
    this.open();
  }

  deviceEnd(): void {
    this.close();
    this.out.write(`${this.pad}</device>\n`);
  }

  /** The shared-subtree form, laid out as 1.x prints it: defs at device level, refs among mappings. */
  defBegin(name: string): void {
    this.out.write(`${this.pad}<def name="${escapeAttr(name)}">\n`);
    this.open();
  }

  defEnd(): void {
    this.close();
    this.out.write(`${this.pad}</def>\n`);
  }

  ref(name: string): void {
    this.out.write(`${this.pad}<ref name="${escapeAttr(name)}"/>\n`);
  }

  // The hot path: encoded pieces and digits go straight to the sink, no string per mapping.
  mapRun(thinBegin: U64, dataBegin: number, length: number, time: number): void {
    const o = this.out;
    if (length === 1) {
      o.bytes(this.singleStart);
      o.number(thinBegin);
      o.bytes(DATA_BLOCK);
      o.number(dataBegin);
    } else {
      o.bytes(this.rangeStart);
      o.number(thinBegin);
      o.bytes(DATA_BEGIN);
      o.number(dataBegin);
      o.bytes(LENGTH);
      o.number(length);
    }
    o.bytes(TIME);
    o.number(time);
    o.bytes(LINE_END);
  }
}

/** The uuid and def names are the only free text in the format. */
function escapeAttr(s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}
