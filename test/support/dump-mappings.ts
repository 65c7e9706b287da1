// The mappings a (reference) thin_dump XML lists, for counting what a repair recovered.

/** Mapped blocks listed: single mappings plus the lengths of ranges. */
export function countMappings(xml: string): number {
  let n = 0;
  for (const m of xml.matchAll(/<single_mapping |<range_mapping [^>]*length="(\d+)"/g)) n += m[1] === undefined ? 1 : Number(m[1]);
  return n;
}

/** Each mapping as "dev:thin:data", ranges expanded (thin blocks below 2^53 only: a test pool's). */
export function* mappingsOf(xml: string): Generator<string> {
  let dev = '';
  const re = /<device dev_id="(\d+)"|<single_mapping origin_block="(\d+)" data_block="(\d+)"|<range_mapping origin_begin="(\d+)" data_begin="(\d+)" length="(\d+)"/g;
  for (const m of xml.matchAll(re)) {
    if (m[1] !== undefined) dev = m[1];
    else if (m[2] !== undefined) yield `${dev}:${m[2]}:${m[3]}`;
    else for (let i = 0; i < Number(m[6]); i++) yield `${dev}:${Number(m[4]) + i}:${Number(m[5]) + i}`;
  }
}

/** How many of the mappings `xml` lists are in `truth` (a sound source's): recovered, not invented. */
export function countTrueMappings(xml: string, truth: ReadonlySet<string>): number {
  let n = 0;
  for (const m of mappingsOf(xml)) if (truth.has(m)) n++;
  return n;
}

/** Device `devId`'s mappings, thin block -> data block, built on mappingsOf. */
export function deviceMappings(xml: string, devId: number): Map<number, number> {
  const out = new Map<number, number>();
  for (const m of mappingsOf(xml)) {
    const [dev, thin, data] = m.split(':').map(Number);
    if (dev === devId) out.set(thin, data);
  }
  return out;
}
