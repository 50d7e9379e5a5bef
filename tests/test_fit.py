"""Per-task spending: the fit check's verdict, the spending rule, the sampler's per-task weights,
and a training run in which a fitted task leaves the batches (its embedding rows then stay as they
are), the check is recorded and drawn, a run without a schedule trains the same bits, a resumed run
continues identically, and the study's per-task arm runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import trm_core.fit as fit_mod
import trm_core.predict as predict_mod
from trm_core import checkpoint
from trm_core.batches import TrainSampler
from trm_core.fit import FitSchedule, TaskFit, check_fit, spending
from trm_core.model import TRM, TRMConfig
from trm_lab.report import _curve_rows, fit_section
from trm_core.tasks import Task
from trm_core.config import TrainConfig
from trm_core.train import METRICS_FILE, train
from trm_core.variants import Variants

pytestmark = pytest.mark.usefixtures("one_thread")

CANVAS = 6
QUIET = dict(log=lambda line: None)


def four_tasks() -> list[Task]:
    """'same' (output = input), 'flip' (a left-right flip), 'mixed' (one pair of each) and 'swap'."""
    rng = np.random.default_rng(0)

    def grid() -> np.ndarray:
        return rng.integers(1, 4, (3, 4)).astype(np.uint8)  # never left-right symmetric in practice

    def flip(g: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(g[:, ::-1])

    a, b, c, d, e, f = (grid() for _ in range(6))
    return [Task("same", [(a, a), (b, b)], [c], [c]),
            Task("flip", [(a, flip(a)), (b, flip(b))], [c], [flip(c)]),
            Task("mixed", [(d, d), (e, flip(e))], [f], [f]),
            Task("swap", [(e, np.where(e == 1, 2, np.where(e == 2, 1, e)).astype(np.uint8)), (f, f)], [d], [d])]


def _model(variants: Variants, **changes) -> TRM:
    cfg = TRMConfig.from_name("tiny", **{**dict(canvas=CANVAS, num_puzzle_identifiers=variants.num_identifiers,
                                                halt_max_steps=2, halt_exploration_prob=0.0), **changes})
    model = TRM(cfg, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.puzzle_emb.weights.normal_(0, 0.02, generator=torch.Generator().manual_seed(1))
    return model


# ---- the check --------------------------------------------------------------------------------


def _forced(answer: str, seen: list):
    """A predict_batch that answers every row with its input ("input") or its expected output
    ("output"), recording the embedding rows it was asked for and the model's mode."""
    def fake(model, batch, steps):
        seen.append((batch["puzzle_identifiers"].tolist(), model.training))
        tokens = batch["inputs"] if answer == "input" else batch["labels"].clamp(min=0)
        return tokens.long(), torch.zeros(tokens.shape[0])
    return fake


def test_check_verdict_and_the_rows_it_reads(monkeypatch):
    variants = Variants(four_tasks(), 3, seed=0)
    model = _model(variants)
    model.train()
    seen: list = []
    monkeypatch.setattr(predict_mod, "predict_batch", _forced("input", seen))
    got = check_fit(model, variants, views=2, batch_size=8)
    # answering with the input fits exactly the pairs whose output is their input
    assert got == {"same": TaskFit(2, 2), "flip": TaskFit(0, 2), "mixed": TaskFit(1, 2), "swap": TaskFit(1, 2)}
    assert [t for t, f in got.items() if f.fitted] == ["same"] and got["mixed"].share == 0.5
    assert model.training  # train mode is back
    assert seen and not any(training for _, training in seen)  # predicted in eval mode
    # the demonstration inputs are read through the trained rows of each task's first 2 variants
    ids = {i for rows, _ in seen for i in rows} - {0}
    assert ids == {variants.identifier(t, v) for t in variants.task_ids for v in range(2)}

    monkeypatch.setattr(predict_mod, "predict_batch", _forced("output", []))
    assert all(f.fitted for f in check_fit(model, variants, views=2, batch_size=8).values())

    # `only`: just those tasks are predicted (through their own rows) and reported
    seen.clear()
    monkeypatch.setattr(predict_mod, "predict_batch", _forced("input", seen))
    assert check_fit(model, variants, views=2, batch_size=8, only=["mixed", "flip"]) == \
        {"flip": TaskFit(0, 2), "mixed": TaskFit(1, 2)}
    ids = {i for rows, _ in seen for i in rows} - {0}
    assert ids == {variants.identifier(t, v) for t in ("flip", "mixed") for v in range(2)}
    with pytest.raises(KeyError, match="nope"):
        check_fit(model, variants, only=["nope"])


