"""Scoring: pass@K the reference way and Kaggle's way, the oracle/coverage report, submission score."""

import json

import numpy as np
import pytest

from trm_core.evaluate import CoverageReport, PairCoverage, coverage, score_submission
from trm_core.predictions import Predictions
from trm_core.vote import vote

R, W1, W2, EMPTY = [[1, 2]], [[9]], [[8, 8]], np.zeros((0, 0), np.uint8)
SOLUTIONS = {
    "t1": [R, [[3]]],  # test 0: right answer ranked 1st; test 1: no prediction at all
    "t2": [R],  # right answer ranked 3rd
    "t3": [R],  # right answer never produced
    "t4": [R],  # a 0x0 candidate ranks above the right answer
}


def _vote(rule: str = "reference"):
    p = Predictions()
    rows = [("t1", 0, R), ("t1", 0, R), ("t1", 0, W1),
            ("t2", 0, W1), ("t2", 0, W1), ("t2", 0, W2), ("t2", 0, W2), ("t2", 0, R),
            ("t3", 0, W1),
            ("t4", 0, EMPTY), ("t4", 0, EMPTY), ("t4", 0, R)]
    for v, (task, i, g) in enumerate(rows):
        p.append(task, i, v, np.asarray(g, np.uint8), 0.0)
    return vote(p, rule)


def test_pair_rows():
    report = coverage(_vote(), SOLUTIONS)
    rows = {(p.task_id, p.test_index): p for p in report.pairs}
    assert [(p.task_id, p.test_index) for p in report.pairs] == [("t1", 0), ("t1", 1), ("t2", 0),
                                                                   ("t3", 0), ("t4", 0)]
    assert rows["t1", 0] == PairCoverage("t1", 0, 3, 2, 1, 2, 2)
    assert rows["t1", 1] == PairCoverage("t1", 1, 0, 0, None, 0, 0)
    assert rows["t2", 0] == PairCoverage("t2", 0, 5, 3, 3, 1, 2)
    assert rows["t3", 0].label_rank is None and rows["t3", 0].candidates == 1
    assert rows["t4", 0].label_rank == 2


def test_pass_at_k_both_ways():
    report = coverage(_vote(), SOLUTIONS)
    # Kaggle way, over 5 test outputs: pass@1 {t1#0}; pass@2 + t4; pass@3 + t2
    assert report.pass_at(1, "kaggle") == 1 / 5
    assert report.pass_at(2, "kaggle") == 2 / 5
    assert report.pass_at(3, "kaggle") == 3 / 5
    # reference way, per task then over 4 tasks: t1 scores 1/2 when its first test passes
    assert report.pass_at(1, "reference") == (0.5 + 0 + 0 + 0) / 4
    assert report.pass_at(2, "reference") == (0.5 + 0 + 0 + 1) / 4
    assert report.pass_at(1000, "reference") == (0.5 + 1 + 0 + 1) / 4
    assert report.oracle("kaggle") == 3 / 5 and report.oracle("reference") == 2.5 / 4
    assert report.metrics((1, 2)) == {"ARC/pass@1": 0.125, "ARC/pass@2": 0.375}
    with pytest.raises(ValueError, match="k >= 1"):
        report.pass_at(0)
    with pytest.raises(ValueError, match="unknown way"):
        report.pass_at(1, "average")


def test_skip_empty_ranks_like_the_submission():
    report = coverage(_vote(), SOLUTIONS, skip_empty=True)
    assert {(p.task_id, p.label_rank) for p in report.pairs if p.task_id == "t4"} == {("t4", 1)}
    assert report.pass_at(1, "kaggle") == 2 / 5


def test_rules_change_the_ranks():
    p = Predictions()
    for v, (g, q) in enumerate([(W1, -4.0), (W1, -4.0), (R, 4.0)]):
        p.append("t", 0, v, np.asarray(g, np.uint8), q)
    sol = {"t": [R]}
    assert coverage(vote(p, "reference"), sol).pairs[0].label_rank == 2
    assert coverage(vote(p, "q-weighted"), sol).pairs[0].label_rank == 1


def test_reference_arithmetic_order():
    # three tasks of 3 pairs with 1, 1 and 2 passes: the reference sums 1/3 + 1/3 + 2/3 in task
    # order, then divides by 3; the bits must be exactly that
    pairs = []
    for t, passes in (("a", 1), ("b", 1), ("c", 2)):
        for i in range(3):
            pairs.append(PairCoverage(t, i, 1, 1, 1 if i < passes else None, 1, 1))
    report = CoverageReport("reference", False, tuple(pairs))
    assert report.pass_at(1, "reference") == (1 / 3 + 1 / 3 + 2 / 3) / 3
    assert report.pass_at(1, "kaggle") == 4 / 9


def test_render_and_json():
    report = coverage(_vote(), SOLUTIONS)
    text = report.render()
    assert "coverage of 5 test inputs in 4 tasks (rule reference)" in text
    assert "oracle" in text and "3/5 = 0.600" in text and "pass@2" in text
    assert "selection loses 1 answer(s)" in text  # t2: produced but ranked 3rd
    assert any(line.split()[:5] == ["t2", "0", "5", "3", "3"] for line in text.splitlines())
    data = json.loads(json.dumps(report.to_json()))
    assert data["test_inputs"] == 5 and data["tasks"] == 4
    assert data["summary"]["kaggle"] == {"oracle": 0.6, "pass@1": 0.2, "pass@2": 0.4}
    assert data["pairs"][1] == {"task_id": "t1", "test_index": 1, "views": 0, "candidates": 0,
                                "label_rank": None, "label_votes": 0, "top_votes": 0}


def test_render_advice_when_selection_is_perfect():
    p = Predictions()
    p.append("t", 0, 0, np.asarray(R, np.uint8), 0.0)
    text = coverage(vote(p), {"t": [R, W1]}).render()
    assert "more views or a better model" in text


def test_bad_solutions():
    with pytest.raises(ValueError, match="task t1 must map to a non-empty list"):
        coverage(_vote(), {"t1": []})


def test_score_submission_kaggle_way():
    sub = {"t1": [{"attempt_1": W1, "attempt_2": R}, {"attempt_1": [[3]], "attempt_2": [[3]]}],
           "t2": [{"attempt_1": W1, "attempt_2": W2}],
           "t3": "garbage"}
    assert score_submission(sub, SOLUTIONS) == 2 / 5
    assert score_submission({"t1": [{"attempt_1": np.array(R)}]}, {"t1": [R]}) == 1.0
    assert score_submission({}, SOLUTIONS) == 0.0
