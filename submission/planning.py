"""The run's plan, arithmetic only: batches, the scheduler's budget for this run, the plan from a
calibration, the tasks that fit when not all do, and the post-training config a plan implies.
Nothing here launches a job (that is submission/attempts.py).

Input: the runner's options, the run mode (full | smoke), the device and process count, the
measured write time, the checkpoint's recipe, the tasks and a calibration. Output: scheduler
`Plan`s and the TrainConfig a plan implies (trm_core.config.post_config: the one post-training
recipe). `read_calibration` takes a previous run's measured calibration back from its
output (run.json or plan.json), for `trm dry-run --calibration`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from submission.clock import LINGER_S
from submission.options import RunnerOptions
from submission.scheduler import Budget, Calibration, Plan, Workload, plan as make_plan, tasks_that_fit
from trm_core.config import POST_BATCH, Chosen, Recipe, TrainConfig, choose, fit_every, post_config

EMA_OPTION = {None: None, "on": True, "off": False}  # the runner's --ema


# per-task spending (--spend per-task): each fit check predicts every demonstration input under
# FIT_VIEWS views (trm_core/fit.py); how often: config.fit_every
FIT_VIEWS = 8


class Planner:
    def __init__(self, opts: RunnerOptions, mode: str, device: str, world: int, write_s: float,
                 clock: Callable[[], float], deadline: float) -> None:
        self.opts, self.mode, self.device, self.world = opts, mode, device, world
        self.write_s, self.clock, self.deadline = write_s, clock, deadline
        self.budget: Budget | None = None
        # the optimiser variant and EMA of post-training: the checkpoint's recipe unless an option
        # says otherwise; set when the checkpoint is read (Runner.load)
        self.post: Chosen = choose(None, opts.optimizer, EMA_OPTION[opts.ema])

    def read_recipe(self, recipe: Recipe | None) -> Chosen:
        """Post-train as the checkpoint's recipe says (the runner's --optimizer / --ema win)."""
        self.post = choose(recipe, self.opts.optimizer, EMA_OPTION[self.opts.ema])
        return self.post

    def batches(self) -> tuple[int, int]:
        """Global (train, predict) batches, split evenly over the processes."""
        gpu = self.device == "cuda"
        tb = self.opts.train_batch or POST_BATCH["cuda" if gpu else "cpu"]
        pb = self.opts.predict_batch or (Budget.predict_batch if gpu else 64)
        return max(1, tb // self.world) * self.world, max(1, pb // self.world) * self.world

    def views(self) -> int:
        """Views per test input when nothing was planned (or calibration is measuring)."""
        return self.opts.smoke_views if self.mode == "smoke" else self.opts.views_min

    def make_budget(self, train_batch: int, predict_batch: int, vote_s_per_view: float = 0.0) -> Budget:
        o = self.opts
        # write_s: the final build + validate + write, from the fallback's (measured, x2, + 0.1 s);
        # vote_s_per_view: the vote's steady cost measured in calibration (0: Budget's default)
        common = dict(time_limit_s=o.time_limit_s, margin_s=min(o.margin_s, o.time_limit_s / 2),
                      train_batch=train_batch, predict_batch=predict_batch, reserve_min_s=o.reserve_min_s,
                      baseline=o.baseline, write_s=self.write_s,
                      views_spent=o.views_spent if o.round_views else 1.0)
        if vote_s_per_view > 0:
            common["vote_s_per_view"] = vote_s_per_view
        if self.mode == "smoke":
            k = max(1, o.smoke_views)
            return Budget(views_min=k, views_target=k, views_max=k, max_steps=o.smoke_steps, **common)
        return Budget(views_min=o.views_min, views_target=o.views_target, views_max=o.views_max,
                      max_epochs=o.max_epochs, max_steps=o.max_steps, **common)

    def plan(self, tasks: Any, cal: Calibration, world: int | None = None, train_batch: int | None = None,
             steps_done: int = 0) -> Plan:
        world = world or self.world
        if world > 1:  # a torchrun group takes longer to go: its ranks may linger up to LINGER_S
            cal = replace(cal, save_s=cal.save_s + LINGER_S)
            if self.device == "cpu":  # processes started together share the cores while they import
                cal = replace(cal, launch_s=cal.launch_s * world)
        train_b = train_batch or cal.train_batch * world
        pred_b = cal.predict_batch * world
        self.budget = self.make_budget(train_b, pred_b, cal.vote_s_per_view)
        work = Workload(tasks=len(tasks), test_inputs=sum(len(t.test_inputs) for t in tasks),
                        train_pairs=sum(len(t.train) for t in tasks), world=world)
        # per-task spending's fit checks are not charged here: gated (trm_core/fit.py), a check predicts
        # only the tasks near a fit, mostly none; the watchdog's measured step time includes them.
        # Charging a full check every fit_every steps left a 1,200 s tuning-set rehearsal 22% early.
        return make_plan(self.budget, work, cal, self.clock(), self.deadline, train_batch=train_b,
                         predict_batch=pred_b, steps_done=steps_done)

    def fit_every(self, steps: int) -> int:
        """Steps between fit checks in a run planned at `steps` (the option, else about FIT_CHECKS checks)."""
        return self.opts.fit_every or fit_every(steps)

    def fit_schedule(self, p: Plan, cal: Calibration) -> dict[str, Any] | None:
        """The FitSchedule fields of per-task spending along plan `p` (None: uniform)."""
        if self.opts.spend == "uniform":
            return None
        return {"every": self.fit_every(p.steps), "views": FIT_VIEWS, "batch_size": cal.predict_batch}

    def fit_tasks(self, tasks: Any, cal: Calibration) -> list[str]:
        """Not every task fits: the ids of those that do, fewest test inputs (so fewest views)
        first; [] if not even one fits."""
        order = sorted(tasks.tasks, key=lambda t: len(tasks.tasks[t].test_inputs))  # stable
        sizes = [(len(tasks.tasks[t].test_inputs), len(tasks.tasks[t].train)) for t in order]
        probe = self.plan(tasks, cal)  # the batches and budget of a plan, to size the subset with
        n = tasks_that_fit(self.budget, sizes, cal, self.clock(), self.deadline, world=probe.workload.world,
                           train_batch=probe.train_batch, predict_batch=probe.predict_batch)
        return order[:max(0, n)]

    def train_config(self, p: Plan, micro: int = 0) -> TrainConfig:
        """The TrainConfig of post-training along plan `p`: the post-training recipe (post_config)
        for the planned steps, up to the plan's ceiling, with the rates the runner's options set."""
        rates = {k: v for k, v in (("lr", self.opts.lr), ("puzzle_emb_lr", self.opts.puzzle_emb_lr)) if v is not None}
        steps = p.steps - p.steps_done
        return post_config(p.steps, p.train_batch, self.opts.train_mode, self.post, ceiling=p.steps_ceiling,
                           **rates, micro_batch_size=micro, checkpoint_every=max(1, math.ceil(max(steps, 1) / 4)),
                           log_every=max(1, p.steps // 20), seed=self.opts.seed)


# where a run's calibration is recorded, in the order looked for: the runner's own (run.json's
# "calibration", as measured) before the plan's (plan.json's, adjusted for a process group)
CALIBRATION_FILES = ("run.json", "trm-run/run.json", "plan.json", "trm-run/plan.json")
_CAL_INTS = ("train_batch", "predict_batch", "steps_timed", "batches_timed", "train_micro_batch")
_CAL_TIMES = ("train_step_s", "train_warmup_s", "predict_batch_s", "predict_warmup_s", "launch_s", "save_s")


def read_calibration(path: str | os.PathLike) -> tuple[Calibration, Path]:
    """(the calibration a previous run measured, the file it came from). `path`: that run's
    run.json or plan.json, or a folder holding one (a downloaded Kaggle output, its trm-run/, a
    dry run's folder). Read by the rules of trm_core.jsonio; every field is checked (unit times
    finite and > 0, FLOPs > 0, batches whole numbers >= 1) and the record must be a measurement,
    so a ValueError names the file and the field to fix."""
    from trm_core import jsonio

    given = Path(path)
    if given.is_dir():
        found = next((given / f for f in CALIBRATION_FILES if (given / f).is_file()), None)
        if found is None:
            raise ValueError(f"{given}: no run.json or plan.json here or in trm-run/ (pass a run's output folder "
                             "or the file itself)")
        given = found
    record = jsonio.load(given)  # a JSONInputError (a ValueError) names the file
    cal = record.get("calibration") if isinstance(record, dict) else None
    if not isinstance(cal, dict):
        raise ValueError(f"{given}: no calibration object (expected the runner's run.json or plan.json, whose "
                         "\"calibration\" holds the measured unit times; a run that failed to calibrate has none)")
    known = {f.name for f in fields(Calibration)}
    for name in ("device", *_CAL_INTS[:2], *_CAL_TIMES, "train_flops_per_step", "predict_flops_per_batch"):
        if name not in cal:
            raise ValueError(f"{given}: calibration.{name} is missing")
    for name, value in cal.items():
        if name not in known:
            continue
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if name in _CAL_INTS and not (isinstance(value, int) and not isinstance(value, bool)
                                      and (value >= 1 or name not in ("train_batch", "predict_batch"))
                                      and 0 <= value < 10**9):
            raise ValueError(f"{given}: calibration.{name} must be a whole number (batches >= 1), got {shown}")
        if (name in _CAL_TIMES or name.endswith(("flops_per_step", "flops_per_batch"))) and not (
                number and math.isfinite(value) and 0 <= value < 1e30):
            raise ValueError(f"{given}: calibration.{name} must be a finite number >= 0, got {shown}")
        if name in ("device", "source") and not (isinstance(value, str) and 0 < len(value) <= 200):
            raise ValueError(f"{given}: calibration.{name} must be a short string, got {shown}")
    for name in ("train_step_s", "predict_batch_s", "train_flops_per_step", "predict_flops_per_batch"):
        if not cal[name] > 0:
            raise ValueError(f"{given}: calibration.{name} is 0: nothing was timed, no unit time to plan with")
    if cal.get("source", "measured") != "measured":
        raise ValueError(f"{given}: the calibration is {cal['source']!r}, not measured: only a run's measurement "
                         "replaces the projection")
    try:
        return Calibration.from_json({k: cal[k] for k in ("device", *_CAL_INTS, *_CAL_TIMES, "train_flops_per_step",
                                                          "predict_flops_per_batch", "source") if k in cal}), given
    except (TypeError, ValueError) as e:
        raise ValueError(f"{given}: calibration unusable ({e})") from None