def test_spending_rule():
    def check(**shares) -> dict[str, TaskFit]:
        return {t: TaskFit(k, 4) for t, k in shares.items()}

    # freeze after `patience` consecutive fitted checks, and only then
    assert spending([check(a=4, b=0)], patience=2) == {"a": 1.0, "b": 1.0}
    assert spending([check(a=4, b=0), check(a=4, b=1)], patience=2) == {"a": 0.0, "b": 1.0}
    assert spending([check(a=4, b=0), check(a=3, b=1), check(a=4, b=1)], patience=2)["a"] == 1.0
    # a frozen task that unfits comes back
    assert spending([check(a=4, b=0), check(a=4, b=1), check(a=2, b=1)], patience=2)["a"] == 1.0
    # every task fitted: all are drawn again
    assert spending([check(a=4, b=4), check(a=4, b=4)], patience=2) == {"a": 1.0, "b": 1.0}
    # stalled while another rises: half weight, never 0; nobody rising: nobody halved
    stalled = [check(a=1, b=0), check(a=1, b=1), check(a=1, b=2), check(a=0, b=2)]
    assert spending(stalled, patience=2, stall=3) == {"a": 0.5, "b": 1.0}
    assert spending(stalled, patience=2, stall=0) == {"a": 1.0, "b": 1.0}
    assert spending(stalled[:3], patience=2, stall=3) == {"a": 1.0, "b": 1.0}  # too few checks yet
    flat = [check(a=1, b=2)] * 4
    assert spending(flat, patience=2, stall=3) == {"a": 1.0, "b": 1.0}
    with pytest.raises(ValueError, match="FitSchedule.patience"):
        FitSchedule(patience=0)


# ---- the sampler ------------------------------------------------------------------------------


def test_sampler_weights_keep_tasks_out_and_resume():
    variants = Variants(four_tasks(), 3, seed=0)
    plain = TrainSampler(variants, 8, seed=1, canvas=CANVAS)
    ones = TrainSampler(variants, 8, seed=1, canvas=CANVAS)
    ones.set_weights(dict.fromkeys(variants.task_ids, 1.0))
    for _, a, b in zip(range(12), plain, ones):  # every weight 1: the reference stream, bit for bit
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert plain.rows_by_task() == ones.rows_by_task() and sum(plain.rows_by_task().values()) == 12 * 8

    def task_of(ids: torch.Tensor) -> list[str]:
        return [variants.lookup(int(i))[0] for i in ids]

    out = TrainSampler(variants, 8, seed=1, canvas=CANVAS)
    out.set_weights({"same": 0.0, "flip": 0.5})
    it = iter(out)
    drawn = [task_of(next(it)["puzzle_identifiers"]) for _ in range(12)]
    assert all(len(b) == 8 for b in drawn) and not any("same" in b for b in drawn)  # full batches, no 'same'
    counts = out.rows_by_task()
    assert counts["same"] == 0 and 0 < counts["flip"] < counts["mixed"]  # half weight: drawn less, not never

    state = json.loads(json.dumps(out.state_dict()))
    rest = [next(it) for _ in range(5)]
    resumed = TrainSampler(variants, 8, seed=1, canvas=CANVAS)
    resumed.load_state_dict(state)
    assert resumed.weights == out.weights and resumed.weights["flip"] == 0.5
    for a, b in zip(rest, resumed):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.rows_by_task() == out.rows_by_task()
    with pytest.raises(ValueError, match="keep at least one task"):
        out.set_weights(dict.fromkeys(variants.task_ids, 0.0))
    with pytest.raises(ValueError, match="1/k"):
        out.set_weights({"same": 0.3})


