// Seeded mutations of metadata images: bit flips with the checksum left bad or re-sealed, zeroed
// and random blocks, random values in valid nodes (header fields, keys, values), swapped blocks
// and truncation. Blocks that matter (superblock, roots, internal nodes, leaves, space-map
// blocks) are hit more often than others. Everything is drawn from one Rand, so a case replays.
import { BLOCK_SIZE } from '../../../src/io/block-io.js';
import { sealBlock } from '../../../src/pdata/checksum.js';
import { ENTRIES_PER_BITMAP } from '../../../src/pdata/space-map/common.js';
import { BlockRole, ImageMap, currentSalt, saltOf } from './image-map.js';
import { Rand } from './random.js';

export const BINARY_MUTATIONS = [
  'flip', 'flip-resealed', 'zero', 'random', 'value', 'swap', 'swap-resealed', 'truncate', 'multi',
] as const;
export type BinaryMutation = (typeof BINARY_MUTATIONS)[number];

export interface MutatedImage {
  image: Buffer;
  /** What was done, one line a step (for the report and a replay). */
  notes: string[];
}

/** How often each kind of block is aimed at, against 1 for a block picked anywhere. */
const ROLE_WEIGHTS: Record<BlockRole, number> = {
  superblock: 3,
  'held-superblock': 1.5,
  'top-node': 2,
  'device-root': 3,
  'device-internal': 3,
  'device-leaf': 3,
  'details-node': 2,
  'metadata-index': 2,
  'metadata-bitmap': 2,
  'data-index-node': 1.5,
  'data-bitmap': 2,
  'ref-count-node': 1,
};
const ANYWHERE_WEIGHT = 1;

interface Target {
  block: number;
  role: BlockRole | 'other';
}

const NODE_ROLES: ReadonlySet<BlockRole | 'other'> = new Set([
  'top-node', 'device-root', 'device-internal', 'device-leaf', 'details-node', 'data-index-node', 'ref-count-node',
]);

export function mutateImage(source: Buffer, map: ImageMap, kind: BinaryMutation, rand: Rand): MutatedImage {
  const m = new Mutator(Buffer.from(source), map, rand);
  if (kind === 'truncate') return { image: m.truncate(), notes: m.notes };
  if (kind === 'multi') {
    const steps = rand.between(2, 4);
    for (let i = 0; i < steps; i++) m.apply(rand.pick(['flip', 'flip-resealed', 'zero', 'random', 'value', 'swap-resealed'] as const));
  } else {
    m.apply(kind);
  }
  return { image: m.image, notes: m.notes };
}

const big = (n: number): bigint => BigInt(n);
const hex = (v: bigint): string => (v > 0xffffffffn ? `0x${v.toString(16)}` : String(v));

class Mutator {
  readonly notes: string[] = [];
  private readonly nrBlocks: number;

  constructor(readonly image: Buffer, private readonly map: ImageMap, private readonly rand: Rand) {
    this.nrBlocks = Math.floor(image.length / BLOCK_SIZE);
  }

  apply(kind: Exclude<BinaryMutation, 'truncate' | 'multi'>): void {
    switch (kind) {
      case 'flip':
        return this.flip(false);
      case 'flip-resealed':
        return this.flip(true);
      case 'zero': {
        const t = this.target();
        this.view(t.block).fill(0);
        this.notes.push(`zero: ${t.role} block ${t.block}`);
        return;
      }
      case 'random': {
        const t = this.target();
        this.rand.bytes(BLOCK_SIZE).copy(this.view(t.block));
        this.notes.push(`random: ${t.role} block ${t.block}`);
        return;
      }
      case 'value':
        return this.value();
      case 'swap':
        return this.swap(false);
      case 'swap-resealed':
        return this.swap(true);
    }
  }

  private view(b: number): Buffer {
    return this.image.subarray(b * BLOCK_SIZE, (b + 1) * BLOCK_SIZE);
  }

