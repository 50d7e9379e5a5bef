"""The one post-training recipe: the notebook runner, trm posttrain, trm solve, pipeline.solve and
trm study build the same training settings from the same planned steps, and the recipe's rules
(warm-up share, EMA horizon, freeze share, the checkpoint's rates) hold at every length."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import pytest

from trm_core import checkpoint as ckpt_io
from trm_core.config import (POST_BATCH, POST_EMB_LR, POST_LR, POST_MODE, Recipe, choose, describe_settings,
                                        post_settings)
from trm_core.config import TrainConfig, post_config

DEMO = Path(__file__).resolve().parent.parent / "pretrained" / "demo"
# the fields the recipe decides; the rest (log and checkpoint intervals, seeds) are each entry point's own
RECIPE_FIELDS = ("steps", "global_batch_size", "mode", "lr", "puzzle_emb_lr", "warmup_steps", "lr_min_ratio",
                 "optimizer", "ema", "ema_rate", "freeze_fraction")


def _fields(cfg: TrainConfig | dict) -> dict:
    d = cfg if isinstance(cfg, dict) else asdict(cfg)
    return {k: d[k] for k in RECIPE_FIELDS}


def _runner(tmp_path: Path, steps: int, recipe: Recipe | None) -> dict:
    from submission.options import RunnerOptions
    from submission.planning import Planner
    from submission.scheduler import Budget, Calibration, Workload, plan as make_plan

    cal = Calibration(device="cpu", train_batch=POST_BATCH["cpu"], predict_batch=16, train_step_s=0.05,
                      predict_batch_s=0.1, launch_s=1.0, train_warmup_s=0.5, predict_warmup_s=0.5, save_s=0.2)
    plan = make_plan(Budget(max_steps=10_000, train_batch=POST_BATCH["cpu"], predict_batch=16),
                     Workload(tasks=2, test_inputs=2, train_pairs=6), cal, 0.0, 3600.0)
    plan = replace(plan, steps=steps, steps_ceiling=steps)  # the same planned steps, no headroom past them
    planner = Planner(RunnerOptions(input_dir=tmp_path, working_dir=tmp_path), "full", "cpu", 1, 1.0,
                      lambda: 0.0, 3600.0)
    planner.read_recipe(recipe)
    return planner.train_config(plan)


def _cli(command: str, steps: int, ckpt) -> TrainConfig:
    """The TrainConfig `trm <command>` builds from its default options and --steps."""
    from trm_cli import main
    from trm_cli.common import recipe_settings
    from trm_cli.train import training_configs
    from trm_core.tasks import TaskSet

    ctx = main.commands[command].make_context(command, ["--checkpoint", str(DEMO), "--data", "x", "--out", "o",
                                                        "--steps", str(steps), "--device", "cpu"])
    opts = dict(ctx.params)
    chosen = recipe_settings(ckpt, opts["optimizer"], opts["ema"])
    extra = {k: opts.pop(k) for k in ("freeze_fraction", "lora_rank", "lora_alpha")}
    cfg, _ = training_configs(TaskSet({}), opts.pop("mode"), opts, ckpt.config.canvas, train_extra=extra,
                              chosen=chosen)
    return cfg


def test_every_entry_point_builds_the_same_settings_from_the_same_planned_steps(tmp_path) -> None:
    from trm_core.pipeline import recipe_config
    from trm_core.config import StudyConfig, study_train

    ckpt = ckpt_io.load(DEMO)
    recipe = ckpt_io.manifest_recipe(ckpt.manifest, "demo")
    assert recipe is not None and recipe.lr is not None  # the demo records its rates: the recipe reads them
    for steps in (40, 300, 5000):
        want = _fields(post_config(steps, POST_BATCH["cpu"], POST_MODE, choose(recipe)))
        got = {"runner": _fields(_runner(tmp_path, steps, recipe)),
               "trm posttrain": _fields(_cli("posttrain", steps, ckpt)),
               "trm solve": _fields(_cli("solve", steps, ckpt)),
               "pipeline.solve": _fields(recipe_config(ckpt, steps, "cpu")),
               "trm study": _fields(StudyConfig(study_train(steps, POST_BATCH["cpu"], recipe), arms=(POST_MODE,),
                                                num_variants=8).train_config(POST_MODE))}
        for name, fields in got.items():
            assert fields == want, f"{name} at {steps} steps"
        assert want["lr"] == recipe.lr and want["puzzle_emb_lr"] == recipe.puzzle_emb_lr


def test_the_recipe_reaches_its_rate_early_and_keeps_an_adapted_trunk() -> None:
    from trm_core.optim import lr_at

    chosen = choose(Recipe("original", True, 1, "test"))
    for steps in (1, 5, 100, 600, 30_000):
        s = post_settings(steps, 32, "full", chosen)
        cfg = TrainConfig(**s)
        assert 1 <= cfg.warmup_steps <= max(1, round(0.1 * steps)) and cfg.warmup_steps <= 2000
        assert lr_at(max(1, steps // 10), 1.0, cfg.warmup_steps, cfg.steps, cfg.lr_min_ratio) == pytest.approx(1.0)
        assert lr_at(steps, 1.0, cfg.warmup_steps, cfg.steps, cfg.lr_min_ratio) == 1.0  # constant to the end
        horizon = 1 / (1 - cfg.ema_rate)
        assert horizon <= max(2.0, 0.1 * steps) + 1e-9 and cfg.ema_rate <= 0.999
        # the share of the saved EMA trunk still from before the run: ema_rate ** steps
        if steps >= 100:
            assert cfg.ema_rate ** steps < 1e-4
    # rates: the checkpoint's recorded ones, else the reference's
    assert post_settings(100, 32, "full", chosen)["lr"] == POST_LR
    assert post_settings(100, 32, "full", chosen)["puzzle_emb_lr"] == POST_EMB_LR
    rated = choose(Recipe("lucidrains", False, 1, "test", lr=1e-3, puzzle_emb_lr=0.1))
    s = post_settings(100, 32, "embeddings-then-full", rated, ceiling=200)
    assert (s["lr"], s["puzzle_emb_lr"], s["optimizer"], s["ema"]) == (1e-3, 0.1, "lucidrains", False)
    # the frozen share is of the planned steps, however far past them the run may go
    assert TrainConfig(**s).frozen_steps == 25 and s["steps"] == 200
    assert "lr 0.001" in describe_settings(s) and "EMA off" in describe_settings(s)
    with pytest.raises(ValueError, match="steps >= 1"):
        post_settings(0, 32, "full", chosen)


def test_what_the_user_sets_wins_and_a_misspelt_setting_is_refused() -> None:
    chosen = choose(None)
    cfg = post_config(100, 8, "full", chosen, lr=3e-4, warmup_steps=0)
    assert (cfg.lr, cfg.warmup_steps, cfg.puzzle_emb_lr) == (3e-4, 0, POST_EMB_LR)
    with pytest.raises(ValueError, match="warmup"):
        post_config(100, 8, "full", chosen, warmup=5)
    settings = asdict(cfg)
    assert TrainConfig.from_dict(settings) == cfg
    with pytest.raises(ValueError, match="warmup"):  # a job file's misspelt key is not dropped silently
        TrainConfig.from_dict({**settings, "warmup": 5})
