// Seeded mutations of thin_dump XML for thin_restore: numbers at and past their limits, broken
// attributes, elements out of order, truncation, garbage bytes and broken structure.
import { Rand } from './random.js';

export const XML_MUTATIONS = ['xml-number', 'xml-attribute', 'xml-order', 'xml-truncate', 'xml-garbage', 'xml-structure'] as const;
export type XmlMutation = (typeof XML_MUTATIONS)[number];

export interface MutatedXml {
  xml: Buffer;
  notes: string[];
}

/** Numbers at the edges of every field width, and things that are not numbers. */
export const LIMITS = [
  '-1', '0', '1', '127', '128', '16777215', '16777216', '4294967295', '4294967296', '1099511627775', '1099511627776',
  '9007199254740991', '9007199254740992', '9007199254740993', '9223372036854775807', '9223372036854775808',
  '18446744073709551615', '18446744073709551616', `1${'0'.repeat(30)}`, '', 'abc', '1.5', '0x10', '+1', ' 1', '1 ',
  '1e3', '007', '-0', '\u0663', '&#49;', '2097152', '2097153', '4194304',
];

const ATTRIBUTE = /([A-Za-z_]+)="([^"]*)"/g;

export function mutateXml(source: Buffer, kind: XmlMutation, rand: Rand): MutatedXml {
  const notes: string[] = [];
  const text = source.toString('latin1');
  const lines = text.split('\n');
  const elementLines = lines.map((l, i) => (/<\w/.test(l) ? i : -1)).filter((i) => i >= 0);
  const anyElement = (): number => (elementLines.length ? rand.pick(elementLines) : 0);
  const join = (): Buffer => Buffer.from(lines.join('\n'), 'latin1');

  switch (kind) {
    case 'xml-number': {
      const n = rand.chance(0.7) ? 1 : rand.between(2, 4);
      for (let k = 0; k < n; k++) {
        const i = anyElement();
        const attrs = [...(lines[i] ?? '').matchAll(ATTRIBUTE)];
        if (!attrs.length) continue;
        const a = rand.pick(attrs);
        const orig = a[2];
        const v = rand.chance(0.15) && /^\d+$/.test(orig)
          ? String(BigInt(orig) + (rand.chance(0.5) ? 1n : -1n))
          : rand.pick(LIMITS);
        lines[i] = lines[i].replace(a[0], `${a[1]}="${v}"`);
        notes.push(`xml-number: line ${i + 1} ${a[1]}="${orig}" -> "${v}"`);
      }
      return { xml: join(), notes };
    }
    case 'xml-attribute': {
      const i = anyElement();
      const attrs = [...(lines[i] ?? '').matchAll(ATTRIBUTE)];
      const a = attrs.length ? rand.pick(attrs) : undefined;
      const op = a ? rand.pick(['drop', 'duplicate', 'rename', 'unknown', 'single-quotes', 'unquoted', 'no-space']) : 'unknown';
      const line = lines[i] ?? '';
      switch (op) {
        case 'drop':
          lines[i] = line.replace(` ${a![0]}`, '').replace(a![0], '');
          break;
        case 'duplicate':
          lines[i] = line.replace(a![0], `${a![0]} ${a![1]}="${rand.chance(0.5) ? a![2] : rand.pick(LIMITS)}"`);
          break;
        case 'rename':
          lines[i] = line.replace(a![0], `${a![1]}x="${a![2]}"`);
          break;
        case 'unknown':
          lines[i] = line.replace(/<(\w+)/, `<$1 color="blue"`);
          break;
        case 'single-quotes':
          lines[i] = line.replace(a![0], `${a![1]}='${a![2]}'`);
          break;
        case 'unquoted':
          lines[i] = line.replace(a![0], `${a![1]}=${a![2]}`);
          break;
        case 'no-space':
          lines[i] = line.replace(/" (\w)/, '"$1');
          break;
      }
      notes.push(`xml-attribute: ${op} on line ${i + 1}${a ? ` (${a[1]})` : ''}`);
      return { xml: join(), notes };
    }
    case 'xml-order': {
      const i = anyElement();
      // A neighbour most of the time (mappings out of order), anywhere some of the time.
      const j = rand.chance(0.6) ? Math.min(lines.length - 1, i + rand.between(1, 3)) : anyElement();
      const op = rand.pick(['swap', 'move', 'duplicate', 'reverse']);
      if (op === 'swap') [lines[i], lines[j]] = [lines[j], lines[i]];
      else if (op === 'move') lines.splice(j, 0, ...lines.splice(i, 1));
      else if (op === 'duplicate') lines.splice(j, 0, lines[i]);
      else lines.splice(Math.min(i, j), Math.abs(i - j) + 1, ...lines.slice(Math.min(i, j), Math.max(i, j) + 1).reverse());
      notes.push(`xml-order: ${op} lines ${i + 1} and ${j + 1}`);
      return { xml: join(), notes };
    }
    case 'xml-truncate': {
      const at = rand.chance(0.3) ? text.lastIndexOf('\n', rand.int(text.length)) + 1 : rand.int(text.length);
      notes.push(`xml-truncate: ${text.length} -> ${at} bytes`);
      return { xml: source.subarray(0, at), notes };
    }
    case 'xml-garbage': {
      const buf = Buffer.from(source);
      const special = [0x00, 0xff, 0xfe, 0xc3, 0x3c, 0x3e, 0x26, 0x22, 0x27, 0x0a, 0x0d, 0x20, 0x09, 0x2f, 0x3d];
      const garbage = Buffer.from(Array.from({ length: rand.between(1, 16) }, () => (rand.chance(0.5) ? rand.pick(special) : rand.int(256))));
      const at = rand.int(buf.length + 1);
      const overwrite = rand.chance(0.5);
      notes.push(`xml-garbage: ${overwrite ? 'overwrite' : 'insert'} ${garbage.length} bytes at ${at}: ${garbage.toString('hex')}`);
      if (overwrite) {
        garbage.copy(buf, at);
        return { xml: buf, notes };
      }
      return { xml: Buffer.concat([buf.subarray(0, at), garbage, buf.subarray(at)]), notes };
    }
    case 'xml-structure': {
      const i = anyElement();
      const line = lines[i] ?? '';
      const op = rand.pick([
        'delete-line', 'unknown-element', 'comment', 'cdata', 'processing-instruction', 'doctype', 'bom', 'entity',
        'nested-superblock', 'self-close', 'unclose', 'rename-element', 'text', 'extra-close', 'upper-case', 'empty',
      ]);
      switch (op) {
        case 'delete-line':
          lines.splice(i, 1);
          break;
        case 'unknown-element':
          lines.splice(i, 0, '  <thing value="1"/>');
          break;
        case 'comment':
          lines.splice(i, 0, '<!-- a comment -->');
          break;
        case 'cdata':
          lines.splice(i, 0, '<![CDATA[<device dev_id="1">]]>');
          break;
        case 'processing-instruction':
          lines.splice(i, 0, '<?xml version="1.0" encoding="UTF-8"?>');
          break;
        case 'doctype':
          lines.unshift('<!DOCTYPE superblock [<!ENTITY big "1111111111">]>');
          break;
        case 'bom':
          lines[0] = `\xef\xbb\xbf${lines[0]}`;
          break;
        case 'entity':
          lines[i] = line.replace(/="(\d)/, rand.chance(0.5) ? '="&#$1;' : '="&amp;$1');
          break;
        case 'nested-superblock':
          lines.splice(i + 1, 0, lines[0]);
          break;
        case 'self-close':
          lines[i] = line.replace(/([^/])>\s*$/, '$1/>');
          break;
        case 'unclose':
          lines[i] = line.replace(/\/>\s*$/, '>');
          break;
        case 'rename-element':
          lines[i] = line.replace(/<(\/?)(\w+)/, (_m, slash: string, name: string) =>
            `<${slash}${rand.pick(['single_mapping', 'range_mapping', 'device', 'superblock', 'def', 'ref'].filter((n) => n !== name))}`);
          break;
        case 'text':
          lines.splice(i, 0, 'some text');
          break;
        case 'extra-close':
          lines.splice(i, 0, rand.pick(['</device>', '</superblock>', '</def>']));
          break;
        case 'upper-case':
          lines[i] = line.replace(/<(\/?)(\w+)/, (_m, slash: string, name: string) => `<${slash}${name.toUpperCase()}`);
          break;
        case 'empty':
          lines.length = 0;
          break;
      }
      notes.push(`xml-structure: ${op} at line ${i + 1}`);
      return { xml: join(), notes };
    }
  }
}