  private target(classifiedOnly = false): Target {
    const roles = [...this.map.byRole.keys()].filter((r) => this.map.byRole.get(r)!.some((b) => b < this.nrBlocks));
    const choices: [BlockRole | 'other', number][] = roles.map((r) => [r, ROLE_WEIGHTS[r]]);
    if (!classifiedOnly || choices.length === 0) choices.push(['other', ANYWHERE_WEIGHT]);
    const role = this.rand.weighted(choices);
    if (role === 'other') {
      const block = this.rand.int(this.nrBlocks);
      return { block, role: this.map.role.get(block) ?? 'other' };
    }
    return { block: this.rand.pick(this.map.byRole.get(role)!.filter((b) => b < this.nrBlocks)), role };
  }

  /** Seals block `b` again with the salt of `role` (or the one it carried before the change). */
  private resealer(b: number, role: BlockRole | 'other'): () => void {
    const salt = role === 'other' ? currentSalt(this.view(b)) : saltOf(role);
    return () => {
      if (salt !== undefined) sealBlock(this.view(b), salt);
    };
  }

  /** The bytes of a block that mean something: header, used keys and values, roots. */
  private liveRange(view: Buffer, role: BlockRole | 'other'): [number, number] {
    if (role === 'superblock' || role === 'held-superblock') return [4, 364];
    if (role === 'metadata-index') return [4, 16 + 16 * Math.max(1, Math.ceil(this.nrBlocks / ENTRIES_PER_BITMAP))];
    if (NODE_ROLES.has(role)) {
      const nr = Math.min(view.readUInt32LE(16), 510);
      const max = Math.min(view.readUInt32LE(20), 510);
      const valueSize = Math.min(view.readUInt32LE(24), 64);
      return this.rand.weighted<[number, number]>([
        [[4, 32], 1],
        [[32, 32 + 8 * Math.max(nr, 1)], 2],
        [[32 + 8 * max, Math.min(BLOCK_SIZE, 32 + 8 * max + valueSize * Math.max(nr, 1))], 2],
      ]);
    }
    return [4, BLOCK_SIZE];
  }

  private flip(reseal: boolean): void {
    const t = this.target();
    const view = this.view(t.block);
    const seal = this.resealer(t.block, t.role);
    const [lo, hi] = this.rand.chance(0.85) ? this.liveRange(view, t.role) : [0, BLOCK_SIZE];
    const n = this.rand.chance(0.7) ? 1 : this.rand.between(2, 8);
    const at: string[] = [];
    for (let i = 0; i < n; i++) {
      const byte = this.rand.between(lo, Math.max(lo, hi - 1));
      const bit = this.rand.int(8);
      view[byte] ^= 1 << bit;
      at.push(`${byte}.${bit}`);
    }
    if (reseal) seal();
    this.notes.push(`${reseal ? 'flip-resealed' : 'flip'}: ${t.role} block ${t.block} bits ${at.join(' ')}`);
  }

  private swap(reseal: boolean): void {
    const a = this.target(true);
    let b = this.target(true);
    for (let tries = 0; b.block === a.block && tries < 8; tries++) b = this.target();
    if (b.block === a.block) b = { block: (a.block + 1) % this.nrBlocks, role: this.map.role.get((a.block + 1) % this.nrBlocks) ?? 'other' };
    const va = this.view(a.block);
    const vb = this.view(b.block);
    // Salts of the contents, which move with them.
    const saltA = a.role === 'other' ? currentSalt(va) : saltOf(a.role);
    const saltB = b.role === 'other' ? currentSalt(vb) : saltOf(b.role);
    const tmp = Buffer.from(va);
    vb.copy(va);
    tmp.copy(vb);
    if (reseal) {
      // Each block now says it lives where it is: only the pointers to it are wrong.
      va.writeBigUInt64LE(big(a.block), 8);
      vb.writeBigUInt64LE(big(b.block), 8);
      if (saltB !== undefined) sealBlock(va, saltB);
      if (saltA !== undefined) sealBlock(vb, saltA);
    }
    this.notes.push(`${reseal ? 'swap-resealed' : 'swap'}: ${a.role} block ${a.block} <-> ${b.role} block ${b.block}`);
  }

