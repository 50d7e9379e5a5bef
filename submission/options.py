"""What the runner is told: `RunnerOptions`, and the command line built from its fields.

Each field carries its help text (and, where it differs from the field's name, its flag) in its
metadata, so `parser()` never re-declares an option; `--help` shows every default. Defaults that
belong to the scheduler's Budget are read from it (its time limit and margin from
submission/clock.py). None is a default only where the real one depends on the checkpoint, the
device or the run, and the help says what it falls back to: the post-training rates are the
checkpoint's recorded ones, else trm_core.config's POST_LR / POST_EMB_LR (the
post-training recipe, post_settings; torch is not imported here: the runner writes its fallback
before anything heavy loads).

Every option is checked when RunnerOptions is made (`__post_init__`), before anything expensive
starts: a value out of its range raises OptionsError naming the flag and the range allowed. The
runner then still writes the fallback submission (submission/run.py `main`).
"""

from __future__ import annotations

import argparse
import math
import numbers
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from submission.scheduler import Budget
from trm_core.config import OPTIMIZERS, POST_BATCH, POST_EMB_LR, POST_LR, POST_MODE, POSTTRAIN_MODES, SPENDING

BIG = 1 << 20  # the most rows per batch, views per test input or smoke tasks anyone could mean
SEED_MAX = (1 << 32) - 1  # numpy's and torch's generators both take 0..2**32-1
UNIX_MAX = 1e11  # a Unix time past the year 5000 is a typo (or milliseconds)
SECONDS_MAX = 1e7  # about 116 days: no time limit, margin or interval of a run is longer


class OptionsError(ValueError):
    """An option the runner cannot use; the message names its flag and what is allowed."""


def _opt(default: Any = MISSING, help: str = "", *, flag: str | None = None, choices: tuple | None = None,
         cli_default: Any = MISSING, low: float | None = None, high: float | None = None,
         above: bool = False) -> Any:
    """A RunnerOptions field: its default, help, flag (default: --field-name) and choices;
    cli_default is the command line's default for a field the dataclass requires. A number's
    range: low..high inclusive, or above `low` (strictly) with above=True; floats must be finite."""
    return field(default=default, metadata={"help": help, "flag": flag, "choices": choices,
                                            "cli_default": cli_default, "low": low, "high": high, "above": above})


def flag_of(f: Any) -> str:
    """The command-line flag of a RunnerOptions field."""
    return f.metadata["flag"] or "--" + f.name.replace("_", "-")


