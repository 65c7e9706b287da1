// Streaming reader for thin_dump XML: turns a file or stream into MetadataVisitor events.
//
//   await readMetadataXml(path | opened file | readable, visitor, { name?, onProgress? });
//
// - Events arrive in document order while the input is read; memory stays flat whatever its size
//   (it holds one read chunk and the open-element stack, never the document).
// - Both forms are read: the flat one (0.9.0 and 1.x thin_dump) and the 1.x shared form, where
//   <def name=".."> at superblock level holds mappings (and <ref>s to earlier defs) once and
//   <ref name=".."/> inside a <device> or <def> refers to it; those become defBegin/defEnd/ref
//   (a visitor without them gets an error at the first <def>).
// - Anything else is refused with XmlInputError, one line: "<name>:<line>: <reason>", where name
//   is opts.name, else the path, else "stdin". This covers malformed XML, unknown elements and
//   attributes, missing or duplicate attributes, elements out of place, numbers that are not
//   plain non-negative decimals or exceed their field (dev_id < 2^24, data block < 2^40,
//   mapping time < 2^24, u32 fields < 2^32, u64 fields <= 2^53-1), length 0, trailing content.
// - A visitor may throw StreamError (src/thin/validate-stream.ts) for a semantic problem: the
//   reader rethrows it as XmlInputError at the line of the element that caused it. Any other
//   error from the visitor (e.g. a write failure) passes through unchanged.
// - Semantic rules (order, overlaps, nr_data_blocks, mapped_blocks, ...) are StreamValidator's.
import * as fs from 'node:fs';
import { Readable } from 'node:stream';
import { InputError, OpenedFile, openFile } from '../io/block-io.js';
import { Ascii, ascii, asciiAt } from './ascii.js';
import { U64, U64_MAX, parseU64 } from '../pdata/le.js';
import { MetadataVisitor, PoolInfo } from '../thin/events.js';
import { MAX_DATA_BLOCK, MAX_TIME } from '../thin/mapping.js';
import { StreamError } from '../thin/validate-stream.js';

export interface ReadXmlOptions {
  /** The input's name in error messages; defaults to the path, or "stdin" for a stream. */
  name?: string;
  /** Called as input is consumed, with the total bytes read so far (for a progress bar). */
  onProgress?: (bytesRead: number) => void;
}

/** Bad XML input; `message` is "<source>:<line>: <reason>". */
export class XmlInputError extends InputError {
  constructor(
    readonly source: string,
    readonly line: number,
    readonly reason: string,
  ) {
    super(`${source}:${line}: ${reason}`);
  }
}

export async function readMetadataXml(
  input: string | OpenedFile | Readable,
  visitor: MetadataVisitor,
  opts: ReadXmlOptions = {},
): Promise<void> {
  const name = opts.name ?? (typeof input === 'string' ? input : input instanceof Readable ? 'stdin' : input.path);
  const parser = new Parser(name, visitor);
  // One working buffer for the whole input: what a chunk leaves of an unfinished tag moves to
  // its front and the next bytes land behind it, so nothing is allocated per chunk.
  const work = Buffer.allocUnsafe(CHUNK_BYTES + MAX_TAG_BYTES);
  let filled = 0;
  let bytesRead = 0;
  const consume = () => {
    // XML has no zero bytes; binary metadata has them in its first 16 (the superblock's blocknr).
    if (bytesRead === filled && work.subarray(0, filled).includes(0)) {
      throw new InputError(`${name}: this looks like binary metadata, not XML (thin_dump turns metadata into XML)`);
    }
    const used = parser.feed(work.subarray(0, filled), false);
    work.copy(work, 0, used, filled);
    filled -= used;
    // Only an unfinished tag is carried over; a huge one is not thin_dump output.
    if (filled > MAX_TAG_BYTES) parser.fail('a tag longer than 1 MiB');
    opts.onProgress?.(bytesRead);
  };
  if (!(input instanceof Readable)) {
    // A path is opened (and closed) here; an opened file stays its opener's to close.
    const file = typeof input === 'string' ? openFile(input, 'stream') : input;
    try {
      for (;;) {
        const n = fs.readSync(file.fd, work, filled, CHUNK_BYTES, null);
        if (n === 0) break;
        filled += n;
        bytesRead += n;
        consume();
      }
    } finally {
      if (file !== input) fs.closeSync(file.fd);
    }
  } else {
    for await (const chunk of input) {
      const bytes: Buffer = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
      for (let at = 0; at < bytes.length; ) {
        const n = Math.min(bytes.length - at, CHUNK_BYTES);
        bytes.copy(work, filled, at, at + n);
        at += n;
        filled += n;
        bytesRead += n;
        consume();
      }
    }
  }
  if (bytesRead === 0) throw new InputError(`${name}: empty, not thin_dump XML`);
  parser.finish(work.subarray(0, filled));
}

