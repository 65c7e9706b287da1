// Mappings, leaf after leaf, merged into runs of consecutive thin and data blocks at one time:
// the shape every event stream carries them in (dump, salvage). Leaves are decoded straight
// from their buffers; nothing is allocated per mapping.
import { BTreeNode, NODE_HEADER_SIZE } from '../pdata/btree/node.js';
import { U64, u64Add } from '../pdata/le.js';
import { MetadataVisitor } from './events.js';

const TWO_32 = 0x100000000;
/** The high word of 2^53: keys below it are exact numbers. */
const SAFE_HI = 0x200000;

/**
 * Decides what to do with a mapping a salvage cannot trust: its time to keep (the one given, or
 * a corrected one), or -1 to drop it. Called for every mapping, so keep it cheap.
 */
export type MappingFilter = (dataBlock: number, time: number) => number;

export class MappingRuns {
  private thin: U64 = 0;
  private data = 0;
  private time = 0;
  private len = 0;

  constructor(
    private readonly visitor: MetadataVisitor,
    private readonly filter?: MappingFilter,
  ) {}

  /** The leaf's entries `from` to `to` (all by default). */
  leaf(node: BTreeNode, from = 0, to = node.nrEntries): void {
    const words = node.words;
    const values = (NODE_HEADER_SIZE >>> 2) + 2 * node.maxEntries;
    const filter = this.filter;
    for (let i = from, k = (NODE_HEADER_SIZE >>> 2) + 2 * from, v = values + 2 * from; i < to; i++, k += 2, v += 2) {
      const lo = words[v];
      const data = words[v + 1] * 256 + (lo >>> 24);
      let time = lo & 0xffffff;
      if (filter) {
        time = filter(data, time);
        if (time < 0) continue;
      }
      const hi = words[k + 1];
      if (hi < SAFE_HI && typeof this.thin === 'number') {
        // Exact: thin is below 2^53, so it can only equal a sum that is too.
        const thin = hi * TWO_32 + words[k];
        if (this.len !== 0 && thin === this.thin + this.len && data === this.data + this.len && time === this.time) {
          this.len++;
          continue;
        }
        this.start(thin, data, time);
      } else {
        this.add(node.key(i), data, time);
      }
    }
  }

  /** The slow path, for keys at or past 2^53 (or a run that reaches them). */
  private add(thin: U64, data: number, time: number): void {
    if (this.len !== 0 && thin === u64Add(this.thin, this.len) && data === this.data + this.len && time === this.time) {
      this.len++;
      return;
    }
    this.start(thin, data, time);
  }

  private start(thin: U64, data: number, time: number): void {
    this.flush();
    this.thin = thin;
    this.data = data;
    this.time = time;
    this.len = 1;
  }

  /** Emits the run in hand (before a ref, or at the end of a device or def). */
  flush(): void {
    if (this.len !== 0) this.visitor.mapRun(this.thin, this.data, this.len, this.time);
    this.len = 0;
  }
}
