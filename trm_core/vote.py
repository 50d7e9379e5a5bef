"""Vote: pool the predictions of every augmented view of a test input and rank the distinct grids.

Inputs: a `Predictions` container (trm_core/predictions.py) with one record per view: task id, test index, variant, the
predicted grid (already mapped back to the original frame; it may be 0x0) and the raw q_halt logit.
Outputs: a `Vote`: for each test input (task id, test index) its distinct candidate grids with the
vote count and the sum and mean of sigmoid(q_halt), ranked by a rule, and the two attempts that go
into the Kaggle submission.

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

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numba import njit

from trm_core.config import RULES
from trm_core.predictions import MAX_SIDE, MAX_WORDS, Predictions, compact_grid, grid_shape, uncompact_grid

FILL_POLICIES = ("fallback", "duplicate")


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

    def ranked_keys(self, task_id: str, test_index: int, skip_empty: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Vote counts int64 [n] and sums of sigmoid(q_halt) float64 [n] of the candidates, best first
        (with skip_empty, the 0x0 candidates left out, as in the attempts): what `settled` compares."""
        ids = self._ranked_ids(task_id, test_index)
        if skip_empty:
            ids = ids[[self._bytes(c)[0] > 0 for c in ids]] if len(ids) else ids
        return self._count[ids], self._q_sum[ids]

    def candidates(self, task_id: str, test_index: int) -> list[Candidate]:
        """The distinct grids for a test input, best first ([] if it got no prediction)."""
        return [Candidate(uncompact_grid(self._bytes(c)), int(self._count[c]), float(self._q_sum[c]),
                          int(self._first[c])) for c in self._ranked_ids(task_id, test_index)]

    def rank_of(self, task_id: str, test_index: int, grid: np.ndarray,
                skip_empty: bool = False) -> int | None:
        """1-based rank of `grid` among the candidates (None if absent). With skip_empty, 0x0
        candidates are not counted, as in the submission attempts."""
        target = compact_grid(grid_shape(grid, f"task {task_id} test {test_index} label")[0])
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
        picks = [uncompact_grid(raw) for raw in raws if raw[0] > 0][:2]
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
        picks = [uncompact_grid(self._bytes(c)) for c in ranked[:2]]
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