@dataclass(frozen=True)
class RunnerOptions:
    """Everything the runner is told; the command-line flags map one to one."""

    input_dir: Path = _opt(help="searched for the test challenges", cli_default=Path("/kaggle/input"))
    working_dir: Path = _opt(help="submission.json and trm-run/ go here", cli_default=Path("/kaggle/working"))
    bundle_dir: Path | None = _opt(None, "the bundle folder (default: found by its marker)")
    start_time: float | None = _opt(None, "Unix time the notebook started (default: now)", low=0.0, above=True,
                                     high=UNIX_MAX)
    deadline: float | None = _opt(None, "Unix time the final submission must be written by "
                                        "(default: start + limit - margin)", low=0.0, above=True,
                                   high=UNIX_MAX)
    checkpoint: Path | None = _opt(None, "kit checkpoint (default: <bundle>/checkpoint)")
    scratch_dir: Path | None = _opt(None, "scratch files (default: $TRM_SCRATCH/run-<start> or a temp folder)")
    run_mode: str = _opt("auto", "auto (rerun/local: full, commit/interactive: smoke) | full | smoke",
                         choices=("auto", "full", "smoke"))
    device: str | None = _opt(None, "default: cuda when a GPU is seen", choices=("cpu", "cuda"))
    gpus: int | None = _opt(None, "GPUs to use (default: all seen)", low=1, high=1024)
    cpu_procs: int = _opt(1, "processes on CPU (2 = a gloo DDP group and two prediction shards)", low=1, high=64)
    train_mode: str = _opt(POST_MODE, "post-training mode", choices=POSTTRAIN_MODES)
    optimizer: str | None = _opt(None, "AdamATan2 variant of post-training (default: the checkpoint's recipe, "
                                       "the one it was trained with; original when it records none)",
                                 choices=OPTIMIZERS)
    ema: str | None = _opt(None, "EMA of the post-trained weights (default: the checkpoint's recipe; on when it "
                                 "records none)", choices=("on", "off"))
    lr: float | None = _opt(None, "trunk learning rate (default: the post-training recipe's: the checkpoint's "
                                  f"recorded rate, else {POST_LR:g})", low=0.0, above=True)
    puzzle_emb_lr: float | None = _opt(None, "puzzle-embedding learning rate (default: the post-training recipe's: "
                                             f"the checkpoint's recorded rate, else {POST_EMB_LR:g})",
                                       low=0.0, above=True)
    train_batch: int | None = _opt(None, f"global (default: {POST_BATCH['cuda']} on GPUs, {POST_BATCH['cpu']} on CPU)",
                                   low=1, high=BIG)
    predict_batch: int | None = _opt(None, f"global (default: {Budget.predict_batch} on GPUs, 64 on CPU)",
                                     low=1, high=BIG)
    views_min: int = _opt(Budget.views_min, "fewest views per test input worth predicting", low=1, high=BIG)
    views_target: int = _opt(Budget.views_target, "views per test input the plan aims for", low=1, high=BIG)
    views_max: int = _opt(Budget.views_max, "most views per test input", low=1, high=BIG)
    max_epochs: float = _opt(Budget.max_epochs, "step cap in epochs over the demonstration pairs", low=0.0,
                             above=True)
    max_steps: int | None = _opt(None, "explicit step cap (overrides --max-epochs; 0: no post-training)",
                                 low=0, high=10**9)
    time_limit_s: float = _opt(Budget.time_limit_s, "the session's time limit (s)", flag="--time-limit", low=0.0,
                               above=True, high=SECONDS_MAX)
    margin_s: float = _opt(Budget.margin_s, "kept free before the limit (s)", flag="--margin", low=0.0,
                           high=SECONDS_MAX)
    reserve_min_s: float = _opt(Budget.reserve_min_s, "least time kept unplanned (s)", flag="--reserve-min",
                                low=0.0, high=SECONDS_MAX)
    baseline: bool = _opt(False, "also predict with the un-adapted checkpoint")
    seed: int = _opt(0, "seed of variants, sampler and training", low=0, high=SEED_MAX)
    provisional_every_s: float = _opt(60.0, "rewrite submission.json from finished shards this often (s)",
                                      flag="--provisional-every", low=0.0, above=True,
                                      high=SECONDS_MAX)
    save_every_s: float = _opt(60.0, "prediction shards save what they have this often (s)", flag="--save-every",
                               low=0.0, above=True, high=SECONDS_MAX)
    smoke_tasks: int = _opt(4, "tasks in a smoke run", low=1, high=BIG)
    smoke_steps: int = _opt(20, "training steps in a smoke run", low=1, high=10**9)
    smoke_views: int = _opt(8, "views per test input in a smoke run", low=1, high=BIG)
    smoke_time_s: float = _opt(1200.0, "a smoke run's time (s)", flag="--smoke-time", low=0.0, above=True,
                               high=SECONDS_MAX)
    exit_rule: str = _opt("fixed", "when a view is read: every ACT step (fixed), first q_halt > 0 (q-halt) or a grid "
                                   "unchanged for --stable-steps steps (stable)", flag="--exit",
                          choices=("fixed", "q-halt", "stable"))
    stable_steps: int = _opt(2, "unchanged ACT steps before --exit stable reads a view", low=1, high=1000)
    round_views: int = _opt(0, "adaptive view count: views per round; settled test inputs get no more "
                               "(0: every input gets K)", low=0, high=BIG)
    settle_margin: int = _opt(0, "with --round-views: also settle when the 2nd attempt leads the 3rd by this "
                                 "many votes (0: exact only)", low=0, high=BIG)
    views_spent: float = _opt(1.0, "with --round-views: share of the K views the plan expects to spend "
                                   "(measured: tools/bench_settle.py)", low=0.0, above=True, high=1.0)
    max_attempts: int = _opt(3, "per job (calibration, training, each prediction shard group or work item)",
                             low=1, high=100)
    spend: str = _opt("uniform", "post-training steps: uniform (every task drawn alike, the reference) or per-task "
                                 "(every task's demonstrations checked through its views; fitted tasks leave the "
                                 "batches, their share goes to the others: trm_core/fit.py)",
                      choices=SPENDING)
    fit_every: int = _opt(0, "with --spend per-task: steps between fit checks (0: the planned steps / 20, at least "
                             "25)", low=0, high=BIG)
    predict_queue: str = _opt("dynamic", "static: a fixed shard of the views per GPU (CPU process); dynamic: work "
                                         "items, largest first, taken by whichever GPU is free, retried one by one",
                              choices=("static", "dynamic"))

    def settle(self) -> dict[str, Any]:
        """The PredictConfig fields of a prediction job ({} with every switch off: today's prediction)."""
        if self.exit_rule == "fixed" and not self.round_views:
            return {}
        return {"exit_rule": self.exit_rule, "stable_steps": self.stable_steps, "round_views": self.round_views,
                "settle_margin": self.settle_margin}

    def __post_init__(self) -> None:
        for f in fields(self):
            problem = _field_problem(f, getattr(self, f.name))
            if problem:
                raise OptionsError(f"{flag_of(f)}: {problem}")
        if not self.views_min <= self.views_target <= self.views_max:
            raise OptionsError(f"--views-min ({self.views_min}) <= --views-target ({self.views_target}) <= "
                               f"--views-max ({self.views_max}) is required")
        if self.start_time is not None and self.deadline is not None and self.deadline <= self.start_time:
            raise OptionsError(f"--deadline ({self.deadline}) must be after --start-time ({self.start_time})")


