"""The training loop: post-training modes touch exactly their parameters, DDP on gloo matches one
process, an interrupted run resumes to the same result, and a tiny model learns small tasks."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from spawned import leave
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from trm_core import checkpoint
from trm_core.batches import TrainSampler
from trm_core.variants import Variants
from trm_core.encoding import encode_pair, to_labels
from trm_core.loss import act_loss
from trm_core.model import TRM, TRMConfig
from trm_core.tasks import Task
from trm_core.config import TrainConfig
from trm_core.train import METRICS_FILE, STATE_FILE, train

CANVAS = 6
RULES = {
    "swap12": lambda g: np.where(g == 1, 2, np.where(g == 2, 1, g)),
    "fliplr": lambda g: g[:, ::-1],
    "flipud": lambda g: g[::-1],
    "transpose": lambda g: g.T,
}


def synthetic_tasks(n_train: int = 3, seed: int = 0) -> list[Task]:
    """Recolourings and flips of random 5x5 grids: small enough for a CPU model to learn."""
    rng = np.random.default_rng(seed)
    tasks = []
    for name, rule in RULES.items():
        pairs = []
        for _ in range(n_train + 1):
            g = rng.integers(0, 3, (5, 5)).astype(np.uint8)
            pairs.append((g, np.ascontiguousarray(rule(g)).astype(np.uint8)))
        tasks.append(Task(id=name, train=pairs[:n_train], test_inputs=[pairs[-1][0]], test_outputs=[pairs[-1][1]]))
    return tasks


def small_config(variants: Variants, preset: str = "tiny", **changes) -> TRMConfig:
    base = dict(canvas=CANVAS, num_puzzle_identifiers=variants.num_identifiers + 3, halt_max_steps=2,
                halt_exploration_prob=0.0)
    base.update(changes)
    return TRMConfig.from_name(preset, **base)


def _model(cfg: TRMConfig) -> TRM:
    model = TRM(cfg, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # a non-trivial table, as after pre-training
        model.puzzle_emb.weights.normal_(0, 0.02, generator=torch.Generator().manual_seed(1))
    return model


def _snapshot(model: TRM) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


QUIET = dict(log=lambda line: None)


@pytest.mark.parametrize("preset", ["tiny", "hrm-tiny"])
@pytest.mark.parametrize("mode", ["pretrain", "full", "embeddings", "embeddings-then-full", "lora"])
def test_modes_change_exactly_their_parameters(mode: str, preset: str) -> None:
    variants = Variants(synthetic_tasks(), 1, seed=0)
    cfg = small_config(variants, preset)
    model = _model(cfg)
    before = _snapshot(model)
    seen_ids: set[int] = set()
    sampler = TrainSampler(variants, 8, seed=0, canvas=CANVAS)
    steps = 4
    mid: dict[str, torch.Tensor] = {}

    def watch(step: int) -> bool:  # called before each step
        if step == 2:  # the state after the frozen phase of embeddings-then-full
            mid.update(_snapshot(model))
        if step > 0:  # the rows the previous step read (non-halted rows keep their old example)
            seen_ids.update(model.puzzle_emb.local_ids.tolist())
        return False

    tc = TrainConfig(steps=steps, global_batch_size=8, mode=mode, warmup_steps=0, ema=False, freeze_fraction=0.5,
                     lr=1e-3, lora_rank=2)
    train(model, sampler, tc, stop=watch, **QUIET)
    seen_ids.update(model.puzzle_emb.local_ids.tolist())
    after = _snapshot(model)

    trunk = [k for k in before if k not in ("puzzle_emb.weights",)]
    changed = {k for k in trunk if not torch.equal(before[k], after[k])}
    params = {n for n, _ in TRM(cfg).named_parameters()}
    buffers = set(trunk) - params  # H_init, L_init: never trained
    assert not changed & buffers
    if mode in ("pretrain", "full", "embeddings-then-full"):
        assert changed == params
    elif mode == "embeddings":
        assert changed == set()
    elif mode == "lora":
        assert changed == {"embed_tokens.embedding_weight"}
        lora = [k for k in after if ".lora_B" in k]
        assert lora and all(float(after[k].abs().sum()) > 0 for k in lora)  # adapters moved off zero
    if mode == "embeddings-then-full":  # first half frozen: trunk untouched at step 2
        assert all(torch.equal(mid[k], before[k]) for k in params)
    table_before, table_after = before["puzzle_emb.weights"], after["puzzle_emb.weights"]
    rows_changed = {i for i in range(table_before.shape[0]) if not torch.equal(table_before[i], table_after[i])}
    assert rows_changed == seen_ids - {0}


def _run(out_dir: Path | None, steps: int, stop_at: int | None = None, explore: float = 0.5,
         results: list | None = None) -> dict[str, torch.Tensor]:
    variants = Variants(synthetic_tasks(), 2, seed=0)
    model = _model(small_config(variants, halt_exploration_prob=explore))
    sampler = TrainSampler(variants, 8, seed=3, canvas=CANVAS)
    tc = TrainConfig(steps=steps, global_batch_size=8, warmup_steps=2, lr=1e-3, ema=True, ema_rate=0.9, log_every=2)
    stop = (lambda s: s >= stop_at) if stop_at else None
    result = train(model, sampler, tc, out_dir=out_dir, stop=stop, **QUIET)
    assert result.stopped_early == (stop_at is not None)
    if results is not None:
        results.append(result)
    return _snapshot(model)


def test_interrupted_run_resumes_to_the_same_result(tmp_path: Path) -> None:
    results: list = []
    straight = _run(tmp_path / "a", 8, results=results)
    _run(tmp_path / "b", 8, stop_at=3)
    state = torch.load(tmp_path / "b" / STATE_FILE, weights_only=True)
    assert state["step"] == 3 and "carry" in state
    resumed = _run(tmp_path / "b", 8)
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k
    # The kit checkpoints of both runs hold the same (EMA) weights.
    a, b = checkpoint.load(tmp_path / "a" / "checkpoint"), checkpoint.load(tmp_path / "b" / "checkpoint")
    assert a.manifest["weights"] == "ema" and a.manifest["train"]["step"] == 8
    for k in a.state:
        assert torch.equal(a.state[k], b.state[k]), k
    lines = [json.loads(x) for x in (tmp_path / "a" / METRICS_FILE).read_text().splitlines()]
    assert [m["step"] for m in lines] == [2, 4, 6, 8]
    assert all(np.isfinite(m["loss"]) and 0 <= m["accuracy"] <= 1 for m in lines)
    # the result carries the first and last logged intervals (what the timing report shows as the fit)
    assert pytest.approx(lines[0], nan_ok=True) == results[0].first_metrics
    assert pytest.approx(lines[-1], nan_ok=True) == results[0].last_metrics


def test_deadline_in_the_past_stops_before_any_step(tmp_path: Path) -> None:
    variants = Variants(synthetic_tasks(), 0, seed=0)
    model = _model(small_config(variants))
    before = _snapshot(model)
    result = train(model, TrainSampler(variants, 4, canvas=CANVAS), TrainConfig(steps=5, global_batch_size=4),
                   out_dir=tmp_path, deadline=0.0, **QUIET)
    assert result.steps_done == 0 and result.stopped_early
    assert all(torch.equal(before[k], v) for k, v in _snapshot(model).items())
    assert (tmp_path / "checkpoint" / "manifest.json").is_file()  # a stop still leaves a checkpoint


def _ddp_worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        variants = Variants(synthetic_tasks(), 2, seed=0)
        model = _model(small_config(variants))
        sampler = TrainSampler(variants, 8, seed=5, canvas=CANVAS, rank=rank, world_size=world)
        tc = TrainConfig(steps=4, global_batch_size=8, warmup_steps=1, lr=1e-3, ema=False, log_every=2)
        train(model, sampler, tc, **QUIET)
        if rank == 0:
            torch.save(_snapshot(model), out_file)
    finally:
        dist.destroy_process_group()
    leave()  # written and destroyed: no teardown (tests/spawned.py)


def test_ddp_on_two_gloo_processes_matches_one_process(tmp_path: Path) -> None:
    init_file, out_file = str(tmp_path / "init"), str(tmp_path / "ddp.pt")
    mp.spawn(_ddp_worker, args=(2, init_file, out_file), nprocs=2, join=True)
    ddp = torch.load(out_file, weights_only=True)

    variants = Variants(synthetic_tasks(), 2, seed=0)
    model = _model(small_config(variants))
    sampler = TrainSampler(variants, 8, seed=5, canvas=CANVAS)
    train(model, sampler, TrainConfig(steps=4, global_batch_size=8, warmup_steps=1, lr=1e-3, ema=False), **QUIET)
    single = _snapshot(model)
    moved = 0
    for k, v in single.items():
        torch.testing.assert_close(ddp[k], v, rtol=1e-5, atol=1e-6, msg=k)
        moved += not torch.equal(v, _model(small_config(variants)).state_dict()[k])
    assert moved > 5  # the comparison is between trained models, not two untouched ones


def _exact_on_train_pairs(model: TRM, variants: Variants) -> tuple[int, int]:
    model.eval()
    solved = total = 0
    for task in variants.tasks.values():
        for inp, out in task.train:
            x, y = encode_pair(inp, out, CANVAS)
            batch = {"inputs": torch.from_numpy(x.astype(np.int32))[None],
                     "labels": torch.from_numpy(to_labels(y))[None],
                     "puzzle_identifiers": torch.tensor([variants.identifier(task.id)], dtype=torch.int32)}
            with torch.inference_mode():
                carry = model.initial_carry(batch)
                for _ in range(model.config.halt_max_steps):
                    carry, out_ = model(carry, batch)
                _, metrics, _ = act_loss(carry, out_)
            solved += int(metrics["exact_accuracy"])
            total += 1
    return solved, total


LEARN_STEPS = 400  # the bound: 4 tasks x 3 pairs of 5x5 grids, batch 12, cosine from 2e-3 to 0


def test_tiny_model_learns_small_tasks_to_full_training_accuracy() -> None:
    variants = Variants(synthetic_tasks(), 0, seed=0)
    cfg = TRMConfig.from_name("tiny", canvas=CANVAS, num_puzzle_identifiers=variants.num_identifiers,
                              halt_max_steps=1, puzzle_emb_len=1)
    model = TRM(cfg, generator=torch.Generator().manual_seed(0))
    assert _exact_on_train_pairs(model, variants)[0] == 0
    tc = TrainConfig(steps=LEARN_STEPS, global_batch_size=12, lr=2e-3, lr_min_ratio=0.0, warmup_steps=20,
                     weight_decay=0.0, ema=False, log_every=100)
    train(model, TrainSampler(variants, 12, seed=0, canvas=CANVAS, translate=False), tc, **QUIET)
    solved, total = _exact_on_train_pairs(model, variants)
    assert (solved, total) == (12, 12)


@pytest.mark.slow
def test_compiled_training_matches_eager() -> None:
    """torch.compile of the recursion (the GPU fast path) changes nothing but rounding."""
    variants = Variants(synthetic_tasks(), 1, seed=0)
    runs = []
    for compile_ in (False, True):
        model = _model(small_config(variants))
        tc = TrainConfig(steps=3, global_batch_size=8, warmup_steps=1, lr=1e-3, ema=False, compile=compile_)
        train(model, TrainSampler(variants, 8, seed=0, canvas=CANVAS), tc, **QUIET)
        runs.append(_snapshot(model))
    for k, v in runs[0].items():
        torch.testing.assert_close(runs[1][k], v, rtol=1e-4, atol=1e-5, msg=k)
