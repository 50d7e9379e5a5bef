"""Hostile inputs: one bad task costs that task, never the file; every reader of the `trm` commands
ends a hostile file (empty, wrong type, deep nesting, huge integer, NaN/Inf, corrupt binary, wrong
schema) in one line naming the file and the problem, exit status 1, no traceback."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from submission.run import Runner, RunnerOptions
from submission.launch import InProcessLauncher
from trm_core import jsonio
from trm_core.submission_file import validate
from trm_core.tasks import load_tasks, raw_challenges

TASK = {"train": [{"input": [[1, 2], [3, 4]], "output": [[4, 3], [2, 1]]}], "test": [{"input": [[5, 6], [7, 8]]}]}
HUGE = "9" * 50  # an integer no grid, count or seed needs
DEEP = "[" * 200 + "]" * 200  # past jsonio.MAX_DEPTH, within Python's own recursion limit
VERY_DEEP = "[" * 50_000 + "]" * 50_000  # past Python's recursion limit


def _challenges_with_bad_tasks(path: Path) -> Path:
    """Tasks ok1, ok2, a 50-digit integer in huge_train's train grid and in huge_test's test input,
    and deep (a task nested 50 000 levels deep)."""
    huge_train = json.dumps(TASK).replace("[[1, 2]", f"[[{HUGE}, 2]", 1)
    huge_test = json.dumps(TASK).replace("[[5, 6]", f"[[{HUGE}, 6]", 1)
    deep = '{"train": %s, "test": [{"input": [[1]]}]}' % VERY_DEEP
    path.write_text('{"ok1": %s, "huge_train": %s, "huge_test": %s, "deep": %s, "ok2": %s}'
                    % (json.dumps(TASK), huge_train, huge_test, deep, json.dumps(TASK)))
    return path


# ---- one bad task costs that task ------------------------------------------------------------------


def test_a_huge_integer_or_deep_nesting_in_one_task_costs_only_that_task(tmp_path: Path) -> None:
    path = _challenges_with_bad_tasks(tmp_path / "c.json")
    with pytest.raises(jsonio.JSONInputError, match="50 digits"):
        jsonio.load(path)  # the strict reader still refuses the file
    loaded = load_tasks(path, strict=False)
    assert list(loaded.tasks) == ["ok1", "ok2"]
    why = {p.task_id: f"{p.where}: {p.message}" for p in loaded.problems}
    assert set(why) == {"huge_train", "huge_test", "deep"}
    assert why["huge_train"].startswith("train[0].input: cell [0][0]") and "50 digits" in why["huge_train"]
    assert why["huge_test"].startswith("test[0].input: cell [0][0]")
    assert "nested" in why["deep"]
    raw = raw_challenges(path)  # every task still has an entry in a submission
    assert list(raw) == ["ok1", "huge_train", "huge_test", "deep", "ok2"] and raw["deep"] is None


def test_a_per_task_file_nested_too_deep_is_one_skipped_task(tmp_path: Path) -> None:
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "good.json").write_text(json.dumps(TASK))
    (folder / "deep.json").write_text('{"train": %s, "test": []}' % DEEP)
    loaded = load_tasks(folder, strict=False)
    assert list(loaded.tasks) == ["good"] and loaded.skipped == ["deep"]
    assert "'train': nested more than" in loaded.problems[0].message
    assert raw_challenges(folder)["deep"] is None


def test_solutions_with_one_unreadable_entry_cost_that_task(tmp_path: Path) -> None:
    challenges = tmp_path / "c.json"
    challenges.write_text(json.dumps({"a": TASK, "b": TASK}))
    solutions = tmp_path / "s.json"
    solutions.write_text('{"a": [[[1]]], "b": [[[%s]]]}' % HUGE)
    loaded = load_tasks(challenges, solutions, strict=False)
    assert list(loaded.tasks) == ["a"] and [p.task_id for p in loaded.problems] == ["b"]
    solutions.write_text('{"a": [[[1]]], "b": %s}' % DEEP)
    loaded = load_tasks(challenges, solutions, strict=False)
    assert list(loaded.tasks) == ["a"] and "nested" in loaded.problems[0].message


def test_the_runner_answers_every_task_when_some_break_the_limits(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    _challenges_with_bad_tasks(inputs / "arc-agi_test_challenges.json")
    now = time.time()
    opts = RunnerOptions(input_dir=inputs, working_dir=tmp_path / "working", checkpoint=tmp_path / "missing",
                         scratch_dir=tmp_path / "scratch", start_time=now, deadline=now + 20.0)
    Runner(opts, launcher=InProcessLauncher(echo=lambda line: None), environ={}, echo=lambda line: None).run()
    sub = json.loads((opts.working_dir / "submission.json").read_text())
    record = json.loads((opts.working_dir / "trm-run" / "run.json").read_text())
    assert set(sub) == {"ok1", "huge_train", "huge_test", "deep", "ok2"}
    assert sub["ok1"] == sub["huge_train"] == [{"attempt_1": [[5, 6], [7, 8]], "attempt_2": [[5, 6], [7, 8]]}]
    assert sub["huge_test"] == sub["deep"] == [{"attempt_1": [[0]], "attempt_2": [[0]]}]
    assert validate({t: sub[t] for t in ("ok1", "ok2")}, {"ok1": TASK, "ok2": TASK}) == []
    assert record["phases"][0]["status"] == "ok"
    assert any("task deep unreadable" in p and "nested" in p for p in record["problems"])
