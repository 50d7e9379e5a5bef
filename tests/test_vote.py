"""Voter: packing, exact grid keys (property-tested, collisions forced), ranking rules, attempts."""

import hashlib
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trm_core.predictions import ROW, Predictions, pack_grid, unpack_grid
from trm_core.vote import grid_hashes, group_grids, rank_order, sigmoid, vote

FALLBACK = np.array([[7]], np.uint8)


@st.composite
def grids(draw, max_side: int = 30) -> np.ndarray:
    h = draw(st.integers(1, max_side))
    w = draw(st.integers(1, max_side))
    seed = draw(st.integers(0, 2**32 - 1))
    return np.random.default_rng(seed).integers(0, 10, (h, w), dtype=np.uint8)


def _packed(*gs: np.ndarray) -> np.ndarray:
    return np.stack([pack_grid(g) for g in gs])


def _store(*gs: np.ndarray) -> Predictions:
    p = Predictions(capacity=1)
    for v, g in enumerate(gs):
        p.append("t", 0, v, g, 0.0)
    return p


def _hashes(*gs: np.ndarray) -> np.ndarray:
    p = _store(*gs)
    return grid_hashes(p.data, p.start)


def _groups(gs: list[np.ndarray], hash_fn=None, pair=None) -> np.ndarray:
    pair = np.zeros(len(gs), np.int64) if pair is None else pair
    p = _store(*gs)
    cand, _, _ = group_grids(pair, p.data, p.start, hash_fn)
    return cand


def _weak(data: np.ndarray, start: np.ndarray) -> np.ndarray:
    return np.zeros(len(start), np.uint64)  # every grid collides: only the exact check separates


def _bytes_key(g: np.ndarray) -> bytes:
    return bytes(g.shape) + np.ascontiguousarray(g, np.uint8).tobytes()


# --- packing ------------------------------------------------------------------------------------

@given(grids())
def test_pack_round_trip(g):
    row = pack_grid(g)
    assert row.shape == (ROW,) and row.dtype == np.uint8
    assert np.array_equal(unpack_grid(row), g) and unpack_grid(row).shape == g.shape


@settings(max_examples=40, deadline=None)
@given(st.lists(grids(), min_size=1, max_size=6))
def test_storage_round_trip_append_and_packed_agree(gs):
    one, bulk = Predictions(capacity=1), Predictions(capacity=1)
    for v, g in enumerate(gs):
        one.append("t", 0, v, g, 0.0)
    rows = _packed(*gs)
    rows[[g.size < 900 for g in gs], -1] = 5  # stale tail bytes must not reach the store
    bulk.extend_packed(["t"] * len(gs), np.zeros(len(gs)), np.arange(len(gs)), rows,
                       np.zeros(len(gs)))
    assert np.array_equal(one.data, bulk.data) and np.array_equal(one.start, bulk.start)
    for i, g in enumerate(gs):
        assert one.grid(i).tolist() == g.tolist() and bulk.grid(i).tolist() == g.tolist()
    full = np.full((30, 30), 9, np.uint8)  # the largest record: 2 + 450 bytes -> 57 words
    one.append("t", 0, 99, full, 0.0)
    assert len(one.data) - one.start[-1] == 57 and one.grid(len(gs)).tolist() == full.tolist()


def test_pack_empty_grids_are_one_0x0():
    for shape in [(0, 0), (0, 5), (3, 0)]:
        row = pack_grid(np.zeros(shape, np.uint8))
        assert row[0] == 0 and row[1] == 0 and unpack_grid(row).shape == (0, 0)


@pytest.mark.parametrize("bad, msg", [
    (np.zeros((2, 2, 2), np.uint8), "2-D"),
    (np.zeros((31, 2), np.uint8), "<= 30"),
    (np.array([[1, 10]]), "0..9"),
    (np.array([[1, -1]]), "0..9"),
    (np.array([[0.5]]), "integers"),
])
def test_pack_rejects_bad_grids_with_location(bad, msg):
    with pytest.raises(ValueError, match=msg):
        pack_grid(bad, where="task abc test 0")


