"""Prediction end to end (views -> ACT -> crop -> inverse augmentation -> vote), sharding across
processes, deadlines, and the train/predict/evaluate commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from spawned import leave
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from click.testing import CliRunner

from trm_core import checkpoint
from trm_cli import main
from trm_core.variants import Variants
from trm_core.evaluate import coverage
from trm_core.model import TRM, Carry, TRMConfig
from trm_core.config import PredictConfig
from trm_core.predict import gather, predict
from trm_core.submission_file import build_submission, validate
from trm_core.tasks import load_tasks
from trm_core.vote import vote

PLACEHOLDER = Path(__file__).resolve().parent.parent / "submission" / "placeholder"
CHALLENGES = PLACEHOLDER / "arc-agi_test_challenges.json"
SOLUTIONS = PLACEHOLDER / "arc-agi_test_solutions.json"
CANVAS = 12


class OracleModel(torch.nn.Module):
    """Answers every row with its label tokens (the test output in the view's augmented frame).

    If views, crops and inverse augmentations are right, every view votes for the true solution.
    """

    def __init__(self, cfg: TRMConfig) -> None:
        super().__init__()
        self.config = cfg

    def initial_carry(self, batch):
        B = batch["inputs"].shape[0]
        return Carry(torch.zeros(B), torch.zeros(B), torch.zeros(B, dtype=torch.int32), torch.ones(B, dtype=torch.bool))

    def forward(self, carry, batch):
        labels = batch["labels"].long().clamp_min(0)  # -100 (unknown / PAD) -> PAD
        logits = torch.nn.functional.one_hot(labels, self.config.vocab_size).float()
        q = torch.linspace(-1, 1, labels.shape[0])
        return carry, {"logits": logits, "q_halt_logits": q, "q_continue_logits": q}


def _tasks():
    return load_tasks(CHALLENGES, solutions=SOLUTIONS)


def test_oracle_views_invert_back_to_the_solutions() -> None:
    tasks = _tasks()
    variants = Variants(tasks, 15, seed=1)
    model = OracleModel(TRMConfig.from_name("tiny", canvas=CANVAS))
    preds = predict(model, variants, PredictConfig(num_views=8, batch_size=7))
    expected = sum(min(8, variants.count(t.id)) * len(t.test_inputs) for t in tasks.tasks.values())
    assert len(preds) == expected
    assert set(preds.variant.tolist()) == set(range(8))  # non-identity views really were inverted
    solutions = {t.id: [o.tolist() for o in t.test_outputs] for t in tasks.tasks.values()}
    report = coverage(vote(preds), solutions)
    assert report.pass_at(1) == 1.0
    assert all(p.candidates == 1 for p in report.pairs)  # every view agreed after inversion


def test_random_model_gives_a_valid_submission() -> None:
    tasks = _tasks()
    variants = Variants(tasks, 3, seed=0)
    cfg = TRMConfig.from_name("tiny", canvas=CANVAS, num_puzzle_identifiers=variants.num_identifiers)
    model = TRM(cfg, generator=torch.Generator().manual_seed(0))
    preds = predict(model, variants, PredictConfig(num_views=4, batch_size=16, halt_steps=2))
    challenges = json.loads(CHALLENGES.read_text())
    sub = build_submission(vote(preds), challenges)
    assert validate(sub, challenges) == []


def test_deadline_in_the_past_predicts_nothing() -> None:
    variants = Variants(_tasks(), 1, seed=0)
    model = OracleModel(TRMConfig.from_name("tiny", canvas=CANVAS))
    assert len(predict(model, variants, PredictConfig(num_views=2, batch_size=4), deadline=0.0)) == 0


def _shard_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        variants = Variants(_tasks(), 5, seed=1)
        model = OracleModel(TRMConfig.from_name("tiny", canvas=CANVAS))
        local = predict(model, variants, PredictConfig(num_views=6, batch_size=6))
        local.save(f"{out_dir}/local{rank}.npz")
        merged = gather(local)
        if rank == 0:
            merged.save(f"{out_dir}/merged.npz")
    finally:
        dist.destroy_process_group()
    leave()  # written and destroyed: no teardown (tests/spawned.py)


def test_ranks_predict_disjoint_shards_that_gather_to_the_whole(tmp_path: Path) -> None:
    mp.spawn(_shard_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    from trm_core.predictions import Predictions

    single = predict(OracleModel(TRMConfig.from_name("tiny", canvas=CANVAS)), Variants(_tasks(), 5, seed=1),
                     PredictConfig(num_views=6, batch_size=6))

    def keys(p):
        return {(p.task_ids[t], int(i), int(v)) for t, i, v in zip(p.task, p.test_index, p.variant)}

    a, b = Predictions.load(tmp_path / "local0.npz"), Predictions.load(tmp_path / "local1.npz")
    assert keys(a) and keys(b) and not keys(a) & keys(b)
    merged = Predictions.load(tmp_path / "merged.npz")
    assert keys(merged) == keys(single) and len(merged) == len(single)


# ---- the commands --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A kit checkpoint of a tiny random model (canvas 12), slim."""
    out = tmp_path_factory.mktemp("ckpt")
    model = TRM(TRMConfig.from_name("tiny", canvas=CANVAS, num_puzzle_identifiers=5), generator=torch.Generator().manual_seed(0))
    checkpoint.save(checkpoint.slim(checkpoint.from_model(model, {"weights": "raw"})), out / "kit")
    return out / "kit"


def test_cli_predict_and_evaluate(tmp_path: Path, tiny_checkpoint: Path) -> None:
    runner = CliRunner()
    sub, npz = tmp_path / "submission.json", tmp_path / "preds.npz"
    args = ["predict", "--checkpoint", str(tiny_checkpoint), "--data", str(CHALLENGES), "--views", "3",
            "--batch-size", "8", "--halt-steps", "1", "--out", str(sub), "--predictions", str(npz)]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    challenges = json.loads(CHALLENGES.read_text())
    assert validate(json.loads(sub.read_text()), challenges) == []
    result = runner.invoke(main, ["evaluate", "--checkpoint", str(tiny_checkpoint), "--data", str(CHALLENGES),
                                  "--solutions", str(SOLUTIONS), "--predictions", str(npz),
                                  "--report", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    assert "pass@2" in result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["test_inputs"] == 13 and 0.0 <= report["summary"]["kaggle"]["pass@2"] <= report["summary"]["kaggle"]["oracle"]
    result = runner.invoke(main, ["evaluate", "--checkpoint", str(tiny_checkpoint), "--data", str(CHALLENGES),
                                  "--predictions", str(npz)])
    assert result.exit_code == 1 and "pass --solutions" in result.output


def test_cli_pretrain_then_posttrain_then_predict_adapted(tmp_path: Path) -> None:
    runner = CliRunner()
    common = ["--data", str(CHALLENGES), "--solutions", str(SOLUTIONS), "--batch-size", "8", "--warmup", "1",
              "--variants", "2", "--log-every", "2", "--device", "cpu"]
    excluded = tmp_path / "exclude.json"
    excluded.write_text(json.dumps({"0d3d703e": {}}))
    result = runner.invoke(main, ["pretrain", "--preset", "tiny", "--steps", "3", "--out", str(tmp_path / "pre"),
                                  "--exclude", str(excluded), "--export", str(tmp_path / "slim"), *common])
    assert result.exit_code == 0, result.output
    assert "pretrain: 7 tasks" in result.output
    assert checkpoint.load(tmp_path / "slim").slim
    pre = checkpoint.load(tmp_path / "pre" / "checkpoint")
    assert "0d3d703e" not in pre.manifest["variants"]["task_ids"]
    assert pre.manifest["train"]["mode"] == "pretrain" and pre.manifest["train"]["step"] == 3

    result = runner.invoke(main, ["posttrain", "--checkpoint", str(tmp_path / "pre" / "checkpoint"), "--mode", "lora",
                                  "--steps", "2", "--out", str(tmp_path / "post"), *common])
    assert result.exit_code == 0, result.output
    post = checkpoint.load(tmp_path / "post" / "checkpoint")
    assert post.manifest["train"]["mode"] == "lora" and not any("lora" in k for k in post.state)

    sub = tmp_path / "s.json"
    result = runner.invoke(main, ["predict", "--checkpoint", str(tmp_path / "post" / "checkpoint"), "--data",
                                  str(CHALLENGES), "--views", "2", "--halt-steps", "1", "--out", str(sub)])
    assert result.exit_code == 0, result.output
    assert "adapted checkpoint" in result.output and "un-adapted" not in result.output


def test_cli_training_errors_are_clean(tmp_path: Path, tiny_checkpoint: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["posttrain", "--checkpoint", str(tiny_checkpoint), "--data", str(CHALLENGES),
                                  "--out", str(tmp_path / "x")])
    assert result.exit_code == 1 and "exactly one of --steps and --epochs" in result.output
    result = runner.invoke(main, ["pretrain", "--preset", "nope", "--data", str(CHALLENGES), "--steps", "1",
                                  "--out", str(tmp_path / "y")])
    assert result.exit_code == 1 and "unknown preset" in result.output
    assert "Traceback" not in result.output
