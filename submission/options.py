"""What the runner is told: `RunnerOptions`, and the command line built from its fields.

Each field carries its help text (and, where it differs from the field's name, its flag) in its
metadata, so `parser()` never re-declares an option. Defaults that belong to the scheduler's
Budget are read from it; the post-training rates default to None, which leaves them out of the
job so the worker's TrainConfig defaults apply (torch is not imported here: the runner writes its
fallback before anything heavy loads).
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from submission.scheduler import Budget

POSTTRAIN_MODES = ("full", "embeddings", "embeddings-then-full", "lora")  # trm_core.train.MODES bar pretrain


def _opt(default: Any = MISSING, help: str = "", *, flag: str | None = None, choices: tuple | None = None,
         cli_default: Any = MISSING) -> Any:
    """A RunnerOptions field: its default, help, flag (default: --field-name) and choices;
    cli_default is the command line's default for a field the dataclass requires."""
    return field(default=default, metadata={"help": help, "flag": flag, "choices": choices,
                                            "cli_default": cli_default})


@dataclass(frozen=True)
class RunnerOptions:
    """Everything the runner is told; the command-line flags map one to one."""

    input_dir: Path = _opt(help="searched for the test challenges", cli_default=Path("/kaggle/input"))
    working_dir: Path = _opt(help="submission.json and trm-run/ go here", cli_default=Path("/kaggle/working"))
    bundle_dir: Path | None = _opt(None, "the bundle folder (default: found by its marker)")
    start_time: float | None = _opt(None, "Unix time the notebook started (default: now)")
    deadline: float | None = _opt(None, "Unix time the final submission must be written by "
                                        "(default: start + limit - margin)")
    checkpoint: Path | None = _opt(None, "kit checkpoint (default: <bundle>/checkpoint)")
    scratch_dir: Path | None = _opt(None, "scratch files (default: $TRM_SCRATCH/run-<start> or a temp folder)")
    run_mode: str = _opt("auto", "auto (rerun/local: full, commit/interactive: smoke) | full | smoke",
                         choices=("auto", "full", "smoke"))
    device: str | None = _opt(None, "default: cuda when a GPU is seen", choices=("cpu", "cuda"))
    gpus: int | None = _opt(None, "GPUs to use (default: all seen)")
    cpu_procs: int = _opt(1, "processes on CPU (2 = a gloo DDP group and two prediction shards)")
    train_mode: str = _opt("embeddings-then-full", "post-training mode", choices=POSTTRAIN_MODES)
    lr: float | None = _opt(None, "trunk learning rate (default: TrainConfig's)")
    puzzle_emb_lr: float | None = _opt(None, "puzzle-embedding learning rate (default: TrainConfig's)")
    train_batch: int | None = _opt(None, f"global (default: {Budget.train_batch} on GPUs, 32 on CPU)")
    predict_batch: int | None = _opt(None, f"global (default: {Budget.predict_batch} on GPUs, 64 on CPU)")
    views_min: int = _opt(Budget.views_min, "fewest views per test input worth predicting")
    views_target: int = _opt(Budget.views_target, "views per test input the plan aims for")
    views_max: int = _opt(Budget.views_max, "most views per test input")
    max_epochs: float = _opt(Budget.max_epochs, "step cap in epochs over the demonstration pairs")
    max_steps: int | None = _opt(None, "explicit step cap (overrides --max-epochs)")
    time_limit_s: float = _opt(Budget.time_limit_s, "the session's time limit (s)", flag="--time-limit")
    margin_s: float = _opt(Budget.margin_s, "kept free before the limit (s)", flag="--margin")
    reserve_min_s: float = _opt(Budget.reserve_min_s, "least time kept unplanned (s)", flag="--reserve-min")
    baseline: bool = _opt(False, "also predict with the un-adapted checkpoint")
    seed: int = _opt(0, "seed of variants, sampler and training")
    provisional_every_s: float = _opt(60.0, "rewrite submission.json from finished shards this often (s)",
                                      flag="--provisional-every")
    save_every_s: float = _opt(60.0, "prediction shards save what they have this often (s)", flag="--save-every")
    smoke_tasks: int = _opt(4, "tasks in a smoke run")
    smoke_steps: int = _opt(20, "training steps in a smoke run")
    smoke_views: int = _opt(8, "views per test input in a smoke run")
    smoke_time_s: float = _opt(1200.0, "a smoke run's time (s)", flag="--smoke-time")
    max_attempts: int = _opt(3, "per job (calibration, training, each prediction shard group)")

    def __post_init__(self) -> None:
        if self.run_mode not in ("auto", "full", "smoke"):
            raise ValueError(f"run_mode must be auto, full or smoke, got {self.run_mode!r}")
        if self.device not in (None, "cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda, got {self.device!r}")
        if self.cpu_procs < 1 or self.max_attempts < 1:
            raise ValueError("cpu_procs and max_attempts must be >= 1")


def _path_or_none(text: str) -> Path | None:
    return Path(text) if text else None  # the notebook passes "" when it found no bundle


_TYPES = {"Path": Path, "Path | None": _path_or_none, "float": float, "float | None": float, "int": int,
          "int | None": int, "str": str, "str | None": str}


def parser() -> argparse.ArgumentParser:
    """The runner's command line: one flag per RunnerOptions field."""
    p = argparse.ArgumentParser(prog="python -m submission.run", description="The fallback-first runner the "
                                "notebook calls: always leave a valid submission.json, in time.")
    for f in fields(RunnerOptions):
        meta = f.metadata
        flag = meta["flag"] or "--" + f.name.replace("_", "-")
        default = f.default if meta["cli_default"] is MISSING else meta["cli_default"]
        if f.type == "bool":
            p.add_argument(flag, dest=f.name, action="store_true", help=meta["help"])
            continue
        p.add_argument(flag, dest=f.name, type=_TYPES[f.type], default=default, choices=meta["choices"],
                       help=meta["help"])
    return p


def options_from_args(argv: list[str] | None = None) -> RunnerOptions:
    return RunnerOptions(**vars(parser().parse_args(argv)))