  truncate(): Buffer {
    const len = this.image.length;
    const used = Math.max(1, ...this.map.role.keys());
    const newLen = this.rand.weighted<() => number>([
      [() => 0, 0.5],
      [() => this.rand.int(BLOCK_SIZE), 1],
      [() => BLOCK_SIZE * this.rand.between(1, used), 5],
      [() => this.rand.between(BLOCK_SIZE, len - 1), 3],
    ])();
    this.notes.push(`truncate: ${len} -> ${newLen} bytes${newLen % BLOCK_SIZE ? ' (mid-block)' : ''}`);
    return Buffer.from(this.image.subarray(0, newLen));
  }

  // ---- random values in valid blocks, re-sealed ----

  private value(): void {
    const t = this.target(true);
    if (t.role === 'other') return this.flip(true);
    const view = this.view(t.block);
    const seal = this.resealer(t.block, t.role);
    let note: string;
    if (t.role === 'superblock' || t.role === 'held-superblock') note = this.superblockValue(view);
    else if (t.role === 'metadata-index') note = this.indexValue(view);
    else if (t.role === 'metadata-bitmap' || t.role === 'data-bitmap') note = this.bitmapValue(view, t.role);
    else note = this.nodeValue(view, t.block, t.role);
    seal();
    this.notes.push(`value: ${t.role} block ${t.block} ${note} (resealed)`);
  }

  /** A value at the edges that break code: 0, the pool's limits, powers of two, u64 max. */
  private interesting(orig: bigint, bits: number): bigint {
    const max = (1n << big(bits)) - 1n;
    const nrData = big(this.map.facts?.nrDataBlocks ?? 0);
    const v = this.rand.pick([
      0n, 1n, orig + 1n, orig - 1n, orig * 2n, orig >> 1n, max, max - 1n,
      (1n << 24n) - 1n, 1n << 24n, 1n << 31n, (1n << 32n) - 1n, 1n << 32n, (1n << 40n) - 1n, 1n << 40n,
      (1n << 53n) - 1n, 1n << 53n, (1n << 53n) + 1n, 1n << 63n,
      big(this.nrBlocks) - 1n, big(this.nrBlocks), big(this.nrBlocks) + 1n, nrData - 1n, nrData, nrData + 1n,
      this.rand.bits(bits), big(this.rand.int(1000)),
    ]);
    return v < 0n ? max : v & max;
  }

  /** A block pointer: another live block (a cross-link), the block itself (a cycle), or out of range. */
  private pointer(self: number): bigint {
    return this.rand.weighted<() => bigint>([
      [() => big(this.target(true).block), 5],
      [() => big(self), 1],
      [() => 0n, 1],
      [() => big(this.nrBlocks), 1],
      [() => this.interesting(big(self), 64), 1],
    ])();
  }

  private setField(view: Buffer, off: number, bits: number, v: bigint): string {
    const old = bits === 32 ? big(view.readUInt32LE(off)) : view.readBigUInt64LE(off);
    if (v === old) v = old ^ 1n;
    if (bits === 32) view.writeUInt32LE(Number(v), off);
    else view.writeBigUInt64LE(v, off);
    return `${hex(old)} -> ${hex(v)}`;
  }

  private field(view: Buffer, name: string, off: number, bits: number, kind: 'pointer' | 'number', self: number): string {
    const old = bits === 32 ? big(view.readUInt32LE(off)) : view.readBigUInt64LE(off);
    const v = kind === 'pointer' && this.rand.chance(0.7) ? this.pointer(self) : this.interesting(old, bits);
    return `${name} ${this.setField(view, off, bits, v)}`;
  }

  private superblockValue(view: Buffer): string {
    const fields: [string, number, number, 'pointer' | 'number'][] = [
      ['flags', 4, 32, 'number'], ['blocknr', 8, 64, 'pointer'], ['magic', 32, 64, 'number'],
      ['version', 40, 32, 'number'], ['time', 44, 32, 'number'], ['transaction_id', 48, 64, 'number'],
      ['held_root', 56, 64, 'pointer'],
      ['data sm nr_blocks', 64, 64, 'number'], ['data sm nr_allocated', 72, 64, 'number'],
      ['data sm bitmap_root', 80, 64, 'pointer'], ['data sm ref_count_root', 88, 64, 'pointer'],
      ['metadata sm nr_blocks', 192, 64, 'number'], ['metadata sm nr_allocated', 200, 64, 'number'],
      ['metadata sm bitmap_root', 208, 64, 'pointer'], ['metadata sm ref_count_root', 216, 64, 'pointer'],
      ['data_mapping_root', 320, 64, 'pointer'], ['device_details_root', 328, 64, 'pointer'],
      ['data_block_size', 336, 32, 'number'], ['metadata_block_size', 340, 32, 'number'],
      ['metadata_nr_blocks', 344, 64, 'number'], ['compat_flags', 352, 32, 'number'],
      ['compat_ro_flags', 356, 32, 'number'], ['incompat_flags', 360, 32, 'number'],
    ];
    const [name, off, bits, kind] = this.rand.pick(fields);
    return this.field(view, name, off, bits, kind, view.readUInt32LE(8));
  }