const CHUNK_BYTES = 1 << 18;
const MAX_TAG_BYTES = 1 << 20;
const MAX_U32 = 2 ** 32 - 1;
/** Numbers that are block numbers or lengths, which never reach 2^53. */
const MAX_COUNT = Number.MAX_SAFE_INTEGER;
/** Attributes that are u64s on disk, carried exactly (see U64): the spec's max is this marker. */
const U64_ATTR = -1;
/** Up to 15 digits a double holds exactly; longer u64 values are parsed as bigints. */
const EXACT_DIGITS = 15;

const LT = 0x3c, GT = 0x3e, SLASH = 0x2f, EQ = 0x3d, DQ = 0x22, SQ = 0x27;
const NL = 0x0a, SP = 0x20, TAB = 0x09, CR = 0x0d, BANG = 0x21, QM = 0x3f, DASH = 0x2d;

function isNameByte(c: number): boolean {
  return (c >= 0x61 && c <= 0x7a) || (c >= 0x41 && c <= 0x5a) || (c >= 0x30 && c <= 0x39) ||
    c === 0x5f || c === DASH || c === 0x2e || c === 0x3a || c >= 0x80;
}

interface AttrSpec {
  name: string;
  bytes: Buffer;
  text: boolean; // a string, else a number in [min, max]
  u64: boolean; // a number in [min, 2^64-1], exact
  required: boolean;
  min: number;
  max: number;
}

interface ElementSpec {
  name: string;
  bytes: Buffer;
  attrs: AttrSpec[];
  requiredMask: number;
  /** Holds no other elements. */
  leaf: boolean;
}

function element(name: string, leaf: boolean, attrs: [string, 'text' | number, boolean, number?][]): ElementSpec {
  const specs = attrs.map(([n, type, required, min]) => ({
    name: n,
    bytes: Buffer.from(n),
    text: type === 'text',
    u64: type === U64_ATTR,
    required,
    min: min ?? 0,
    max: type === 'text' ? 0 : type,
  }));
  const requiredMask = specs.reduce((m, a, i) => (a.required ? m | (1 << i) : m), 0);
  return { name, bytes: Buffer.from(name), attrs: specs, requiredMask, leaf };
}

// Element kinds, indexes into ELEMENTS; attribute slots follow each spec's order.
const SUPERBLOCK = 0, DEVICE = 1, DEF = 2, SINGLE = 3, RANGE = 4, REF = 5;
const ELEMENTS: ElementSpec[] = [
  element('superblock', false, [
    ['uuid', 'text', true], ['time', MAX_U32, true], ['transaction', U64_ATTR, true],
    ['flags', MAX_U32, false], ['version', MAX_U32, false], ['data_block_size', MAX_U32, true],
    ['nr_data_blocks', U64_ATTR, true], ['metadata_snap', MAX_COUNT, false],
  ]),
  element('device', false, [
    ['dev_id', 2 ** 24 - 1, true], ['mapped_blocks', U64_ATTR, true], ['transaction', U64_ATTR, true],
    ['creation_time', MAX_U32, true], ['snap_time', MAX_U32, true],
  ]),
  element('def', false, [['name', 'text', true]]),
  element('single_mapping', true, [
    ['origin_block', U64_ATTR, true], ['data_block', MAX_DATA_BLOCK, true], ['time', MAX_TIME, true],
  ]),
  element('range_mapping', true, [
    ['origin_begin', U64_ATTR, true], ['data_begin', MAX_DATA_BLOCK, true], ['length', MAX_COUNT, true, 1],
    ['time', MAX_TIME, true],
  ]),
  element('ref', true, [['name', 'text', true]]),
];