# --- keys ---------------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(grids())
def test_equal_grids_share_key_and_group(g):
    copy = np.array(g.tolist(), dtype=np.int64)  # equal content, other dtype and memory
    h = _hashes(g, copy)
    assert h[0] == h[1]
    assert _groups([g, copy]).tolist() == [0, 0]


@settings(max_examples=60, deadline=None)
@given(grids(), st.data())
def test_single_cell_difference_never_merges(g, data):
    r = data.draw(st.integers(0, g.shape[0] - 1))
    c = data.draw(st.integers(0, g.shape[1] - 1))
    other = g.copy()
    other[r, c] = (other[r, c] + data.draw(st.integers(1, 9))) % 10
    assert _groups([g, other]).tolist() == [0, 1]
    assert _groups([g, other], hash_fn=_weak).tolist() == [0, 1]
    h = _hashes(g, other)
    assert h[0] != h[1]


def test_same_bytes_different_shapes_never_merge():
    cells = np.arange(6, dtype=np.uint8) % 10
    shapes = [(2, 3), (3, 2), (1, 6), (6, 1)]
    gs = [cells.reshape(s) for s in shapes]
    assert _groups(gs).tolist() == [0, 1, 2, 3]
    assert len(set(_hashes(*gs).tolist())) == 4
    # a uniform grid is the hardest case: identical cells, only the shape differs
    zeros = [np.zeros(s, np.uint8) for s in [(2, 6), (6, 2), (3, 4), (4, 3), (1, 12), (12, 1)]]
    assert _groups(zeros, hash_fn=_weak).tolist() == list(range(6))


def test_stale_tail_bytes_of_packed_rows_are_ignored():
    # fixed-width rows from a predictor may carry anything past h*w cells; for every position of
    # the grid's end inside an 8-byte word, the stored records must still be equal
    for cells in range(0, 12):
        g = np.ones((1, cells), np.uint8) if cells else np.zeros((0, 0), np.uint8)
        clean, dirty = pack_grid(g), pack_grid(g)
        dirty[2 + cells:] = 7
        p = Predictions()
        p.extend_packed(["t", "t"], np.zeros(2), np.arange(2), np.stack([clean, dirty]), np.zeros(2))
        assert np.array_equal(p.grid(1), g.reshape(g.shape))
        for hash_fn in (None, _weak):
            assert group_grids(np.zeros(2), p.data, p.start, hash_fn)[0].tolist() == [0, 0]
        h = grid_hashes(p.data, p.start)
        assert h[0] == h[1]


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_grouping_is_exact_whatever_the_hash(seed):
    # many duplicates among few shapes; the weak hashes collide constantly
    rng = np.random.default_rng(seed)
    pool = [rng.integers(0, 3, (int(rng.integers(1, 4)), int(rng.integers(1, 4))), dtype=np.uint8)
            for _ in range(12)] + [np.zeros((0, 0), np.uint8)]
    gs = [pool[int(i)] for i in rng.integers(0, len(pool), 80)]
    pair = rng.integers(0, 3, 80)
    # ground truth: a dict keyed by (pair, exact bytes); candidates numbered pair by pair, in
    # first-seen order within a pair
    truth: dict = {}
    for p, g in zip(pair, gs):
        truth.setdefault(int(p), {}).setdefault(_bytes_key(g), len(truth[int(p)]))
    offset = np.cumsum([0] + [len(truth.get(p, {})) for p in range(3)])
    expected = [int(offset[p]) + truth[int(p)][_bytes_key(g)] for p, g in zip(pair, gs)]
    store = _store(*gs)
    for hash_fn in (None, grid_hashes, _weak, lambda d, s: grid_hashes(d, s) & np.uint64(1)):
        cand, first, cand_start = group_grids(pair, store.data, store.start, hash_fn)
        assert cand.tolist() == expected
        assert first.tolist() == [expected.index(c) for c in range(len(first))]
        assert cand_start.tolist() == offset.tolist()


def test_bad_hash_fn_or_pair_is_rejected():
    p = _store(FALLBACK, FALLBACK)
    with pytest.raises(ValueError, match="hash_fn"):
        group_grids(np.zeros(2), p.data, p.start, lambda d, s: np.zeros(3, np.uint64))
    with pytest.raises(ValueError, match="pair must be 2 ids"):
        group_grids(np.zeros(3), p.data, p.start)


