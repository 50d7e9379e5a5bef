"""Gradient accumulation, activation checkpointing and the compile fallback of the training loop:
micro-batches train as one big batch, a run resumes across a change of micro-batch, and a
compiler failure ends in an eager run that completes."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

from test_train import QUIET, _model, _snapshot, small_config, synthetic_tasks
from trm_core.batches import TrainSampler
from trm_core.variants import Variants
from trm_core.config import TrainConfig
from trm_core.train import STATE_FILE, micro_split, train

CANVAS = 6


def test_micro_split_is_as_even_as_possible() -> None:
    assert micro_split(192, 80) == [64, 64, 64]
    assert micro_split(8, 3) == [3, 3, 2]
    assert micro_split(8, 0) == [8] and micro_split(8, 8) == [8] and micro_split(8, 100) == [8]
    assert micro_split(7, 1) == [1] * 7
    for rows in range(1, 40):
        for m in range(1, 12):
            parts = micro_split(rows, m)
            assert sum(parts) == rows and max(parts) <= m and len(parts) == -(-rows // m)


def _train(micro: int, steps: int = 5, out_dir: Path | None = None, stop_at: int | None = None,
           checkpoint: bool = False, preset: str = "tiny", **cfg_changes) -> tuple[dict[str, torch.Tensor], object]:
    variants = Variants(synthetic_tasks(), 2, seed=0)
    # exploration on and 3 ACT steps: halting, the carry and the embedding rows all matter
    model = _model(small_config(variants, preset, halt_max_steps=3, halt_exploration_prob=0.5))
    sampler = TrainSampler(variants, 8, seed=3, canvas=CANVAS)
    tc = TrainConfig(steps=steps, global_batch_size=8, warmup_steps=2, lr=1e-3, ema=True, ema_rate=0.9, log_every=2,
                     micro_batch_size=micro, checkpoint_activations=checkpoint, **cfg_changes)
    stop = (lambda s: s >= stop_at) if stop_at else None
    result = train(model, sampler, tc, out_dir=out_dir, stop=stop, **QUIET)
    return _snapshot(model), result


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    for k, v in a.items():
        torch.testing.assert_close(b[k], v, rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.parametrize("micro", [4, 3, 1])
def test_micro_batches_train_as_one_batch(micro: int) -> None:
    one, res_one = _train(0)
    acc, res_acc = _train(micro)
    assert res_acc.micro_batch == micro and res_one.micro_batch == 8
    _assert_close(one, acc)
    assert not torch.equal(one["puzzle_emb.weights"], _model(small_config(Variants(synthetic_tasks(), 2, seed=0),
                                                                           halt_max_steps=3)).puzzle_emb.weights)
    # the logged metrics (sums over micro-batches) are the big batch's
    for k in ("loss", "accuracy", "act_steps", "halted_rows"):
        assert res_acc.last_metrics[k] == pytest.approx(res_one.last_metrics[k], rel=1e-4), k


def test_activation_checkpointing_changes_nothing_but_memory() -> None:
    plain, _ = _train(0, steps=3)
    recomputed, _ = _train(0, steps=3, checkpoint=True)
    for k, v in plain.items():
        assert torch.equal(v, recomputed[k]), k  # the same kernels run again: bit for bit on CPU


def test_hrm_micro_batches_and_checkpointing_train_as_one_batch() -> None:
    # HRM: its own H_level, the one-step gradient and the bootstrapped Q target's extra forward
    one, res_one = _train(0, steps=3, preset="hrm-tiny")
    acc, res_acc = _train(3, steps=3, preset="hrm-tiny")
    assert res_acc.micro_batch == 3
    _assert_close(one, acc)
    assert res_acc.last_metrics["q_continue_loss"] == pytest.approx(res_one.last_metrics["q_continue_loss"], rel=1e-4)
    recomputed, _ = _train(0, steps=3, checkpoint=True, preset="hrm-tiny")
    for k, v in one.items():
        assert torch.equal(v, recomputed[k]), k


def test_checkpointing_wraps_both_levels_of_an_hrm(monkeypatch: pytest.MonkeyPatch) -> None:
    from trm_core import model as model_mod

    variants = Variants(synthetic_tasks(), 2, seed=0)
    model = _model(small_config(variants, "hrm-tiny"))
    model.checkpoint_activations = True
    wrapped = []
    real = model_mod.activation_checkpoint

    def spy(module, *args, **kwargs):
        wrapped.append(module)
        return real(module, *args, **kwargs)

    monkeypatch.setattr(model_mod, "activation_checkpoint", spy)
    B, S = 2, model.config.total_len
    z = torch.zeros(B, S, model.config.hidden_size, dtype=model.config.dtype)
    x = torch.randn(B, S, model.config.hidden_size, dtype=model.config.dtype)
    model.recursion(z, z.clone(), x)
    assert wrapped == [model.L_level, model.H_level]  # the two gradient-carrying calls, and only those
    with torch.no_grad():
        model.recursion(z, z.clone(), x)
    assert len(wrapped) == 2


def test_resume_across_a_change_of_micro_batch(tmp_path: Path) -> None:
    straight, _ = _train(0, steps=6)
    _train(4, steps=6, out_dir=tmp_path / "run", stop_at=3)
    saved = torch.load(tmp_path / "run" / STATE_FILE, weights_only=True)
    assert saved["step"] == 3 and saved["carry"]["z_H"].shape[0] == 8  # the carry is the local batch's, whole

    # Restored at another micro-batch and saved again without a step: the state is bit-identical.
    _train(2, steps=6, out_dir=tmp_path / "run", stop_at=3)
    again = torch.load(tmp_path / "run" / STATE_FILE, weights_only=True)
    assert again["train_config"]["micro_batch_size"] == 2

    def same(a, b, where: str) -> None:
        if isinstance(a, dict):
            assert a.keys() == b.keys(), where
            for k in a:
                if k != "train_config":
                    same(a[k], b[k], f"{where}.{k}")
        elif isinstance(a, (list, tuple)):
            assert len(a) == len(b), where
            for i, (x, y) in enumerate(zip(a, b)):
                same(x, y, f"{where}[{i}]")
        elif isinstance(a, torch.Tensor):
            assert torch.equal(a, b), where
        else:
            assert a == b, where
    same(saved, again, "state")

    # ... and the run goes on at micro-batch 2 to the uninterrupted big-batch result.
    resumed, res = _train(2, steps=6, out_dir=tmp_path / "run")
    assert res.steps_done == 6 and res.micro_batch == 2
    _assert_close(straight, resumed)


def test_resume_refuses_another_global_batch(tmp_path: Path) -> None:
    _train(0, steps=4, out_dir=tmp_path / "run", stop_at=2)
    variants = Variants(synthetic_tasks(), 2, seed=0)
    model = _model(small_config(variants, halt_max_steps=3, halt_exploration_prob=0.5))
    with pytest.raises(ValueError, match="global_batch_size"):
        train(model, TrainSampler(variants, 4, seed=3, canvas=CANVAS), TrainConfig(steps=4, global_batch_size=4),
              out_dir=tmp_path / "run", **QUIET)


def test_a_compile_failure_falls_back_to_eager_and_the_run_completes(monkeypatch, tmp_path: Path) -> None:
    eager, _ = _train(3, steps=4, compile=False)
    calls = []

    def broken_compile(fn, *args, **kwargs):
        def compiled(*a, **kw):
            calls.append(1)
            raise RuntimeError("backend compiler failed: inductor exploded\nlong traceback")
        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    fell_back, res = _train(3, steps=4, compile=True, out_dir=tmp_path / "run")
    assert calls == [1]  # tried once, then eager for good
    assert res.steps_done == 4 and res.compile.startswith("fallback: RuntimeError: backend compiler failed")
    assert "\n" not in res.compile
    for k, v in eager.items():  # nothing of the failed attempt is kept: the eager run, bit for bit
        assert torch.equal(v, fell_back[k]), k
    assert (tmp_path / "run" / "checkpoint" / "manifest.json").is_file()


def _slow_compile(calls: list):
    """A torch.compile whose compiled function's first call is a warm-up that sleeps past any small limit."""
    def fake_compile(fn, *args, **kwargs):
        def compiled(*a, **kw):
            calls.append(1)
            if len(calls) == 1:
                time.sleep(5.0)
            return fn(*a, **kw)
        return compiled
    return fake_compile


