"""The dry run refuses solutions that do not answer its challenges, as `trm evaluate` does."""

import json
from pathlib import Path

import pytest

from bundle.dry_run import DryRunError, DryRunOptions, dry_run

REPO = Path(__file__).resolve().parent.parent
PLACEHOLDER = REPO / "submission" / "placeholder"


def _data(tmp_path: Path, solutions: dict) -> Path:
    challenges = json.loads((PLACEHOLDER / "arc-agi_test_challenges.json").read_text())
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "arc-agi_test_challenges.json").write_text(json.dumps(challenges))
    (folder / "arc-agi_test_solutions.json").write_text(json.dumps(solutions))
    return folder


def test_solutions_of_other_tasks_are_refused(tmp_path: Path) -> None:
    sol = json.loads((PLACEHOLDER / "arc-agi_test_solutions.json").read_text())
    first = next(iter(sol))
    other = {("x" + t if t == first else t): v for t, v in sol.items()}  # one task renamed
    with pytest.raises(DryRunError, match=f"(?s)does not match .*task {first}: no solutions for this task"):
        dry_run(DryRunOptions(data=str(_data(tmp_path, other)), budget_s=60.0, out=tmp_path / "out"))
    assert not (tmp_path / "out" / "submission.json").exists()  # refused before running


def test_solutions_with_the_wrong_count_are_refused(tmp_path: Path) -> None:
    sol = json.loads((PLACEHOLDER / "arc-agi_test_solutions.json").read_text())
    first = next(iter(sol))
    sol[first] = sol[first] + sol[first]
    with pytest.raises(DryRunError, match="does not match"):
        dry_run(DryRunOptions(data=str(_data(tmp_path, sol)), budget_s=60.0, out=tmp_path / "out"))
