"""The one JSON reader: BOM, repeated keys, nesting and integer limits, and the commands that use it."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from trm_core import jsonio
from trm_cli import main
from trm_core.tasks import load_tasks

TASK = {"train": [{"input": [[1, 2]], "output": [[2, 1]]}], "test": [{"input": [[1, 1]]}]}


def test_a_bom_is_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"t1": TASK}).encode())
    assert jsonio.load(path) == {"t1": TASK}
    assert len(load_tasks(path)) == 1


def test_repeated_keys_are_an_error_or_collected() -> None:
    with pytest.raises(jsonio.JSONInputError, match="'attempt_1' appears more than once"):
        jsonio.loads('{"attempt_1": 1, "attempt_1": 2}', "sub.json")
    seen: list[str] = []
    assert jsonio.loads('{"a": 1, "a": 2}', "x", duplicates=seen) == {"a": 2} and seen == ["a"]


@pytest.mark.parametrize("text, what", [("[" * 5000 + "]" * 5000, "nested more than"),
                                        ("[" + "7" * 5000 + "]", "integer of 5000 digits"),
                                        ('{"a": -' + "1" * 41 + "}", "integer of 41 digits")])
def test_limits_are_named_errors(text: str, what: str) -> None:
    with pytest.raises(jsonio.JSONInputError, match=what):
        jsonio.loads(text, "in.json")


def test_within_limits_and_inside_strings_is_fine() -> None:
    assert jsonio.loads("[" * 64 + "]" * 64) is not None
    assert jsonio.loads('{"s": "' + "[" * 500 + "9" * 500 + '", "f": 0.' + "1" * 60 + "}")["s"].startswith("[[")


@pytest.mark.parametrize("bad", ["[" * 5000 + "]" * 5000, "[" + "7" * 5000 + "]"])
def test_commands_give_clean_errors_on_hostile_json(tmp_path: Path, bad: str) -> None:
    good = tmp_path / "challenges.json"
    good.write_text(json.dumps({"t1": TASK}))
    hostile = tmp_path / "hostile.json"
    hostile.write_text(bad)
    runner = CliRunner()
    for args in (["tasks", "check", str(hostile)], ["tasks", "check", str(good), "--solutions", str(hostile)],
                 ["validate", str(hostile), "--challenges", str(good)],
                 ["validate", str(good), "--challenges", str(hostile)]):
        res = runner.invoke(main, args)
        assert res.exit_code == 1, (args, res.output)
        assert "Traceback" not in res.output and ("nested" in res.output or "digits" in res.output), res.output
    out = tmp_path / "repaired.json"
    res = runner.invoke(main, ["repair", str(hostile), "--challenges", str(good), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["t1"][0]["attempt_1"] == [[1, 1]]


def test_repair_keeps_the_attempts_of_a_bom_submission(tmp_path: Path) -> None:
    good = tmp_path / "challenges.json"
    good.write_text(json.dumps({"t1": TASK}))
    sub = tmp_path / "sub.json"
    sub.write_bytes(b"\xef\xbb\xbf" + json.dumps({"t1": [{"attempt_1": [[5]], "attempt_2": [[6]]}]}).encode())
    res = CliRunner().invoke(main, ["repair", str(sub), "--challenges", str(good)])
    assert res.exit_code == 0, res.output
    assert json.loads(sub.read_text()) == {"t1": [{"attempt_1": [[5]], "attempt_2": [[6]]}]}


def test_validate_reports_a_repeated_attempt_key(tmp_path: Path) -> None:
    good = tmp_path / "challenges.json"
    good.write_text(json.dumps({"t1": TASK}))
    sub = tmp_path / "sub.json"
    sub.write_text('{"t1": [{"attempt_1": [[5]], "attempt_1": [[1]], "attempt_2": [[6]]}]}')
    res = CliRunner().invoke(main, ["validate", str(sub), "--challenges", str(good)])
    assert res.exit_code == 1 and "appears more than once" in res.output


def test_a_repeated_task_id_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text('{"t1": %s, "t1": %s}' % (json.dumps(TASK), json.dumps(TASK)))
    loaded = load_tasks(path, strict=False)
    assert any("more than once" in p.message and p.task_id == "t1" for p in loaded.problems)


def test_a_task_id_with_a_nul_is_rejected_by_name(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"abc": TASK, "abc\u0000": TASK}))
    loaded = load_tasks(path, strict=False)
    assert list(loaded.tasks) == ["abc"]
    assert any(p.task_id == "abc\x00" and "control character" in p.message for p in loaded.problems)