/** By element kind (NO_ELEMENT: none open), whether mappings may appear inside. */
const NO_ELEMENT = ELEMENTS.length;
const HOLDS_MAPPINGS = new Uint8Array(NO_ELEMENT + 1);
HOLDS_MAPPINGS[DEVICE] = HOLDS_MAPPINGS[DEF] = 1;
/** By the byte after a '<': itself if it may start a mapping, else 0 (a table, like HOLDS_MAPPINGS). */
const MAPPING_TAG = new Uint8Array(256);

const ENTITIES: Record<string, string> = { lt: '<', gt: '>', amp: '&', quot: '"', apos: "'" };

/**
 * A mapping exactly as thin_dump prints it, after its '<': literal pieces, a number's digits
 * between each two. Nearly every line of a dump is one of these two, so they are matched first,
 * the literal bytes four at a time, without looking attributes up; anything else goes the
 * general way.
 */
interface MappingTemplate {
  literals: Ascii[];
  /** What each number is: 0 thin block, 1 data block, 2 length, 3 time; a single's length is 1. */
  slots: number[];
}
const SINGLE_TEMPLATE: MappingTemplate = {
  literals: ['single_mapping origin_block="', '" data_block="', '" time="', '"/>'].map(ascii),
  slots: [0, 1, 3],
};
const RANGE_TEMPLATE: MappingTemplate = {
  literals: ['range_mapping origin_begin="', '" data_begin="', '" length="', '" time="', '"/>'].map(ascii),
  slots: [0, 1, 2, 3],
};
const LOWER_S = 0x73, LOWER_R = 0x72;
MAPPING_TAG[LOWER_S] = LOWER_S;
MAPPING_TAG[LOWER_R] = LOWER_R;

class Parser {
  /** Line of the byte being scanned. */
  private line = 1;
  /** Line where the construct being parsed began: where errors point. */
  private at = 1;
  /** Bytes consumed by earlier feeds (the XML declaration may only come first). */
  private offset = 0;
  private inComment = false;
  /** Where the XML declaration may be: the first byte, or after a byte-order mark. */
  private declarationAt = 0;
  /** No more input will follow: constructs cut short are errors, not waits. */
  private final = false;
  private rootSeen = false;
  private readonly stack: number[] = [];
  private readonly stackLines: number[] = [];
  // The tag being parsed: attribute values by slot, and which slots were given.
  private readonly nums = new Float64Array(8);
  private readonly texts: string[] = [];
  /** u64 values too long for a double, by slot, where `bigMask` has the slot's bit. */
  private readonly bigs: U64[] = [];
  private bigMask = 0;
  private seen = 0;
  /** The buffer being fed, for reading four bytes at once. */
  private view: DataView<ArrayBufferLike> = new DataView(new ArrayBuffer(0));

  constructor(
    private readonly source: string,
    private readonly visitor: MetadataVisitor,
  ) {}

  fail(reason: string): never {
    throw new XmlInputError(this.source, this.at, reason);
  }

  /** Consumes what it can of `buf`; returns how many bytes, the rest being an unfinished construct. */
  feed(buf: Buffer, final: boolean): number {
    let pos = 0;
    this.final = final;
    if (this.view.buffer !== buf.buffer || this.view.byteOffset !== buf.byteOffset || this.view.byteLength !== buf.length) {
      this.view = new DataView(buf.buffer, buf.byteOffset, buf.length);
    }
    if (this.offset === 0 && !final && buf.length < 3) return 0; // wait to see whether a BOM starts it
    if (this.offset === 0 && buf[0] === 0xef && buf[1] === 0xbb && buf[2] === 0xbf) pos = this.declarationAt = 3;
    try {
      pos = this.scan(buf, pos);
    } catch (e) {
      if (e instanceof StreamError) this.fail(e.message);
      throw e;
    }
    this.offset += pos;
    return pos;
  }

  finish(rest: Buffer): void {
    const used = this.feed(rest, true);
    this.at = this.line;
    if (this.inComment) this.fail('unterminated comment at end of input');
    if (used < rest.length) this.fail('unexpected end of input inside a tag');
    const open = this.stack.length;
    if (open > 0) {
      const kind = this.stack[open - 1];
      this.fail(`unexpected end of input: <${ELEMENTS[kind].name}> (line ${this.stackLines[open - 1]}) is not closed`);
    }
    if (!this.rootSeen) this.fail('no <superblock> element');
  }

