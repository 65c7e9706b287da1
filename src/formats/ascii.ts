// ASCII text a format repeats on every line (a mapping's tag and attribute names), encoded once
// as little-endian u32 words plus a tail, so it is compared (reading) or copied (writing) four
// bytes at a time through a DataView (which reads and writes little-endian on any host).

export interface Ascii {
  readonly text: string;
  readonly length: number;
  readonly words: Uint32Array;
  readonly tail: Uint8Array;
}

export function ascii(text: string): Ascii {
  const b = Buffer.from(text, 'latin1');
  const nWords = b.length >>> 2;
  const words = new Uint32Array(nWords);
  for (let i = 0; i < nWords; i++) words[i] = b.readUInt32LE(4 * i);
  return { text, length: b.length, words, tail: new Uint8Array(b.subarray(4 * nWords)) };
}

/** Whether `a` stands at `pos` of `buf` (`view` over the same bytes); the caller checks the room. */
export function asciiAt(view: DataView, buf: Uint8Array, pos: number, a: Ascii): boolean {
  const words = a.words;
  for (let i = 0; i < words.length; i++, pos += 4) if (view.getUint32(pos, true) !== words[i]) return false;
  const tail = a.tail;
  for (let i = 0; i < tail.length; i++, pos++) if (buf[pos] !== tail[i]) return false;
  return true;
}

/** Copies `a` to `pos` of `buf` (`view` over the same bytes); the caller makes the room. */
export function putAscii(view: DataView, buf: Uint8Array, pos: number, a: Ascii): void {
  const words = a.words;
  for (let i = 0; i < words.length; i++, pos += 4) view.setUint32(pos, words[i], true);
  const tail = a.tail;
  for (let i = 0; i < tail.length; i++, pos++) buf[pos] = tail[i];
}
