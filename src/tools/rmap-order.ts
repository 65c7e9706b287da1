// The order thin_rmap 0.9.0 prints its regions in. It sorts them by first data block with
// std::sort, which is not stable: regions starting at the same data block (snapshots sharing
// it) come out in the order GCC's libstdc++ introsort leaves them. To print the same bytes we
// sort the same way: introsort (median-of-three quicksort down to runs of 16, heapsort past
// 2*log2(n) levels) and a final insertion sort, the algorithm as libstdc++ documents and ships it.

const THRESHOLD = 16;

/** Int32 keys while they fit (half the bytes to move); a run sees one kind only, so V8's code stays monomorphic. */
type Keys = Int32Array | Float64Array;

/**
 * Sorts `v` (record numbers) by `keys` as std::sort(v.begin(), v.end(), less-by-key) does, ties
 * included. `keys[i]` is the key of `v[i]` and moves with it: the sort compares keys side by side
 * in memory rather than through the record numbers (at millions of records, a cache miss each).
 */
export function stdSort(v: Int32Array, keys: Keys): void {
  const n = v.length;
  // Keys already rising strictly (one device's run of allocations) have one sorted order only,
  // which std::sort leaves too: nothing to move. With ties the sort runs, for their order.
  let rising = 1;
  while (rising < n && keys[rising - 1] < keys[rising]) rising++;
  if (rising >= n) return;
  if (n > PRIME_SIZE && !primed) primeSort();
  introsortLoop(v, keys, 0, n, 2 * (31 - Math.clz32(n)));
  finalInsertionSort(v, keys, 0, n);
}

/** Keys in the sample primeSort sorts: a few thousand, 1-2 ms of CPU at the first large sort. */
const PRIME_SIZE = 2048;
let primed = false;

/**
 * Sorts a small made-up sample (ties included) before the first large sort, so that every step
 * of the sort has run, and V8 has type feedback for it, when the large sort's loops are compiled
 * on the stack mid-run. Without it the first partition's first scan (over sorted runs: one
 * device's allocations) is compiled before the second scan ever ran, and reaching that scan
 * throws the compiled code away; the sort then goes on interpreted until compiled again.
 */
function primeSort(): void {
  primed = true;
  const v = new Int32Array(PRIME_SIZE);
  const keys = new Int32Array(PRIME_SIZE);
  for (let i = 0; i < PRIME_SIZE; i++) {
    v[i] = i;
    keys[i] = (i * 2654435761) % 1021; // a scatter with ties
  }
  stdSort(v, keys);
}

function swap(v: Int32Array, keys: Keys, i: number, j: number): void {
  const t = v[i];
  v[i] = v[j];
  v[j] = t;
  const k = keys[i];
  keys[i] = keys[j];
  keys[j] = k;
}

function introsortLoop(v: Int32Array, keys: Keys, first: number, last: number, depthLimit: number): void {
  while (last - first > THRESHOLD) {
    if (depthLimit === 0) {
      heapSort(v, keys, first, last);
      return;
    }
    depthLimit--;
    const mid = first + Math.trunc((last - first) / 2);
    moveMedianToFirst(v, keys, first, first + 1, mid, last - 1);
    const cut = unguardedPartition(v, keys, first + 1, last, keys[first]);
    introsortLoop(v, keys, cut, last, depthLimit);
    last = cut;
  }
}

function moveMedianToFirst(v: Int32Array, keys: Keys, result: number, a: number, b: number, c: number): void {
  const ka = keys[a];
  const kb = keys[b];
  const kc = keys[c];
  if (ka < kb) {
    if (kb < kc) swap(v, keys, result, b);
    else if (ka < kc) swap(v, keys, result, c);
    else swap(v, keys, result, a);
  } else if (ka < kc) swap(v, keys, result, a);
  else if (kb < kc) swap(v, keys, result, c);
  else swap(v, keys, result, b);
}

/** The pivot sits before `first` and stays there: its key is passed by value. */
function unguardedPartition(v: Int32Array, keys: Keys, first: number, last: number, pivot: number): number {
  for (;;) {
    while (keys[first] < pivot) first++;
    last--;
    while (pivot < keys[last]) last--;
    if (!(first < last)) return first;
    swap(v, keys, first, last);
    first++;
  }
}

function finalInsertionSort(v: Int32Array, keys: Keys, first: number, last: number): void {
  if (last - first > THRESHOLD) {
    insertionSort(v, keys, first, first + THRESHOLD);
    for (let i = first + THRESHOLD; i < last; i++) unguardedLinearInsert(v, keys, i);
  } else {
    insertionSort(v, keys, first, last);
  }
}

function insertionSort(v: Int32Array, keys: Keys, first: number, last: number): void {
  for (let i = first + 1; i < last; i++) {
    if (keys[i] < keys[first]) {
      const val = v[i];
      const key = keys[i];
      v.copyWithin(first + 1, first, i);
      keys.copyWithin(first + 1, first, i);
      v[first] = val;
      keys[first] = key;
    } else {
      unguardedLinearInsert(v, keys, i);
    }
  }
}

function unguardedLinearInsert(v: Int32Array, keys: Keys, last: number): void {
  const val = v[last];
  const key = keys[last];
  let next = last - 1;
  while (key < keys[next]) {
    v[last] = v[next];
    keys[last] = keys[next];
    last = next;
    next--;
  }
  v[last] = val;
  keys[last] = key;
}

// std::partial_sort(first, last, last): make_heap, then sort_heap.
function heapSort(v: Int32Array, keys: Keys, first: number, last: number): void {
  const len = last - first;
  if (len >= 2) {
    for (let parent = Math.trunc((len - 2) / 2); ; parent--) {
      adjustHeap(v, keys, first, parent, len, v[first + parent], keys[first + parent]);
      if (parent === 0) break;
    }
  }
  while (last - first > 1) {
    last--;
    const value = v[last];
    const key = keys[last];
    v[last] = v[first];
    keys[last] = keys[first];
    adjustHeap(v, keys, first, 0, last - first, value, key);
  }
}

function adjustHeap(v: Int32Array, keys: Keys, first: number, holeIndex: number, len: number, value: number, key: number): void {
  const topIndex = holeIndex;
  let secondChild = holeIndex;
  while (secondChild < Math.trunc((len - 1) / 2)) {
    secondChild = 2 * (secondChild + 1);
    if (keys[first + secondChild] < keys[first + secondChild - 1]) secondChild--;
    v[first + holeIndex] = v[first + secondChild];
    keys[first + holeIndex] = keys[first + secondChild];
    holeIndex = secondChild;
  }
  if ((len & 1) === 0 && secondChild === Math.trunc((len - 2) / 2)) {
    secondChild = 2 * (secondChild + 1);
    v[first + holeIndex] = v[first + secondChild - 1];
    keys[first + holeIndex] = keys[first + secondChild - 1];
    holeIndex = secondChild - 1;
  }
  // push_heap
  let parent = Math.trunc((holeIndex - 1) / 2);
  while (holeIndex > topIndex && keys[first + parent] < key) {
    v[first + holeIndex] = v[first + parent];
    keys[first + holeIndex] = keys[first + parent];
    holeIndex = parent;
    parent = Math.trunc((holeIndex - 1) / 2);
  }
  v[first + holeIndex] = value;
  keys[first + holeIndex] = key;
}