  private scan(buf: Buffer, pos: number): number {
    const len = buf.length;
    if (this.inComment) {
      pos = this.skipComment(buf, pos);
      if (this.inComment) return pos;
    }
    while (pos < len) {
      pos = this.mappingLines(buf, pos);
      if (pos >= len) break;
      const c = buf[pos];
      if (c === LT) {
        this.at = this.line;
        const next = this.markup(buf, pos);
        if (next < 0) {
          this.line = this.at;
          break;
        }
        pos = next;
        if (this.inComment) return pos;
      } else if (c === NL) {
        this.line++;
        pos++;
      } else if (c === SP || c === TAB || c === CR) {
        pos++;
      } else {
        if (len - pos < 20 && !this.final) break; // quote a little of it in the error
        this.at = this.line;
        const text = buf.toString('utf8', pos, Math.min(len, pos + 20)).split(/\s/)[0];
        if (this.rootSeen && this.stack.length === 0) this.fail(`trailing garbage after </superblock>: '${text}'`);
        this.fail(`unexpected text '${text}'`);
      }
    }
    return pos;
  }

  /** Parses the construct at buf[start] === '<'; returns the position after it, or -1 if it is unfinished. */
  private markup(buf: Buffer, start: number): number {
    const len = buf.length;
    if (start + 1 >= len) return -1;
    const c1 = buf[start + 1];
    if (c1 === BANG) {
      if (start + 4 > len) return -1;
      if (buf[start + 2] !== DASH || buf[start + 3] !== DASH) {
        if (start + 10 > len && !this.final) return -1; // quote a little of it in the error
        this.fail(`unsupported markup '${buf.toString('latin1', start, Math.min(len, start + 10))}'`);
      }
      this.inComment = true;
      return this.skipComment(buf, start + 4);
    }
    if (c1 === QM) return this.declaration(buf, start);
    if (c1 === SLASH) return this.endTag(buf, start);
    return this.startTag(buf, start);
  }

  /**
   * Inside a <device> or <def>: the whitespace and the mappings in thin_dump's own layout from
   * `pos` on, every number plain and in range, emitted; returns the position of the first other
   * construct (other spacing or order, a bad value, a tag cut off by the chunk's end, any other
   * element), for `scan` to read the general way and word any error.
   *
   * Nearly all of a dump goes through this one loop, so V8 optimises it early, and no rare
   * construct (a device's end, a comment) ever runs inside its optimised code and throws that
   * code away. Singles and ranges take the same steps (a single's length is preset), so V8's
   * feedback for one serves the other. The mapping is parsed here rather than in a function of
   * its own: inlined into this loop, such a function had V8 box a number per mapping.
   */
  private mappingLines(buf: Buffer, pos: number): number {
    // A table, not comparisons: a comparison first made after V8 optimised this would undo it.
    if (!HOLDS_MAPPINGS[this.stack.length > 0 ? this.stack[this.stack.length - 1] : NO_ELEMENT]) return pos;
    const len = buf.length;
    const view = this.view;
    while (pos < len) {
      const c = buf[pos];
      if (c === SP) {
        pos++;
        continue;
      }
      if (c === NL) {
        this.line++;
        pos++;
        continue;
      }
      if (c !== LT || pos + 1 >= len) return pos;
      const tag = MAPPING_TAG[buf[pos + 1]];
      if (tag === 0) return pos;
      const tmpl = tag === LOWER_S ? SINGLE_TEMPLATE : RANGE_TEMPLATE;
      const literals = tmpl.literals;
      const slots = tmpl.slots;
      let thinBlock = 0, dataBlock = 0, length = 1, time = 0;
      let p = pos + 1;
      for (let k = 0; ; k++) {
        const lit = literals[k];
        if (p + lit.length > len || !asciiAt(view, buf, p, lit)) return pos;
        p += lit.length;
        if (k === slots.length) break;
        const digits = p;
        let v = 0;
        for (; p < len; p++) {
          const d = buf[p] - 0x30;
          if (d < 0 || d > 9) break;
          v = v * 10 + d;
        }
        if (p === digits || p - digits > EXACT_DIGITS) return pos;
        const slot = slots[k];
        if (slot === 0) thinBlock = v;
        else if (slot === 1) dataBlock = v;
        else if (slot === 2) length = v;
        else time = v;
      }
      if (dataBlock > MAX_DATA_BLOCK || length < 1 || time > MAX_TIME) return pos;
      this.at = this.line;
      this.visitor.mapRun(thinBlock, dataBlock, length, time);
      pos = p;
    }
    return pos;
  }

