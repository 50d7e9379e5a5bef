"""Budget scheduler: measure this machine, plan post-training steps and views K to fit the deadline,
and watch the clock while training.

Inputs: a `Budget` (limits and assumptions), a `Workload` (tasks, test inputs, demonstration pairs,
processes), a `Calibration` (unit times measured by submission/measure.py's `calibrate`, or
derived from FLOPs for a projection) and two absolute times, now and the deadline.
Outputs: a `Plan` (steps, K, batch sizes and the planned seconds of every phase, with every
assumption, printable and saved as JSON) and, during training, a `Watchdog` whose `stop(step)` is
the callable `trm_core.train.train` takes.

The plan is linear: each phase costs (count x unit time) + fixed costs (process launch, warm-up,
checkpoint save). Allocation policy, in order:
  1. Set aside a reserve against timing noise (reserve_fraction of the time left, at least
     reserve_min_s) and the vote + write of the submission.
  2. K_min views of every test input must fit (with its process launch and warm-up). If they do
     not, the plan predicts the largest K < K_min that fits and does not train; if not even one
     view fits, the plan is "fallback only" (the runner keeps the fallback file).
  3. K grows towards K_target while prediction takes at most predict_share of the time left
     (K_min is granted whatever its share): more views help less than more training.
  4. Training takes what is left (after its launch, warm-up and checkpoint save), up to the step cap
     (max_epochs over the demonstration pairs, or max_steps); fewer than min_train_steps is not worth
     a launch and trains nothing.
  5. Leftover time raises K to K_target, then to K_max.
Only the first K variants of a task are trained (one embedding row each), so K is fixed once
training starts; a re-plan may lower it, never raise it.

Everything here is standard-library arithmetic with an injectable clock, so it is tested with a
fake one; the measurement that needs torch is submission/measure.py. About 530 lines: the plan,
the re-plan and the watchdog that triggers it share one cost model and stay together.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from submission.clock import RUNNER_MARGIN_S, TIME_LIMIT_S, session_deadline
from trm_core.config import POST_BATCH


@dataclass(frozen=True)
class Budget:
    """Limits and assumptions of a plan. Defaults: a Kaggle ARC Prize rerun on GPUs."""

    time_limit_s: float = float(TIME_LIMIT_S)  # Kaggle's limit for a code-competition notebook run
    margin_s: float = float(RUNNER_MARGIN_S)  # kept free before the limit (container start, mounting, the final cell)
    views_min: int = 64  # K_min: fewer views than this only when nothing else fits
    views_target: int = 256  # K_target: the paper found 256 views about as good as 512
    views_max: int = 512  # K_max: used only when training is capped and time is left
    predict_share: float = 0.25  # K above K_min is bought only while prediction is <= this share of the time
    max_epochs: float = 12_500.0  # step cap in epochs over the demonstration pairs (Trelis' competition runs)
    max_steps: int | None = None  # explicit step cap (overrides max_epochs), e.g. for a smoke run
    min_train_steps: int = 1  # fewer steps than this do not pay for a training launch
    step_headroom: float = 0.25  # training may run this share past the planned steps if it goes faster
    train_batch: int = POST_BATCH["cuda"]  # global rows per optimiser step over all processes
    predict_batch: int = 1024  # global rows per prediction batch over all processes
    ddp_efficiency: float = 0.9  # step throughput of G processes = G x one process x this (assumed until measured)
    reserve_fraction: float = 0.03  # of the time left, kept unplanned against timing noise
    reserve_min_s: float = 10.0
    vote_s_per_view: float = 2e-6  # voting cost per prediction record (numba; measured ~1e-6 on a CPU core)
    write_s: float = 5.0  # build, validate and atomically write submission.json
    baseline: bool = False  # also predict with the un-adapted checkpoint (same K), for a comparison
    replan_tolerance: float = 0.10  # re-plan when measured step time drifts from the plan by more than this
    views_spent: float = 1.0  # share of the K views prediction is expected to spend (adaptive view count; 1 = all)

    def __post_init__(self) -> None:
        if not 1 <= self.views_min <= self.views_target <= self.views_max:
            raise ValueError(f"Budget: need 1 <= views_min ({self.views_min}) <= views_target "
                             f"({self.views_target}) <= views_max ({self.views_max})")
        if self.time_limit_s <= 0 or not 0 <= self.margin_s < self.time_limit_s:
            raise ValueError(f"Budget: margin_s ({self.margin_s}) must be in [0, time_limit_s={self.time_limit_s})")
        if self.train_batch < 1 or self.predict_batch < 1:
            raise ValueError("Budget: train_batch and predict_batch must be >= 1")
        if not 0 < self.ddp_efficiency <= 1 or not 0 < self.predict_share <= 1 or not 0 < self.views_spent <= 1:
            raise ValueError("Budget: ddp_efficiency, predict_share and views_spent must be in (0, 1]")
        if self.max_steps is not None and self.max_steps < 0:
            raise ValueError("Budget: max_steps must be >= 0")
        if self.min_train_steps < 1 or self.step_headroom < 0 or self.reserve_fraction < 0 or self.reserve_min_s < 0:
            raise ValueError("Budget: min_train_steps >= 1 and step_headroom, reserve_* >= 0 are required")

    def deadline(self, start: float) -> float:
        """The runner's deadline for a run that started at `start` (clock.session_deadline)."""
        return session_deadline(start, self.time_limit_s, self.margin_s)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Budget:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class Workload:
    """What has to be done."""

    tasks: int
    test_inputs: int  # predictions are made per test input x view
    train_pairs: int  # demonstration pairs = rows of one post-training epoch
    world: int = 1  # processes (one per GPU)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Calibration:
    """Unit times on one device, warm-up and compilation excluded (reported separately)."""

    device: str  # e.g. "NVIDIA L4", "cpu"
    train_batch: int  # local rows per measured step
    train_step_s: float  # steady seconds per optimiser step at train_batch
    train_warmup_s: float  # extra seconds of the first steps of a launch (allocation, JIT, compile)
    predict_batch: int  # local rows per measured prediction batch
    predict_batch_s: float  # steady seconds per prediction batch at predict_batch
    predict_warmup_s: float  # extra seconds of the first batch of a launch
    launch_s: float  # process start to model ready (imports, process group, checkpoint, tasks)
    save_s: float  # writing the post-trained checkpoint and resumable state
    steps_timed: int = 0  # how many steady steps / batches the figures average (0: derived, not measured)
    batches_timed: int = 0
    train_flops_per_step: float = 0.0  # model FLOPs of one measured step (for MFU and projections)
    predict_flops_per_batch: float = 0.0
    source: str = "measured"  # measured | projected | assumed
    # Memory (CUDA; None elsewhere): peak bytes fitted per row at two small batches (memory.MemoryFit JSON),
    # the bytes the process may use and the share kept free; the micro-batch and prediction batch they chose.
    train_memory: dict[str, Any] | None = None
    predict_memory: dict[str, Any] | None = None
    memory_budget_bytes: int | None = None
    memory_headroom: float = 0.0
    train_micro_batch: int = 0  # rows per forward/backward (0 = the whole local batch)
    train_compile: str = "off"  # how the timed steps ran: off | on | fallback: <why> (warm-up includes compiling)
    predict_compile: str = "off"
    # The vote, timed on this calibration's predictions: its first call (numba compiling the voter, or
    # loading it from the on-disk cache) and its steady cost per prediction record (0: not measured)
    vote_compile_s: float = 0.0
    vote_s_per_view: float = 0.0

    def __post_init__(self) -> None:
        if self.train_batch < 1 or self.predict_batch < 1:
            raise ValueError("Calibration: batches must be >= 1")
        for name in ("train_step_s", "predict_batch_s", "train_warmup_s", "predict_warmup_s", "launch_s", "save_s",
                     "vote_compile_s", "vote_s_per_view"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"Calibration.{name} must be a finite number >= 0, got {value}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Calibration:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def scaled(self, train: float = 1.0, predict: float = 1.0) -> Calibration:
        """The same calibration with step and batch times multiplied (a measured slowdown)."""
        return replace(self, train_step_s=self.train_step_s * train, predict_batch_s=self.predict_batch_s * predict)


PHASES = ("train_launch", "train", "save", "predict_launch", "predict", "baseline_launch", "baseline", "vote_write")


@dataclass(frozen=True)
class Plan:
    """Steps and views chosen for a budget, with the planned seconds of each phase and every input."""

    created_at: float  # clock time the plan starts from
    deadline: float  # absolute time everything must be done by
    steps: int  # optimiser steps to train (absolute step count; 0 = no training)
    steps_ceiling: int  # TrainConfig.steps: training may go past `steps` up to this if it runs faster
    steps_done: int  # steps already trained when the plan was made (a re-plan)
    step_cap: int  # from max_epochs / max_steps
    views: int  # K, views per test input (0 = fallback only)
    train_batch: int  # global
    predict_batch: int  # global
    step_s: float  # seconds per global step on all processes
    predict_batch_s: float  # seconds per global prediction batch on all processes
    reserve_s: float
    phases: dict[str, float]  # planned seconds, keys in PHASES order
    fallback_only: bool
    reason: str  # which rule of the policy decided
    budget: Budget
    workload: Workload
    calibration: Calibration

    @property
    def total_s(self) -> float:
        """Planned seconds from created_at to the end (reserve excluded)."""
        return sum(self.phases.values())

    @property
    def end(self) -> float:
        return self.created_at + self.total_s

    @property
    def slack_s(self) -> float:
        """Planned time left before the deadline (the reserve included)."""
        return self.deadline - self.end

    @property
    def post_train_s(self) -> float:
        """Seconds needed once training stops: save, predict (and baseline), vote and write."""
        return sum(v for k, v in self.phases.items() if k not in ("train_launch", "train"))

    @property
    def train_deadline(self) -> float:
        """Latest time training may stop so that everything after it still fits with the reserve."""
        return self.deadline - self.reserve_s - self.post_train_s

    @property
    def predict_deadline(self) -> float:
        """Latest time the (adapted) prediction may run to: the baseline is squeezed first."""
        return self.deadline - self.reserve_s - self.phases["vote_write"]

    def to_json(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["budget"], d["workload"], d["calibration"] = (self.budget.to_json(), self.workload.to_json(),
                                                        self.calibration.to_json())
        d.update(total_s=self.total_s, end=self.end, slack_s=self.slack_s, train_deadline=self.train_deadline,
                 predict_deadline=self.predict_deadline)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Plan:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        kw["budget"] = Budget.from_json(d["budget"])
        kw["workload"] = Workload(**d["workload"])
        kw["calibration"] = Calibration.from_json(d["calibration"])
        return cls(**kw)

    def render(self) -> str:
        """The plan and its assumptions as readable lines."""
        b, w, c = self.budget, self.workload, self.calibration
        if self.fallback_only:
            head = f"plan: fallback only ({self.reason})"
        else:
            head = (f"plan: {self.steps} post-training steps of {self.train_batch} rows (cap {self.step_cap}), "
                    f"K = {self.views} views per test input ({self.reason})")
        lines = [head,
                 f"  work: {w.tasks} tasks, {w.test_inputs} test inputs, {w.train_pairs} demonstration pairs, "
                 f"{w.world} process(es)",
                 f"  units ({c.source} on {c.device}): {self.step_s:.4g} s/step, {self.predict_batch_s:.4g} s per "
                 f"prediction batch of {self.predict_batch}, launch {c.launch_s:.1f} s, warm-up "
                 f"{c.train_warmup_s:.1f} s (train) / {c.predict_warmup_s:.1f} s (predict), save {c.save_s:.1f} s",
                 f"  assumptions: DDP efficiency {b.ddp_efficiency:g}, views {b.views_min}-{b.views_target}-"
                 f"{b.views_max}, predict share <= {b.predict_share:g}, vote {b.vote_s_per_view:g} s/view, "
                 f"write {b.write_s:g} s, reserve {self.reserve_s:.1f} s"]
        parts = ", ".join(f"{k} {v:.1f}" for k, v in self.phases.items() if v > 0)
        lines.append(f"  phases (s): {parts or 'none'}")
        lines.append(f"  total {self.total_s:.1f} s of {self.deadline - self.created_at:.1f} s available, "
                     f"slack {self.slack_s:.1f} s; train until +{self.train_deadline - self.created_at:.1f} s at most")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Planning
# ---------------------------------------------------------------------------------------------


def _unit_times(budget: Budget, work: Workload, cal: Calibration, train_batch: int, predict_batch: int
                ) -> tuple[float, float]:
    """(seconds per global step, seconds per global prediction batch) on `work.world` processes.

    Each process runs batch / world rows; time scales linearly with rows from the calibrated local
    batch (slightly pessimistic on a GPU, where larger batches run more efficiently).
    """
    world = max(1, work.world)
    step = cal.train_step_s * (train_batch / world) / cal.train_batch
    if world > 1:
        step /= budget.ddp_efficiency  # gradient all-reduce and stragglers
    batch = cal.predict_batch_s * (predict_batch / world) / cal.predict_batch  # shards never communicate
    return step, batch


def step_cap(budget: Budget, work: Workload, train_batch: int) -> int:
    if budget.max_steps is not None:
        return budget.max_steps
    return math.ceil(budget.max_epochs * work.train_pairs / max(1, train_batch))


class _Costs:
    """Planned seconds of each phase for given steps and views."""

    def __init__(self, budget: Budget, work: Workload, cal: Calibration, step_s: float, batch_s: float,
                 predict_batch: int, training_started: bool, passes: int) -> None:
        self.b, self.w, self.c = budget, work, cal
        self.step_s, self.batch_s, self.predict_batch = step_s, batch_s, predict_batch
        self.training_started, self.passes = training_started, passes

    def predict_one(self, views: int) -> float:
        # the expected, not the most, views: an adaptive run stops giving views to settled inputs
        batches = math.ceil(views * self.b.views_spent * self.w.test_inputs / self.predict_batch)
        return batches * self.batch_s

    def phases(self, new_steps: int, views: int) -> dict[str, float]:
        p = dict.fromkeys(PHASES, 0.0)
        if views <= 0:
            return p
        if new_steps > 0 or self.training_started:
            if not self.training_started:
                p["train_launch"] = self.c.launch_s + self.c.train_warmup_s
            p["train"] = new_steps * self.step_s
            p["save"] = self.c.save_s
        p["predict_launch"] = self.c.launch_s + self.c.predict_warmup_s
        p["predict"] = self.predict_one(views)
        if self.passes > 1:
            p["baseline_launch"] = p["predict_launch"]
            p["baseline"] = p["predict"]
        p["vote_write"] = self.b.vote_s_per_view * views * self.b.views_spent * self.w.test_inputs * self.passes \
            + self.b.write_s
        return p

    def total(self, new_steps: int, views: int) -> float:
        return sum(self.phases(new_steps, views).values())

    def max_views(self, lo: int, hi: int, fits: Callable[[int], bool]) -> int:
        """Largest K in [lo, hi] with fits(K) (costs grow with K), or lo - 1 if none."""
        if hi < lo or not fits(lo):
            return lo - 1
        return largest_fitting(lo, hi, fits)


def phase_costs(budget: Budget, work: Workload, cal: Calibration, steps: int, views: int) -> dict[str, float]:
    """Planned seconds of each phase for a fixed choice of steps and views (e.g. "the full recipe:
    the step cap and K_target"), with the same unit times as `plan`."""
    step_s, batch_s = _unit_times(budget, work, cal, budget.train_batch, budget.predict_batch)
    costs = _Costs(budget, work, cal, step_s, batch_s, budget.predict_batch, training_started=False,
                   passes=2 if budget.baseline else 1)
    return costs.phases(steps, views)


def plan(budget: Budget, work: Workload, cal: Calibration, now: float, deadline: float, *,
         train_batch: int | None = None, predict_batch: int | None = None, steps_done: int = 0) -> Plan:
    """Choose post-training steps and views K so that the whole run ends by `deadline` (see the
    module docstring for the policy). Pure arithmetic: the same inputs give the same plan.

    steps_done > 0 plans a training launch that resumes a run at that step: steps and the ceiling
    are absolute step counts, the cap applies to the total.
    """
    train_batch = train_batch or budget.train_batch
    predict_batch = predict_batch or budget.predict_batch
    step_s, batch_s = _unit_times(budget, work, cal, train_batch, predict_batch)
    cap = step_cap(budget, work, train_batch)
    cap_left = max(0, cap - steps_done)
    avail = deadline - now
    reserve = max(budget.reserve_min_s, budget.reserve_fraction * max(avail, 0.0))
    costs = _Costs(budget, work, cal, step_s, batch_s, predict_batch, training_started=False,
                   passes=2 if budget.baseline else 1)
    room = avail - reserve

    def make(new: int, views: int, reason: str) -> Plan:
        ceiling = min(cap_left, math.ceil(new * (1 + budget.step_headroom))) if new else 0
        return Plan(created_at=now, deadline=deadline, steps=steps_done + new,
                    steps_ceiling=steps_done + max(ceiling, new), steps_done=steps_done, step_cap=cap, views=views,
                    train_batch=train_batch, predict_batch=predict_batch, step_s=step_s, predict_batch_s=batch_s,
                    reserve_s=reserve, phases=costs.phases(new, views), fallback_only=views <= 0, reason=reason,
                    budget=budget, workload=work, calibration=cal)

    if work.test_inputs <= 0 or work.tasks <= 0:
        return make(0, 0, "no task to predict")
    # 2. K_min views, or fewer without training, or nothing
    if costs.total(0, budget.views_min) > room:
        k = costs.max_views(1, budget.views_min - 1, lambda v: costs.total(0, v) <= room)
        if k < 1:
            return make(0, 0, "not even one view fits before the deadline")
        return make(0, k, f"K_min={budget.views_min} does not fit: fewer views, no training")
    # 3. views towards K_target within the predict share
    share = budget.predict_share * room
    k = max(budget.views_min, costs.max_views(budget.views_min, budget.views_target,
                                              lambda v: costs.predict_one(v) * costs.passes <= share
                                              and costs.total(0, v) <= room))
    # 4. training
    steps = 0
    if cap_left > 0 and step_s > 0:
        fixed = costs.total(1, k) - step_s  # launch, warm-up and save included
        steps = min(cap_left, max(0, math.floor((room - fixed) / step_s)))
    elif cap_left > 0:
        steps = cap_left  # free steps (a degenerate calibration): the cap decides
    if steps < budget.min_train_steps:
        steps = 0
    reason = "training capped at the step cap" if steps and steps >= cap_left else \
        ("training fills the time" if steps else "too little time to train")
    # 5. leftover raises K to K_target, then K_max
    for top in (budget.views_target, budget.views_max):
        k = max(k, costs.max_views(k, top, lambda v: costs.total(steps, v) <= room))
    return make(steps, k, reason)


def replan(p: Plan, now: float, steps_done: int, measured_step_s: float) -> Plan:
    """The plan for the rest of a training run whose steps now take `measured_step_s`; `p` is the
    plan the run started with (ratios are taken against it, so re-plans never compound).

    Prediction is assumed to slow down by the same factor (never to speed up): a slower machine is
    usually slower at both. K stays (only its first variants were trained) unless prediction alone
    no longer fits, then it shrinks. Steps may grow up to p.steps_ceiling when training runs faster.
    """
    ratio = measured_step_s / p.step_s if p.step_s > 0 else 1.0
    cal = p.calibration.scaled(train=ratio, predict=max(1.0, ratio))
    batch_s = p.predict_batch_s * max(1.0, ratio)
    costs = _Costs(p.budget, p.workload, cal, measured_step_s, batch_s, p.predict_batch, training_started=True,
                   passes=2 if p.budget.baseline else 1)
    room = p.deadline - now - p.reserve_s
    views = p.views
    if costs.total(0, views) > room:
        views = max(0, costs.max_views(1, views, lambda v: costs.total(0, v) <= room))
        new = 0
        reason = f"re-plan at step {steps_done}: prediction alone needs the rest, K {p.views} -> {views}"
    else:
        fixed = costs.total(0, views)
        new = math.floor((room - fixed) / measured_step_s) if measured_step_s > 0 else p.steps_ceiling
        new = max(0, min(new, p.steps_ceiling - steps_done))
        reason = f"re-plan at step {steps_done}: step time x{ratio:.2f}"
    return replace(p, created_at=now, steps=steps_done + new, steps_done=steps_done, views=views,
                   step_s=measured_step_s, predict_batch_s=batch_s, phases=costs.phases(new, views),
                   fallback_only=views <= 0, reason=reason, calibration=cal)


# ---------------------------------------------------------------------------------------------
# Watching training
# ---------------------------------------------------------------------------------------------


@dataclass
class Watchdog:
    """`stop(step)` for trm_core.train.train: called before each step with the steps done so far.

    The time between two calls is one step. After `warmup_steps` (allocation, JIT, compilation)
    the mean of the last `window` steps is compared with the current plan's step time; a drift above
    budget.replan_tolerance re-plans from the initial plan (see `replan`), at most once per `window`
    steps. Time decides when training ends: it stops when one more step would end after the
    current plan's train_deadline, or at the step ceiling (the step cap, or the planned steps plus
    the headroom when time was the limit). The plan's `steps` is the forecast, not a stop rule, so a
    noisy forecast never ends training early.
    """

    plan: Plan
    clock: Callable[[], float] = time.time
    warmup_steps: int = 2
    window: int = 25  # steps averaged; with the tolerance, noise of a few percent per step does not re-plan
    log: Callable[[str], None] | None = None
    replans: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str | None = None
    _times: list[tuple[int, float]] = field(default_factory=list)

    @property
    def initial(self) -> Plan:
        return self._initial

    def __post_init__(self) -> None:
        self._initial = self.plan

    def measured_step_s(self) -> float | None:
        """Mean seconds per step over the last `window` steps after warm-up (None before)."""
        steady = self._times[self.warmup_steps:]
        if len(steady) < 2:
            return None
        recent = steady[-(self.window + 1):]
        (s0, t0), (s1, t1) = recent[0], recent[-1]
        return (t1 - t0) / (s1 - s0) if s1 > s0 else None

    def __call__(self, step: int) -> bool:
        return self.stop(step)

    def stop(self, step: int) -> bool:
        now = self.clock()
        self._times.append((step, now))
        measured = self.measured_step_s()
        tol = self.plan.budget.replan_tolerance
        quiet = self.replans and step - self.replans[-1]["step"] < self.window
        if measured is not None and self.plan.step_s > 0 and abs(measured / self.plan.step_s - 1) > tol \
                and not quiet:
            old = self.plan
            self.plan = replan(self._initial, now, step, measured)
            event = {"time": now, "step": step, "planned_step_s": old.step_s, "measured_step_s": measured,
                     "ratio": measured / old.step_s, "steps_before": old.steps, "steps_after": self.plan.steps,
                     "views_before": old.views, "views_after": self.plan.views,
                     "train_deadline": self.plan.train_deadline}
            self.replans.append(event)
            if self.log:
                self.log(f"watchdog: step {step}: {measured:.4g} s/step vs {old.step_s:.4g} planned -> "
                         f"{self.plan.steps} steps, K = {self.plan.views}")
        estimate = measured if measured is not None else self.plan.step_s
        if step >= self.plan.steps_ceiling:
            self.stop_reason = f"step ceiling reached ({self.plan.steps_ceiling})"
            return True
        if now + estimate > self.plan.train_deadline:
            self.stop_reason = f"deadline: one more step would end after the training deadline (step {step})"
            return True
        return False

    def to_json(self) -> dict[str, Any]:
        return {"replans": self.replans, "stop_reason": self.stop_reason, "final_plan": self.plan.to_json(),
                "measured_step_s": self.measured_step_s(), "steps_seen": len(self._times),
                "last_step": self._times[-1][0] if self._times else None}


# ---------------------------------------------------------------------------------------------
# Fitting the work to the time
# ---------------------------------------------------------------------------------------------


def largest_fitting(lo: int, hi: int, fits: Callable[[int], bool]) -> int:
    """Largest n in [lo, hi] with fits(n), by bisection; fits(lo) must hold and costs grow with n."""
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def tasks_that_fit(budget: Budget, sizes: list[tuple[int, int]], cal: Calibration, now: float, deadline: float, *,
                   world: int = 1, train_batch: int | None = None, predict_batch: int | None = None) -> int:
    """How many of the tasks, taken in the given order, a plan can predict by `deadline` (0: none).

    sizes: (test inputs, demonstration pairs) per task; give the cheapest first (fewest test inputs,
    so fewest views to predict) to answer the most tasks when not all of them fit.
    """
    def fits(n: int) -> bool:
        work = Workload(tasks=n, test_inputs=sum(t for t, _ in sizes[:n]), train_pairs=sum(p for _, p in sizes[:n]),
                        world=world)
        return not plan(budget, work, cal, now, deadline, train_batch=train_batch,
                        predict_batch=predict_batch).fallback_only

    return largest_fitting(0, len(sizes), fits)  # fits(0) holds: no task, nothing to do
