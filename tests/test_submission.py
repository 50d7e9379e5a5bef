"""Submission writer, validator and repair: malformed cases, repair always valid, atomic writes, CLI."""

import copy
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from trm_cli import main
from trm_core.submission_file import (Problem, SubmissionError, build_submission, challenge_inputs,
                                 fallback_grid, grid_problem, reference_submission, repair,
                                 validate, validate_file, write_submission)
from trm_core.predictions import Predictions
from trm_core.vote import vote

CHALLENGES = {
    "aaa": {"train": [], "test": [{"input": [[1, 2], [3, 4]]}]},
    "bbb": {"train": [], "test": [{"input": [[5]]}, {"input": [[6, 6, 6]]}]},
    "ccc": {"train": [], "test": [{"input": np.full((32, 31), 3).tolist()}]},
}
GOOD = {
    "aaa": [{"attempt_1": [[0]], "attempt_2": [[1, 1]]}],
    "bbb": [{"attempt_1": [[5]], "attempt_2": [[5]]}, {"attempt_1": [[1], [2]], "attempt_2": [[9]]}],
    "ccc": [{"attempt_1": [[3] * 30] * 30, "attempt_2": [[3]]}],
}


def _with(change) -> dict:
    sub = copy.deepcopy(GOOD)
    change(sub)
    return sub


def _set(task, i, key, value):
    def change(sub):
        sub[task][i][key] = value
    return change


# (name, submission, expected (task, test, attempt, message fragment))
MALFORMED = [
    ("not an object", [], (None, None, None, "not a JSON object")),
    ("missing task", _with(lambda s: s.pop("bbb")), ("bbb", None, None, "missing task")),
    ("extra task", _with(lambda s: s.update(zzz=[])), ("zzz", None, None, "extra task")),
    ("entries not a list", _with(lambda s: s.update(aaa={"attempt_1": [[1]]})),
     ("aaa", None, None, "expected a list of 1")),
    ("too few entries", _with(lambda s: s["bbb"].pop()), ("bbb", None, None, "has 1 entries, expected 2")),
    ("too many entries", _with(lambda s: s["aaa"].append(s["aaa"][0])),
     ("aaa", None, None, "has 2 entries, expected 1")),
    ("entry not an object", _with(lambda s: s["bbb"].__setitem__(1, [[1]])),
     ("bbb", 1, None, "not an object")),
    ("missing attempt_2", _with(lambda s: s["aaa"][0].pop("attempt_2")),
     ("aaa", 0, "attempt_2", "missing attempt")),
    ("unexpected key", _with(_set("aaa", 0, "attempt_3", [[1]])), ("aaa", 0, None, "unexpected key")),
    ("grid not a list", _with(_set("bbb", 0, "attempt_1", "[[5]]")),
     ("bbb", 0, "attempt_1", "non-empty list of rows, got str")),
    ("empty grid", _with(_set("bbb", 0, "attempt_2", [])), ("bbb", 0, "attempt_2", "non-empty list of rows, got an empty list")),
    ("empty row", _with(_set("bbb", 1, "attempt_1", [[]])), ("bbb", 1, "attempt_1", "row 0 must be a non-empty list of integers, got an empty list")),
    ("row not a list", _with(_set("aaa", 0, "attempt_1", [[1], 2])),
     ("aaa", 0, "attempt_1", "row 1 must be a non-empty list of integers, got int")),
    ("non-rectangular", _with(_set("aaa", 0, "attempt_1", [[1, 2], [3]])),
     ("aaa", 0, "attempt_1", "row 1 has 1 cells but row 0 has 2; rows must have equal length")),
    ("31 rows", _with(_set("ccc", 0, "attempt_1", [[1]] * 31)),
     ("ccc", 0, "attempt_1", "grid is 31x1; each side must be 1..30")),
    ("31 columns", _with(_set("ccc", 0, "attempt_2", [[1] * 31])),
     ("ccc", 0, "attempt_2", "grid is 1x31; each side must be 1..30")),
    ("value 10", _with(_set("bbb", 1, "attempt_2", [[1, 10]])),
     ("bbb", 1, "attempt_2", "cell [0][1] = 10 is outside 0..9")),
    ("negative value", _with(_set("bbb", 1, "attempt_2", [[-1]])), ("bbb", 1, "attempt_2", "= -1")),
    ("bool cell", _with(_set("aaa", 0, "attempt_2", [[True]])), ("aaa", 0, "attempt_2", "(bool)")),
    ("float cell", _with(_set("aaa", 0, "attempt_2", [[1.0]])), ("aaa", 0, "attempt_2", "(float)")),
    ("string cell", _with(_set("aaa", 0, "attempt_2", [["1"]])), ("aaa", 0, "attempt_2", "(str)")),
    ("null cell", _with(_set("aaa", 0, "attempt_2", [[None]])), ("aaa", 0, "attempt_2", "(NoneType)")),
    ("null attempt", _with(_set("aaa", 0, "attempt_1", None)), ("aaa", 0, "attempt_1", "non-empty list of rows, got null")),
]