  /** Skips comment text up to and including "-->"; returns how far it got. */
  private skipComment(buf: Buffer, pos: number): number {
    const len = buf.length;
    for (;;) {
      const dash = buf.indexOf(DASH, pos);
      const stop = dash < 0 ? len : dash;
      for (let i = pos; i < stop; i++) if (buf[i] === NL) this.line++;
      if (dash < 0) return len;
      if (dash + 2 >= len) return dash; // cannot tell yet whether "--" or "-->" follows
      if (buf[dash + 1] === DASH) {
        if (buf[dash + 2] !== GT) this.fail("'--' inside a comment");
        this.inComment = false;
        return dash + 3;
      }
      pos = dash + 1;
    }
  }

  private declaration(buf: Buffer, start: number): number {
    const end = buf.indexOf('?>', start);
    if (end < 0) return -1;
    const decl = buf.toString('utf8', start, end + 2);
    if (!/^<\?xml\s/.test(decl)) this.fail(`unsupported processing instruction '${decl.slice(0, 20)}'`);
    if (this.offset + start !== this.declarationAt) this.fail('the XML declaration must come first');
    const encoding = /encoding\s*=\s*["']([^"']*)["']/.exec(decl)?.[1];
    if (encoding && !/^(utf-?8|us-ascii)$/i.test(encoding)) this.fail(`unsupported encoding '${encoding}'`);
    for (let i = start; i < end; i++) if (buf[i] === NL) this.line++;
    return end + 2;
  }

  private endTag(buf: Buffer, start: number): number {
    const len = buf.length;
    let p = start + 2;
    while (p < len && isNameByte(buf[p])) p++;
    const nameEnd = p;
    while (p < len && (buf[p] === SP || buf[p] === TAB || buf[p] === CR || buf[p] === NL)) {
      if (buf[p] === NL) this.line++;
      p++;
    }
    if (p >= len) return -1;
    const name = buf.toString('utf8', start + 2, nameEnd);
    if (buf[p] !== GT) this.fail(`malformed end tag </${name}`);
    const open = this.stack.length;
    if (open === 0) this.fail(`unexpected </${name}>`);
    const kind = this.stack[open - 1];
    const expected = ELEMENTS[kind];
    if (!sameBytes(buf, start + 2, nameEnd, expected.bytes)) {
      this.fail(`</${name}> does not close <${expected.name}> (line ${this.stackLines[open - 1]})`);
    }
    this.stack.pop();
    this.stackLines.pop();
    if (kind === DEVICE) this.visitor.deviceEnd();
    else if (kind === SUPERBLOCK) this.visitor.superblockEnd();
    else if (kind === DEF) this.visitor.defEnd!();
    return p + 1;
  }

