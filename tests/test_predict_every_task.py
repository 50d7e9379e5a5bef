"""`trm predict` writes an entry for every task it was given: unreadable tasks and per-task files too."""

import json
from pathlib import Path

from click.testing import CliRunner

from trm_cli import main

TASK = {"train": [{"input": [[1, 2]], "output": [[2, 1]]}], "test": [{"input": [[1, 1]]}, {"input": [[2]]}]}


def _predict(micro_checkpoint: Path, data: Path, out: Path):
    return CliRunner().invoke(main, ["predict", "--checkpoint", str(micro_checkpoint), "--data", str(data),
                                     "--views", "2", "--out", str(out), "--device", "cpu"])


def test_a_task_without_a_test_list_gets_a_fallback_entry(tmp_path: Path, micro_checkpoint: Path) -> None:
    data = tmp_path / "challenges.json"
    data.write_text(json.dumps({"good": TASK, "notest": {"train": TASK["train"]}}))
    res = _predict(micro_checkpoint, data, tmp_path / "sub.json")
    assert res.exit_code == 0, res.output
    sub = json.loads((tmp_path / "sub.json").read_text())
    assert list(sub) == ["good", "notest"] and len(sub["good"]) == 2
    assert sub["notest"] == [{"attempt_1": [[0]], "attempt_2": [[0]]}]


def test_a_single_task_file_is_answered(tmp_path: Path, micro_checkpoint: Path) -> None:
    data = tmp_path / "0a1b2c3d.json"
    data.write_text(json.dumps(TASK))
    res = _predict(micro_checkpoint, data, tmp_path / "sub.json")
    assert res.exit_code == 0, res.output
    sub = json.loads((tmp_path / "sub.json").read_text())
    assert list(sub) == ["0a1b2c3d"] and len(sub["0a1b2c3d"]) == 2


def test_a_bad_task_in_a_folder_keeps_its_entry(tmp_path: Path, micro_checkpoint: Path) -> None:
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "aaaa0001.json").write_text(json.dumps(TASK))
    (folder / "bbbb0002.json").write_text(json.dumps({**TASK, "train": [{"input": [[1]], "output": "x"}]}))
    (folder / "cccc0003.json").write_text("{not json")
    res = _predict(micro_checkpoint, folder, tmp_path / "sub.json")
    assert res.exit_code == 0, res.output
    sub = json.loads((tmp_path / "sub.json").read_text())
    assert list(sub) == ["aaaa0001", "bbbb0002", "cccc0003"]
    assert sub["bbbb0002"][1] == {"attempt_1": [[2]], "attempt_2": [[2]]}  # the fallback: the test input
    assert sub["cccc0003"] == [{"attempt_1": [[0]], "attempt_2": [[0]]}]
