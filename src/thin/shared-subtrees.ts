// The shared-subtree form of a dump (the <def>/<ref> XML of the upstream 1.x tools): leaves that
// several devices' trees point at (snapshots) are printed once, as a def each device refs, so a
// restore writes them once instead of once per device.
//
// A first pass over the device trees feeds every non-empty leaf, device by device in key order,
// to a SharedLeafIndex: per leaf block (nothing per mapping) how many device trees reach it and
// which leaf comes before and after it. Shared leaves that always appear together, in the same
// order, form a run: b and c are chained when every occurrence of b is followed by c and every
// occurrence of c follows b (so both are in the same devices). Each run becomes one def, named
// after its first leaf's block as 1.x names them; a device prints a ref where a run begins, skips
// the run's other leaves, and prints the mappings of the leaves only it has.

/** Block 0 holds the superblock, so it is never a leaf: 0 means "not seen yet". */
const UNSET = 0;
/** The start or end of a device's leaves. */
const EDGE = 0xfffffffe;
/** Different neighbours in different devices. */
const MANY = 0xffffffff;

export class SharedLeafIndex {
  /** Device trees reaching each leaf, counted up to 2 (shared). */
  private readonly refs: Uint8Array;
  private readonly prev: Uint32Array;
  private readonly next: Uint32Array;
  private last = EDGE;

  /** `nrBlocks`: the metadata device's size in blocks; every leaf is below it. */
  constructor(nrBlocks: number) {
    if (nrBlocks >= EDGE) throw new RangeError(`too many metadata blocks for a shared-leaf index: ${nrBlocks}`);
    this.refs = new Uint8Array(nrBlocks);
    this.prev = new Uint32Array(nrBlocks);
    this.next = new Uint32Array(nrBlocks);
  }

  /** The next non-empty leaf of the device being scanned (a tree holds a block at most once). */
  leaf(block: number): void {
    if (this.refs[block] < 2) this.refs[block]++;
    note(this.prev, block, this.last);
    if (this.last !== EDGE) note(this.next, this.last, block);
    this.last = block;
  }

  /** Ends the device being scanned. */
  endDevice(): void {
    if (this.last !== EDGE) note(this.next, this.last, EDGE);
    this.last = EDGE;
  }

  /** More than one device tree reaches the leaf: it belongs to a def. */
  isShared(block: number): boolean {
    return this.refs[block] >= 2;
  }

  /** A shared leaf that starts a run (a def is named after it and referenced where it appears). */
  isRunHead(block: number): boolean {
    if (!this.isShared(block)) return false;
    const p = this.prev[block];
    return !(p !== UNSET && p < EDGE && this.next[p] === block);
  }

  /** The leaf after `block` in its run, or -1 where the run ends. */
  nextInRun(block: number): number {
    const n = this.next[block];
    return n !== UNSET && n < EDGE && this.prev[n] === block ? n : -1;
  }

  /** Every run's first leaf, in block order (the order defs are printed). */
  *runHeads(): Generator<number> {
    const refs = this.refs;
    for (let b = 0; b < refs.length; b++) {
      if (refs[b] >= 2 && this.isRunHead(b)) yield b;
    }
  }
}

function note(slots: Uint32Array, block: number, neighbour: number): void {
  const seen = slots[block];
  if (seen === UNSET) slots[block] = neighbour;
  else if (seen !== neighbour) slots[block] = MANY;
}
