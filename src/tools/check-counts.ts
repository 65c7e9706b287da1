// Reference counts the checker computes from the trees, to hold against the space maps:
// one u32 per metadata block, and one byte per data block (in lazily allocated chunks, as
// nr_data_blocks can be huge and sparse) with a map for the rare counts above 254.

/** Expected counts of metadata blocks, plus references that fall outside the space map. */
export class MetadataCounts {
  readonly counts: Uint32Array;
  /** References to blocks the space map doesn't cover: block -> times referenced. */
  readonly outside = new Map<number, number>();
  references = 0;

  constructor(readonly nrBlocks: number) {
    this.counts = new Uint32Array(nrBlocks);
  }

  inc(block: number): void {
    this.references++;
    if (block < this.nrBlocks) this.counts[block]++;
    else this.outside.set(block, (this.outside.get(block) ?? 0) + 1);
  }
}

const CHUNK_SHIFT = 20;
const CHUNK_SIZE = 1 << CHUNK_SHIFT;
const SATURATED = 255;

/** Expected counts of data blocks: a data block counts once per distinct leaf mapping it. */
export class DataCounts {
  private readonly chunks: (Uint8Array | undefined)[] = [];
  private readonly big = new Map<number, number>();

  constructor(readonly nrBlocks: number) {}

  inc(block: number): void {
    const c = Math.floor(block / CHUNK_SIZE);
    const chunk = this.chunks[c] ?? (this.chunks[c] = new Uint8Array(CHUNK_SIZE));
    const i = block - c * CHUNK_SIZE;
    if (chunk[i] < SATURATED) chunk[i]++;
    else this.big.set(block, (this.big.get(block) ?? SATURATED) + 1);
  }

  /** Expected counts of blocks [first, first + out.length) into `out`. */
  fill(first: number, out: Uint32Array): void {
    let o = 0;
    while (o < out.length) {
      const block = first + o;
      const c = Math.floor(block / CHUNK_SIZE);
      const start = block - c * CHUNK_SIZE;
      const n = Math.min(out.length - o, CHUNK_SIZE - start);
      const chunk = this.chunks[c];
      if (chunk) out.set(chunk.subarray(start, start + n), o);
      else out.fill(0, o, o + n);
      o += n;
    }
    if (this.big.size > 0) {
      for (let i = 0; i < out.length; i++) if (out[i] === SATURATED) out[i] = this.get(first + i);
    }
  }

  get(block: number): number {
    const c = Math.floor(block / CHUNK_SIZE);
    const chunk = this.chunks[c];
    if (!chunk) return 0;
    const n = chunk[block - c * CHUNK_SIZE];
    return n < SATURATED ? n : (this.big.get(block) ?? SATURATED);
  }
}
