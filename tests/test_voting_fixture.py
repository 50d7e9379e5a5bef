"""Parity with the reference evaluator on the voting golden fixture(s).

Every folder under <fixtures>/voting that holds eval_batches.safetensors is a case (the layout is
described in voting/README.md). The rows the reference evaluator received are taken apart exactly
as it does (blank rows dropped, names parsed, crop, inverse augmentation, input matched to a test
pair by grid_hash), voted with the `reference` rule, and compared with what it produced: every
pass@k in expected/metrics.json and expected/submission.json, exactly.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import reference_root
from trm_core.augment import Augmentation, grid_hash
from trm_core.encoding import crop
from trm_core.evaluate import coverage
from trm_core.submission_file import (build_submission, fallback_grid, reference_submission,
                                 challenge_inputs, validate)
from trm_core.predictions import Predictions
from trm_core.vote import sigmoid, vote


def _cases() -> list[Path]:
    base = reference_root() / "voting"
    return sorted(p.parent for p in base.rglob("eval_batches.safetensors")) if base.is_dir() else []


CASES = _cases()


def _load_json(path: Path) -> object:
    return json.loads(path.read_text())


def _predictions(case: Path) -> tuple[Predictions, dict, list]:
    """Predictions as the reference evaluator sees them, its puzzles, and the per-record
    (task, input hash, pred hash, sigmoid q) it stores, for comparison with its internal state."""
    batches = load_file(str(case / "eval_batches.safetensors"))
    identifiers = _load_json(case / "dataset" / "identifiers.json")
    puzzles = _load_json(case / "dataset" / "test_puzzles.json")
    meta_path = case / "dataset" / "test" / "dataset.json"
    blank = _load_json(meta_path).get("blank_identifier_id", 0) if meta_path.is_file() else 0
    canvas = int(round(batches["inputs"].shape[1] ** 0.5))

    # test pair(s) of each task by the hash of their raw input (the reference keys on that hash)
    pair_of = {t: {} for t in puzzles}
    for task_id, puzzle in puzzles.items():
        for i, pair in enumerate(puzzle["test"]):
            pair_of[task_id].setdefault(grid_hash(np.array(pair["input"], np.uint8)), []).append(i)

    preds, stored = Predictions(), []
    ids, q_all, batch = batches["puzzle_identifiers"], batches["q_halt_logits"], batches["batch_index"]
    for b in np.unique(batch):  # one update_batch call per batch index, in order
        rows = np.flatnonzero(batch == b)
        kept = rows[ids[rows] != blank]
        # The reference drops blank rows from inputs/ids/preds but not from q, so the kept rows take
        # the batch's first len(kept) q values (identical to per-row q when blanks only trail).
        q_kept = q_all[rows][:len(kept)].astype(np.float64)
        for row, q in zip(kept, q_kept):
            task_id, aug = Augmentation.parse(identifiers[int(ids[row])])
            x = aug.invert(crop(batches["inputs"][row], canvas))
            y = aug.invert(crop(batches["preds"][row], canvas))
            assert y.size == 0 or y.max() <= 9
            stored.append((task_id, grid_hash(x), grid_hash(y), float(sigmoid(q))))
            for i in pair_of.get(task_id, {}).get(grid_hash(x), []):
                preds.append(task_id, i, int(ids[row]), y, float(q))
    return preds, puzzles, stored


@pytest.fixture(params=CASES or [None], ids=lambda p: "no-case" if p is None else p.name)
def case(request) -> Path:
    if request.param is None:
        pytest.fail(f"no voting fixture (eval_batches.safetensors) under {reference_root() / 'voting'}")
    return request.param


def test_records_match_reference_state(case):
    # the evaluator's internal (input hash -> [(pred hash, sigmoid q)]) lists, in insertion order
    _, _, stored = _predictions(case)
    path = case / "expected" / "evaluator_local_preds.json"
    if not path.is_file():
        pytest.skip("no evaluator_local_preds.json in this fixture set")
    expected = _load_json(path)
    ours: dict = {}
    for task_id, x_hash, y_hash, q in stored:
        ours.setdefault(task_id, {}).setdefault(x_hash, []).append([y_hash, q])
    assert ours == expected


def test_ranking_matches_derived_candidates(case):
    preds, puzzles, _ = _predictions(case)
    path = case / "expected" / "ranked_candidates_derived.json"
    if not path.is_file():
        pytest.skip("no ranked_candidates_derived.json in this fixture set")
    v = vote(preds, "reference")
    checked = 0
    for task_id, pairs in _load_json(path).items():
        for pair in pairs:
            ranked = v.candidates(task_id, pair["pair"])
            assert [(grid_hash(c.grid), c.count, c.q_mean) for c in ranked] == \
                [(r["hash"], r["count"], r["mean_sigmoid_q"]) for r in pair["ranked"]]
            checked += 1
    assert checked > 0


def test_metrics_match_reference(case):
    preds, puzzles, _ = _predictions(case)
    expected = _load_json(case / "expected" / "metrics.json")
    ks = [int(key.rsplit("@", 1)[1]) for key in expected]
    solutions = {t: [pair["output"] for pair in p["test"]] for t, p in puzzles.items()}
    report = coverage(vote(preds, "reference"), solutions)
    assert report.metrics(ks) == expected  # exact: ratios of small integers, same arithmetic


def test_reference_submission_matches(case):
    preds, puzzles, _ = _predictions(case)
    expected = _load_json(case / "expected" / "submission.json")
    ours = reference_submission(vote(preds, "reference"), puzzles)
    assert ours == expected
    assert list(ours) == list(expected)


def test_kaggle_writer_never_skips_and_agrees_with_reference(case):
    preds, puzzles, _ = _predictions(case)
    v = vote(preds, "reference")
    ours = build_submission(v, puzzles, fill="duplicate")
    assert validate(ours, puzzles) == []
    filled = 0
    for task_id, inputs in challenge_inputs(puzzles).items():
        assert len(ours[task_id]) == len(inputs)
        for i, x in enumerate(inputs):
            entry = ours[task_id][i]
            ref = v.reference_attempts(task_id, i)
            if ref is None:  # the reference skipped this test input; we write the fallback
                assert entry == {"attempt_1": fallback_grid(x), "attempt_2": fallback_grid(x)}
                filled += 1
            elif all(g.size for g in ref):  # no 0x0 among the reference's picks: same attempts
                assert [entry["attempt_1"], entry["attempt_2"]] == [g.tolist() for g in ref]
            else:  # a 0x0 pick is skipped: the first non-empty candidates move up
                usable = [c.grid.tolist() for c in v.candidates(task_id, i) if c.grid.size][:2]
                assert entry["attempt_1"] == (usable[0] if usable else fallback_grid(x))
    skipped = sum(len(xs) for xs in challenge_inputs(puzzles).values()) - \
        sum(len(e) for e in _load_json(case / "expected" / "submission.json").values())
    assert filled == skipped  # every test input the reference left out was filled