# ---- training ---------------------------------------------------------------------------------


def _only_same_fitted(model, variants, **_):
    return {t: TaskFit(2, 2) if t == "same" else TaskFit(0, 2) for t in variants.task_ids}


def _fit_lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / METRICS_FILE).read_text().splitlines() if '"fit"' in line]


def _train(out: Path | None, steps: int, fit: FitSchedule | None, stop=None, ema: bool = False) -> TRM:
    variants = Variants(four_tasks(), 3, seed=0)
    model = _model(variants)
    sampler = TrainSampler(variants, 8, seed=1, canvas=CANVAS)
    tc = TrainConfig(steps=steps, global_batch_size=8, mode="full", warmup_steps=0, lr=1e-3, ema=ema, ema_rate=0.9,
                     log_every=2)
    train(model, sampler, tc, out_dir=out, fit=fit, stop=stop, **QUIET)
    return model


def test_fitted_task_leaves_the_batches_and_its_rows_stay(monkeypatch, tmp_path):
    monkeypatch.setattr(fit_mod, "check_fit", _only_same_fitted)
    variants = Variants(four_tasks(), 3, seed=0)
    same_rows = [variants.identifier("same", v) for v in range(variants.count("same"))]
    other_rows = [variants.identifier(t, v) for t in ("flip", "mixed", "swap") for v in range(variants.count(t))]
    snap: dict[int, torch.Tensor] = {}
    model_box: list[TRM] = []

    def watch(step: int) -> bool:  # before each step; 'same' leaves after the check at step 2, its carried
        if step == 4 and model_box:  # rows finish by step 3 (halt_max_steps 2)
            snap[4] = model_box[0].puzzle_emb.weights.detach().clone()
        return False

    import trm_core.train as train_mod
    real_init = train_mod._Trainer.__init__

    def init(self, model, *args, **kwargs):
        model_box.append(model)
        real_init(self, model, *args, **kwargs)

    monkeypatch.setattr(train_mod._Trainer, "__init__", init)
    model = _train(tmp_path, 12, FitSchedule(every=1, patience=2, stall=0, gate=False), stop=watch)
    table = model.puzzle_emb.weights.detach()
    assert torch.equal(table[same_rows], snap[4][same_rows])  # untouched since it left
    assert not torch.equal(table[other_rows], snap[4][other_rows])  # the others kept training

    lines = _fit_lines(tmp_path)
    assert [m["step"] for m in lines] == list(range(1, 13))
    assert [m["fit"]["same"]["active"] for m in lines[:3]] == [True, False, False]
    assert all(m["fitted_tasks"] == 1 and m["fit"]["flip"]["weight"] == 1.0 for m in lines)
    rows = {t: [m["fit"][t]["rows"] for m in lines] for t in variants.task_ids}
    assert rows["same"][1] > 0 and rows["same"][-1] == rows["same"][1]  # no row handed out after step 2
    # the freed share goes to the others: their rows per step rise from (8 - the share of 'same') to 8
    others = [sum(rows[t][i] for t in ("flip", "mixed", "swap")) for i in range(12)]
    assert others[1] / 2 < 8 and (others[-1] - others[1]) / 10 == 8

    # the report draws the timeline, and the training curves still read only the training lines
    metrics = [json.loads(line) for line in (tmp_path / METRICS_FILE).read_text().splitlines()]
    section = fit_section(metrics)
    assert section is not None and "same" in section.html and "fitted (out)" in section.html
    assert "step 12" in section.html and "rows handed out" in section.html
    curve = _curve_rows(metrics)
    assert curve and all("loss" in r for r in curve) and [r["step"] for r in curve] == [2, 4, 6, 8, 10, 12]