  private startTag(buf: Buffer, start: number): number {
    const len = buf.length;
    let p = start + 1;
    while (p < len && isNameByte(buf[p])) p++;
    if (p >= len) return -1;
    const kind = elementKind(buf, start + 1, p);
    if (kind < 0) {
      const name = buf.toString('utf8', start + 1, p);
      this.fail(name ? `unknown element <${name}>` : `malformed tag '<${buf.toString('utf8', p, p + 1)}'`);
    }
    const spec = ELEMENTS[kind];
    let line = this.line;
    let selfClosing: boolean;
    this.seen = 0;
    this.bigMask = 0;
    for (;;) {
      let space = false;
      let c = 0;
      while (p < len) {
        c = buf[p];
        if (c === SP || c === TAB || c === CR) space = true;
        else if (c === NL) { space = true; line++; }
        else break;
        p++;
      }
      if (p >= len) return -1;
      if (c === GT) {
        selfClosing = false;
        p++;
        break;
      }
      if (c === SLASH) {
        if (p + 1 >= len) return -1;
        if (buf[p + 1] !== GT) this.fail(`malformed <${spec.name}> tag: '/' not followed by '>'`);
        selfClosing = true;
        p += 2;
        break;
      }
      const nameStart = p;
      while (p < len && isNameByte(buf[p])) p++;
      if (p >= len) return -1;
      const nameEnd = p;
      if (nameEnd === nameStart) this.fail(`malformed <${spec.name}> tag: unexpected '${String.fromCharCode(c)}'`);
      if (!space) this.fail(`malformed <${spec.name}> tag: no space before attribute '${buf.toString('utf8', nameStart, nameEnd)}'`);
      while (p < len && (buf[p] === SP || buf[p] === TAB || buf[p] === CR || buf[p] === NL)) {
        if (buf[p] === NL) line++;
        p++;
      }
      if (p >= len) return -1;
      if (buf[p] !== EQ) this.fail(`attribute '${buf.toString('utf8', nameStart, nameEnd)}' of <${spec.name}> has no value`);
      p++;
      while (p < len && (buf[p] === SP || buf[p] === TAB || buf[p] === CR || buf[p] === NL)) {
        if (buf[p] === NL) line++;
        p++;
      }
      if (p >= len) return -1;
      const quote = buf[p];
      if (quote !== DQ && quote !== SQ) {
        this.fail(`value of attribute '${buf.toString('utf8', nameStart, nameEnd)}' of <${spec.name}> is not quoted`);
      }
      const valueEnd = buf.indexOf(quote, p + 1);
      if (valueEnd < 0) return -1;
      line += this.attribute(spec, buf, nameStart, nameEnd, p + 1, valueEnd);
      p = valueEnd + 1;
    }
    if ((this.seen & spec.requiredMask) !== spec.requiredMask) {
      const missing = spec.attrs.find((a, i) => a.required && !(this.seen & (1 << i)))!;
      this.fail(`<${spec.name}> is missing attribute '${missing.name}'`);
    }
    this.element(kind, selfClosing);
    this.line = line;
    return p;
  }

  /** Stores one attribute's value in its slot; returns the newlines inside the value. */
  private attribute(spec: ElementSpec, buf: Buffer, nameStart: number, nameEnd: number, vs: number, ve: number): number {
    const attrs = spec.attrs;
    let slot = -1;
    for (let i = 0; i < attrs.length; i++) {
      if (sameBytes(buf, nameStart, nameEnd, attrs[i].bytes)) {
        slot = i;
        break;
      }
    }
    if (slot < 0) this.fail(`unknown attribute '${buf.toString('utf8', nameStart, nameEnd)}' on <${spec.name}>`);
    const a = attrs[slot];
    if (this.seen & (1 << slot)) this.fail(`attribute '${a.name}' given twice on <${spec.name}>`);
    this.seen |= 1 << slot;
    if (a.text) {
      this.texts[slot] = this.text(spec, a, buf, vs, ve);
      let lines = 0;
      for (let i = vs; i < ve; i++) if (buf[i] === NL) lines++;
      return lines;
    }
    let v = 0;
    for (let i = vs; i < ve; i++) {
      const d = buf[i] - 0x30;
      if (d < 0 || d > 9) {
        this.fail(`<${spec.name}> ${a.name}="${shown(buf, vs, ve)}" is not a non-negative decimal integer`);
      }
      v = v * 10 + d;
    }
    if (vs === ve) this.fail(`<${spec.name}> ${a.name}="" is not a non-negative decimal integer`);
    if (a.u64) {
      if (ve - vs > EXACT_DIGITS) {
        const exact = parseU64(buf.toString('latin1', vs, ve));
        if (exact === null) this.fail(`<${spec.name}> ${a.name}="${shown(buf, vs, ve)}" is out of range (0 .. ${U64_MAX})`);
        this.bigs[slot] = exact;
        this.bigMask |= 1 << slot;
      }
      this.nums[slot] = v;
      return 0;
    }
    if (v > a.max || v < a.min) {
      this.fail(`<${spec.name}> ${a.name}="${shown(buf, vs, ve)}" is out of range (${a.min} .. ${a.max})`);
    }
    this.nums[slot] = v;
    return 0;
  }

  private text(spec: ElementSpec, a: AttrSpec, buf: Buffer, vs: number, ve: number): string {
    const raw = buf.toString('utf8', vs, ve);
    if (raw.includes('<')) this.fail(`'<' inside attribute '${a.name}' of <${spec.name}>`);
    if (!raw.includes('&')) return raw;
    return raw.replace(/&([^;&]*)(;?)/g, (whole, ref: string, semi: string) => {
      let ch: string | undefined;
      if (semi) {
        const hex = /^#x([0-9a-fA-F]{1,6})$/.exec(ref);
        const dec = /^#([0-9]{1,7})$/.exec(ref);
        const code = hex ? parseInt(hex[1], 16) : dec ? Number(dec[1]) : -1;
        ch = code >= 0 ? (code <= 0x10ffff ? String.fromCodePoint(code) : undefined) : ENTITIES[ref];
      }
      if (ch === undefined) this.fail(`bad entity '${whole.slice(0, 12)}' in attribute '${a.name}' of <${spec.name}>`);
      return ch;
    });
  }

