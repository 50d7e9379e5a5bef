"""Measure this machine: the unit times a plan is made of, timed on the real checkpoint and tasks.

Runs in a calibration worker (submission/worker.py), on one device. Input: a kit checkpoint, the
tasks, per-process batch sizes and the views per test input. Output: a scheduler `Calibration`
(s per training step and per prediction batch, warm-up excess, checkpoint save time, FLOPs, the
vote's first-call compile and steady cost per view, and on CUDA the memory fit that sizes the
micro-batch). Imports torch and trm_core lazily.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from submission.scheduler import Calibration


def _steady(intervals: list[float], warm: int) -> tuple[float, float]:
    """(steady mean, warm-up excess) from per-unit durations whose first `warm` include warm-up."""
    steady = intervals[warm:] or intervals[-1:]
    mean = sum(steady) / len(steady)
    excess = max(0.0, sum(intervals[:warm]) - warm * mean)
    return mean, excess


class _Memory:
    """Peak memory per row, measured (CUDA) or given (`peak_bytes`, in tests), against a budget."""

    def __init__(self, device: Any, peak_bytes: Callable[[str, int], int] | None, budget_bytes: float | None,
                 hook: Callable[[str, int], None] | None) -> None:
        from trm_core import memory

        self.device, self.peak_bytes, self.hook = device, peak_bytes, hook
        self.sized = peak_bytes is not None or device.type == "cuda"
        self.budget = budget_bytes if budget_bytes is not None else memory.device_budget(device)
        self.on = bool(self.sized and self.budget)

    def fit(self, kind: str, model: Any, rows: tuple[int, int] = (2, 4)) -> Any:
        from trm_core import memory

        model.to(self.device)
        if self.peak_bytes is not None:
            return memory.fit([(r, self.peak_bytes(kind, r)) for r in rows])
        step = memory.train_step_peak if kind == "train" else memory.predict_batch_peak
        return memory.measure_peak(lambda r: (self.hook and self.hook(kind, 0), step(model, r, self.device)), rows,
                                   self.device)


def calibrate(ckpt: Any, tasks: Any, *, train_batch: int, predict_batch: int, views: int, device: Any = "cpu",
              train_mode: str = "full", warmup_steps: int = 2, timed_steps: int = 3, timed_batches: int = 2,
              seed: int = 0, clock: Callable[[], float] = time.perf_counter,
              hook: Callable[[str, int], None] | None = None, log: Callable[[str], None] | None = None,
              scratch: str | os.PathLike | None = None, peak_bytes: Callable[[str, int], int] | None = None,
              budget_bytes: float | None = None) -> Calibration:
    """Time post-training steps and prediction batches of `ckpt` on `tasks` on one device.

    On CUDA (or with a fake `peak_bytes(kind, rows)` and `budget_bytes`, as in tests) peak memory is
    measured first at two small batches for training and for prediction and fitted per row
    (trm_core.memory); the timed steps then run at the largest micro-batch that fits (the local
    batch stays `train_batch`, as gradient accumulation) and prediction at the largest batch up to
    `predict_batch` that fits. No step is sized by running out of memory.

    Training runs warmup_steps + timed_steps + 1 steps of `train_batch` rows in `train_mode`
    ("full" is the most expensive post-training step, so the plan errs on the safe side) with an
    embedding table of `views` variants per task; prediction runs 1 + timed_batches batches of
    `predict_batch` rows. The first steps/batch are the warm-up (allocation, numba JIT, torch.compile):
    their excess over the steady time is reported as *_warmup_s. hook(part, index) runs before each
    step and batch (fault injection in tests). save_s times writing the checkpoint; the resumable
    state written with it holds about 4x the trunk (weights, EMA, two Adam moments), so it is 4x that.
    """
    import torch

    from trm_core import memory
    from trm_core.model import flops_per_sample
    from trm_core.perf import device_name

    device = torch.device(device)
    cfg = ckpt.config
    quiet = log or (lambda line: None)
    mem = _Memory(device, peak_bytes, budget_bytes, hook)
    train_part = _time_training(ckpt, tasks, train_batch, views, train_mode, warmup_steps + timed_steps + 1, seed,
                                device, mem, clock, hook, quiet, scratch)
    step_s, train_warm = _steady(train_part["step_times"], warmup_steps)
    batch_times, predict_batch, predict_fit, pstatus, preds = _time_prediction(ckpt, tasks, predict_batch,
                                                                               timed_batches, seed, device, mem,
                                                                               clock, hook, quiet)
    batch_s, predict_warm = _steady(batch_times, 1)
    vote_compile_s, vote_s_per_view = time_vote(preds, clock, scratch)
    quiet(f"vote: first call {vote_compile_s:.2f} s (compiling or loading the voter), "
          f"{vote_s_per_view * 1e6:.2f} us per view after")
    train_fit = train_part["fit"]
    return Calibration(device=device_name(device), train_batch=train_batch, train_step_s=step_s,
                       train_warmup_s=train_warm, predict_batch=predict_batch, predict_batch_s=batch_s,
                       predict_warmup_s=predict_warm, launch_s=0.0, save_s=train_part["save_s"],
                       steps_timed=max(0, len(train_part["step_times"]) - warmup_steps),
                       batches_timed=max(0, len(batch_times) - 1),
                       train_flops_per_step=flops_per_sample(cfg, train=True) * train_batch,
                       predict_flops_per_batch=flops_per_sample(cfg, train=False) * cfg.halt_max_steps * predict_batch,
                       train_memory=train_fit.to_json() if train_fit else None,
                       predict_memory=predict_fit.to_json() if predict_fit else None,
                       memory_budget_bytes=int(mem.budget) if mem.on else None,
                       memory_headroom=memory.HEADROOM if mem.on else 0.0,
                       train_micro_batch=train_part["micro"], train_compile=train_part["compile"],
                       predict_compile=pstatus.get("compile", "off"), vote_compile_s=vote_compile_s,
                       vote_s_per_view=vote_s_per_view)


VOTE_RECORDS = 20_000  # the vote is timed on this many records: its per-call overhead is then a small share


def time_vote(preds: Any, clock: Callable[[], float] = time.perf_counter,
              scratch: str | os.PathLike | None = None) -> tuple[float, float]:
    """(seconds of the vote's first call in this process, steady seconds per record), timed on
    `preds` (the calibration's predictions), tiled to VOTE_RECORDS records under new view numbers,
    the way the final vote reads them: the shard file loaded, repeats and non-finite scores
    dropped, voted. The first call compiles the voter's numba functions, or loads them from
    numba's on-disk cache (cache=True): it is timed apart, and what the plan holds for the vote
    is its steady cost."""
    from submission.assemble import finite_only, merge_shards
    from trm_core.predictions import Predictions
    from trm_core.vote import vote

    if not len(preds):
        return 0.0, 0.0
    t0 = clock()
    vote(preds)
    first = clock() - t0
    n = len(preds)
    copies = max(1, -(-VOTE_RECORDS // n))
    stride = int(preds.variant.max()) + 1  # new view numbers stay small: repeats are found by them
    big = Predictions(capacity=n * copies)
    for c in range(copies):
        for i in range(n):
            task, test, variant, grid, q = preds.record(i)
            big.append(task, test, variant + c * stride, grid, q)
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        path = Path(tmp) / "shard.npz"
        big.save(path)
        t0 = clock()
        read, _ = finite_only(merge_shards([str(path)]))
        vote(read)
        return first, (clock() - t0) / len(big)


def _time_training(ckpt: Any, tasks: Any, train_batch: int, views: int, train_mode: str, n_steps: int, seed: int,
                   device: Any, mem: _Memory, clock: Callable[[], float], hook: Callable[[str, int], None] | None,
                   quiet: Callable[[str], None], scratch: str | os.PathLike | None) -> dict[str, Any]:
    """n_steps post-training steps (sized to memory first when it is measured), then a timed save."""
    from trm_core import checkpoint as ckpt_io
    from trm_core import memory
    from trm_core.batches import TrainSampler
    from trm_core.config import DataConfig
    from trm_core.recipes import prepare_posttrain
    from trm_core.config import TrainConfig
    from trm_core.train import train

    cfg = ckpt.config
    model, variants = prepare_posttrain(ckpt, tasks, DataConfig(num_variants=max(0, views - 1), variant_seed=seed),
                                        seed=seed)
    sampler = TrainSampler(variants, train_batch, seed=seed, canvas=cfg.canvas)
    micro, fit = 0, None
    if mem.on:
        fit = mem.fit("train", model)
        # Adam's two moments and the EMA copy come after the fit: 3 x the trunk in fp32
        extra = 1.5 * memory.optimiser_bytes(model)
        micro = memory.choose_micro_batch(fit, train_batch, mem.budget, cfg, extra)
        micro = 0 if micro >= train_batch else micro
        quiet(f"memory: training {fit.render(mem.budget)}; micro-batch {micro or train_batch} of {train_batch}")
    marks: list[float] = []

    def on_step(step: int) -> bool:
        if hook:
            hook("train", step)
        marks.append(clock())
        return False

    tc = TrainConfig(steps=n_steps, global_batch_size=train_batch, mode=train_mode, warmup_steps=1,
                     log_every=10**9, seed=seed, micro_batch_size=micro)
    res = train(model, sampler, tc, device=device, stop=on_step, log=quiet)
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        t0 = clock()
        ckpt_io.save(ckpt_io.from_model(model.to("cpu")), Path(tmp) / "ckpt")
        save_s = 4 * (clock() - t0)
    return {"step_times": [b - a for a, b in zip(marks, marks[1:])],  # step 1 .. n_steps-1
            "save_s": save_s, "micro": micro, "fit": fit, "compile": res.compile}


def _time_prediction(ckpt: Any, tasks: Any, predict_batch: int, timed_batches: int, seed: int, device: Any,
                     mem: _Memory, clock: Callable[[], float], hook: Callable[[str, int], None] | None,
                     quiet: Callable[[str], None]) -> tuple[list[float], int, Any, dict[str, str], Any]:
    """(batch durations, the batch used, the memory fit, predict's status, the predictions) of 1 + timed_batches
    prediction batches, the batch first cut to what fits in memory when that is measured."""
    from trm_core.config import PredictConfig
    from trm_core.predict import predict
    from trm_core.recipes import model_for_tasks

    test_inputs = sum(len(t.test_inputs) for t in tasks)
    need = math.ceil((1 + timed_batches) * predict_batch / max(1, test_inputs))
    model, variants, _ = model_for_tasks(ckpt, tasks, max(1, min(need, 1000)), seed)
    fit = None
    if mem.on:
        fit = mem.fit("predict", model)
        fits = fit.largest_batch(mem.budget)
        if fits < 1:
            raise RuntimeError(f"calibration: not one prediction row fits ({fit.render(mem.budget)})")
        if fits < predict_batch:
            quiet(f"memory: prediction {fit.render(mem.budget)}; batch {fits} instead of {predict_batch}")
            predict_batch = fits
            need = math.ceil((1 + timed_batches) * predict_batch / max(1, test_inputs))
    marks: list[float] = [clock()]
    status: dict[str, str] = {}
    done_batches = [0]

    def before_batch() -> bool:
        if hook:
            hook("predict", done_batches[0])
        return done_batches[0] >= 1 + timed_batches

    def after_batch(preds: Any, done: int, total: int) -> None:
        done_batches[0] = done
        marks.append(clock())

    preds = predict(model, variants, PredictConfig(num_views=max(1, min(need, 1000)), batch_size=predict_batch,
                                           order="variant"),
            device=device, stop=before_batch, on_batch=after_batch, status=status)
    times = [b - a for a, b in zip(marks, marks[1:])]
    if not times:
        raise RuntimeError("calibration: prediction ran no batch")
    return times, predict_batch, fit, status, preds