def test_good_submission_is_valid():
    assert validate(GOOD, CHALLENGES) == []


@pytest.mark.parametrize("name, sub, expected", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_validator_names_each_problem(name, sub, expected):
    task, test, attempt, fragment = expected
    problems = validate(sub, CHALLENGES)
    assert any(p.task_id == task and p.test_index == test and p.attempt == attempt
               and fragment in p.message for p in problems), [str(p) for p in problems]


@pytest.mark.parametrize("name, sub, expected", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_repair_fixes_each_problem_and_keeps_valid_attempts(name, sub, expected):
    fixed, report = repair(sub, CHALLENGES)
    assert validate(fixed, CHALLENGES) == []
    assert report, "a repair of a broken file must say what it changed"
    # every attempt that was valid in place is kept as it was
    if isinstance(sub, dict):
        for task, entries in fixed.items():
            for i, entry in enumerate(entries):
                for key, grid in entry.items():
                    old = sub.get(task)
                    old = old[i] if isinstance(old, list) and i < len(old) else None
                    if isinstance(old, dict) and grid_problem(old.get(key, 0)) is None:
                        assert grid == old[key]


def test_repair_fills_with_the_test_input_and_reports_locations():
    fixed, report = repair(_with(lambda s: (s.pop("bbb"), s["aaa"][0].pop("attempt_2"))), CHALLENGES)
    assert fixed["aaa"][0] == {"attempt_1": [[0]], "attempt_2": [[1, 2], [3, 4]]}
    assert fixed["bbb"] == [{"attempt_1": [[5]], "attempt_2": [[5]]},
                            {"attempt_1": [[6, 6, 6]], "attempt_2": [[6, 6, 6]]}]
    assert [str(p) for p in report] == ["task aaa, test 0, attempt_2: filled with the fallback: "
                                        "missing attempt",
                                        "task bbb: filled with the fallback: missing task"]
    assert repair(GOOD, CHALLENGES) == (GOOD, [])


def test_fallback_grid():
    assert fallback_grid([[1, 2], [3, 4]]) == [[1, 2], [3, 4]]
    big = fallback_grid(np.arange(32 * 31).reshape(32, 31) % 10)
    assert len(big) == 30 and len(big[0]) == 30 and big[0][:3] == [0, 1, 2]
    for garbage in ([], [[]], [[1, 2], [3]], [[10]], [[True]], "x", None, [[1.5]], [[[1]]]):
        assert fallback_grid(garbage) == [[0]]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 12) | st.floats(allow_nan=False) | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=9), inner, max_size=4),
    max_leaves=30)
attempt_like = st.dictionaries(st.sampled_from(["attempt_1", "attempt_2", "attempt_3"]),
                               json_values | st.lists(st.lists(st.integers(-1, 10), max_size=3), max_size=3))
submission_like = st.dictionaries(st.sampled_from(["aaa", "bbb", "ccc", "zzz"]),
                                  st.lists(attempt_like | json_values, max_size=3) | json_values)


@settings(max_examples=200, deadline=None)
@given(st.one_of(json_values, submission_like))
def test_repair_of_garbage_always_validates(garbage):
    before = copy.deepcopy(garbage)
    fixed, _ = repair(garbage, CHALLENGES)
    assert validate(fixed, CHALLENGES) == []
    assert json.loads(json.dumps(fixed)) == fixed
    assert garbage == before  # the input is not modified


def test_bad_challenges_raise_naming_the_task():
    with pytest.raises(ValueError, match="task x has no 'test'"):
        validate(GOOD, {"x": {"train": []}})
    with pytest.raises(ValueError, match="task x test 0 has no 'input'"):
        validate(GOOD, {"x": {"test": [{}]}})


def test_validate_file_reports_missing_and_invalid_json(tmp_path):
    assert "file not found" in validate_file(tmp_path / "nope.json", CHALLENGES)[0].message
    bad = tmp_path / "bad.json"
    bad.write_text('{"aaa": [')
    assert "not valid JSON" in validate_file(bad, CHALLENGES)[0].message


def test_write_is_atomic_and_refuses_invalid(tmp_path):
    path = tmp_path / "out" / "submission.json"
    sub = {t: [{k: np.asarray(g, np.uint8) for k, g in e.items()} for e in entries]
           for t, entries in GOOD.items()}  # numpy grids are accepted and written as lists
    write_submission(path, sub, CHALLENGES)
    assert json.loads(path.read_text()) == GOOD
    before = path.read_text()
    with pytest.raises(SubmissionError, match="missing task"):
        write_submission(path, _with(lambda s: s.pop("aaa")), CHALLENGES)
    with pytest.raises(SubmissionError, match="is outside 0..9"):
        write_submission(path, _with(_set("aaa", 0, "attempt_1", [[11]])), None)
    assert path.read_text() == before  # the old file is untouched
    assert sorted(os.listdir(path.parent)) == ["submission.json"]  # no temporary left behind