  /** A complete start tag: checks its place in the document and emits its events. */
  private element(kind: number, selfClosing: boolean): void {
    const open = this.stack.length;
    const parent = open > 0 ? this.stack[open - 1] : -1;
    const spec = ELEMENTS[kind];
    if (this.rootSeen && open === 0 && kind !== SUPERBLOCK) this.fail(`trailing garbage after </superblock>: <${spec.name}>`);
    if (parent >= 0 && ELEMENTS[parent].leaf) this.fail(`<${spec.name}> inside <${ELEMENTS[parent].name}>, which holds nothing`);
    const v = this.visitor;
    const n = this.nums;
    const u = (slot: number): U64 => ((this.bigMask & (1 << slot)) !== 0 ? this.bigs[slot] : n[slot]);
    switch (kind) {
      case SINGLE:
      case RANGE:
      case REF:
        if (parent !== DEVICE && parent !== DEF) this.fail(`<${spec.name}> outside a <device> or <def>`);
        if (kind === SINGLE) v.mapRun(u(0), n[1], 1, n[2]);
        else if (kind === RANGE) v.mapRun(u(0), n[1], n[2], n[3]);
        else {
          if (!v.ref) this.fail('shared mappings (<def>/<ref>) are not supported here');
          v.ref(this.texts[0]);
        }
        break;
      case DEVICE:
        if (parent === DEVICE) this.fail(`<device> nested inside <device> (line ${this.stackLines[open - 1]})`);
        if (parent !== SUPERBLOCK) this.fail(parent < 0 ? '<device> outside <superblock>' : `<device> inside <${ELEMENTS[parent].name}>`);
        v.deviceBegin({ devId: n[0], mappedBlocks: u(1), transaction: u(2), creationTime: n[3], snapTime: n[4] });
        if (selfClosing) v.deviceEnd();
        break;
      case DEF:
        if (parent !== SUPERBLOCK) this.fail(parent < 0 ? '<def> outside <superblock>' : `<def> inside <${ELEMENTS[parent].name}>`);
        if (!v.defBegin || !v.defEnd) this.fail('shared mappings (<def>/<ref>) are not supported here');
        v.defBegin(this.texts[0]);
        if (selfClosing) v.defEnd();
        break;
      case SUPERBLOCK: {
        if (parent >= 0) this.fail(`<superblock> inside <${ELEMENTS[parent].name}>`);
        if (this.rootSeen) this.fail('a second <superblock>');
        this.rootSeen = true;
        const has = (slot: number) => (this.seen & (1 << slot)) !== 0;
        const pool: PoolInfo = {
          uuid: this.texts[0],
          time: n[1],
          transaction: u(2),
          flags: has(3) ? n[3] : 0,
          version: has(4) ? n[4] : 2,
          dataBlockSize: n[5],
          nrDataBlocks: u(6),
        };
        if (has(7)) pool.metadataSnap = n[7];
        v.superblockBegin(pool);
        if (selfClosing) v.superblockEnd();
        break;
      }
    }
    if (!selfClosing) {
      this.stack.push(kind);
      this.stackLines.push(this.at);
    }
  }
}

function elementKind(buf: Buffer, s: number, e: number): number {
  for (let k = 0; k < ELEMENTS.length; k++) if (sameBytes(buf, s, e, ELEMENTS[k].bytes)) return k;
  return -1;
}

function sameBytes(buf: Buffer, s: number, e: number, name: Buffer): boolean {
  if (e - s !== name.length) return false;
  for (let i = 0; i < name.length; i++) if (buf[s + i] !== name[i]) return false;
  return true;
}

/** An attribute value for an error message, cut short if long. */
function shown(buf: Buffer, vs: number, ve: number): string {
  const s = buf.toString('utf8', vs, Math.min(ve, vs + 32));
  return ve - vs > 32 ? `${s}...` : s;
}