# --- ranking ------------------------------------------------------------------------------------

def _preds(rows: list[tuple]) -> Predictions:
    p = Predictions(capacity=1)
    for v, row in enumerate(rows):
        task, test, grid, q = row
        p.append(task, test, v, np.asarray(grid, np.uint8), q)
    return p


A, B, C = [[1]], [[2]], [[3, 3]]


def test_reference_rule_count_then_mean_q():
    p = _preds([("t", 0, A, -3.0), ("t", 0, B, 3.0), ("t", 0, A, -3.0), ("t", 0, C, 2.0),
                ("t", 0, C, 1.0)])
    ranked = vote(p, "reference").candidates("t", 0)
    # A and C both have 2 votes; C's mean sigmoid(q) is higher; B has one vote
    assert [c.grid.tolist() for c in ranked] == [C, A, B]
    assert [c.count for c in ranked] == [2, 2, 1]
    assert ranked[0].q_mean == pytest.approx((sigmoid(2.0) + sigmoid(1.0)) / 2)


def test_exact_ties_keep_first_seen_order():
    p = _preds([("t", 0, B, 0.5), ("t", 0, A, 0.5), ("t", 0, C, 0.5)])
    for rule in ("reference", "count", "q-weighted"):
        assert [c.grid.tolist() for c in vote(p, rule).candidates("t", 0)] == [B, A, C]


def test_count_rule_ignores_q():
    p = _preds([("t", 0, A, -5.0), ("t", 0, B, 5.0), ("t", 0, B, 5.0), ("t", 0, A, -5.0)])
    assert [c.grid.tolist() for c in vote(p, "count").candidates("t", 0)] == [A, B]
    assert [c.grid.tolist() for c in vote(p, "reference").candidates("t", 0)] == [B, A]