  private indexValue(view: Buffer): string {
    let entries = 0;
    while (entries < 255 && view.readBigUInt64LE(16 + 16 * entries) !== 0n) entries++;
    const self = Number(view.readBigUInt64LE(8));
    if (entries === 0 || this.rand.chance(0.1)) return this.field(view, 'blocknr', 8, 64, 'pointer', self);
    const i = this.rand.int(Math.min(255, entries + 1));
    const at = 16 + 16 * i;
    return this.rand.weighted<() => string>([
      [() => this.field(view, `entry ${i} blocknr`, at, 64, 'pointer', self), 3],
      [() => this.field(view, `entry ${i} nr_free`, at + 8, 32, 'number', self), 2],
      [() => this.field(view, `entry ${i} none_free_before`, at + 12, 32, 'number', self), 1],
    ])();
  }

  private bitmapValue(view: Buffer, role: BlockRole): string {
    if (this.rand.chance(0.1)) return this.field(view, 'blocknr', 8, 64, 'pointer', Number(view.readBigUInt64LE(8)));
    const covered = role === 'data-bitmap' ? (this.map.facts?.nrDataBlocks ?? ENTRIES_PER_BITMAP) : this.nrBlocks;
    const n = this.rand.chance(0.6) ? 1 : this.rand.between(2, 16);
    const changed: string[] = [];
    for (let k = 0; k < n; k++) {
      const entry = this.rand.int(Math.min(ENTRIES_PER_BITMAP, Math.max(1, covered)));
      const count = this.rand.int(4);
      const byte = 16 + (entry >>> 2);
      const shift = (entry & 3) << 1;
      // bit 2i is the entry's high bit, 2i+1 its low bit
      view[byte] = (view[byte] & ~(3 << shift)) | (((count >> 1) & 1) << shift) | ((count & 1) << (shift + 1));
      changed.push(`${entry}=${count}`);
    }
    return `entries ${changed.join(' ')}`;
  }

  private nodeValue(view: Buffer, block: number, role: BlockRole): string {
    const nr = view.readUInt32LE(16);
    const max = view.readUInt32LE(20);
    const valueSize = view.readUInt32LE(24);
    const isLeaf = (view.readUInt32LE(4) & 2) !== 0;
    const sane = max > 0 && max <= 510 && 32 + max * (8 + valueSize) <= BLOCK_SIZE;
    const what = sane ? this.rand.weighted<string>([['header', 2], ['key', 3], ['value', 4], ['swap', 1]]) : 'header';
    const i = this.rand.int(Math.max(1, Math.min(nr, max)));
    const keyAt = (k: number) => 32 + 8 * k;
    const valueAt = (k: number) => 32 + 8 * max + valueSize * k;
    switch (what) {
      case 'header': {
        const [name, off, bits] = this.rand.pick([
          ['flags', 4, 32], ['blocknr', 8, 64], ['nr_entries', 16, 32], ['max_entries', 20, 32], ['value_size', 24, 32],
        ] as const);
        let v: bigint;
        if (name === 'flags') v = this.rand.pick([0n, 1n, 2n, 3n, big(this.rand.u32())]);
        else if (name === 'blocknr') v = this.pointer(block);
        else if (name === 'nr_entries') v = this.rand.pick([0n, 1n, big(nr) - 1n, big(nr) + 1n, big(max), big(max) + 1n, 0xffffffffn, big(this.rand.u32())]);
        else if (name === 'max_entries') v = this.rand.pick([0n, big(nr), big(max) - 1n, big(max) + 1n, 126n, 168n, 252n, 336n, big(this.rand.u32())]);
        else v = this.rand.pick([0n, 4n, 8n, 16n, 24n, big(this.rand.u32())]);
        return `${name} ${this.setField(view, off, bits, v < 0n ? 0xffffffffn : v)}`;
      }
      case 'key': {
        const old = view.readBigUInt64LE(keyAt(i));
        const v = this.rand.weighted<() => bigint>([
          [() => this.interesting(old, 64), 3],
          [() => (i > 0 ? view.readBigUInt64LE(keyAt(i - 1)) : old + 1n), 1],
          [() => (i + 1 < nr ? view.readBigUInt64LE(keyAt(i + 1)) : old + 1n), 1],
        ])();
        return `key[${i}] ${this.setField(view, keyAt(i), 64, v & ((1n << 64n) - 1n))}`;
      }
      case 'swap': {
        const j = this.rand.int(Math.max(1, Math.min(nr, max)));
        for (const [off, len] of [[keyAt(0), 8], [valueAt(0), valueSize]] as const) {
          const stride = off === keyAt(0) ? 8 : valueSize;
          const a = Buffer.from(view.subarray(off + stride * i, off + stride * i + len));
          view.copy(view, off + stride * i, off + stride * j, off + stride * j + len);
          a.copy(view, off + stride * j);
        }
        return `entries ${i} <-> ${j}`;
      }
      default:
        return `value[${i}] ${this.nodeEntryValue(view, valueAt(i), block, role, isLeaf, valueSize)}`;
    }
  }

