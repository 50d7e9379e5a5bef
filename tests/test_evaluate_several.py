"""`trm evaluate` over several checkpoints: each scored on the same tasks and views, one table, a
folder per checkpoint and checkpoints.json; one checkpoint prints the coverage report as before."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from trm_core import checkpoint
from trm_cli import main
from trm_core.model import TRM, TRMConfig

PLACEHOLDER = Path(__file__).resolve().parent.parent / "submission" / "placeholder"
CHALLENGES = PLACEHOLDER / "arc-agi_test_challenges.json"
SOLUTIONS = PLACEHOLDER / "arc-agi_test_solutions.json"
VIEWS = ["--data", str(CHALLENGES), "--solutions", str(SOLUTIONS), "--views", "2", "--batch-size", "8",
         "--halt-steps", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory) -> list[Path]:
    """Two slim kit checkpoints of tiny random models (canvas 12), different seeds."""
    out = tmp_path_factory.mktemp("ckpts")
    paths = []
    for seed in (0, 1):
        model = TRM(TRMConfig.from_name("tiny", canvas=12, num_puzzle_identifiers=5),
                    generator=torch.Generator().manual_seed(seed))
        paths.append(checkpoint.save(checkpoint.slim(checkpoint.from_model(model, {"weights": "raw"})),
                                     out / f"seed{seed}" / "checkpoint"))
    return paths


def test_two_checkpoints_one_table_and_a_folder_each(tmp_path: Path, two_checkpoints: list[Path]) -> None:
    a, b = (str(p) for p in two_checkpoints)
    runner = CliRunner()
    result = runner.invoke(main, ["evaluate", "--checkpoint", a, "--checkpoint", b, *VIEWS,
                                  "--out", str(tmp_path / "cmp"), "--report", str(tmp_path / "all.json")])
    assert result.exit_code == 0, result.output
    table = result.stdout.splitlines()
    assert table[0].startswith("2 checkpoints on 8 tasks, 2 views")
    assert table[1].split() == ["checkpoint", "pass@1", "pass@2", "oracle", "test", "inputs"]
    assert [line.split()[0] for line in table[2:]] == [a, b] and all(line.split()[-1] == "13" for line in table[2:])
    assert "coverage of" not in result.stdout  # the per-input reports are in the folders, not on stdout

    summary = json.loads((tmp_path / "cmp" / "checkpoints.json").read_text())
    assert summary["views"] == 2 and summary["tasks"] == 8
    rows = summary["checkpoints"]
    assert [r["checkpoint"] for r in rows] == [a, b] and rows[0]["folder"] != rows[1]["folder"]
    reports = json.loads((tmp_path / "all.json").read_text())["checkpoints"]
    for row, report in zip(rows, reports):
        folder = tmp_path / "cmp" / row["folder"]
        assert (folder / "report.html").is_file() and (folder / "predictions.npz").is_file()
        coverage = json.loads((folder / "coverage.json").read_text())
        assert coverage["summary"]["kaggle"] == {k: row[k] for k in ("oracle", "pass@1", "pass@2")}
        assert row["test_inputs"] == coverage["test_inputs"] == 13
        assert all(p["views"] == 2 for p in coverage["pairs"])  # the same views for every checkpoint
        assert report["checkpoint"] == row["checkpoint"] and report["summary"] == coverage["summary"]

        # the same checkpoint alone: the coverage report on stdout, as before, with the same figures
        alone = runner.invoke(main, ["evaluate", "--checkpoint", row["checkpoint"], *VIEWS,
                                     "--report", str(tmp_path / "one.json")])
        assert alone.exit_code == 0, alone.output
        assert alone.stdout.startswith("coverage of 13 test inputs in 8 tasks") and "checkpoints on" not in alone.stdout
        assert json.loads((tmp_path / "one.json").read_text()) == {k: v for k, v in report.items() if k != "checkpoint"}


def test_saved_predictions_take_one_checkpoint(tmp_path: Path, two_checkpoints: list[Path]) -> None:
    npz = tmp_path / "p.npz"
    npz.write_bytes(b"")
    result = CliRunner().invoke(main, ["evaluate", "--checkpoint", str(two_checkpoints[0]), "--checkpoint",
                                       str(two_checkpoints[1]), *VIEWS, "--predictions", str(npz)])
    assert result.exit_code == 1 and "give one --checkpoint" in result.output and "Traceback" not in result.output


def test_one_checkpoint_named_twice_gets_two_folders(tmp_path: Path, two_checkpoints: list[Path]) -> None:
    a = str(two_checkpoints[0])
    result = CliRunner().invoke(main, ["evaluate", "--checkpoint", a, "--checkpoint", a + "/", *VIEWS,
                                       "--out", str(tmp_path / "cmp")])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "cmp" / "checkpoints.json").read_text())["checkpoints"]
    assert rows[0]["folder"] != rows[1]["folder"]
    assert all((tmp_path / "cmp" / r["folder"] / "coverage.json").is_file() for r in rows)
    assert [r["pass@2"] for r in rows][0] == rows[1]["pass@2"] and rows[0]["oracle"] == rows[1]["oracle"]
