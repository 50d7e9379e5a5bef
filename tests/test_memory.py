"""Memory-aware batch sizing: the peak-memory line fitted from two small batches, and the batch
it picks for a budget, against a fake allocator whose peaks are known exactly."""

from __future__ import annotations

import pytest

from trm_core import memory
from trm_core.model import TRMConfig

MIB = 2**20


class FakeAllocator:
    """Peak = weights + per-row activations of the largest batch run since the last reset."""

    def __init__(self, intercept: int, per_row: int) -> None:
        self.intercept, self.per_row, self.peak, self.runs = intercept, per_row, 0, []

    def reset(self) -> None:
        self.peak = 0

    def run(self, rows: int) -> None:
        self.runs.append(rows)
        self.peak = max(self.peak, self.intercept + self.per_row * rows)

    def peak_bytes(self) -> int:
        return self.peak


def test_two_small_batches_fix_the_line_and_the_largest_batch() -> None:
    # paper preset, bf16, L_cycles 4: ~216 MiB of saved activations per row; 1.5 GiB of weights and workspace
    alloc = FakeAllocator(intercept=1536 * MIB, per_row=216 * MIB)
    fit = memory.measure_peak(alloc.run, (2, 4), "cpu", peak_bytes=alloc.peak_bytes, reset=alloc.reset)
    assert alloc.runs == [2, 4]  # two small steps, no search
    assert fit.bytes_per_row == pytest.approx(216 * MIB) and fit.intercept == pytest.approx(1536 * MIB)
    l4 = 22 * memory.GIB
    rows = fit.largest_batch(l4, headroom=0.10)
    assert fit.peak(rows) <= 0.9 * l4 < fit.peak(rows + 1)  # the largest that fits, not one row more
    assert rows == int((0.9 * l4 - 1536 * MIB) // (216 * MIB)) == 86
    assert fit.largest_batch(l4, headroom=0.10, multiple=8) == 80
    assert fit.largest_batch(1024 * MIB) == 0  # weights alone do not fit
    assert "86 rows fit 22.0 GiB with 10% headroom" in fit.render(l4)
    assert memory.MemoryFit.from_json(fit.to_json()) == fit


def test_the_planned_batch_never_exceeds_the_budget_whatever_the_line() -> None:
    for per_row in (1 * MIB, 37 * MIB, 216 * MIB, 302 * MIB):
        for intercept in (0, 500 * MIB, 3000 * MIB):
            alloc = FakeAllocator(intercept, per_row)
            fit = memory.measure_peak(alloc.run, (1, 3), "cpu", peak_bytes=alloc.peak_bytes, reset=alloc.reset)
            for budget in (4 * memory.GIB, 22 * memory.GIB, 80 * memory.GIB):
                rows = fit.largest_batch(budget, headroom=0.15)
                alloc.reset()
                alloc.run(rows)
                assert alloc.peak_bytes() <= 0.85 * budget or rows == 0


def test_the_fit_refuses_points_it_cannot_use() -> None:
    with pytest.raises(ValueError, match="two different batch sizes"):
        memory.fit([(4, 100), (4, 120)])
    with pytest.raises(ValueError, match="did not grow"):
        memory.fit([(2, 100), (4, 100)])
    with pytest.raises(ValueError, match="only measured on CUDA"):
        memory.measure_peak(lambda r: None, (1, 2), "cpu")
    # three points: least squares through noisy peaks
    fit = memory.fit([(2, 2 * 100 + 1000 + 3), (4, 4 * 100 + 1000 - 2), (8, 8 * 100 + 1000)])
    assert fit.bytes_per_row == pytest.approx(100, rel=0.02)


def test_micro_batch_leaves_room_for_the_carry_and_the_optimiser() -> None:
    cfg = TRMConfig.from_name("paper")
    fit = memory.MemoryFit(216 * MIB, 1536 * MIB, ((2, 0), (4, 0)))
    budget = 22 * memory.GIB
    micro = memory.choose_micro_batch(fit, 192, budget, cfg, extra_bytes=60 * MIB)
    carried = 192 * memory.carry_bytes_per_row(cfg)
    assert memory.carry_bytes_per_row(cfg) == 2 * 2 * 916 * 512 * 2
    assert micro == fit.largest_batch(budget - carried - 60 * MIB) and 0 < micro < 86
    assert memory.choose_micro_batch(fit, 8, 80 * memory.GIB, cfg) == 8  # never more than the local batch
    with pytest.raises(ValueError, match="not one training row fits"):
        memory.choose_micro_batch(fit, 192, 2 * memory.GIB, cfg)


def test_alloc_conf_adds_expandable_segments_once() -> None:
    env: dict[str, str] = {}
    memory.set_alloc_conf(env)
    assert env["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    env = {"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:128"}
    memory.set_alloc_conf(env)
    memory.set_alloc_conf(env)
    assert env["PYTORCH_CUDA_ALLOC_CONF"] == "max_split_size_mb:128,expandable_segments:True"


def test_train_step_peak_runs_on_cpu_and_leaves_no_gradient() -> None:
    from trm_core.model import TRM

    model = TRM(TRMConfig.from_name("tiny", canvas=6, num_puzzle_identifiers=3))
    memory.train_step_peak(model, 2, "cpu")
    assert all(p.grad is None for p in model.parameters())
    memory.predict_batch_peak(model, 2, "cpu")
    assert model.training
    assert memory.optimiser_bytes(model) == 8 * sum(p.numel() for p in model.parameters())


def test_calibration_sizes_micro_batch_and_prediction_batch_from_the_fit(micro_checkpoint) -> None:
    import json
    from pathlib import Path

    from submission.measure import calibrate
    from submission.scheduler import Calibration
    from trm_core import checkpoint
    from trm_core.tasks import load_tasks

    challenges = Path(__file__).resolve().parent.parent / "submission" / "placeholder" / "arc-agi_test_challenges.json"
    ckpt = checkpoint.load(micro_checkpoint)
    tasks = load_tasks(challenges, max_side=ckpt.config.canvas)
    per_row = {"train": 100 * MIB, "predict": 10 * MIB}
    asked = []

    def peak(kind: str, rows: int) -> int:  # a fake allocator: 1 GiB of weights plus the rows
        asked.append((kind, rows))
        return memory.GIB + per_row[kind] * rows

    budget = 2 * memory.GIB  # 0.9 x 2 GiB - 1 GiB - the carry: 8 training rows, 81 prediction rows
    cal = calibrate(ckpt, tasks, train_batch=16, predict_batch=128, views=2, peak_bytes=peak, budget_bytes=budget,
                    warmup_steps=1, timed_steps=1, timed_batches=1)
    assert asked == [("train", 2), ("train", 4), ("predict", 2), ("predict", 4)]  # two small points each
    extra = 1.5 * memory.optimiser_bytes(checkpoint.build_model(ckpt, num_puzzle_identifiers=3))
    fit = memory.MemoryFit.from_json(cal.train_memory)
    assert cal.train_micro_batch == memory.choose_micro_batch(fit, 16, budget, ckpt.config, extra) == 8
    assert cal.train_batch == 16  # the local batch is kept: micro-batches accumulate to it
    assert cal.predict_batch == int((0.9 * budget - memory.GIB) // (10 * MIB)) == 81
    assert cal.memory_budget_bytes == budget and cal.memory_headroom == memory.HEADROOM
    assert Calibration.from_json(json.loads(json.dumps(cal.to_json()))) == cal  # what plan.json holds


def test_the_timing_report_shows_the_fit() -> None:
    from submission.report import memory_line

    fit = memory.MemoryFit(216 * MIB, 1536 * MIB, ((2, 0), (4, 0)))
    cal = {"device": "NVIDIA L4", "train_batch": 192, "predict_batch": 300, "train_memory": fit.to_json(),
           "predict_memory": memory.MemoryFit(20 * MIB, 1536 * MIB, ((2, 0), (4, 0))).to_json(),
           "memory_budget_bytes": 22 * memory.GIB, "memory_headroom": 0.1, "train_micro_batch": 64,
           "train_compile": "on", "predict_compile": "fallback: RuntimeError: x"}
    line = memory_line(cal)
    assert "training 216.0 MiB/row + 1536 MiB; 86 rows fit 22.0 GiB with 10% headroom" in line
    assert "micro-batch 64 of 192 local rows" in line and "predict fallback: RuntimeError" in line
    assert "not measured on cpu" in memory_line({"device": "cpu"})
