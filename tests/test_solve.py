"""Flow 1 in one function (trm_core.pipeline.solve) and `trm solve`: post-train, predict under K
views, vote, write a submission that is valid and complete whatever stops it; the views prediction
reads through are the variants post-training trained. Also: the commands' defaults are the config's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from trm_core import checkpoint
from trm_core.pipeline import solve
from trm_core.config import DataConfig, PredictConfig, TrainConfig
from trm_core.submission_file import validate
from trm_core.tasks import load_tasks
from trm_cli import main

PLACEHOLDER = Path(__file__).resolve().parent.parent / "submission" / "placeholder"
CHALLENGES = PLACEHOLDER / "arc-agi_test_challenges.json"
SOLUTIONS = PLACEHOLDER / "arc-agi_test_solutions.json"
TINY = ["--batch-size", "8", "--warmup", "1", "--variants", "2", "--log-every", "1", "--views", "3",
        "--predict-batch", "8", "--halt-steps", "1", "--device", "cpu"]


def _check_complete(path: Path) -> dict:
    """The file at `path` is a valid submission with an entry for every task and test input."""
    challenges = json.loads(CHALLENGES.read_text())
    sub = json.loads(path.read_text())
    assert validate(sub, challenges) == []
    assert list(sub) == list(challenges)
    assert [len(v) for v in sub.values()] == [len(t["test"]) for t in challenges.values()]
    return sub


def test_trm_solve_post_trains_predicts_votes_and_scores(tmp_path: Path, micro_checkpoint: Path) -> None:
    out = tmp_path / "solve"
    res = CliRunner().invoke(main, ["solve", "--checkpoint", str(micro_checkpoint), "--data", str(CHALLENGES),
                                    "--solutions", str(SOLUTIONS), "--steps", "2", "--out", str(out), *TINY])
    assert res.exit_code == 0, res.output
    _check_complete(out / "submission.json")
    post = checkpoint.load(out / "posttrain" / "checkpoint")
    assert post.manifest["train"]["mode"] == "embeddings-then-full" and post.manifest["train"]["step"] == 2
    # 13 test inputs x 3 views (the original and 2 variants), every one from the adapted rows
    assert "39 views predicted, adapted" in res.output
    assert (out / "predictions.npz").is_file() and (out / "posttrain" / "metrics.jsonl").is_file()
    score = float(res.output.split("pass@2 ")[1].split()[0])
    assert 0.0 <= score <= 1.0 and "over 8 task(s) with solutions" in res.output


def test_trm_solve_with_no_steps_predicts_with_the_checkpoint_as_it_is(tmp_path: Path,
                                                                       micro_checkpoint: Path) -> None:
    out = tmp_path / "solve"
    res = CliRunner().invoke(main, ["solve", "--checkpoint", str(micro_checkpoint), "--data", str(CHALLENGES),
                                    "--steps", "0", "--out", str(out), *TINY])
    assert res.exit_code == 0, res.output
    _check_complete(out / "submission.json")
    assert "un-adapted" in res.output and "pass@2" not in res.output and not (out / "posttrain").exists()


def test_trm_solve_errors_are_clean(tmp_path: Path, micro_checkpoint: Path) -> None:
    res = CliRunner().invoke(main, ["solve", "--checkpoint", str(micro_checkpoint), "--data", str(CHALLENGES),
                                    "--out", str(tmp_path / "x")])
    assert res.exit_code == 1 and "exactly one of --steps and --epochs" in res.output
    assert not (tmp_path / "x").exists()


def _tasks():
    return load_tasks(str(CHALLENGES), strict=True, max_side=11)


def test_a_stop_that_fires_at_once_still_leaves_a_complete_submission(tmp_path: Path,
                                                                      micro_checkpoint: Path) -> None:
    solved = solve(_tasks(), micro_checkpoint, tmp_path, TrainConfig(steps=50, global_batch_size=8, mode="full"),
                   PredictConfig(num_views=2, batch_size=8, halt_steps=1), stop=lambda: True, data=DataConfig(2))
    sub = _check_complete(solved.submission)
    challenges = json.loads(CHALLENGES.read_text())
    for task_id, task in challenges.items():  # nothing was predicted: every attempt is the test input
        assert [e["attempt_1"] for e in sub[task_id]] == [x["input"] for x in task["test"]]
    assert solved.trained is None and len(solved.predictions) == 0 and solved.answers == sub


def test_solve_predicts_through_the_variants_it_trained(tmp_path: Path, micro_checkpoint: Path) -> None:
    from trm_core.recipes import task_variants

    tasks, data = _tasks(), DataConfig(num_variants=2, variant_seed=3)
    train = TrainConfig(steps=2, global_batch_size=8, mode="full", warmup_steps=1)
    solved = solve(tasks, micro_checkpoint, tmp_path, train, PredictConfig(num_views=3, batch_size=8, halt_steps=1),
                   data=data)
    trained = checkpoint.load(solved.trained.checkpoint).manifest["variants"]
    assert trained["fingerprint"] == task_variants(tasks, data).fingerprint() and trained["seed"] == 3
    assert solved.adapted and _check_complete(solved.submission)
    # 13 test inputs x 3 views: the original and both trained variants of each task
    assert len(solved.predictions) == 39


def test_a_stop_during_prediction_keeps_the_votes_so_far(tmp_path: Path, micro_checkpoint: Path) -> None:
    calls = []

    def stop() -> bool:  # asked before the stages, then before every prediction batch
        calls.append(1)
        return len(calls) > 3

    tasks = _tasks()
    solved = solve(tasks, micro_checkpoint, tmp_path, None, PredictConfig(num_views=3, batch_size=4, halt_steps=1),
                   stop=stop, seed=1)
    _check_complete(solved.submission)
    assert len(solved.predictions) == 4  # one batch of 4 views, then the stop
    assert solved.vote is not None and not solved.adapted


def test_cli_defaults_are_the_dataclass_defaults() -> None:
    ctx = main.commands["solve"].make_context("solve", ["--checkpoint", ".", "--data", "x", "--out", "o"])
    # the schedule, rates and batch are the post-training recipe's unless given (tests/test_recipe.py)
    assert all(ctx.params[k] is None for k in ("lr", "puzzle_emb_lr", "batch_size", "warmup", "lr_min_ratio",
                                                "ema_rate", "freeze_fraction"))
    # the variant and EMA are the checkpoint's recipe unless given (TrainConfig's when it records none)
    assert ctx.params["ema"] is None and ctx.params["optimizer"] is None
    assert ctx.params["num_variants"] == DataConfig.num_variants and ctx.params["translate"] is DataConfig.translate
    assert ctx.params["views"] == PredictConfig.num_views and ctx.params["predict_batch"] == PredictConfig.batch_size

