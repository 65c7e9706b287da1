// dm-thin's two kinds of lock for IO in flight, as dm-bio-prison (v1) has them. A cell locks one
// key (a device's virtual block, or a data block as one device reaches it): the first bio to
// detain it is the holder, later ones wait in it as inmates until the holder releases it. A
// deferred set counts IO by generation, so work (a discard's unmapping, a copy-on-write's new
// mapping) can wait for every IO that started before it, and only for that.

/** What a cell locks: a device's virtual block, or a data block reached through a device. */
export type CellSpace = 'virtual' | 'data';

export class Cell<T> {
  readonly inmates: T[] = [];
  constructor(readonly space: CellSpace, readonly dev: number, readonly block: number, readonly holder: T) {}
}

export class BioPrison<T> {
  /** Cells by space and device, then block: numbers all the way, no key strings. */
  private readonly cells = new Map<number, Map<number, Cell<T>>>();

  private table(space: CellSpace, dev: number, create: boolean): Map<number, Cell<T>> | undefined {
    const key = dev * 2 + (space === 'data' ? 1 : 0);
    let t = this.cells.get(key);
    if (!t && create) this.cells.set(key, (t = new Map()));
    return t;
  }

  /**
   * Locks (space, dev, block) for `bio`: returns its new cell, or null when another holds it and
   * `bio` now waits in that cell (dm_bio_detain returning 1).
   */
  detain(space: CellSpace, dev: number, block: number, bio: T): Cell<T> | null {
    const t = this.table(space, dev, true)!;
    const held = t.get(block);
    if (held) {
      held.inmates.push(bio);
      return null;
    }
    const cell = new Cell(space, dev, block, bio);
    t.set(block, cell);
    return cell;
  }

  /** The cell holding (space, dev, block), if any. */
  find(space: CellSpace, dev: number, block: number): Cell<T> | undefined {
    return this.table(space, dev, false)?.get(block);
  }

  /** Unlocks `cell`; returns its inmates, to be processed again. */
  release(cell: Cell<T>): T[] {
    const t = this.table(cell.space, cell.dev, false);
    if (t?.get(cell.block) !== cell) throw new Error(`bio prison: ${cell.space} cell ${cell.dev}:${cell.block} released twice`);
    t.delete(cell.block);
    return cell.inmates;
  }

  get size(): number {
    let n = 0;
    for (const t of this.cells.values()) n += t.size;
    return n;
  }
}

/** One generation of a deferred set: the IO counted in it, and the work waiting for it. */
export interface DeferredEntry<W> {
  readonly generation: number;
  count: number;
  work: W[];
}

/**
 * dm_deferred_set: `inc` counts an IO in the current generation; `addWork` runs work at once when
 * no IO of the current or an earlier generation is outstanding, else parks it on the current
 * generation (which then closes, so later IO does not hold it back); `dec` returns the work whose
 * generations, and all before them, have drained.
 */
export class DeferredSet<W> {
  private readonly entries: Array<DeferredEntry<W>> = [];
  /** The oldest generation not yet swept, and the one new IO joins. */
  private sweeper = 0;
  private current = 0;

  constructor() {
    this.entries.push({ generation: 0, count: 0, work: [] });
  }

  inc(): DeferredEntry<W> {
    const e = this.entries[this.current - this.sweeper];
    e.count++;
    return e;
  }

  /** Parks `work` behind the IO outstanding now; false when there is none (run it now). */
  addWork(work: W): boolean {
    const cur = this.entries[this.current - this.sweeper];
    if (this.sweeper === this.current && cur.count === 0) return false;
    cur.work.push(work);
    this.current++;
    this.entries.push({ generation: this.current, count: 0, work: [] });
    return true;
  }

  /** The IO counted in `entry` is done; returns the work that may run now. */
  dec(entry: DeferredEntry<W>): W[] {
    if (entry.count <= 0) throw new Error(`deferred set: generation ${entry.generation} released more often than counted`);
    entry.count--;
    const ready: W[] = [];
    // Work parks only on a generation that then closes, so the current one never holds any.
    while (this.sweeper < this.current && this.entries[0].count === 0) {
      ready.push(...this.entries[0].work);
      this.entries.shift();
      this.sweeper++;
    }
    return ready;
  }

  /** The generation new IO joins, and work added now parks on. */
  get generation(): number {
    return this.current;
  }

  /** IO counted and not yet done, over every generation. */
  get outstanding(): number {
    let n = 0;
    for (const e of this.entries) n += e.count;
    return n;
  }

  /** Work parked, over every generation. */
  get waiting(): W[] {
    return this.entries.flatMap((e) => e.work);
  }
}