def test_a_compile_warm_up_over_its_limit_falls_back_to_eager(monkeypatch, tmp_path: Path) -> None:
    eager, _ = _train(3, steps=4, compile=False)
    calls: list = []
    monkeypatch.setattr(torch, "compile", _slow_compile(calls))
    fell_back, res = _train(3, steps=4, compile=True, compile_limit_s=0.2, out_dir=tmp_path / "run")
    assert calls == [1]  # the warm-up was cut short and never retried
    assert res.steps_done == 4 and res.compile == "fallback: warm-up over its 0.2 s limit"
    for k, v in eager.items():  # nothing of the interrupted attempt is kept: the eager run, bit for bit
        assert torch.equal(v, fell_back[k]), k
    assert (tmp_path / "run" / "checkpoint" / "manifest.json").is_file()


def test_the_warm_up_limit_is_checked_after_the_block_where_no_timer_can_interrupt() -> None:
    from trm_core.warmup import WarmupOverLimit, warmup_limit

    raised: list = []

    def worker() -> None:  # not the main thread: no SIGALRM, the block runs to its end
        try:
            with warmup_limit(0.05):
                time.sleep(0.2)
        except WarmupOverLimit as e:
            raised.append(str(e))

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert raised == ["warm-up over its 0.05 s limit"]
    with warmup_limit(0):  # 0 = no limit
        time.sleep(0.01)
    with pytest.raises(ValueError, match="compile_limit_s"):
        TrainConfig(steps=1, compile_limit_s=-1)


def test_compile_defaults_to_cuda_only() -> None:
    _, res = _train(0, steps=1)
    assert res.compile == "off"  # on CPU the default is eager


def test_cli_posttrain_takes_micro_batch_compile_and_checkpointing(tmp_path: Path, micro_checkpoint: Path) -> None:
    from click.testing import CliRunner

    from trm_core import checkpoint
    from trm_cli import main

    challenges = Path(__file__).resolve().parent.parent / "submission" / "placeholder" / "arc-agi_test_challenges.json"
    result = CliRunner().invoke(main, ["posttrain", "--checkpoint", str(micro_checkpoint), "--data", str(challenges),
                                       "--mode", "full", "--steps", "2", "--batch-size", "8", "--micro-batch", "3",
                                       "--no-compile", "--compile-limit", "90", "--checkpoint-activations", "--variants", "1",
                                       "--warmup", "1",
                                       "--device", "cpu", "--out", str(tmp_path / "post")])
    assert result.exit_code == 0, result.output
    assert "micro-batch 3, compile off" in result.output
    train_cfg = checkpoint.load(tmp_path / "post" / "checkpoint").manifest["train"]
    assert train_cfg["micro_batch_size"] == 3 and train_cfg["compile"] is False and train_cfg["checkpoint_activations"]
    assert train_cfg["compile_limit_s"] == 90
    result = CliRunner().invoke(main, ["posttrain", "--checkpoint", str(micro_checkpoint), "--data", str(challenges),
                                       "--steps", "1", "--micro-batch", "-2", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "--micro-batch" in result.output