def test_a_schedule_that_changes_nothing_trains_the_same_bits(tmp_path):
    """The real check (EMA weights applied, eval mode, inference) every 2 steps, a patience no task
    reaches and no deprioritising: the weights are those of a run without a schedule."""
    plain = _train(None, 6, None, ema=True)
    checked = _train(tmp_path, 6, FitSchedule(every=2, patience=1000, stall=0, views=2, gate=False), ema=True)
    a, b = plain.state_dict(), checked.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    lines = _fit_lines(tmp_path)
    assert [m["step"] for m in lines] == [2, 4, 6] and all(len(m["fit"]) == 4 for m in lines)


@pytest.mark.parametrize("stop_at", [1, 3])
def test_resume_with_an_active_set_continues_identically(monkeypatch, tmp_path, stop_at):
    """Stopped after the first check (the patience count must survive) or after 'same' left (the
    sampler's weights must survive), the resumed run ends where one uninterrupted run ends."""
    monkeypatch.setattr(fit_mod, "check_fit", _only_same_fitted)
    schedule = FitSchedule(every=1, patience=2, stall=0, gate=False)
    whole = _train(tmp_path / "whole", 6, schedule)
    _train(tmp_path / "parts", 6, schedule, stop=lambda s: s >= stop_at)
    resumed = _train(tmp_path / "parts", 6, schedule)
    a, b = whole.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _fit_lines(tmp_path / "whole") == _fit_lines(tmp_path / "parts")


# ---- each task's best rows ---------------------------------------------------------------------


class _FlipFittedEarly:
    """A check in which 'same' is always fitted, 'flip' only at the checks of steps <= 2 (its rows
    then are remembered here), the others never. The end-of-run check of 'flip' alone answers
    `restored` exact pairs when the table holds those remembered rows and `final` otherwise."""

    def __init__(self, final: int, restored: int) -> None:
        self.final, self.restored = final, restored
        self.step = 0
        self.rows: torch.Tensor | None = None
        self.only_calls: list[list[str]] = []

    def stop(self, step: int) -> bool:  # called before each step with the steps done so far
        self.step = step + 1
        return False

    def __call__(self, model, variants, only=None, **_):
        rows = model.puzzle_emb.weights[_rows_of(variants, "flip")].clone()
        if only is not None:
            self.only_calls.append(list(only))
            exact = self.restored if torch.equal(rows, self.rows) else self.final
            return {"flip": TaskFit(exact, 2)}
        if self.step <= 2:
            self.rows = rows
        return {t: TaskFit(2, 2) if t == "same" or (t == "flip" and self.step <= 2) else TaskFit(0, 2)
                for t in variants.task_ids}


def _rows_of(variants: Variants, task: str) -> list[int]:
    return [variants.identifier(task, v) for v in range(variants.count(task))]


