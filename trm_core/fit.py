"""Per-task fit: whether the model being trained already answers each task's demonstration pairs,
and how the training budget is then spent task by task.

Inputs: the model being trained and the trained `Variants` (its embedding-row map).
Outputs: `check_fit` -> {task_id: TaskFit(exact_pairs, pairs)}; `spending` -> every task's sampler
weight from the checks so far; `FitSchedule`, the one value the training loop takes to run them
(trm_core/train.py: every `every` steps it checks, records the check in metrics.jsonl and hands
the weights to TrainSampler.set_weights).

The check predicts each task's demonstration inputs the way the model is used after training: the
inputs are posed as the task's test inputs over the same embedding rows (Variants.posed), each is
predicted under the task's first `views` trained variants (original first), with the model's full
ACT steps, mapped back to the task's frame, and the views are voted (reference rule). A pair is
exact when the vote's top answer is its output; a task is fitted when every pair is exact; its
share of exact pairs measures progress. The check runs in eval mode and restores train mode; it
draws no random numbers, so the training streams are those of a run without it.

The gate (`FitSchedule.gate`, on by default): a full check predicts every demonstration input
under every view, which on a CPU costs about as much as 50 training steps on 45 tasks (measured in
docs/posttraining.md). Training already knows which tasks are close: a row that halted with every label right.
So a check predicts only the tasks with at least one such row since the last check, those out of
the batches (to see them unfit) and those fitted at the last check; every other task counts as no
pair exact (a vote whose views were never exactly right in training is not expected to be).

The spending rule, applied after every check (`spending`):
  - freeze: a task fitted at `patience` consecutive checks (default 2) leaves the batches
    (weight 0). Rows of it that the ACT carry still holds finish their steps (at most
    halt_max_steps steps); after that its embedding rows are never read, and SignSGD's lazy decay
    touches only the rows a batch reads (trm_core/optim.py), so they stay as they are.
  - re-entry: a task that is not fitted at a check is drawn again (weight 1) from the next batch.
  - deprioritise: an unfitted task whose exact-pair share has not risen over the last `stall`
    checks (default 3: its best share in them is no higher than the share just before them),
    while some other task's share did rise, is drawn one epoch in two (weight 1/2). It is never
    dropped: a share that rises again brings it back to weight 1.
  - all fitted: when every task would leave, every task is drawn again; the run keeps its steps
    (the caller owns the budget) rather than stopping early.
"""

from __future__ import annotations

import numbers
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import torch

from trm_core.model import TRM
from trm_core.config import PredictConfig
from trm_core.predict import predict
from trm_core.tasks import Task
from trm_core.variants import Variants
from trm_core.vote import vote


@dataclass(frozen=True)
class TaskFit:
    """One task at one check."""

    exact_pairs: int  # demonstration pairs whose voted top answer is the expected output
    pairs: int  # demonstration pairs

    @property
    def fitted(self) -> bool:
        return self.pairs > 0 and self.exact_pairs == self.pairs

    @property
    def share(self) -> float:
        return self.exact_pairs / self.pairs if self.pairs else 0.0


def demonstrations_posed(variants: Variants, only: Collection[str] | None = None) -> Variants:
    """The trained identifier map with each task's demonstration inputs as its test inputs (and
    their outputs as the test outputs): predicting it reads exactly the task's trained rows.
    With `only`, the other tasks pose nothing (no inputs, so no prediction rows)."""
    tasks = {tid: Task(tid, t.train, [x for x, _ in t.train], [y for _, y in t.train])
             if only is None or tid in only else Task(tid, t.train, [], [])
             for tid, t in variants.tasks.items()}
    return variants.posed(tasks)


def check_fit(model: TRM, variants: Variants, *, views: int = 8, batch_size: int = 256,
              device: torch.device | str = "cpu", rule: str = "reference",
              only: Collection[str] | None = None) -> dict[str, TaskFit]:
    """Every task's fit under `model` (module docstring), in task order; with `only`, just those
    tasks' (the others are not predicted). `views` is capped by the variants each task has; the
    model goes back to the mode (train or eval) it was in."""
    unknown = sorted(set(only or ()) - set(variants.task_ids))
    if unknown:
        raise KeyError(f"check_fit: tasks {unknown[:5]} are not in the variant set")
    posed = demonstrations_posed(variants, only)
    training = model.training
    try:
        # shard (0, 1): this process predicts every row, whatever the torchrun rank
        preds = predict(model, posed, PredictConfig(num_views=views, batch_size=batch_size, compile=False,
                                                    rule=rule), device=device, shard=(0, 1))
    finally:
        model.train(training)
    voted = vote(preds, rule)
    out = {}
    for tid, task in posed.tasks.items():
        if only is not None and tid not in only:
            continue
        exact = sum(voted.rank_of(tid, i, y, skip_empty=True) == 1 for i, y in enumerate(task.test_outputs))
        out[tid] = TaskFit(int(exact), len(task.test_outputs))
    return out


def spending(history: Sequence[Mapping[str, TaskFit]], patience: int = 2, stall: int = 3) -> dict[str, float]:
    """Each task's sampler weight (1, 1/2 or 0) after the checks in `history` (oldest first, each
    {task_id: TaskFit} over the same tasks): the rule of the module docstring."""
    last = history[-1]
    weights = {}
    for tid in last:
        streak = 0
        for check in reversed(history):
            if not check[tid].fitted:
                break
            streak += 1
        weights[tid] = 0.0 if streak >= patience else 1.0
    if not any(weights.values()):
        return dict.fromkeys(weights, 1.0)
    if stall and len(history) > stall:
        before, window = history[-stall - 1], history[-stall:]
        rose = {tid: max(check[tid].share for check in window) > before[tid].share for tid in last}
        for tid in last:
            if weights[tid] and not last[tid].fitted and not rose[tid] and any(r for t, r in rose.items() if t != tid):
                weights[tid] = 0.5
    return weights


@dataclass(frozen=True)
class FitSchedule:
    """Per-task spending in training: how often to check, the rule's two counts, the check's views.
    The trained identifier map comes from the sampler at each check (TrainSampler.variants)."""

    every: int = 50  # optimiser steps between checks
    patience: int = 2  # consecutive fitted checks before a task leaves the batches
    stall: int = 3  # checks without a rise in exact-pair share before an unfitted task is halved; 0 = never
    views: int = 8  # views per demonstration input (capped by the task's variants)
    # check only the tasks with a training row that halted exactly right since the last check (and
    # those out of the batches or fitted at the last check); the others count as no pair exact
    gate: bool = True
    batch_size: int = 256  # prediction rows per forward

    def __post_init__(self) -> None:
        for name, low in (("every", 1), ("patience", 1), ("stall", 0), ("views", 1), ("batch_size", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
                raise ValueError(f"FitSchedule.{name} must be an integer >= {low}, got {value!r}")

    @property
    def memory(self) -> int:
        """Checks `spending` looks back over: older ones can be forgotten."""
        return max(self.patience, self.stall + 1)

    def check(self, model: TRM, variants: Variants, device: torch.device | str,
              only: Collection[str] | None = None) -> dict[str, TaskFit]:
        return check_fit(model, variants, views=self.views, batch_size=self.batch_size, device=device, only=only)


__all__ = ["FitSchedule", "TaskFit", "check_fit", "demonstrations_posed", "spending"]
