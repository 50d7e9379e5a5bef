"""Vote: pool the predictions of every augmented view of a test input and rank the distinct grids.

Inputs: a `Predictions` container with one record per view: task id, test index, variant, the
predicted grid (already mapped back to the original frame; it may be 0x0) and the raw q_halt logit.
Outputs: a `Vote`: for each test input (task id, test index) its distinct candidate grids with the
vote count and the sum and mean of sigmoid(q_halt), ranked by a rule, and the two attempts that go
into the Kaggle submission.

Storage. A record's grid is kept as its own run of 8-byte words in one flat buffer: bytes
[h, w, cells row-major two per byte (first cell in the low nibble), zero padding to a whole word]
(a 10x10 grid takes 7 words). Compact records keep memory traffic low: voting is bound by how fast
the grids stream through the CPU. A fixed-width row of ROW = 2 + 900 bytes, one cell per byte
(`pack_grid`), is the bulk input format.

Grid keys. A numba 64-bit hash of the words only picks the slot of an open-addressing table; a
record joins an existing candidate only when it belongs to the same test input AND its words equal
the candidate's (shape and every cell; h and w sit in the first word). So a hash collision can
never merge two different grids, and equal grids always merge.

Ranking rules, all descending; an exact tie keeps first-seen order (record order), which is what the
reference's stable sort does:
  reference   vote count, then mean sigmoid(q_halt)    (the reference evaluator; the default)
  count       vote count only
  q-weighted  sum of sigmoid(q_halt), then vote count

Attempts. Kaggle scores two attempts per test input, each a grid of 1-30 per side. A 0x0 candidate
(a prediction whose first cell is PAD or EOS) is never an attempt: it is skipped and the next
candidate moves up. Fill policy when fewer than two usable candidates exist:
  fallback    (default) attempt_2 is the fallback guess (for a submission: the test input itself),
              unless it equals attempt_1, in which case attempt_1 is repeated. A second distinct guess
              can only help; a duplicate can never score.
  duplicate   attempt_2 repeats attempt_1 (the reference's behaviour).
With no usable candidate at all both attempts are the fallback guess (the reference skips such a
test input; a Kaggle submission must not).
"""

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numba import njit

from trm_core.safe_io import MAX_SIDE

