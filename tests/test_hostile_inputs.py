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

from tests.test_report import no_matplotlib  # noqa: F401 - a fixture

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


# ---- every reader of the commands: one clean line, exit 1 --------------------------------------------


def _npz_of_objects() -> bytes:
    import io

    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, task_ids=np.array([{"a": 1}], dtype=object))  # loading it would unpickle
    return buf.getvalue()


HOSTILE = {
    "empty": lambda good_npz: b"",
    "wrong type": lambda good_npz: b"[1, 2, 3]",
    "deep nesting": lambda good_npz: b"[" * 5000 + b"]" * 5000,
    "huge integer": lambda good_npz: b'{"t1": ' + b"9" * 5000 + b"}",
    "NaN/Inf": lambda good_npz: b'{"t1": NaN, "t2": Infinity}',
    "corrupt binary": lambda good_npz: bytes(range(256)) * 4,
    "wrong schema": lambda good_npz: b'{"t1": {"train": "x", "test": 5}}',
    "truncated npz": lambda good_npz: good_npz[: len(good_npz) // 2],
    "object npz": lambda good_npz: _npz_of_objects(),
}
REPORT_FILES = ("challenges.json", "solutions.json", "submission.json", "predictions.npz", "metrics.jsonl",
                "timing-report.json", "study.json")
COMMANDS = ["tasks check", "tasks check --solutions", "validate", "validate --challenges", "repair --challenges",
            "show", "show --challenges", "predict --data", "solve --data", "posttrain --data",
            "evaluate --predictions", "evaluate --solutions", *(f"report {name}" for name in REPORT_FILES)]
# Not in the matrix, and why: `repair SUBMISSION` accepts any submission by design (it rebuilds what
# it cannot read, tests/test_jsonio.py); `bundle` and `dry-run` build and run a bundle (their readers
# are the bundle manifest's, tested below, and the notebook's); `convert` reads checkpoints
# (trm_core/checkpoint.py has its own tests of corrupt files).
VALID_ROWS = {("report metrics.jsonl", "empty"), ("report metrics.jsonl", "NaN/Inf"),
              ("report metrics.jsonl", "wrong schema")}  # a log with no row yet; free-form object rows


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    from tests.report_helpers import make_run

    root = tmp_path_factory.mktemp("hostile")
    make_run(root / "run", with_metrics=True)
    (root / "challenges.json").write_text(json.dumps({"t1": TASK}))
    (root / "solutions.json").write_text(json.dumps({"t1": [[[8, 7], [6, 5]]]}))
    (root / "submission.json").write_text(json.dumps({"t1": [{"attempt_1": [[1]], "attempt_2": [[1]]}]}))
    return root


def _args(command: str, hostile: Path, root: Path, ckpt: Path, tmp: Path) -> list[str]:
    good_ch, good_so, good_sub, run = (str(root / n) for n in ("challenges.json", "solutions.json",
                                                                "submission.json", "run"))
    f = str(hostile)
    return {
        "tasks check": ["tasks", "check", f],
        "tasks check --solutions": ["tasks", "check", good_ch, "--solutions", f],
        "validate": ["validate", f, "--challenges", good_ch],
        "validate --challenges": ["validate", good_sub, "--challenges", f],
        "repair --challenges": ["repair", good_sub, "--challenges", f, "-o", str(tmp / "repaired.json")],
        "show": ["show", f, "-o", str(tmp / "show.html")],
        "show --challenges": ["show", good_sub, "--challenges", f, "-o", str(tmp / "show.html")],
        "predict --data": ["predict", "--checkpoint", str(ckpt), "--data", f, "--views", "1",
                           "--out", str(tmp / "out.json")],
        "solve --data": ["solve", "--checkpoint", str(ckpt), "--data", f, "--steps", "0", "--views", "1",
                         "--out", str(tmp / "solved")],
        "posttrain --data": ["posttrain", "--checkpoint", str(ckpt), "--data", f, "--steps", "1",
                             "--out", str(tmp / "post")],
        "evaluate --predictions": ["evaluate", "--checkpoint", str(ckpt), "--data", f"{run}/challenges.json",
                                   "--solutions", f"{run}/solutions.json", "--predictions", f],
        "evaluate --solutions": ["evaluate", "--checkpoint", str(ckpt), "--data", good_ch, "--solutions", f,
                                 "--predictions", f"{run}/predictions.npz"],
    }[command]


@pytest.mark.parametrize("kind", list(HOSTILE))
@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_ends_a_hostile_file_in_one_clean_line(command: str, kind: str, folder: Path,
                                                              micro_checkpoint: Path, tmp_path: Path,
                                                              no_matplotlib) -> None:
    import shutil

    from click.testing import CliRunner

    from trm_cli import main

    if (command, kind) in VALID_ROWS:
        pytest.skip("not hostile to this reader")
    content = HOSTILE[kind]((folder / "run" / "predictions.npz").read_bytes())
    if command.startswith("report "):
        name = command.removeprefix("report ")
        run = tmp_path / "run"
        shutil.copytree(folder / "run", run)
        hostile = run / name
        hostile.write_bytes(content)
        args = ["report", str(run)]
    else:
        hostile = tmp_path / ("hostile.npz" if "predictions" in command else "hostile.json")
        hostile.write_bytes(content)
        args = _args(command, hostile, folder, micro_checkpoint, tmp_path)
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 1, (args, res.output)
    assert isinstance(res.exception, SystemExit) and "Traceback" not in res.output, res.output
    error = [line for line in res.output.splitlines() if line.startswith("Error: ")]
    assert len(error) == 1, res.output
    named = [line for line in res.output.splitlines() if str(hostile) in line]
    assert named, f"no line names {hostile}:\n{res.output}"
    if command in ("predict --data", "solve --data"):  # the output is left all the same: the fallback
        out = tmp_path / "out.json" if command == "predict --data" else tmp_path / "solved" / "submission.json"
        assert isinstance(json.loads(out.read_text()), dict)
        assert "NO USABLE TASK" in error[0]


def test_report_says_why_challenges_are_unreadable(folder: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from trm_cli import main

    (tmp_path / "challenges.json").write_text('{"t1": ')  # a truncated copy: the only file of the folder
    res = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert res.exit_code == 1 and "nothing to report" not in res.output
    assert f"{tmp_path / 'challenges.json'}: not valid JSON" in res.output


def test_validate_calls_a_bom_a_problem_and_repair_removes_it(folder: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from trm_cli import main

    sub = tmp_path / "submission.json"
    sub.write_bytes(b"\xef\xbb\xbf" + (folder / "submission.json").read_bytes())
    res = CliRunner().invoke(main, ["validate", str(sub), "--challenges", str(folder / "challenges.json")])
    assert res.exit_code == 1 and "byte-order mark" in res.output and "trm repair removes it" in res.output
    res = CliRunner().invoke(main, ["repair", str(sub), "--challenges", str(folder / "challenges.json")])
    assert res.exit_code == 0 and "byte-order mark removed" in res.output
    assert not sub.read_bytes().startswith(b"\xef\xbb\xbf")
    assert json.loads(sub.read_text()) == json.loads((folder / "submission.json").read_text())  # attempts kept
    res = CliRunner().invoke(main, ["validate", str(sub), "--challenges", str(folder / "challenges.json")])
    assert res.exit_code == 0, res.output


def test_predict_answers_every_task_named_when_some_are_unreadable(tmp_path: Path, micro_checkpoint: Path) -> None:
    from click.testing import CliRunner

    from trm_cli import main

    data = _challenges_with_bad_tasks(tmp_path / "c.json")
    out = tmp_path / "out.json"
    res = CliRunner().invoke(main, ["predict", "--checkpoint", str(micro_checkpoint), "--data", str(data),
                                    "--views", "2", "--batch-size", "4", "--device", "cpu", "--out", str(out)])
    assert res.exit_code == 0, res.output
    sub = json.loads(out.read_text())
    assert set(sub) == {"ok1", "huge_train", "huge_test", "deep", "ok2"}
    assert sub["huge_train"][0]["attempt_1"] == [[5, 6], [7, 8]] and sub["deep"][0]["attempt_1"] == [[0]]


def test_predict_stopped_by_sigterm_still_writes_every_task(tmp_path: Path, micro_checkpoint: Path,
                                                            monkeypatch) -> None:
    import os
    import signal

    from click.testing import CliRunner

    from trm_cli import main
    from trm_core import pipeline

    data = tmp_path / "c.json"
    data.write_text(json.dumps({"t1": TASK, "t2": TASK}))
    real = pipeline.predict

    def predict_then_sigterm(*args, **kwargs):  # SIGTERM arrives during the first batch
        on_stop = kwargs["stop"]
        calls = []

        def stop() -> bool:
            calls.append(1)
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGTERM)
            return on_stop()
        return real(*args, **{**kwargs, "stop": stop})

    monkeypatch.setattr(pipeline, "predict", predict_then_sigterm)
    out = tmp_path / "out.json"
    res = CliRunner().invoke(main, ["predict", "--checkpoint", str(micro_checkpoint), "--data", str(data),
                                    "--views", "4", "--batch-size", "1", "--device", "cpu", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "SIGTERM" in res.output and "prediction stopped after 1/" in res.output
    sub = json.loads(out.read_text())
    assert set(sub) == {"t1", "t2"} and all(len(v) == 1 for v in sub.values())


def test_a_bundle_manifest_of_any_shape_is_one_sentence(tmp_path: Path) -> None:
    from submission.bundle_check import MARKER_NAME, verify_bundle

    cases = {b"[1, 2]": "not an object", b"[" * 5000 + b"]" * 5000: "nested more than",
             b'{"format": ' + b"9" * 5000 + b"}": "5000 digits", b"": "not readable JSON",
             bytes(range(256)): "not UTF-8"}
    for content, what in cases.items():
        (tmp_path / MARKER_NAME).write_bytes(content)
        problems = verify_bundle(tmp_path)
        assert len(problems) == 1 and str(tmp_path / MARKER_NAME) in problems[0] and what in problems[0], problems
    entries = [{"path": 5, "size": 1, "sha256": "x"}, {"path": "../outside", "size": 1, "sha256": "x"},
               {"path": "/etc/passwd", "size": 1, "sha256": "x"}, {"path": "a", "size": 1e400, "sha256": "x"}, 7]
    (tmp_path / MARKER_NAME).write_text(json.dumps({"format": "trm-kit-bundle/1", "files": entries}))
    problems = verify_bundle(tmp_path)
    assert len(problems) == 5 and all("malformed file entry" in p for p in problems), problems


def test_a_dangling_task_file_in_a_folder_is_named_not_skipped_silently(tmp_path: Path) -> None:
    (tmp_path / "good.json").write_text(json.dumps(TASK))
    (tmp_path / "gone.json").symlink_to(tmp_path / "nowhere.json")
    loaded = load_tasks(tmp_path, strict=False)
    assert list(loaded.tasks) == ["good"] and loaded.skipped == ["gone"]
    assert "file not found" in loaded.problems[0].message
    assert raw_challenges(tmp_path) == {"gone": None, "good": TASK}  # it still gets a submission entry