def test_q_weighted_rule_sums_sigmoid():
    # A: 3 votes at sigmoid(-4) ~ 0.018 each; B: 1 vote at sigmoid(4) ~ 0.98 -> B wins on the sum
    p = _preds([("t", 0, A, -4.0)] * 3 + [("t", 0, B, 4.0)])
    assert [c.grid.tolist() for c in vote(p, "q-weighted").candidates("t", 0)] == [B, A]
    assert [c.grid.tolist() for c in vote(p, "reference").candidates("t", 0)] == [A, B]


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from(["reference", "count", "q-weighted"]))
def test_ranking_matches_python_stable_sort(seed, rule):
    rng = np.random.default_rng(seed)
    pool = [[[i % 10] * (1 + i // 10)] for i in range(25)]  # up to 25 candidates: deep merges
    rows = [("t", 0, pool[int(rng.integers(0, 25))], float(rng.choice([-1.0, 0.0, 0.5, 2.0])))
            for _ in range(int(rng.integers(1, 90)))]
    stats: dict = {}  # the plain-Python voter: insertion order = first seen
    for _, _, g, q in rows:
        s = stats.setdefault(str(g), [g, 0, 0.0])
        s[1] += 1
        s[2] += float(sigmoid(q))
    key = {"reference": lambda s: (s[1], s[2] / s[1]), "count": lambda s: s[1],
           "q-weighted": lambda s: (s[2], s[1])}[rule]
    expected = [s[0] for s in sorted(stats.values(), key=key, reverse=True)]  # stable
    assert [c.grid.tolist() for c in vote(_preds(rows), rule).candidates("t", 0)] == expected


def test_rank_order_keeps_pair_ranges():
    # pair 0 owns candidates 0..2, pair 1 owns 3..4
    order = rank_order(np.array([0, 3, 5]), np.array([1, 5, 1, 2, 2]), np.zeros(5), "count")
    assert order.tolist() == [1, 0, 2, 3, 4]
    with pytest.raises(ValueError, match="unknown ranking rule"):
        rank_order(np.array([0, 1]), np.ones(1), np.zeros(1), "majority")


def test_test_inputs_and_tasks_are_kept_apart():
    p = _preds([("t", 0, A, 0.0), ("t", 1, A, 0.0), ("u", 0, A, 0.0), ("t", 0, A, 0.0)])
    v = vote(p)
    assert sorted(v.pairs) == [("t", 0), ("t", 1), ("u", 0)]
    assert [c.count for c in v.candidates("t", 0)] == [2]
    assert [c.count for c in v.candidates("t", 1)] == [1]
    assert v.views("u", 0) == 1 and v.views("u", 5) == 0 and v.candidates("zz", 0) == []


def test_rank_of_with_and_without_empty():
    p = _preds([("t", 0, np.zeros((0, 0)), 3.0), ("t", 0, np.zeros((0, 0)), 3.0), ("t", 0, A, 0.0)])
    v = vote(p)
    assert v.rank_of("t", 0, np.array(A)) == 2
    assert v.rank_of("t", 0, np.array(A), skip_empty=True) == 1
    assert v.rank_of("t", 0, np.array(B)) is None


# --- attempts -----------------------------------------------------------------------------------

def test_attempts_two_candidates():
    v = vote(_preds([("t", 0, A, 0.0), ("t", 0, A, 0.0), ("t", 0, B, 0.0), ("t", 0, C, 0.0)]))
    a1, a2 = v.attempts("t", 0, FALLBACK)
    assert (a1.tolist(), a2.tolist()) == (A, B)


def test_fill_policies_with_one_candidate():
    v = vote(_preds([("t", 0, A, 0.0)]))
    assert [a.tolist() for a in v.attempts("t", 0, FALLBACK)] == [A, FALLBACK.tolist()]
    assert [a.tolist() for a in v.attempts("t", 0, FALLBACK, fill="duplicate")] == [A, A]
    # the fallback equals the only candidate: repeat it rather than spend nothing new
    assert [a.tolist() for a in v.attempts("t", 0, np.array(A))] == [A, A]
    with pytest.raises(ValueError, match="fill policy"):
        v.attempts("t", 0, FALLBACK, fill="random")


def test_no_candidate_gives_fallback_twice():
    v = vote(_preds([("t", 0, A, 0.0)]))
    for fill in ("fallback", "duplicate"):
        assert [a.tolist() for a in v.attempts("t", 1, FALLBACK, fill)] == [[[7]], [[7]]]
    assert v.reference_attempts("t", 1) is None


def test_empty_grid_is_never_an_attempt():
    empty = np.zeros((0, 0), np.uint8)
    v = vote(_preds([("t", 0, empty, 5.0), ("t", 0, empty, 5.0), ("t", 0, A, 0.0), ("t", 0, B, 0.0),
                     ("u", 0, empty, 0.0)]))
    assert [a.tolist() for a in v.attempts("t", 0, FALLBACK)] == [A, B]
    assert [a.shape for a in v.reference_attempts("t", 0)] == [(0, 0), (1, 1)]  # the reference's
    assert [a.tolist() for a in v.attempts("u", 0, FALLBACK)] == [[[7]], [[7]]]
    assert [a.shape for a in v.reference_attempts("u", 0)] == [(0, 0), (0, 0)]


def test_attempts_reject_an_invalid_fallback():
    v = vote(_preds([("t", 0, A, 0.0)]))
    with pytest.raises(ValueError, match="fallback grid"):
        v.attempts("t", 0, np.zeros((0, 0), np.uint8))


def test_unknown_rule_and_empty_predictions():
    with pytest.raises(ValueError, match="unknown ranking rule"):
        vote(Predictions(), "best")
    v = vote(Predictions())
    assert v.pairs == [] and [a.tolist() for a in v.attempts("t", 0, FALLBACK)] == [[[7]], [[7]]]


# --- the container ------------------------------------------------------------------------------

def _random_records(rng: np.random.Generator, n: int, tasks: list[str]) -> list[tuple]:
    pool = [rng.integers(0, 10, (int(rng.integers(1, 5)), int(rng.integers(1, 5))), dtype=np.uint8)
            for _ in range(5)]
    return [(tasks[int(rng.integers(0, len(tasks)))], int(rng.integers(0, 2)), i,
             pool[int(rng.integers(0, 5))], float(rng.normal())) for i in range(n)]


def _summary(v) -> list:
    return [(t, i, [(c.grid.tolist(), c.count, c.q_sum) for c in v.candidates(t, i)])
            for t, i in sorted(v.pairs)]


def test_merge_of_rank_shards_equals_one_container():
    rng = np.random.default_rng(0)
    records = _random_records(rng, 60, ["a", "b", "c"])
    whole = Predictions()
    whole.extend(records)
    shards = [Predictions(), Predictions(), Predictions()]  # each with its own task table order
    for shard, part in zip(shards, (records[:7], records[7:40], records[40:])):
        shard.extend(part)
    merged = Predictions.merge(shards)
    assert len(merged) == 60
    assert [merged.record(i)[0] for i in range(60)] == [r[0] for r in records]
    assert _summary(vote(merged)) == _summary(vote(whole))


def test_pickle_and_npz_round_trip(tmp_path):
    p = Predictions()
    p.extend(_random_records(np.random.default_rng(1), 30, ["a", "b"]))
    p.append("c", 0, 99, np.zeros((0, 0), np.uint8), -1.5)
    back = pickle.loads(pickle.dumps(p))
    p.save(tmp_path / "preds.npz")
    loaded = Predictions.load(tmp_path / "preds.npz")
    for q in (back, loaded):
        assert len(q) == 31 and q.task_ids == p.task_ids
        for i in (0, 17, 30):
            a, b = p.record(i), q.record(i)
            assert a[:3] == b[:3] and a[4] == b[4] and np.array_equal(a[3], b[3])
        assert _summary(vote(q)) == _summary(vote(p))
    np.savez(tmp_path / "bad.npz", x=np.zeros(1))
    with pytest.raises(ValueError, match="missing arrays"):
        Predictions.load(tmp_path / "bad.npz")
    state = p.__getstate__()
    state["task_ids"] = np.array(state["task_ids"])
    state["data"] = state["data"].copy()
    state["data"].view(np.uint8)[8 * state["start"][3] + 2] = 12  # a cell value out of range
    np.savez(tmp_path / "corrupt.npz", **state)
    with pytest.raises(ValueError, match="record 3 does not hold a valid grid"):
        Predictions.load(tmp_path / "corrupt.npz")


def test_extend_packed_fast_path_and_checks():
    gs = [np.array(A, np.uint8), np.array(C, np.uint8)]
    p = Predictions()
    p.extend_packed(["t", "t"], np.array([0, 0]), np.array([3, 4]), _packed(*gs), np.array([0., 1.]))
    assert len(p) == 2 and p.grid(1).tolist() == C and p.variant.tolist() == [3, 4]
    bad = _packed(*gs)
    bad[0, 2] = 10
    with pytest.raises(ValueError, match="cell value > 9"):
        p.extend_packed(["t", "t"], np.zeros(2), np.zeros(2), bad, np.zeros(2))
    bad = _packed(*gs)
    bad[1, 0] = 31
    with pytest.raises(ValueError, match="shape 31x2"):
        p.extend_packed(["t", "t"], np.zeros(2), np.zeros(2), bad, np.zeros(2))
    with pytest.raises(ValueError, match="q_halt has 1 entries"):
        p.extend_packed(["t", "t"], np.zeros(2), np.zeros(2), _packed(*gs), np.zeros(1))
    with pytest.raises(IndexError):
        p.grid(2)


def test_sigmoid_is_stable_and_matches_formula():
    x = np.array([-1000.0, -2.0, 0.0, 0.5, 1000.0])
    assert sigmoid(x).tolist() == [0.0, 1 / (1 + np.exp(2.0)), 0.5, 1 / (1 + np.exp(-0.5)), 1.0]


def test_reference_hash_compatibility_of_keys():
    # the exact key is the same byte string the reference hashes with sha256
    g = np.array([[1, 2, 3], [4, 5, 6]], np.uint8)
    row = pack_grid(g)
    size = 2 + g.size
    ref = hashlib.sha256(bytes([2, 3]) + g.tobytes()).hexdigest()
    assert hashlib.sha256(row[:size].tobytes()).hexdigest() == ref