CELLS = MAX_SIDE * MAX_SIDE
ROW = 2 + CELLS  # fixed-width packed grid: [h, w, h*w cells row-major, unused tail]
MAX_WORDS = (2 + CELLS // 2 + 7) // 8  # 8-byte words a grid can take in compact storage (57)
RULES = ("reference", "count", "q-weighted")
FILL_POLICIES = ("fallback", "duplicate")


# ---------------------------------------------------------------------------------------------
# Packing grids
# ---------------------------------------------------------------------------------------------


def _shape_of(grid: np.ndarray, where: str) -> tuple[np.ndarray, int, int]:
    # validated (array, h, w); every empty grid (0x5, 3x0, ...) becomes the one 0x0 grid
    a = np.asarray(grid)
    if a.ndim != 2:
        raise ValueError(f"{where}: expected a 2-D grid [h, w], got shape {a.shape}")
    h, w = a.shape
    if h > MAX_SIDE or w > MAX_SIDE:
        raise ValueError(f"{where}: grid is {h}x{w}, each side must be <= {MAX_SIDE}")
    if h * w == 0:
        return a.reshape(0, 0), 0, 0
    if a.dtype.kind not in "iu" or a.min() < 0 or a.max() > 9:
        raise ValueError(f"{where}: grid values must be integers 0..9, got dtype {a.dtype}, "
                         f"range [{a.min()}, {a.max()}]")
    return a, h, w


def pack_grid(grid: np.ndarray, where: str = "grid") -> np.ndarray:
    """A grid [h, w] (0 <= h, w <= 30, values 0..9) as a fixed-width uint8 row [ROW], tail zero.
    `where` names the record in error messages."""
    a, h, w = _shape_of(grid, where)
    row = np.zeros(ROW, np.uint8)
    row[0], row[1] = h, w
    row[2:2 + h * w] = a.reshape(-1)
    return row


def unpack_grid(row: np.ndarray) -> np.ndarray:
    """The grid [h, w] uint8 held in a fixed-width packed row, as a copy."""
    h, w = int(row[0]), int(row[1])
    return row[2:2 + h * w].reshape(h, w).copy()


def _compact(grid: np.ndarray) -> np.ndarray:
    # validated grid -> its compact bytes [h, w, nibble pairs] (no padding)
    cells = np.asarray(grid, np.uint8).reshape(-1)
    if cells.size % 2:
        cells = np.append(cells, np.uint8(0))
    h, w = np.shape(grid)
    return np.concatenate([np.array([h, w], np.uint8), cells[0::2] | (cells[1::2] << 4)])


def _uncompact(raw: np.ndarray) -> np.ndarray:
    # compact bytes (a record's start onwards) -> grid [h, w] uint8
    h, w = int(raw[0]), int(raw[1])
    pairs = raw[2:2 + (h * w + 1) // 2]
    cells = np.empty(2 * pairs.size, np.uint8)
    cells[0::2] = pairs & 15
    cells[1::2] = pairs >> 4
    return cells[:h * w].reshape(h, w)


def check_packed(rows: np.ndarray, where: str = "rows") -> None:
    """Raise ValueError unless every row of rows [N, ROW] uint8 holds a valid packed grid."""
    if rows.ndim != 2 or rows.shape[1] != ROW or rows.dtype != np.uint8:
        raise ValueError(f"{where}: expected uint8 [N, {ROW}], got {rows.dtype} {rows.shape}")
    h = rows[:, 0].astype(np.int64)
    w = rows[:, 1].astype(np.int64)
    bad = np.flatnonzero((h > MAX_SIDE) | (w > MAX_SIDE) | ((h == 0) != (w == 0)))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{where}: row {i} has shape {h[i]}x{w[i]}; sides must be 1..{MAX_SIDE} "
                         "(or 0x0)")
    inside = np.arange(CELLS)[None, :] < (h * w)[:, None]  # [N, 900] cells that belong to the grid
    bad = np.flatnonzero(((rows[:, 2:] > 9) & inside).any(axis=1))
    if bad.size:
        raise ValueError(f"{where}: row {int(bad[0])} has a cell value > 9")


def _n_words(h: np.ndarray | int, w: np.ndarray | int) -> np.ndarray | int:
    return (2 + (h * w + 1) // 2 + 7) // 8


@njit(cache=True)
def _copy_rows(rows, out, at):
    # rows uint8 [B, ROW] -> compact records in out (uint8 view of the word buffer, zero beyond
    # the used part) starting at byte 8 * at[b] for row b; the unused tail of a row is never read
    for b in range(rows.shape[0]):
        n = np.int64(rows[b, 0]) * np.int64(rows[b, 1])
        base = 8 * at[b]
        out[base], out[base + 1] = rows[b, 0], rows[b, 1]
        for j in range(0, n - 1, 2):
            out[base + 2 + j // 2] = rows[b, 2 + j] | (rows[b, 3 + j] << np.uint8(4))
        if n % 2:
            out[base + 2 + n // 2] = rows[b, 1 + n]


# ---------------------------------------------------------------------------------------------
# Prediction records
# ---------------------------------------------------------------------------------------------


class Predictions:
    """Columnar, growable store of prediction records, one per augmented view.

    Columns (length N): task (int32 index into task_ids), test_index (int32), variant (int32),
    q_halt (float64, the raw logit), start (int64: where the record's grid begins in `data`).
    data (uint64 [W]) holds the grids in compact form (see the module docstring). Records keep their
    append order, which is the "first seen" order used to break exact ties.
    """

    def __init__(self, capacity: int = 256) -> None:
        capacity = max(int(capacity), 1)
        self._n = 0
        self._words = 0  # used length of _data
        self._task_ids: list[str] = []
        self._task_row: dict[str, int] = {}
        self._task = np.zeros(capacity, np.int32)
        self._test = np.zeros(capacity, np.int32)
        self._variant = np.zeros(capacity, np.int32)
        self._q = np.zeros(capacity, np.float64)
        self._start = np.zeros(capacity, np.int64)
        self._data = np.zeros(capacity * 4, np.uint64)  # about a 5x5 grid per record to start

    def _reserve(self, records: int, words: int) -> None:
        # grow by doubling; the word buffer is zero beyond its used part (padding relies on it)
        need = self._n + records
        if need > len(self._task):
            size = max(need, 2 * len(self._task))
            for name in ("_task", "_test", "_variant", "_q", "_start"):
                old = getattr(self, name)
                new = np.zeros(size, old.dtype)
                new[:self._n] = old[:self._n]
                setattr(self, name, new)
        need = self._words + words
        if need > len(self._data):
            new = np.zeros(max(need, 2 * len(self._data)), np.uint64)
            new[:self._words] = self._data[:self._words]
            self._data = new

    def _task_index(self, task_id: str) -> int:
        row = self._task_row.get(task_id)
        if row is None:
            row = self._task_row[task_id] = len(self._task_ids)
            self._task_ids.append(task_id)
        return row

    def __len__(self) -> int:
        return self._n

    @property
    def task_ids(self) -> tuple[str, ...]:
        """Task id table; `task` holds indices into it (first-seen order)."""
        return tuple(self._task_ids)

    @property
    def task(self) -> np.ndarray:
        return self._task[:self._n]

    @property
    def test_index(self) -> np.ndarray:
        return self._test[:self._n]

    @property
    def variant(self) -> np.ndarray:
        return self._variant[:self._n]

    @property
    def q_halt(self) -> np.ndarray:
        return self._q[:self._n]

    @property
    def start(self) -> np.ndarray:
        return self._start[:self._n]

    @property
    def data(self) -> np.ndarray:
        return self._data[:self._words]

    def append(self, task_id: str, test_index: int, variant: int, grid: np.ndarray,
               q_halt: float) -> None:
        """Add one record. grid [h, w] integers 0..9 in the original frame (0x0 allowed)."""
        a, h, w = _shape_of(grid, f"task {task_id} test {test_index} variant {variant}")
        words = _n_words(h, w)
        self._reserve(1, words)
        i, s = self._n, self._words
        packed = _compact(a)
        self._data.view(np.uint8)[8 * s:8 * s + packed.size] = packed
        self._task[i] = self._task_index(task_id)
        self._test[i] = test_index
        self._variant[i] = variant
        self._q[i] = q_halt
        self._start[i] = s
        self._n += 1
        self._words += words

    def extend(self, records: Iterable[tuple[str, int, int, np.ndarray, float]]) -> None:
        """Add (task_id, test_index, variant, grid, q_halt) records in order."""
        for task_id, test_index, variant, grid, q_halt in records:
            self.append(task_id, test_index, variant, grid, q_halt)

    def extend_packed(self, task_ids: Sequence[str], test_index: np.ndarray, variant: np.ndarray,
                      rows: np.ndarray, q_halt: np.ndarray) -> None:
        """Add B records at once: task_ids [B] str, test_index/variant [B] int, rows uint8
        [B, ROW] (see pack_grid; the unused tail may hold anything), q_halt [B] float.
        The fast path for a predictor."""
        b = len(task_ids)
        rows = np.ascontiguousarray(rows)
        check_packed(rows, where="extend_packed rows")
        for name, col in (("test_index", test_index), ("variant", variant), ("q_halt", q_halt),
                          ("rows", rows)):
            if len(col) != b:
                raise ValueError(f"extend_packed: {name} has {len(col)} entries, task_ids has {b}")
        words = _n_words(rows[:, 0].astype(np.int64), rows[:, 1].astype(np.int64))  # [B]
        at = self._words + np.concatenate([[0], np.cumsum(words)[:-1]]).astype(np.int64)
        self._reserve(b, int(words.sum()))
        _copy_rows(rows, self._data.view(np.uint8), at)
        s = slice(self._n, self._n + b)
        self._task[s] = [self._task_index(t) for t in task_ids]
        self._test[s] = test_index
        self._variant[s] = variant
        self._q[s] = q_halt
        self._start[s] = at
        self._n += b
        self._words += int(words.sum())

    def grid(self, i: int) -> np.ndarray:
        """The grid of record i, uint8 [h, w]."""
        if not 0 <= i < self._n:
            raise IndexError(f"record {i} out of range 0..{self._n - 1}")
        s = int(self._start[i])
        return _uncompact(self._data[s:s + MAX_WORDS].view(np.uint8))

    def record(self, i: int) -> tuple[str, int, int, np.ndarray, float]:
        """Record i as (task_id, test_index, variant, grid, q_halt)."""
        grid = self.grid(i)
        return (self._task_ids[self._task[i]], int(self._test[i]), int(self._variant[i]), grid,
                float(self._q[i]))

    @classmethod
    def merge(cls, parts: Sequence["Predictions"]) -> "Predictions":
        """Concatenate containers (e.g. one per rank, in rank order); task tables are re-mapped."""
        out = cls(capacity=max(1, sum(len(p) for p in parts)))
        out._reserve(0, sum(p._words for p in parts))
        for p in parts:
            n = len(p)
            remap = np.array([out._task_index(t) for t in p._task_ids] or [0], np.int32)
            s = slice(out._n, out._n + n)
            out._task[s] = remap[p.task]
            out._test[s] = p.test_index
            out._variant[s] = p.variant
            out._q[s] = p.q_halt
            out._start[s] = p.start + out._words
            out._data[out._words:out._words + p._words] = p.data
            out._n += n
            out._words += p._words
        return out

    # Pickling (torch.distributed.gather_object) and files keep only the used part.
    def __getstate__(self) -> dict:
        return {"task_ids": list(self._task_ids), "task": self.task.copy(),
                "test_index": self.test_index.copy(), "variant": self.variant.copy(),
                "q_halt": self.q_halt.copy(), "start": self.start.copy(), "data": self.data.copy()}

    def __setstate__(self, state: dict) -> None:
        self._task_ids = [str(t) for t in state["task_ids"]]
        self._task_row = {t: i for i, t in enumerate(self._task_ids)}
        self._task = np.array(state["task"], np.int32)
        self._n = len(self._task)
        self._test = np.array(state["test_index"], np.int32)
        self._variant = np.array(state["variant"], np.int32)
        self._q = np.array(state["q_halt"], np.float64)
        self._start = np.array(state["start"], np.int64)
        self._data = np.array(state["data"], np.uint64)
        self._words = len(self._data)

    def save(self, path: str | Path) -> None:
        """Write the records to an .npz file (no pickles)."""
        state = self.__getstate__()
        state["task_ids"] = np.array(state["task_ids"], dtype=np.str_)
        np.savez(path, **state)

    @classmethod
    def load(cls, path: str | Path) -> "Predictions":
        """Read records written by save(), checking that they are consistent."""
        with np.load(path, allow_pickle=False) as z:
            state = {k: z[k] for k in z.files}
        missing = {"task_ids", "task", "test_index", "variant", "q_halt", "start", "data"} - set(state)
        if missing:
            raise ValueError(f"{path}: not a predictions file, missing arrays {sorted(missing)}")
        out = cls.__new__(cls)
        out.__setstate__(state)
        n = len(out)
        if any(len(c) != n for c in (out._test, out._variant, out._q, out._start)):
            raise ValueError(f"{path}: columns have different lengths")
        if n and (out.task.min() < 0 or out.task.max() >= len(out._task_ids)):
            raise ValueError(f"{path}: task column indexes outside the task id table")
        bad = _check_records(out.data.view(np.uint8), out.start)
        if bad >= 0:
            raise ValueError(f"{path}: record {bad} does not hold a valid grid")
        return out


@njit(cache=True)
def _check_records(raw, start):
    # index of the first record whose grid is malformed or runs past the buffer, else -1
    for i in range(start.shape[0]):
        b = 8 * start[i]
        if start[i] < 0 or b + 8 > raw.shape[0]:
            return i
        h, w = np.int64(raw[b]), np.int64(raw[b + 1])
        n = h * w
        words = (2 + (n + 1) // 2 + 7) // 8
        if h > MAX_SIDE or w > MAX_SIDE or (h == 0) != (w == 0) or b + 8 * words > raw.shape[0]:
            return i
        for j in range(2, 8 * words):
            for nibble in range(2):
                value = (raw[b + j] >> (4 * nibble)) & 15
                if value > (9 if 2 * (j - 2) + nibble < n else 0):  # cells 0..9, the rest zero
                    return i
    return -1


# ---------------------------------------------------------------------------------------------
# Keys and grouping (numba)
# ---------------------------------------------------------------------------------------------

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@njit(inline="always")
def _mix64(x):
    # splitmix64 finaliser: spreads every input bit over the low bits used as a table slot
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


@njit(cache=True)
def _hash_keys():
    # one odd 64-bit multiplier per word position
    keys = np.empty(MAX_WORDS, np.uint64)
    for j in range(MAX_WORDS):
        keys[j] = _mix64(np.uint64(j + 1) * _GOLDEN) | np.uint64(1)
    return keys


@njit(inline="always")
def _words_of(raw, start, i):
    # number of words record i takes: h and w are its first two bytes
    b = 8 * start[i]
    return (2 + (np.int64(raw[b]) * np.int64(raw[b + 1]) + 1) // 2 + 7) >> 3


@njit(inline="always")
def _record_hash(data, raw, start, keys, i):
    # Multilinear hash of record i's words: sum of word_j * K_j (independent multiplies, no serial
    # chain, so it vectorises), then a finaliser. Padding is zero, so equal grids hash equal.
    s = start[i]
    h = np.uint64(0)
    for j in range(_words_of(raw, start, i)):
        h += data[s + j] * keys[j]
    return _mix64(h)


@njit(cache=True)
def _hash_records(data, raw, start):
    keys = _hash_keys()
    out = np.empty(start.shape[0], np.uint64)
    for i in range(start.shape[0]):
        out[i] = _record_hash(data, raw, start, keys, i)
    return out


def grid_hashes(data: np.ndarray, start: np.ndarray) -> np.ndarray:
    """64-bit hash of each record's grid (data/start as in Predictions) -> uint64 [N]. Equal grids
    hash equal; different grids almost always differ, and grouping never relies on that."""
    return _hash_records(data, data.view(np.uint8), np.asarray(start, np.int64))


@njit(inline="always")
def _records_equal(data, raw, start, a, b):
    # word 0 holds (h, w): a different shape fails on j = 0, before any read past a shorter grid
    sa, sb = start[a], start[b]
    for j in range(_words_of(raw, start, a)):
        if data[sa + j] != data[sb + j]:
            return False
    return True


@njit(cache=True)
def _group(pair, n_pairs, hashes, data, raw, start):
    # pair int64 [N] in 0..n_pairs-1; hashes uint64 [N], or [0] to compute them here while the
    # rows are in cache; data uint64 [W] with raw its uint8 view; start int64 [N].
    # -> cand int64 [N] (candidate of each record), first int64 [C] (first record of each
    # candidate), cand_start int64 [n_pairs + 1] (pair p owns candidates cand_start[p]:[p + 1]).
    # Candidates are numbered pair by pair, in first-seen order within a pair.
    n = pair.shape[0]
    # stable counting sort of the records by pair, so that each pair is grouped with a small
    # table that stays in cache (one big table would miss cache on nearly every probe)
    pair_start = np.zeros(n_pairs + 1, np.int64)
    for i in range(n):
        pair_start[pair[i] + 1] += 1
    biggest = 0
    for p in range(n_pairs):
        biggest = max(biggest, pair_start[p + 1])
        pair_start[p + 1] += pair_start[p]
    nxt = pair_start[:-1].copy()
    by_pair = np.empty(n, np.int64)
    for i in range(n):
        by_pair[nxt[pair[i]]] = i
        nxt[pair[i]] += 1
    size = 16
    while size < 2 * biggest:
        size *= 2
    table = np.full(size, -1, np.int64)
    key = np.empty(n, np.uint64)  # per candidate: its hash
    first = np.empty(n, np.int64)  # per candidate: its first record
    cand = np.empty(n, np.int64)
    cand_start = np.zeros(n_pairs + 1, np.int64)
    inline = hashes.shape[0] == 0
    keys = _hash_keys()
    pair_hash = np.empty(biggest, np.uint64)
    nc = 0
    for p in range(n_pairs):
        lo, hi = pair_start[p], pair_start[p + 1]
        # hash this pair's records first in a tight loop; they stay in cache for the comparisons
        for t in range(lo, hi):
            i = by_pair[t]
            pair_hash[t - lo] = _record_hash(data, raw, start, keys, i) if inline else hashes[i]
        m = 16
        while m < 2 * (hi - lo):
            m *= 2
        mask = np.uint64(m - 1)
        for t in range(lo, hi):
            i = by_pair[t]
            k = pair_hash[t - lo]
            slot = k & mask
            while True:
                c = table[slot]
                if c < 0:
                    table[slot] = nc
                    key[nc] = k
                    first[nc] = i
                    cand[i] = nc
                    nc += 1
                    break
                # an equal hash is only a hint: equal words (shape and cells) decide
                if key[c] == k and _records_equal(data, raw, start, first[c], i):
                    cand[i] = c
                    break
                slot = (slot + np.uint64(1)) & mask
        table[:m] = -1
        cand_start[p + 1] = nc
    return cand, first[:nc].copy(), cand_start


def group_grids(pair: np.ndarray, data: np.ndarray, start: np.ndarray,
                hash_fn: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group records into candidates: same pair id and identical grid (shape and every cell).

    pair int [N] in 0..P-1 (which test input a record belongs to); data/start: the grids as stored
    in Predictions. Returns (cand int64 [N], first int64 [C], cand_start int64 [P + 1]): each
    record's candidate id, each candidate's first record, and the candidate range of each pair.
    Candidates are numbered pair by pair, in order of first appearance within a pair. The hash
    only speeds the search up: hash_fn ((data, start) -> uint64 [N]; None = grid_hashes, computed
    inside the grouping pass) can be any function, even a constant, and gives the same groups.
    """
    data = np.ascontiguousarray(data, np.uint64)
    start = np.ascontiguousarray(start, np.int64)
    pair = np.ascontiguousarray(pair, np.int64)
    if pair.shape != start.shape or (pair.size and pair.min() < 0):
        raise ValueError(f"pair must be {start.shape[0]} ids >= 0, got shape {pair.shape}")
    hashes = np.zeros(0, np.uint64)
    if hash_fn is not None:
        hashes = np.ascontiguousarray(hash_fn(data, start), np.uint64)
        if hashes.shape != start.shape:
            raise ValueError(f"hash_fn returned shape {hashes.shape}, expected {start.shape}")
    n_pairs = int(pair.max()) + 1 if pair.size else 0
    return _group(pair, n_pairs, hashes, data, data.view(np.uint8), start)


@njit(cache=True)
def _pair_ids(task, test, n_tasks, span):
    # task, test int32 [N] -> pair int64 [N] and codes int64 [P] (code = task * span + test), pairs
    # numbered in increasing code order, through a dense table of n_tasks * span entries
    table = np.full(n_tasks * span, -1, np.int64)
    for i in range(task.shape[0]):
        table[np.int64(task[i]) * span + test[i]] = 0
    n_pairs = 0
    for c in range(table.shape[0]):
        if table[c] == 0:
            table[c] = n_pairs
            n_pairs += 1
    codes = np.empty(n_pairs, np.int64)
    for c in range(table.shape[0]):
        if table[c] >= 0:
            codes[table[c]] = c
    pair = np.empty(task.shape[0], np.int64)
    for i in range(task.shape[0]):
        pair[i] = table[np.int64(task[i]) * span + test[i]]
    return pair, codes


@njit(cache=True)
def _accumulate(cand, q, nc):
    # votes and sum of sigmoid(q) per candidate, summed in record order (as the reference does)
    count = np.zeros(nc, np.int64)
    q_sum = np.zeros(nc, np.float64)
    for i in range(cand.shape[0]):
        count[cand[i]] += 1
        q_sum[cand[i]] += q[i]
    return count, q_sum


def sigmoid(x: np.ndarray) -> np.ndarray:
    """float64 sigmoid, 1 / (1 + exp(-x)): the same bits as torch.sigmoid on float64."""
    out = np.array(x, np.float64)  # one buffer, updated in place
    np.negative(out, out=out)
    with np.errstate(over="ignore"):
        np.exp(out, out=out)
    out += 1.0
    np.divide(1.0, out, out=out)
    return out if out.ndim else out[()]


@njit(cache=True)
def _rank(k1, k2, cand_start):
    # k1, k2 float64 [C], cand_start int64 [P + 1] -> order int64 [C]: within each pair's range,
    # k1 descending, then k2 descending, then candidate id ascending. Bottom-up merge sort that
    # takes from the right run only when strictly better, so it is stable: ties keep id order.
    order = np.arange(k1.shape[0])
    buf = np.empty_like(order)
    for p in range(cand_start.shape[0] - 1):
        lo, hi = cand_start[p], cand_start[p + 1]
        width = 1
        while width < hi - lo:
            for left in range(lo, hi, 2 * width):
                mid, right = min(left + width, hi), min(left + 2 * width, hi)
                i, j, k = left, mid, left
                while i < mid and j < right:
                    a, b = order[i], order[j]
                    if k1[b] > k1[a] or (k1[b] == k1[a] and k2[b] > k2[a]):
                        buf[k] = b
                        j += 1
                    else:
                        buf[k] = a
                        i += 1
                    k += 1
                while i < mid:
                    buf[k] = order[i]
                    i += 1
                    k += 1
                while j < right:
                    buf[k] = order[j]
                    j += 1
                    k += 1
            order[lo:hi] = buf[lo:hi]
            width *= 2
    return order


def rank_order(cand_start: np.ndarray, count: np.ndarray, q_sum: np.ndarray, rule: str) -> np.ndarray:
    """Candidate order for a rule. Candidates are grouped by pair (pair p owns ids
    cand_start[p]:cand_start[p + 1], numbered first-seen within it); count/q_sum [C].
    Returns a permutation [C] that keeps the pair ranges and sorts each by the rule's keys
    descending, exact ties by candidate id (first seen)."""
    count = np.asarray(count, np.float64)  # exact for any count below 2**53
    if rule == "reference":
        k1, k2 = count, q_sum / count  # the reference divides the float sum by the int count
    elif rule == "count":
        k1, k2 = count, np.zeros_like(count)
    elif rule == "q-weighted":
        k1, k2 = np.asarray(q_sum, np.float64), count
    else:
        raise ValueError(f"unknown ranking rule {rule!r}; expected one of {RULES}")
    return _rank(k1, np.ascontiguousarray(k2, np.float64), np.asarray(cand_start, np.int64))


# ---------------------------------------------------------------------------------------------
# The vote
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Candidate:
    """One distinct grid proposed for a test input."""

    grid: np.ndarray  # uint8 [h, w], original frame; 0x0 for an empty prediction
    count: int  # votes (views that predicted this grid)
    q_sum: float  # sum over those views of sigmoid(q_halt)
    first: int  # index of the first record that proposed it (tie-break: earlier wins)

    @property
    def q_mean(self) -> float:
        return self.q_sum / self.count


class Vote:
    """Ranked candidates per test input. Build with `vote(predictions, rule)`.

    It reads candidate grids from the predictions' word buffer (shared, not copied), so it keeps
    that buffer alive.
    """

    def __init__(self, rule: str, pair_keys: list[tuple[str, int]], views: np.ndarray,
                 cand_start: np.ndarray, count: np.ndarray, q_sum: np.ndarray, first: np.ndarray,
                 data: np.ndarray, start: np.ndarray) -> None:
        self.rule = rule
        self._pairs = {key: p for p, key in enumerate(pair_keys)}
        self._views = views  # [P] records per test input
        self._order = rank_order(cand_start, count, q_sum, rule)  # [C] grouped by pair, best first
        self._offsets = cand_start  # [P + 1] pair p owns _order[_offsets[p]:_offsets[p + 1]]
        self._count, self._q_sum, self._first = count, q_sum, first  # [C] each
        self._data, self._start = data, start  # grids of the records; candidate c is record first[c]

    def _bytes(self, c: int) -> np.ndarray:
        s = int(self._start[self._first[c]])
        return self._data[s:s + MAX_WORDS].view(np.uint8)  # compact record of candidate c

    @property
    def pairs(self) -> list[tuple[str, int]]:
        """Every (task_id, test_index) that received at least one prediction."""
        return list(self._pairs)

    def views(self, task_id: str, test_index: int) -> int:
        """How many predictions the test input received (0 if none)."""
        p = self._pairs.get((task_id, test_index))
        return 0 if p is None else int(self._views[p])

    def _ranked_ids(self, task_id: str, test_index: int) -> np.ndarray:
        p = self._pairs.get((task_id, test_index))
        if p is None:
            return self._order[:0]
        return self._order[self._offsets[p]:self._offsets[p + 1]]

    def candidates(self, task_id: str, test_index: int) -> list[Candidate]:
        """The distinct grids for a test input, best first ([] if it got no prediction)."""
        return [Candidate(_uncompact(self._bytes(c)), int(self._count[c]), float(self._q_sum[c]),
                          int(self._first[c])) for c in self._ranked_ids(task_id, test_index)]

    def rank_of(self, task_id: str, test_index: int, grid: np.ndarray,
                skip_empty: bool = False) -> int | None:
        """1-based rank of `grid` among the candidates (None if absent). With skip_empty, 0x0
        candidates are not counted, as in the submission attempts."""
        target = _compact(_shape_of(grid, f"task {task_id} test {test_index} label")[0])
        size = target.size
        rank = 0
        for c in self._ranked_ids(task_id, test_index):
            raw = self._bytes(c)
            if skip_empty and raw[0] == 0:
                continue
            rank += 1
            if np.array_equal(raw[:size], target[:size]):
                return rank
        return None

    def attempts(self, task_id: str, test_index: int, fallback: np.ndarray,
                 fill: str = "fallback") -> tuple[np.ndarray, np.ndarray]:
        """The two Kaggle attempts for a test input, never 0x0 (see the module docstring).

        fallback: a valid grid [h, w] (1..30 per side) used when candidates run out.
        """
        if fill not in FILL_POLICIES:
            raise ValueError(f"unknown fill policy {fill!r}; expected one of {FILL_POLICIES}")
        fallback = np.asarray(fallback)
        if fallback.ndim != 2 or not (1 <= fallback.shape[0] <= MAX_SIDE
                                       and 1 <= fallback.shape[1] <= MAX_SIDE):
            raise ValueError(f"task {task_id} test {test_index}: fallback grid must be 1..{MAX_SIDE} "
                             f"per side, got shape {fallback.shape}")
        fallback = fallback.astype(np.uint8)
        raws = [self._bytes(c) for c in self._ranked_ids(task_id, test_index)]
        picks = [_uncompact(raw) for raw in raws if raw[0] > 0][:2]
        if len(picks) == 2:
            return picks[0], picks[1]
        if len(picks) == 1:
            first = picks[0]
            if fill == "fallback" and not np.array_equal(first, fallback):
                return first, fallback
            return first, first.copy()
        return fallback, fallback.copy()

    def reference_attempts(self, task_id: str, test_index: int) -> list[np.ndarray] | None:
        """The reference's two attempts: the top-2 candidates as ranked (a 0x0 grid included),
        the first repeated if only one exists; None when the test input got no prediction."""
        ranked = self._ranked_ids(task_id, test_index)
        if len(ranked) == 0:
            return None
        picks = [_uncompact(self._bytes(c)) for c in ranked[:2]]
        return picks if len(picks) == 2 else [picks[0], picks[0].copy()]


def vote(predictions: Predictions, rule: str = "reference",
         hash_fn: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> Vote:
    """Pool the records per test input (task id, test index), group identical grids, rank them.

    hash_fn (default: grid_hashes, fused into the grouping pass) is injectable for tests;
    grouping is exact whatever it returns.
    """
    if rule not in RULES:
        raise ValueError(f"unknown ranking rule {rule!r}; expected one of {RULES}")
    n = len(predictions)
    task, test = predictions.task, predictions.test_index  # int32 [N] each
    if n and test.min() < 0:
        raise ValueError(f"negative test_index {int(test.min())} in predictions")
    # pair id per record: (task, test) numbered in (task first-seen, test index) order
    task_ids = predictions.task_ids
    span = int(test.max()) + 1 if n else 1
    if len(task_ids) * span <= 8 * n + 4096:
        pair_of, codes = _pair_ids(task, test, len(task_ids), span)
    else:  # a stray huge test index: sort instead of a huge table
        codes, pair_of = np.unique(task.astype(np.int64) * span + test, return_inverse=True)
    pair_keys = [(task_ids[c // span], c % span) for c in codes.tolist()]
    data, start = predictions.data, predictions.start
    cand, first, cand_start = group_grids(pair_of, data, start, hash_fn)
    count, q_sum = _accumulate(cand, sigmoid(predictions.q_halt), len(first))
    views = np.bincount(pair_of, minlength=len(pair_keys))
    return Vote(rule, pair_keys, views, cand_start, count, q_sum, first, data, start)
