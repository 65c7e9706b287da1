// Generates varied, valid thin-pool metadata as thin_dump XML: origins with chains of snapshots
// that share and break sharing of data blocks, deleted devices, empty and huge-offset devices.
// Seeded, so a failing case can be replayed.

export interface GenerateOptions {
  seed: number;
  dataBlockSize?: number;
  nrDataBlocks?: number;
  origins?: number;
  snapshotsPerOrigin?: number;
  mappingsPerOrigin?: number;
  emptyDevices?: number;
  hugeOffset?: boolean;
  deleteSome?: boolean;
}

export function rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13; s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5; s >>>= 0;
    return s / 0x100000000;
  };
}

interface Mapping { data: number; time: number }
interface Dev { id: number; transaction: number; creation: number; snap: number; map: Map<number, Mapping> }

export function generateXml(o: GenerateOptions): string {
  const rand = rng(o.seed);
  const int = (n: number) => Math.floor(rand() * n);
  const nrData = o.nrDataBlocks ?? 1 << 16;
  let nextData = 0;
  let time = 0;
  let transaction = 0;
  const alloc = (): number => {
    if (nextData >= nrData) throw new Error('generator ran out of data blocks; raise nrDataBlocks');
    // Leave holes now and then so the data space map has free runs.
    if (rand() < 0.02) nextData += 1 + int(8);
    return nextData++ % nrData;
  };
  const devs: Dev[] = [];
  let nextId = 0;
  const newDev = (): Dev => {
    const d: Dev = { id: nextId, transaction, creation: time, snap: time, map: new Map() };
    nextId += 1 + (rand() < 0.3 ? int(5) : 0);
    devs.push(d);
    return d;
  };
  const write = (d: Dev, thin: number) => {
    d.map.set(thin, { data: alloc(), time });
  };

  for (let oi = 0; oi < (o.origins ?? 1); oi++) {
    const origin = newDev();
    const n = o.mappingsPerOrigin ?? 2000;
    let thin = int(100);
    for (let i = 0; i < n; ) {
      const run = 1 + int(rand() < 0.5 ? 1 : 64);
      for (let k = 0; k < run && i < n; k++, i++) write(origin, thin++);
      thin += int(rand() < 0.7 ? 1 : 500);
    }
    if (o.hugeOffset) write(origin, 2 ** 40 + int(1000));
    let parent = origin;
    for (let s = 0; s < (o.snapshotsPerOrigin ?? 3); s++) {
      time += 1;
      transaction += 1;
      const snap: Dev = { id: nextId, transaction, creation: time, snap: time, map: new Map(parent.map) };
      nextId += 1;
      parent.snap = time;
      devs.push(snap);
      // Break sharing on some blocks of the snapshot and of its parent, add a few new ones.
      const keys = [...parent.map.keys()];
      for (let k = 0; k < keys.length / 10; k++) write(snap, keys[int(keys.length)]);
      for (let k = 0; k < keys.length / 20; k++) write(parent, keys[int(keys.length)]);
      for (let k = 0; k < 20; k++) write(snap, 1_000_000 + int(100_000));
      parent = rand() < 0.5 ? snap : parent;
    }
  }
  for (let e = 0; e < (o.emptyDevices ?? 1); e++) newDev();
  let live = devs;
  if (o.deleteSome && devs.length > 2) live = devs.filter((_, i) => i % 4 !== 1);
  live.sort((a, b) => a.id - b.id);

  const out: string[] = [];
  out.push(
    `<superblock uuid="" time="${time}" transaction="${transaction}" flags="0" version="2" ` +
      `data_block_size="${o.dataBlockSize ?? 128}" nr_data_blocks="${nrData}">`,
  );
  for (const d of live) {
    out.push(
      `  <device dev_id="${d.id}" mapped_blocks="${d.map.size}" transaction="${d.transaction}" ` +
        `creation_time="${d.creation}" snap_time="${d.snap}">`,
    );
    for (const [thin, m] of [...d.map.entries()].sort((a, b) => a[0] - b[0])) {
      out.push(`    <single_mapping origin_block="${thin}" data_block="${m.data}" time="${m.time}"/>`);
    }
    out.push('  </device>');
  }
  out.push('</superblock>');
  return out.join('\n') + '\n';
}