def test_write_failure_leaves_no_temporary(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_submission(tmp_path / "submission.json", GOOD, CHALLENGES)
    assert os.listdir(tmp_path) == []


def test_problem_str():
    assert str(Problem("m", "t", 1, "attempt_2")) == "task t, test 1, attempt_2: m"
    assert str(Problem("m")) == "m"


def _vote_for_challenges():
    p = Predictions()
    p.append("aaa", 0, 0, np.array([[1]], np.uint8), 0.0)
    p.append("aaa", 0, 1, np.zeros((0, 0), np.uint8), 9.0)
    p.append("bbb", 1, 0, np.array([[2, 2]], np.uint8), 0.0)
    p.append("bbb", 1, 1, np.array([[3]], np.uint8), 0.0)
    p.append("bbb", 1, 2, np.array([[2, 2]], np.uint8), 0.0)
    return vote(p)


def test_build_submission_covers_every_test_input_in_order():
    v = _vote_for_challenges()
    sub = build_submission(v, CHALLENGES)
    assert validate(sub, CHALLENGES) == [] and list(sub) == list(CHALLENGES)
    assert sub["aaa"] == [{"attempt_1": [[1]], "attempt_2": [[1, 2], [3, 4]]}]  # 0x0 skipped
    assert sub["bbb"] == [{"attempt_1": [[5]], "attempt_2": [[5]]},  # no prediction: fallback
                          {"attempt_1": [[2, 2]], "attempt_2": [[3]]}]
    assert sub["ccc"][0]["attempt_1"] == [[3] * 30] * 30  # fallback cut to 30x30
    dup = build_submission(v, CHALLENGES, fill="duplicate")
    assert dup["aaa"] == [{"attempt_1": [[1]], "attempt_2": [[1]]}]


def test_reference_submission_mimics_the_reference():
    ref = reference_submission(_vote_for_challenges(), CHALLENGES)
    assert ref == {"aaa": [{"attempt_1": [], "attempt_2": [[1]]}],
                   "bbb": [{"attempt_1": [[2, 2]], "attempt_2": [[3]]}], "ccc": []}
    assert validate(ref, CHALLENGES) != []  # and that is why it is not what we submit


def test_challenge_inputs_order():
    assert list(challenge_inputs(CHALLENGES)) == ["aaa", "bbb", "ccc"]
    assert challenge_inputs(CHALLENGES)["bbb"] == [[[5]], [[6, 6, 6]]]


# --- CLI ----------------------------------------------------------------------------------------

@pytest.fixture
def files(tmp_path):
    challenges = tmp_path / "challenges.json"
    challenges.write_text(json.dumps(CHALLENGES))
    return tmp_path, challenges


def test_cli_validate_ok_and_problems(files):
    tmp, challenges = files
    good, bad = tmp / "good.json", tmp / "bad.json"
    good.write_text(json.dumps(GOOD))
    bad.write_text(json.dumps(_with(_set("bbb", 1, "attempt_2", [[1, 10]]))))
    runner = CliRunner()
    r = runner.invoke(main, ["validate", str(good), "--challenges", str(challenges)])
    assert r.exit_code == 0 and "valid (3 tasks, 4 test inputs)" in r.output
    r = runner.invoke(main, ["validate", str(bad), "--challenges", str(challenges)])
    assert r.exit_code == 1
    assert "task bbb, test 1, attempt_2: cell [0][1] = 10 is outside 0..9" in r.output
    r = runner.invoke(main, ["validate", str(tmp / "missing.json"), "--challenges", str(challenges)])
    assert r.exit_code == 1 and "file not found" in r.output


def test_cli_rejects_malformed_challenges(files):
    tmp, _ = files
    challenges = tmp / "broken.json"
    challenges.write_text("{not json")
    r = CliRunner().invoke(main, ["validate", str(tmp / "x.json"), "--challenges", str(challenges)])
    assert r.exit_code == 1 and "not valid JSON" in r.output and "Traceback" not in r.output


def test_cli_repair(files):
    tmp, challenges = files
    broken = tmp / "sub.json"
    broken.write_text("{truncated")
    r = CliRunner().invoke(main, ["repair", str(broken), "--challenges", str(challenges),
                                  "-o", str(tmp / "fixed.json")])
    assert r.exit_code == 0, r.output
    assert validate_file(tmp / "fixed.json", CHALLENGES) == []
    assert broken.read_text() == "{truncated"  # -o leaves the original alone
    broken.write_text(json.dumps(_with(lambda s: s.pop("aaa"))))
    r = CliRunner().invoke(main, ["repair", str(broken), "--challenges", str(challenges)])
    assert r.exit_code == 0 and "task aaa: filled with the fallback: missing task" in r.output
    assert validate_file(broken, CHALLENGES) == []