def _field_problem(f: Any, value: Any) -> str | None:
    """What is wrong with `value` for field f (None if nothing), from its type and range."""
    kind = f.type.removesuffix(" | None")
    if value is None:
        return None if f.type.endswith("| None") else "a value is required"
    meta = f.metadata
    if kind == "Path":
        if not isinstance(value, Path):
            return f"must be a path, got {type(value).__name__}"
        return "a path with a NUL character" if "\0" in str(value) else None
    if kind == "bool":
        return None if isinstance(value, bool) else f"must be true or false, got {value!r}"
    if kind == "str":
        choices = meta["choices"]
        return None if value in choices else f"must be one of {', '.join(choices)}, got {value!r}"
    wanted = numbers.Integral if kind == "int" else numbers.Real
    if isinstance(value, bool) or not isinstance(value, wanted):
        return f"must be {'an integer' if kind == 'int' else 'a number'}, got {value!r}"
    if not math.isfinite(value):
        return f"must be a finite number, got {value}"
    low, high, above = meta["low"], meta["high"], meta["above"]
    if (low is not None and (value <= low if above else value < low)) or (high is not None and value > high):
        return f"must be {_range(low, high, above)}, got {value}"
    return None


def _range(low: float | None, high: float | None, above: bool) -> str:
    if above:
        return f"> {low:g}" + (f" and <= {high:g}" if high is not None else "")
    if high is None:
        return f">= {low:g}"
    return f"in {low}..{high}" if isinstance(low, int) and isinstance(high, int) else f"in [{low:g}, {high:g}]"


def _path_or_none(text: str) -> Path | None:
    return Path(text) if text else None  # the notebook passes "" when it found no bundle


_TYPES = {"Path": Path, "Path | None": _path_or_none, "float": float, "float | None": float, "int": int,
          "int | None": int, "str": str, "str | None": str}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # one line naming the flag, not argparse's usage of forty options and exit status 2
        raise OptionsError(message)


def parser() -> argparse.ArgumentParser:
    """The runner's command line: one flag per RunnerOptions field. A flag it cannot parse raises
    OptionsError (--help still prints and exits 0)."""
    p = _Parser(prog="python -m submission.run", description="The fallback-first runner the "
                "notebook calls: always leave a valid submission.json, in time.")
    for f in fields(RunnerOptions):
        meta = f.metadata
        default = f.default if meta["cli_default"] is MISSING else meta["cli_default"]
        if f.type == "bool":
            p.add_argument(flag_of(f), dest=f.name, action="store_true", help=meta["help"])
            continue
        p.add_argument(flag_of(f), dest=f.name, type=_TYPES[f.type], default=default, choices=meta["choices"],
                       help=help_text(f))
    return p


def help_text(f: Any) -> str:
    """A field's help with its default shown; a None default is explained by the help itself
    ("default: ..."), since what it falls back to depends on the checkpoint, the device or the run."""
    default = f.default if f.metadata["cli_default"] is MISSING else f.metadata["cli_default"]
    text = f.metadata["help"]
    if default is not None and default is not MISSING and f.type != "bool" and "default:" not in text:
        text += f" (default: {default:g})" if isinstance(default, float) else f" (default: {default})"
    return text.replace("%", "%%")  # argparse formats help with %


def options_from_args(argv: list[str] | None = None) -> RunnerOptions:
    """RunnerOptions from the command line; OptionsError names the first flag that is wrong."""
    return RunnerOptions(**vars(parser().parse_args(argv)))


def folders_from_args(argv: list[str] | None = None) -> RunnerOptions:
    """Options that hold only the folders of a command line that failed, so the fallback can still
    be written; the other options keep their defaults. Each folder flag is read on its own; one
    missing or unreadable takes its default (/kaggle/input, /kaggle/working) only where that
    folder exists, so nothing is created outside a notebook. Raises OptionsError when no usable
    input and working folder remain."""
    found = {}
    for f in fields(RunnerOptions):
        if f.name not in ("input_dir", "working_dir", "bundle_dir"):
            continue
        one = _Parser(add_help=False)
        one.add_argument(flag_of(f), dest=f.name, type=_TYPES[f.type])
        try:
            value = getattr(one.parse_known_args(argv)[0], f.name)
        except OptionsError:
            value = None
        default = f.metadata["cli_default"]
        if value is None and default is not MISSING:
            if not default.is_dir():
                raise OptionsError(f"{flag_of(f)}: not given or not readable, and {default} does not exist")
            value = default
        if value is not None:
            found[f.name] = value
    return RunnerOptions(**found)