  private nodeEntryValue(view: Buffer, at: number, block: number, role: BlockRole, isLeaf: boolean, valueSize: number): string {
    if (!isLeaf || role === 'top-node') return this.field(view, 'child', at, 64, 'pointer', block);
    if ((role === 'device-leaf' || role === 'device-root') && valueSize === 8) return this.mappingValue(view, at);
    if (role === 'details-node' && valueSize === 24) {
      const [name, off, bits] = this.rand.pick([
        ['mapped_blocks', 0, 64], ['transaction_id', 8, 64], ['creation_time', 16, 32], ['snapshotted_time', 20, 32],
      ] as const);
      if (bits === 32 && this.rand.chance(0.3)) {
        return `${name} ${this.setField(view, at + off, 32, big((this.map.facts?.time ?? 0) + this.rand.between(1, 2)))}`;
      }
      return this.field(view, name, at + off, bits, 'number', block);
    }
    if (role === 'data-index-node' && valueSize === 16) {
      const [name, off, bits, kind] = this.rand.pick([
        ['bitmap blocknr', 0, 64, 'pointer'], ['nr_free', 8, 32, 'number'], ['none_free_before', 12, 32, 'number'],
      ] as const);
      return this.field(view, name, at + off, bits, kind, block);
    }
    if (valueSize === 4) return this.field(view, 'count', at, 32, 'number', block);
    return this.field(view, 'value', at, Math.min(valueSize, 8) === 8 ? 64 : 32, 'number', block);
  }

  /** A mapping's data block (40 bits) or time (24 bits): past the pool's end, newer than it, shared. */
  private mappingValue(view: Buffer, at: number): string {
    const old = view.readBigUInt64LE(at);
    const data = old >> 24n;
    const time = old & 0xffffffn;
    const nrData = big(this.map.facts?.nrDataBlocks ?? 0);
    if (this.rand.chance(0.65)) {
      const others = this.map.dataBlocks;
      const v = this.rand.pick([
        nrData - 1n, nrData, nrData + 1n, (1n << 40n) - 1n, 0n, data + 1n, this.rand.bits(40),
        big(others.length ? this.rand.pick(others) : 0),
      ]);
      const nd = v < 0n ? 0n : v & ((1n << 40n) - 1n);
      view.writeBigUInt64LE((nd << 24n) | time, at);
      return `data block ${data} -> ${nd}`;
    }
    const poolTime = big(this.map.facts?.time ?? 0);
    const nt = this.rand.pick([poolTime, poolTime + 1n, 0xffffffn, 0n, this.rand.bits(24)]);
    view.writeBigUInt64LE((data << 24n) | nt, at);
    return `time ${time} -> ${nt}`;
  }
}