def _saved(out: Path) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(the checkpoint's table, train_state.pt's table, train_state.pt)."""
    state = torch.load(out / "train_state.pt", weights_only=True)
    return checkpoint.load(out / "checkpoint").state["puzzle_emb.weights"], state["model"]["puzzle_emb.weights"], state


def _restored_lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / METRICS_FILE).read_text().splitlines() if '"restored"' in line]


@pytest.mark.parametrize("ema", [False, True])
def test_rows_fitted_earlier_come_back_when_they_fit_more(monkeypatch, tmp_path, ema):
    check = _FlipFittedEarly(final=0, restored=2)
    monkeypatch.setattr(fit_mod, "check_fit", check)
    variants = Variants(four_tasks(), 3, seed=0)
    model = _train(tmp_path, 6, FitSchedule(every=1, patience=2, stall=0, gate=False), stop=check.stop, ema=ema)
    saved, trained, state = _saved(tmp_path)
    flip, others = _rows_of(variants, "flip"), [r for t in ("same", "mixed", "swap") for r in _rows_of(variants, t)]
    assert check.only_calls == [["flip"], ["flip"]]  # the end-of-run check reads 'flip' alone: final, then restored
    assert torch.equal(saved[flip], check.rows)  # the rows of step 2 are in the checkpoint (EMA applied or not)
    assert torch.equal(model.puzzle_emb.weights[flip], check.rows)  # and in the trained model
    assert not torch.equal(trained[flip], check.rows)  # train_state keeps the rows training left
    # 'same' (fitted at the last check) and the tasks never fitted: untouched
    assert torch.equal(saved[others], trained[others])
    assert torch.equal(state["best_rows"]["flip"]["rows"], check.rows) and state["best_rows"]["flip"]["step"] == 2
    assert _restored_lines(tmp_path) == [{"step": 6, "restored": {"flip": {
        "fitted_at": 2, "exact_pairs_final": 0, "exact_pairs_restored": 2, "kept": "restored"}}}]


@pytest.mark.parametrize("final, restored", [(1, 1), (1, 0)])
def test_rows_training_left_stay_when_the_earlier_ones_fit_no_more(monkeypatch, tmp_path, final, restored):
    check = _FlipFittedEarly(final=final, restored=restored)
    monkeypatch.setattr(fit_mod, "check_fit", check)
    model = _train(tmp_path, 6, FitSchedule(every=1, patience=2, stall=0, gate=False), stop=check.stop)
    saved, trained, _ = _saved(tmp_path)
    assert torch.equal(saved, trained) and torch.equal(model.puzzle_emb.weights, trained)
    assert _restored_lines(tmp_path)[0]["restored"]["flip"] == {
        "fitted_at": 2, "exact_pairs_final": final, "exact_pairs_restored": restored, "kept": "final"}


def test_no_earlier_fit_no_end_check_and_no_schedule_no_record(monkeypatch, tmp_path):
    """'same' fitted throughout and the others never: nothing to put back, no extra check, no line.
    Without a schedule, train_state.pt holds no kept rows."""
    calls: list = []

    def check(model, variants, only=None, **kwargs):
        calls.append(only)
        return _only_same_fitted(model, variants)

    monkeypatch.setattr(fit_mod, "check_fit", check)
    _train(tmp_path / "fit", 4, FitSchedule(every=1, patience=2, stall=0, gate=False))
    assert calls == [None] * 4 and not _restored_lines(tmp_path / "fit")
    saved, trained, state = _saved(tmp_path / "fit")
    assert torch.equal(saved, trained) and set(state["best_rows"]) == {"same"}
    _train(tmp_path / "plain", 4, None)
    assert "best_rows" not in _saved(tmp_path / "plain")[2]


def test_resume_keeps_the_best_rows_and_stays_exact(monkeypatch, tmp_path):
    """Stopped at step 4 (the rows are put back in that checkpoint too), the resumed run trains on
    from the rows training left and ends with the same checkpoint and state as an uninterrupted run;
    resuming a finished run changes nothing."""
    schedule = FitSchedule(every=1, patience=2, stall=0, gate=False)
    check = _FlipFittedEarly(final=0, restored=2)
    monkeypatch.setattr(fit_mod, "check_fit", check)
    _train(tmp_path / "whole", 6, schedule, stop=check.stop)

    check = _FlipFittedEarly(final=0, restored=2)
    monkeypatch.setattr(fit_mod, "check_fit", check)
    _train(tmp_path / "parts", 6, schedule, stop=lambda s: check.stop(s) or s >= 4)
    assert _restored_lines(tmp_path / "parts")[0]["step"] == 4
    resumed = _train(tmp_path / "parts", 6, schedule, stop=check.stop)
    whole, parts = _saved(tmp_path / "whole"), _saved(tmp_path / "parts")
    assert torch.equal(whole[0], parts[0]) and torch.equal(whole[1], parts[1])
    assert torch.equal(resumed.puzzle_emb.weights, whole[0])
    assert _fit_lines(tmp_path / "whole") == _fit_lines(tmp_path / "parts")
    assert _restored_lines(tmp_path / "parts")[-1] == _restored_lines(tmp_path / "whole")[-1]

    again = _train(tmp_path / "parts", 6, schedule, stop=check.stop)  # finished: only the end of the run again
    assert torch.equal(_saved(tmp_path / "parts")[0], whole[0]) and torch.equal(again.puzzle_emb.weights, whole[0])


# ---- the study --------------------------------------------------------------------------------


def test_study_per_task_arm_runs(tmp_path):
    from click.testing import CliRunner

    from trm_cli import main
    from trm_core.tasks import write_kaggle

    cfg = TRMConfig.from_name("tiny", hidden_size=16, num_heads=2, H_cycles=1, L_cycles=1, halt_max_steps=2,
                              puzzle_emb_ndim=16, num_puzzle_identifiers=5, canvas=CANVAS)
    ckpt = tmp_path / "ckpt"
    checkpoint.save(checkpoint.slim(checkpoint.from_model(TRM(cfg, generator=torch.Generator().manual_seed(0)))), ckpt)
    write_kaggle(four_tasks()[:2], tmp_path / "c_challenges.json", tmp_path / "c_solutions.json")
    out = tmp_path / "study"
    result = CliRunner().invoke(main, [
        "study", "--checkpoint", str(ckpt), "--data", str(tmp_path / "c_challenges.json"), "--solutions",
        str(tmp_path / "c_solutions.json"), "--arms", "full", "--steps", "4", "--eval-every", "2", "--views", "2",
        "--variants", "2", "--batch-size", "4", "--warmup", "0", "--spend", "per-task", "--fit-every", "1",
        "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    study = json.loads((out / "study.json").read_text())
    assert study["config"]["spend"] == "per-task" and study["config"]["fit_patience"] == 2
    curve = study["arms"]["full"]["curve"]
    assert [r["step"] for r in curve] == [2, 4]
    for r in curve:
        assert 0 <= r["fitted_tasks"] <= 2 and set(r["row_steps"]) == {"same", "flip"}
        assert sum(r["row_steps"].values()) == 4 * r["step"]  # every row handed out, counted across segments
    lines = _fit_lines(out / "arms" / "full" / "run")
    assert [m["step"] for m in lines] == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="spend"):
        from trm_core.config import StudyConfig

        StudyConfig(spend="greedy")


# ---- the entry points ----------------------------------------------------------------------------


def test_the_runner_spends_per_task_when_asked_and_records_it(tmp_path: Path, micro_checkpoint: Path) -> None:
    """--spend per-task: the training job runs the fit checks (metrics.jsonl holds their lines),
    run.json records the schedule, and the plan charges the checks' time to training."""
    from dataclasses import replace as _replace

    from submission.planning import FIT_VIEWS, Planner
    from submission.scheduler import Calibration
    from tests.test_runner import CHALLENGES, _options, _run
    from trm_core.tasks import load_tasks

    inputs = tmp_path / "in" / "competitions" / "arc"
    inputs.mkdir(parents=True)
    ids = ["0d3d703e", "25ff71a9"]
    (inputs / "arc-agi_test_challenges.json").write_text(json.dumps({t: CHALLENGES[t] for t in ids}))
    opts = _options(tmp_path, inputs, micro_checkpoint, 40.0, spend="per-task", fit_every=2, max_steps=6)
    sub, record, _ = _run(opts)
    assert set(sub) == set(ids)
    assert record["train"]["spend"]["every"] == 2 and record["train"]["spend"]["views"] == FIT_VIEWS
    assert record["train"]["steps_done"] >= 2, record["train"]
    metrics = [json.loads(line) for line in (Path(record["train"]["checkpoint"]).parent / "metrics.jsonl")
               .read_text().splitlines()]
    checks = [m for m in metrics if "fit" in m]
    assert checks and set(checks[0]["fit"]) == set(ids)
    per = record["train"]["per_task"]
    assert [s for s, _ in per["fitted"]] == [m["step"] for m in checks] and per["rows"]["max"] >= per["rows"]["min"] > 0
    from submission.report import render, timing_report
    text = render(timing_report(record))
    assert "spending: per-task, a fit check every 2 steps" in text and "tasks fitted at the checks" in text

    # the plan is uniform's: the gated checks' time reaches it through the watchdog's measured steps
    cal = Calibration(device="cpu", train_batch=8, predict_batch=16, train_step_s=0.05, predict_batch_s=0.5,
                      launch_s=1.0, train_warmup_s=0.5, predict_warmup_s=0.5, save_s=0.2)
    tasks = load_tasks(str(inputs / "arc-agi_test_challenges.json"), strict=False)

    def planned(spend: str) -> int:
        o = _replace(opts, spend=spend, fit_every=0, max_steps=100_000, max_epochs=1e6)
        return Planner(o, "full", "cpu", 1, 0.1, lambda: 0.0, 60.0).plan(tasks, cal).steps

    assert planned("per-task") == planned("uniform") > 0
    assert record["finished_before_deadline"]


