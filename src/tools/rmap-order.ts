// The order thin_rmap 0.9.0 prints its regions in. It sorts them by first data block with
// std::sort, which is not stable: regions starting at the same data block (snapshots sharing
// it) come out in the order GCC's libstdc++ introsort leaves them. To print the same bytes we
// sort the same way: introsort (median-of-three quicksort down to runs of 16, heapsort past
// 2*log2(n) levels) and a final insertion sort, the algorithm as libstdc++ documents and ships it.

const THRESHOLD = 16;

/**
 * Sorts `v` (record numbers) by `keys[record]` as std::sort(v.begin(), v.end(), less-by-key)
 * does, ties included.
 */
export function stdSort(v: Int32Array, keys: Float64Array): void {
  const n = v.length;
  if (n < 2) return;
  introsortLoop(v, 0, n, 2 * (31 - Math.clz32(n)), keys);
  finalInsertionSort(v, 0, n, keys);
}

function swap(v: Int32Array, i: number, j: number): void {
  const t = v[i];
  v[i] = v[j];
  v[j] = t;
}

function introsortLoop(v: Int32Array, first: number, last: number, depthLimit: number, keys: Float64Array): void {
  while (last - first > THRESHOLD) {
    if (depthLimit === 0) {
      heapSort(v, first, last, keys);
      return;
    }
    depthLimit--;
    const mid = first + Math.trunc((last - first) / 2);
    moveMedianToFirst(v, first, first + 1, mid, last - 1, keys);
    const cut = unguardedPartition(v, first + 1, last, first, keys);
    introsortLoop(v, cut, last, depthLimit, keys);
    last = cut;
  }
}

function moveMedianToFirst(v: Int32Array, result: number, a: number, b: number, c: number, keys: Float64Array): void {
  if (keys[v[a]] < keys[v[b]]) {
    if (keys[v[b]] < keys[v[c]]) swap(v, result, b);
    else if (keys[v[a]] < keys[v[c]]) swap(v, result, c);
    else swap(v, result, a);
  } else if (keys[v[a]] < keys[v[c]]) swap(v, result, a);
  else if (keys[v[b]] < keys[v[c]]) swap(v, result, c);
  else swap(v, result, b);
}

function unguardedPartition(v: Int32Array, first: number, last: number, pivot: number, keys: Float64Array): number {
  for (;;) {
    while (keys[v[first]] < keys[v[pivot]]) first++;
    last--;
    while (keys[v[pivot]] < keys[v[last]]) last--;
    if (!(first < last)) return first;
    swap(v, first, last);
    first++;
  }
}

function finalInsertionSort(v: Int32Array, first: number, last: number, keys: Float64Array): void {
  if (last - first > THRESHOLD) {
    insertionSort(v, first, first + THRESHOLD, keys);
    for (let i = first + THRESHOLD; i < last; i++) unguardedLinearInsert(v, i, keys);
  } else {
    insertionSort(v, first, last, keys);
  }
}

function insertionSort(v: Int32Array, first: number, last: number, keys: Float64Array): void {
  for (let i = first + 1; i < last; i++) {
    if (keys[v[i]] < keys[v[first]]) {
      const val = v[i];
      v.copyWithin(first + 1, first, i);
      v[first] = val;
    } else {
      unguardedLinearInsert(v, i, keys);
    }
  }
}

function unguardedLinearInsert(v: Int32Array, last: number, keys: Float64Array): void {
  const val = v[last];
  let next = last - 1;
  while (keys[val] < keys[v[next]]) {
    v[last] = v[next];
    last = next;
    next--;
  }
  v[last] = val;
}

// std::partial_sort(first, last, last): make_heap, then sort_heap.
function heapSort(v: Int32Array, first: number, last: number, keys: Float64Array): void {
  const len = last - first;
  if (len >= 2) {
    for (let parent = Math.trunc((len - 2) / 2); ; parent--) {
      adjustHeap(v, first, parent, len, v[first + parent], keys);
      if (parent === 0) break;
    }
  }
  while (last - first > 1) {
    last--;
    const value = v[last];
    v[last] = v[first];
    adjustHeap(v, first, 0, last - first, value, keys);
  }
}

function adjustHeap(v: Int32Array, first: number, holeIndex: number, len: number, value: number, keys: Float64Array): void {
  const topIndex = holeIndex;
  let secondChild = holeIndex;
  while (secondChild < Math.trunc((len - 1) / 2)) {
    secondChild = 2 * (secondChild + 1);
    if (keys[v[first + secondChild]] < keys[v[first + secondChild - 1]]) secondChild--;
    v[first + holeIndex] = v[first + secondChild];
    holeIndex = secondChild;
  }
  if ((len & 1) === 0 && secondChild === Math.trunc((len - 2) / 2)) {
    secondChild = 2 * (secondChild + 1);
    v[first + holeIndex] = v[first + secondChild - 1];
    holeIndex = secondChild - 1;
  }
  // push_heap
  let parent = Math.trunc((holeIndex - 1) / 2);
  while (holeIndex > topIndex && keys[v[first + parent]] < keys[value]) {
    v[first + holeIndex] = v[first + parent];
    holeIndex = parent;
    parent = Math.trunc((holeIndex - 1) / 2);
  }
  v[first + holeIndex] = value;
}
