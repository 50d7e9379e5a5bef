"""The settings module is standard library only and the one source of every default: the runner
reads it before torch loads, job files carry its values as JSON, and the command line shows its
defaults without importing the engine."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, fields

import pytest

from trm_core.config import (POST_MODE, DataConfig, PredictConfig, StudyConfig, TrainConfig, choose, post_config,
                             study_train)


def test_the_settings_and_the_command_line_load_without_torch() -> None:
    code = ("import sys, trm_core.config, trm_cli, submission.options, submission.planning\n"
            "heavy = sorted(m for m in ('torch', 'numpy', 'numba') if m in sys.modules)\n"
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"importing the settings or the CLI loaded {out}"


def test_a_job_file_carries_typed_settings_without_torch() -> None:
    code = ("import sys\nfrom submission.jobs import TrainJob\n"
            "print(','.join(m for m in ('torch', 'numba') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"reading a job file loaded {out}"


@pytest.mark.parametrize("cls", [TrainConfig, DataConfig, PredictConfig, StudyConfig])
def test_every_config_survives_json_and_refuses_an_unknown_key(cls: type) -> None:
    value = cls(steps=7) if cls is TrainConfig else cls()
    d = json.loads(json.dumps(asdict(value)))
    if hasattr(cls, "from_dict"):
        assert cls.from_dict(d) == value
        with pytest.raises(ValueError, match="unknown field"):
            cls.from_dict({**d, "lr_typo": 1})
    else:  # DataConfig, PredictConfig: plain keyword construction refuses an unknown key too
        assert cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}) == value
        with pytest.raises(TypeError):
            cls(**{**d, "views_typo": 1})


def test_a_study_holds_one_trainconfig_and_its_arms_differ_in_mode_only() -> None:
    train = post_config(120, 16, POST_MODE, choose(None, "lucidrains", False), lr=3e-4, seed=5)
    cfg = StudyConfig(train=train, arms=("none", "full", "lora", "scratch"), eval_every=40)
    assert (cfg.steps, cfg.batch_size, cfg.seed, cfg.eval_steps) == (120, 16, 5, [40, 80, 120])
    for arm in ("full", "lora", "scratch"):
        arm_cfg = cfg.train_config(arm)
        assert arm_cfg.mode == ("pretrain" if arm == "scratch" else arm)
        assert {f.name: getattr(arm_cfg, f.name) for f in fields(TrainConfig) if f.name != "mode"} == \
               {f.name: getattr(train, f.name) for f in fields(TrainConfig) if f.name != "mode"}
    with pytest.raises(ValueError, match="must be a TrainConfig"):
        StudyConfig(train=asdict(train))  # a dict is not settings: it would skip every check
    assert StudyConfig().train == study_train()  # the default: the recipe's for the default length and batch


def test_the_study_command_shows_the_study_defaults() -> None:
    from trm_cli import main

    ctx = main.commands["study"].make_context("study", ["--checkpoint", ".", "--data", "x", "--out", "o"])
    default = StudyConfig()
    assert (ctx.params["steps"], ctx.params["batch_size"], ctx.params["seed"]) == \
           (default.steps, default.batch_size, default.seed)
    assert ctx.params["arms"].split(",") == list(default.arms)
    for name in ("eval_every", "views", "num_variants", "rule", "spend", "fit_every", "fit_patience", "translate"):
        assert ctx.params[name] == getattr(default, name), name
    assert ctx.params["weight_decay"] == default.train.weight_decay