def test_posttrain_and_solve_take_the_spending_options(tmp_path: Path) -> None:
    from trm_core.config import fit_every
    from trm_cli.train import fit_schedule

    assert fit_schedule({"spend": "uniform", "fit_every": None, "fit_patience": 2}, 600) is None
    fit = fit_schedule({"spend": "per-task", "fit_every": None, "fit_patience": 3}, 600)
    assert (fit.every, fit.patience) == (fit_every(600), 3) == (30, 3)
    assert fit_every(100) == 25 and fit_schedule({"spend": "per-task", "fit_every": 7, "fit_patience": 2}, 600).every == 7
    from trm_cli import main

    for command in ("posttrain", "solve"):
        ctx = main.commands[command].make_context(command, ["--checkpoint", ".", "--data", "x", "--out", "o",
                                                            "--spend", "per-task"])
        assert ctx.params["spend"] == "per-task" and ctx.params["fit_every"] is None



def test_the_gate_checks_only_the_tasks_with_an_exact_training_row(monkeypatch, tmp_path):
    """Gated: a check predicts only the tasks whose training rows halted exactly right since the
    last check (faked here for 'flip' at step 1 and 'mixed' at step 3), plus those fitted at the
    last check; the others count as no pair exact, and the counts start again after each check."""
    import trm_core.train as train_mod

    asked: list[list[str] | None] = []

    def check(model, variants, *, only=None, **_):
        asked.append(None if only is None else sorted(only))
        return {t: TaskFit(2, 2) if t == "flip" else TaskFit(1, 2) for t in (only or variants.task_ids)}

    monkeypatch.setattr(fit_mod, "check_fit", check)
    real_count = train_mod._Trainer._count_exact_rows

    def count(self, carry, preds):
        real_count(self, carry, preds)  # the real count runs (and finds none in this tiny model) ...
        marked = {1: "flip", 3: "mixed"}.get(self.step)
        if marked:  # ... and one row of a task is marked exactly right
            self.exact_rows[self.batches.variants.identifier(marked, 0)] += 1

    monkeypatch.setattr(train_mod._Trainer, "_count_exact_rows", count)
    _train(tmp_path, 4, FitSchedule(every=2, patience=5, stall=0))
    assert asked == [["flip"], ["flip", "mixed"]]  # 'flip' again at step 4: it was fitted at step 2
    lines = _fit_lines(tmp_path)
    assert [m["checked"] for m in lines] == [1, 2]
    assert lines[0]["fit"]["flip"]["fitted"] and lines[0]["fit"]["same"]["exact_pairs"] == 0
    assert lines[1]["fit"]["mixed"]["exact_pairs"] == 1 and lines[1]["fit"]["swap"]["exact_pairs"] == 0


def test_the_gate_changes_no_training_bit(tmp_path):
    plain = _train(None, 6, None)
    gated = _train(tmp_path, 6, FitSchedule(every=2, patience=1000, stall=0, views=2))
    a, b = plain.state_dict(), gated.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [m["checked"] for m in _fit_lines(tmp_path)] == [0, 0, 0]  # nothing exact in training: nothing predicted
