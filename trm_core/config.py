"""The settings of every run, standard library only: how to train (TrainConfig), how tasks become
rows (DataConfig), how to predict (PredictConfig), what a study compares (StudyConfig), and what a
checkpoint was trained with, so how it is post-trained: its *recipe*, and the one post-training
recipe that turns a planned number of steps into a TrainConfig (`post_settings`, `post_config`).

No torch here, on purpose: the notebook runner reads and validates these before torch loads, job
files carry them as JSON (`from_dict` refuses an unknown key by name, never drops it), and the CLI
shows their real defaults without importing the engine.

Recipe. Input: a kit checkpoint's manifest (a dict), or a registry entry. Output: a `Recipe`
(AdamATan2 variant, EMA, puzzle_emb_len, base rates, where that was read) or None when the
checkpoint records none, and `choose(recipe, optimizer, ema)`: the settings a post-training run
uses, with one line saying where each came from (and a warning when the variant is unknown).

A checkpoint is post-trained with the recipe it was trained with: the two AdamATan2 variants
(`original`, `lucidrains`) scale their updates differently, so the other one moves weights that
were trained with the first off their basin. The registry records the variant of each release
(pretrained/registry.json); converting or bundling a registry entry writes it into the slim
checkpoint's manifest as {"recipe": {"optimizer", "ema", "puzzle_emb_len", "source"}}. A
checkpoint trained by trm-kit also carries its `train` record, which says the same.
"""

from __future__ import annotations

import difflib
import math
import numbers
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

OPTIMIZERS = ("original", "lucidrains")  # trm_core.optim's AdamATan2 variants
DEFAULT_OPTIMIZER = "original"  # TrainConfig's default: used, with a warning, when no recipe says
PUZZLE_EMB_LEN_MAX = 256  # trm_core.checkpoint.FIELD_LIMITS


class RecipeError(ValueError):
    """A recorded recipe that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class Recipe:
    optimizer: str  # the AdamATan2 variant the weights were trained with: "original" or "lucidrains"
    ema: bool  # the saved trunk is the EMA shadow (post-training keeps one too)
    puzzle_emb_len: int | None  # puzzle-embedding positions (no tensor shows it); None: not recorded
    source: str  # where the recipe was read: "registry:<name>", "train record", ...
    # the base learning rates it was trained with (trunk, puzzle embedding); None: not recorded
    lr: float | None = None
    puzzle_emb_lr: float | None = None

    def __post_init__(self) -> None:
        _check(asdict(self), "recipe")

    def to_json(self) -> dict[str, Any]:
        """Its fields; a rate that is not recorded is left out (as manifests written before had it)."""
        return {k: v for k, v in asdict(self).items() if k not in OPTIONAL or v is not None}

    @classmethod
    def from_json(cls, value: Any, where: str) -> Recipe:
        """A recipe from JSON: an object with exactly the fields above, each of its type."""
        if not isinstance(value, dict):
            raise RecipeError(f"{where} must be an object with {', '.join(FIELDS)}, got {type(value).__name__}")
        _check(value, where)
        missing = [name for name in FIELDS if name not in value and name not in OPTIONAL]
        if missing:
            raise RecipeError(f"{where} lacks {', '.join(missing)}")
        return cls(**value)

    def describe(self) -> str:
        return f"optimizer {self.optimizer}, EMA {'on' if self.ema else 'off'} ({self.source})"


FIELDS = tuple(f.name for f in fields(Recipe))
OPTIONAL = ("lr", "puzzle_emb_lr")  # recorded since the post-training recipe reads them; older manifests lack them


def _check(value: dict[str, Any], where: str) -> None:
    for name in value:
        if name not in FIELDS:
            close = difflib.get_close_matches(str(name), FIELDS, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (the fields: {', '.join(FIELDS)})"
            raise RecipeError(f"{where} has an unknown field {name!r}{hint}")
    checks = {"optimizer": (lambda v: v in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"),
              "ema": (lambda v: isinstance(v, bool), "true or false"),
              "puzzle_emb_len": (lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)
                                                         and 0 <= v <= PUZZLE_EMB_LEN_MAX),
                                 f"null or an integer in 0..{PUZZLE_EMB_LEN_MAX}"),
              "source": (lambda v: isinstance(v, str) and 0 < len(v) <= 500, "a non-empty string"),
              "lr": (_rate, "null or a number in (0, 10)"),
              "puzzle_emb_lr": (_rate, "null or a number in (0, 10)")}
    for name, (ok, want) in checks.items():
        if name in value and not ok(value[name]):
            shown = repr(value[name]) if len(repr(value[name])) <= 40 else repr(value[name])[:40] + "..."
            raise RecipeError(f"{where}: {name} must be {want}, got {shown}")


def _rate(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 10)


def of_registry(name: str, entry: dict[str, Any], puzzle_emb_len: int | None = None,
                registry: str = "pretrained/registry.json") -> Recipe | None:
    """The recipe a registry entry records (optimizer; ema, false when absent, as
    trm_core.hub reads it); puzzle_emb_len from its config when written there, else the
    caller's (the converted config's). None when the entry names no optimizer: unknown."""
    if "optimizer" not in entry:
        return None
    where = f"{registry}: entry {name!r}"
    config = entry.get("config")
    if isinstance(config, dict) and "puzzle_emb_len" in config:
        puzzle_emb_len = config["puzzle_emb_len"]
    value = {"optimizer": entry.get("optimizer", DEFAULT_OPTIMIZER), "ema": entry.get("ema", False),
             "puzzle_emb_len": puzzle_emb_len, "source": f"registry:{name}",
             "lr": entry.get("lr"), "puzzle_emb_lr": entry.get("puzzle_emb_lr")}
    try:
        return Recipe(**value)
    except RecipeError as e:
        raise RecipeError(str(e).replace("recipe", where, 1)) from None


def of_manifest(manifest: Any, where: str) -> Recipe | None:
    """The recipe a kit manifest records: its `recipe` (validated: a bad one raises RecipeError),
    else what its trm-kit `train` record says (optimizer and ema), else None (unknown)."""
    if not isinstance(manifest, dict):
        return None
    if "recipe" in manifest:
        return Recipe.from_json(manifest["recipe"], f"{where}: recipe")
    train, config = manifest.get("train"), manifest.get("config")
    if isinstance(train, dict) and train.get("optimizer") in OPTIMIZERS and isinstance(train.get("ema"), bool):
        length = config.get("puzzle_emb_len") if isinstance(config, dict) else None
        ok = isinstance(length, int) and not isinstance(length, bool) and 0 <= length <= PUZZLE_EMB_LEN_MAX
        rates = [train.get(k) if _rate(train.get(k)) else None for k in OPTIONAL]
        return Recipe(train["optimizer"], train["ema"], length if ok else None, "train record", *rates)
    return None


@dataclass(frozen=True)
class Chosen:
    """The optimiser variant and EMA a post-training run uses, and why."""

    optimizer: str
    ema: bool
    recipe: Recipe | None  # the checkpoint's, None when it records none
    why: str  # one line for the printed settings and the log
    warning: str | None  # set when the variant is unknown and the default is used

    def to_json(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer, "ema": self.ema,
                "recipe": self.recipe.to_json() if self.recipe else "unknown", "why": self.why,
                "warning": self.warning}


def choose(recipe: Recipe | None, optimizer: str | None = None, ema: bool | None = None,
           default_ema: bool = True, flag: str = "--optimizer") -> Chosen:
    """The settings of a post-training run: an explicit `optimizer` / `ema` wins, else the
    checkpoint's recipe, else the defaults with a warning naming `flag`."""
    if optimizer is not None and optimizer not in OPTIMIZERS:
        raise RecipeError(f"{flag} must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    warning = None
    if optimizer is not None:
        opt_why = "as asked" + (f", the checkpoint was trained with {recipe.optimizer}"
                                if recipe and recipe.optimizer != optimizer else "")
    elif recipe is not None:
        optimizer, opt_why = recipe.optimizer, f"the checkpoint's recipe, {recipe.source}"
    else:
        optimizer, opt_why = DEFAULT_OPTIMIZER, "the default"
        warning = (f"WARNING: the checkpoint records no recipe, so the AdamATan2 variant it was trained with is "
                   f"unknown: post-training with {DEFAULT_OPTIMIZER}; pass {flag} original|lucidrains if you know it")
    if ema is not None:
        ema_why = "as asked"
    elif recipe is not None:
        ema, ema_why = recipe.ema, "the checkpoint's recipe"
    else:
        ema, ema_why = default_ema, "the default"
    why = f"optimizer {optimizer} ({opt_why}), EMA {'on' if ema else 'off'} ({ema_why})"
    return Chosen(optimizer, ema, recipe, why, warning)


# ---- the post-training recipe ---------------------------------------------------------------------
# One rule set for every post-training run (the notebook runner, trm posttrain, trm solve,
# pipeline.solve, trm study) wherever the user sets nothing. The rules, and the measurement on the
# tuning set that chose them, are in docs/posttraining.md.
POST_MODE = "embeddings-then-full"  # the post-training mode when none is asked for
POST_BATCH = {"cuda": 768, "cpu": 32}  # global rows per step when none is asked for (the runner's too)
# the rates of a checkpoint that records none: the reference's pre-training rates
POST_LR, POST_EMB_LR = 1e-4, 1e-2
WARMUP_SHARE, WARMUP_MAX = 0.1, 2000  # linear warm-up over 10% of the planned steps, at most 2,000
EMA_HORIZON_SHARE = 0.1  # the trunk EMA's horizon 1 / (1 - rate) at most a tenth of the planned steps
EMA_RATE_RANGE = (0.5, 0.999)
FREEZE_SHARE = 0.25  # embeddings-then-full: the trunk frozen over a quarter of the *planned* steps


def post_settings(steps: int, batch: int, mode: str, chosen: Chosen, ceiling: int | None = None) -> dict[str, Any]:
    """The TrainConfig fields of a post-training run planned at `steps` optimiser steps of `batch`
    rows in `mode`, with the variant and EMA `chosen` (see `choose`). `ceiling` (>= steps, default
    steps): the steps the run may go on to when time allows (the notebook runner's), past the plan
    at the same constant rate.

    - rates: the checkpoint's own base rates when its recipe records them, else POST_LR / POST_EMB_LR;
    - warm-up: WARMUP_SHARE of the planned steps (at least 1, at most WARMUP_MAX), then constant
      (lr_min_ratio 1): a run stopped early never ends half-way down a schedule;
    - EMA (when chosen): horizon 1 / (1 - rate) at most EMA_HORIZON_SHARE of the planned steps, so
      the saved trunk is the adapted one, not mostly the pre-trained one;
    - embeddings-then-full: the trunk frozen over FREEZE_SHARE of the planned steps.
    """
    if steps < 1 or batch < 1:
        raise ValueError(f"post-training needs steps >= 1 and batch >= 1, got {steps} and {batch}")
    ceiling = max(steps, ceiling or steps)
    recipe = chosen.recipe
    lr = recipe.lr if recipe is not None and recipe.lr is not None else POST_LR
    emb_lr = recipe.puzzle_emb_lr if recipe is not None and recipe.puzzle_emb_lr is not None else POST_EMB_LR
    low, high = EMA_RATE_RANGE
    return {"steps": ceiling, "global_batch_size": batch, "mode": mode, "lr": lr, "puzzle_emb_lr": emb_lr,
            "optimizer": chosen.optimizer, "ema": chosen.ema,
            "warmup_steps": min(WARMUP_MAX, max(1, round(WARMUP_SHARE * steps))), "lr_min_ratio": 1.0,
            "ema_rate": min(high, max(low, 1 - 1 / (EMA_HORIZON_SHARE * steps))),
            "freeze_fraction": FREEZE_SHARE * steps / ceiling}


# per-task spending (trm_core/fit.py), when asked for: about FIT_CHECKS fit checks over the planned
# steps, at least FIT_EVERY_MIN steps apart
FIT_CHECKS, FIT_EVERY_MIN = 20, 25


def fit_every(steps: int) -> int:
    """Steps between per-task fit checks in a run planned at `steps`."""
    return max(FIT_EVERY_MIN, -(-steps // FIT_CHECKS))


def describe_settings(settings: dict[str, Any]) -> str:
    """One line naming what a post-training run was given (printed, and kept in its records)."""
    s = settings
    ema = f"EMA {s['ema_rate']:.4g}" if s["ema"] else "EMA off"
    freeze = f", trunk frozen {s['freeze_fraction']:.0%}" if s["mode"] == "embeddings-then-full" else ""
    return (f"{s['mode']}, {s['steps']} steps of {s['global_batch_size']}, lr {s['lr']:.3g} (embeddings "
            f"{s['puzzle_emb_lr']:.3g}), warm-up {s['warmup_steps']}, {ema}, optimizer {s['optimizer']}{freeze}")


# ---- the settings: how to train, how tasks become rows, how to predict ------------------------

MODES = ("pretrain", "full", "embeddings", "embeddings-then-full", "lora")
POSTTRAIN_MODES = MODES[1:]  # every mode but pre-training
INITS = ("mean", "normal")  # how the new tasks' embedding rows start: their mean (reference) or normal draws
EXIT_RULES = ("fixed", "q-halt", "stable")
RULES = ("reference", "count", "q-weighted")  # trm_core.vote's ranking rules


# TrainConfig's real-valued fields and their ranges: "(" / ")" exclude the bound, "[" / "]" include it
_REAL_RANGES = {"lr": "(0, inf)", "puzzle_emb_lr": "(0, inf)", "weight_decay": "[0, inf)",
                "puzzle_emb_weight_decay": "[0, inf)", "beta1": "[0, 1)", "beta2": "[0, 1)", "lr_min_ratio": "[0, 1]",
                "lora_alpha": "(0, inf)", "ema_rate": "[0, 1]", "freeze_fraction": "[0, 1]",
                "compile_limit_s": "[0, inf)"}


def _in_range(value: object, span: str) -> bool:
    """A finite real (not a bool) inside `span`, e.g. "(0, inf)" or "[0, 1]"."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        return False
    low, high = (float(x) for x in span[1:-1].split(","))
    return (low <= value if span[0] == "[" else low < value) and (value <= high if span[-1] == "]" else value < high)


@dataclass(frozen=True)
class TrainConfig:
    """How to train. Defaults are the reference's pre-training values."""

    steps: int  # optimiser steps in total (a resumed run continues up to this count)
    global_batch_size: int = 768  # rows per step over all ranks; each rank takes an equal slice
    mode: str = "pretrain"  # pretrain | full | embeddings | embeddings-then-full | lora
    lr: float = 1e-4  # trunk base learning rate (AdamATan2)
    puzzle_emb_lr: float = 1e-2  # puzzle-embedding base learning rate (SignSGD)
    weight_decay: float = 0.1  # trunk decay
    puzzle_emb_weight_decay: float = 0.1  # lazy decay of the embedding rows present in a batch
    beta1: float = 0.9
    beta2: float = 0.95
    warmup_steps: int = 2000  # linear warm-up; the same schedule drives both optimisers
    lr_min_ratio: float = 1.0  # 1 = constant after warm-up (reference); < 1 = cosine down to this ratio
    optimizer: str = "original"  # AdamATan2 variant: "original" or "lucidrains" (use the checkpoint's)
    freeze_fraction: float = 0.25  # embeddings-then-full: share of steps with the trunk frozen
    lora_rank: int = 1  # lora mode: adapter rank
    lora_alpha: float = 16.0  # lora mode: adapter scale is alpha / rank
    ema: bool = True  # keep an EMA of the trained weights; checkpoints then hold the EMA weights
    ema_rate: float = 0.999
    seed: int = 0  # exploration randomness (data order is the sampler's own seed)
    log_every: int = 50  # steps between log lines (and the only host syncs); also one every LOG_AT_LEAST_S
    checkpoint_every: int = 0  # steps between resumable checkpoints; 0 = only at the end or on stop
    # rows per forward/backward on each process (gradients accumulate); 0 = the whole local batch;
    # -1 = the most rows that fit this GPU's memory, from a peak-memory fit at two small batches (CPU: whole batch)
    micro_batch_size: int = 0
    compile: bool | None = None  # torch.compile the recursion; None = on CUDA only. A failure falls back to eager
    # seconds the first compiled step (the compile warm-up) may take before training goes on eagerly; 0 = no limit
    compile_limit_s: float = 600.0
    checkpoint_activations: bool = False  # recompute the gradient-carrying cycle in backward (memory, not speed)

    def __post_init__(self) -> None:
        # a NaN or infinite rate trains every weight to NaN without an error: refuse it here
        for name, span in _REAL_RANGES.items():
            if not _in_range(getattr(self, name), span):
                raise ValueError(f"TrainConfig.{name} must be a finite number in {span}, got {getattr(self, name)!r}")
        if self.mode not in MODES:
            raise ValueError(f"TrainConfig.mode must be one of {MODES}, got {self.mode!r}")
        if self.steps < 1 or self.global_batch_size < 1:
            raise ValueError(f"TrainConfig: steps ({self.steps}) and global_batch_size "
                             f"({self.global_batch_size}) must be >= 1")
        if not 0.0 <= self.freeze_fraction <= 1.0:
            raise ValueError(f"TrainConfig.freeze_fraction must be in [0, 1], got {self.freeze_fraction}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"TrainConfig.optimizer must be 'original' or 'lucidrains', got {self.optimizer!r}")
        if self.lora_rank < 1:
            raise ValueError("TrainConfig.lora_rank must be >= 1")
        if self.log_every < 1 or self.warmup_steps < 0 or self.checkpoint_every < 0:
            raise ValueError("TrainConfig: log_every >= 1, warmup_steps >= 0 and checkpoint_every >= 0 are required")
        if self.compile_limit_s < 0:
            raise ValueError(f"TrainConfig.compile_limit_s must be >= 0 (0 = no limit), got {self.compile_limit_s}")
        if self.micro_batch_size < -1:
            raise ValueError(f"TrainConfig.micro_batch_size must be >= -1 (0 = the whole local batch, -1 = fit to memory), "
                             f"got {self.micro_batch_size}")

    @property
    def frozen_steps(self) -> int:
        """Steps (from 1) during which the trunk does not train."""
        if self.mode == "embeddings":
            return self.steps
        if self.mode == "embeddings-then-full":
            return math.ceil(self.freeze_fraction * self.steps)
        return 0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """The config a dict describes (a job file's); an unknown key is refused by name, never
        dropped (a misspelt setting would otherwise train with the default unnoticed)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"TrainConfig: unknown field(s) {unknown}")
        return cls(**d)


def post_config(steps: int, batch: int, mode: str, chosen: Chosen, *, ceiling: int | None = None,
                **settings: Any) -> TrainConfig:
    """The post-training recipe (config.post_settings: rates, warm-up, EMA horizon,
    freeze share, all from the planned `steps`) as a TrainConfig; `settings` are the TrainConfig
    fields the user set, which win. An unknown field is refused by name (TrainConfig.from_dict)."""
    return TrainConfig.from_dict({**post_settings(steps, batch, mode, chosen, ceiling), **settings})



@dataclass(frozen=True)
class DataConfig:
    """How tasks become training rows."""

    num_variants: int = 1000  # augmented variants per task besides the original (one embedding row each)
    variant_seed: int = 0  # seed of the variant sets (fixes the embedding-row map)
    sampler_seed: int = 0  # seed of the batch order, variant draws and translations
    translate: bool = True  # random placement of all but one example of a puzzle on the canvas
    include_test_pairs: bool = False  # pre-training on a public set: also train on test pairs with outputs
    max_examples_per_puzzle: int | None = None
    permute_background: bool = False  # also permute colour 0 in the variants




@dataclass(frozen=True)
class PredictConfig:
    num_views: int = 256  # views per test input, the original included (the paper: 256 ~ 512)
    batch_size: int = 256  # rows per forward over all ranks
    halt_steps: int | None = None  # ACT steps per view; None = the model's halt_max_steps
    order: str = "variant"  # "variant": a run cut short has seen every task under its first views
    compile: bool | None = None  # torch.compile the recursion; None = on CUDA only. A failure falls back to eager
    compile_limit_s: float = 600.0  # seconds the first compiled batch (the warm-up) may take; 0 = no limit
    exit_rule: str = "fixed"  # when a view is read: "fixed" (all steps), "q-halt" or "stable" (module docstring)
    stable_steps: int = 2  # "stable": consecutive unchanged steps before a view is read
    round_views: int = 0  # adaptive view count: views per round per test input; 0 = off (all num_views)
    settle_margin: int = 0  # adaptive: also settle when the 2nd attempt leads the 3rd by this many votes; 0 = exact only
    rule: str = "reference"  # adaptive: the vote rule whose top-2 must be settled (the one the vote uses)

    def __post_init__(self) -> None:
        # an integer >= 1, not a bool or a float: a batch of -1 or 2.5 rows is a mistake to name, not to round
        for name in ("num_views", "batch_size", "halt_steps", "stable_steps", "round_views", "settle_margin"):
            value = getattr(self, name)
            if name == "halt_steps" and value is None:
                continue
            low = 0 if name in ("round_views", "settle_margin") else 1
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
                raise ValueError(f"PredictConfig.{name} must be an integer >= {low}, got {value!r}")
        if self.exit_rule not in EXIT_RULES:
            raise ValueError(f"PredictConfig.exit_rule must be one of {EXIT_RULES}, got {self.exit_rule!r}")
        if self.rule not in RULES:
            raise ValueError(f"PredictConfig.rule must be one of {RULES}, got {self.rule!r}")
        if self.compile_limit_s < 0:
            raise ValueError(f"PredictConfig.compile_limit_s must be >= 0 (0 = no limit), got {self.compile_limit_s}")




# ---- the adaptation study (trm_lab/study.py) ------------------------------------------------------

ARMS = ("none", *POSTTRAIN_MODES, "scratch")
SPENDING = ("uniform", "per-task")
STUDY_STEPS, STUDY_BATCH = 600, 32  # a study's length and batch when none is asked for (a CPU-sized study)


def study_train(steps: int = STUDY_STEPS, batch: int = STUDY_BATCH, recipe: Recipe | None = None,
                optimizer: str | None = None, ema: bool | None = None, **settings: Any) -> TrainConfig:
    """The training settings a study's trained arms share: the post-training recipe for `steps`
    (the variant and EMA of the checkpoint's `recipe` unless `optimizer` / `ema` are given), with
    the TrainConfig fields the user set in `settings`, which win. Each arm then sets only its mode."""
    return post_config(steps, batch, POST_MODE, choose(recipe, optimizer, ema), **settings)


@dataclass(frozen=True)
class StudyConfig:
    """One study: which arms, how often and how they are evaluated, and `train`, the training
    settings every trained arm shares (steps, batch, rates, schedule, EMA, seed); an arm's own
    TrainConfig differs from `train` in its mode only (`scratch`: pretrain, from fresh weights)."""

    train: TrainConfig = field(default_factory=study_train)
    arms: tuple[str, ...] = ARMS
    eval_every: int = 100  # steps between evaluations (the last step is always evaluated)
    views: int = 8  # K: views per test input, the original included (<= variants + 1)
    num_variants: int = 8  # augmented variants per task besides the original (one embedding row each)
    init: str = "mean"  # new embedding rows: "mean" (reference) or "normal"
    translate: bool = True  # random placement of the demonstration pairs on the canvas
    rule: str = "reference"  # vote ranking rule
    predict_batch: int = 256  # rows per prediction forward
    spend: str = "uniform"  # "uniform": every task alike; "per-task": fitted tasks leave the batches (fit.py)
    fit_every: int = 50  # per-task: steps between fit checks
    fit_patience: int = 2  # per-task: consecutive fitted checks before a task leaves the batches

    def __post_init__(self) -> None:
        if not isinstance(self.train, TrainConfig):
            raise ValueError(f"StudyConfig.train must be a TrainConfig, got {type(self.train).__name__}")
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown or not self.arms:
            raise ValueError(f"StudyConfig.arms: unknown arm(s) {unknown}; choose from {ARMS}")
        if len(set(self.arms)) != len(self.arms):
            raise ValueError(f"StudyConfig.arms: {self.arms} names an arm twice")
        if self.eval_every < 1:
            raise ValueError("StudyConfig: eval_every must be >= 1")
        if not 1 <= self.views <= self.num_variants + 1:
            raise ValueError(f"StudyConfig.views ({self.views}) must be between 1 and num_variants + 1 "
                             f"({self.num_variants + 1}): every view uses a trained embedding row")
        if self.init not in INITS:
            raise ValueError(f"StudyConfig.init must be one of {INITS}, got {self.init!r}")
        if self.rule not in RULES:
            raise ValueError(f"StudyConfig.rule must be one of {RULES}, got {self.rule!r}")
        if self.spend not in SPENDING:
            raise ValueError(f"StudyConfig.spend must be one of {SPENDING}, got {self.spend!r}")
        if self.fit_every < 1 or self.fit_patience < 1:
            raise ValueError(f"StudyConfig: fit_every ({self.fit_every}) and fit_patience ({self.fit_patience}) "
                             "must be >= 1")

    @property
    def steps(self) -> int:
        """Optimiser steps per trained arm."""
        return self.train.steps

    @property
    def batch_size(self) -> int:
        return self.train.global_batch_size

    @property
    def seed(self) -> int:
        """Variants, batches, exploration and the fresh weights of `scratch`."""
        return self.train.seed

    @property
    def eval_steps(self) -> list[int]:
        """The steps after which every trained arm is evaluated."""
        steps = list(range(self.eval_every, self.steps + 1, self.eval_every))
        return steps if steps and steps[-1] == self.steps else steps + [self.steps]

    def train_config(self, arm: str) -> TrainConfig:
        """The arm's TrainConfig: `train` in the arm's mode (`scratch`: pretrain, from fresh weights)."""
        return replace(self.train, mode="pretrain" if arm == "scratch" else arm)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StudyConfig:
        """The config a study.json's "config" describes; an unknown key is refused by name."""
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"StudyConfig: unknown field(s) {unknown}")
        return cls(**{**d, "train": TrainConfig.from_dict(d["train"]), "arms": tuple(d.get("arms", ARMS))})


# ---- the model: its architecture and sizes (trm_core/model.py builds it) --------------------------

ARCHITECTURES = ("trm", "hrm")
POS_ENCODINGS = ("rope", "learned")
DTYPE_NAMES = ("float32", "bfloat16", "float16")  # forward dtypes, by torch's names


@dataclass(frozen=True)
class TRMConfig:
    """Architecture of a TRM or an HRM, with the references' field names (config/arch/trm.yaml, hrm.yaml)."""

    architecture: str = "trm"  # "trm": one shared module; "hrm": separate H_level / L_level stacks
    hidden_size: int = 512  # width of every token state
    num_heads: int = 8  # attention heads; head_dim = hidden_size // num_heads
    expansion: float = 4.0  # SwiGLU width factor before the reference's 2/3 and multiple-of-256 rounding
    H_cycles: int = 3  # outer cycles per ACT step; TRM: all but the last without gradient (HRM: see recursion)
    L_cycles: int = 4  # z_L updates per outer cycle (the released ARC checkpoints use 4)
    L_layers: int = 2  # blocks of the reasoning module (TRM's shared one, HRM's L_level)
    H_layers: int = 0  # HRM: blocks of H_level; TRM has none (0)
    puzzle_emb_ndim: int = 512  # width of the per-variant embedding (0 = none)
    # Prefix slots holding the embedding, zero-padded. TRM: a free field that cannot be read from the
    # weights. HRM: always ceil(puzzle_emb_ndim / hidden_size), set here whatever is passed.
    puzzle_emb_len: int = 16
    num_puzzle_identifiers: int = 1  # rows of the puzzle-embedding table, blank row 0 included
    vocab_size: int = 12  # PAD, EOS and ten colours
    canvas: int = 30  # grids live on a canvas x canvas board; seq_len = canvas**2
    rms_norm_eps: float = 1e-5  # epsilon of the weightless RMSNorm
    pos_encodings: str = "rope"  # "rope", or "learned" (a position table added to the input embeddings)
    rope_theta: float = 10000.0  # RoPE base
    halt_max_steps: int = 16  # ACT steps; evaluation always runs exactly this many
    halt_exploration_prob: float = 0.1  # training: chance a row must run at least U{2..max} steps
    forward_dtype: str = "bfloat16"  # activation dtype: "bfloat16", "float32" or "float16"

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ValueError(f"TRMConfig: {what}")

        need(self.architecture in ARCHITECTURES,
             f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        need(self.hidden_size > 0 and self.num_heads > 0, "hidden_size and num_heads must be positive")
        if self.architecture == "hrm":
            need(self.H_layers >= 1, "architecture 'hrm' needs H_layers >= 1 (blocks of H_level)")
            object.__setattr__(self, "puzzle_emb_len", -(-self.puzzle_emb_ndim // self.hidden_size))
        else:
            need(self.H_layers == 0, f"H_layers={self.H_layers}: TRM has one shared module (H_layers 0); "
                                     "set architecture='hrm' for separate H and L stacks")
        need(self.pos_encodings in POS_ENCODINGS, f"pos_encodings must be one of {POS_ENCODINGS}, "
                                                  f"got {self.pos_encodings!r}")
        need(self.hidden_size % self.num_heads == 0,
             f"hidden_size {self.hidden_size} must be a multiple of num_heads {self.num_heads}")
        need((self.hidden_size // self.num_heads) % 2 == 0, "head_dim must be even for RoPE")
        need(self.H_cycles >= 1 and self.L_cycles >= 1 and self.L_layers >= 1,
             "H_cycles, L_cycles and L_layers must be >= 1")
        need(self.expansion > 0, "expansion must be positive")
        need(self.puzzle_emb_ndim >= 0, "puzzle_emb_ndim must be >= 0")
        need(self.puzzle_emb_len >= 0, "puzzle_emb_len must be >= 0")
        need(self.puzzle_emb_ndim <= self.puzzle_emb_len * self.hidden_size,
             f"puzzle_emb_ndim {self.puzzle_emb_ndim} does not fit in puzzle_emb_len "
             f"{self.puzzle_emb_len} x hidden_size {self.hidden_size}")
        need(self.num_puzzle_identifiers >= 1, "num_puzzle_identifiers must be >= 1 (row 0 is blank)")
        need(self.vocab_size >= 2, "vocab_size must be >= 2")
        need(1 <= self.canvas <= 64, f"canvas must be in 1..64, got {self.canvas}")
        need(self.halt_max_steps >= 1, "halt_max_steps must be >= 1")
        need(0.0 <= self.halt_exploration_prob <= 1.0, "halt_exploration_prob must be in [0, 1]")
        need(self.forward_dtype in DTYPE_NAMES, f"forward_dtype must be one of {sorted(DTYPE_NAMES)}")

    @property
    def seq_len(self) -> int:
        return self.canvas * self.canvas

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def intermediate_size(self) -> int:
        # The reference rounds 2/3 of expansion * hidden, then up to a multiple of 256.
        inter = round(self.expansion * self.hidden_size * 2 / 3)
        return -(-inter // 256) * 256

    @property
    def total_len(self) -> int:
        return self.seq_len + self.puzzle_emb_len

    @property
    def dtype(self) -> Any:
        """The torch dtype of the forward pass (torch is imported here, not by the settings)."""
        import torch

        return getattr(torch, self.forward_dtype)

    def with_(self, **changes: Any) -> TRMConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TRMConfig:
        """From our own dict or a reference arch config (config.json / all_config.yaml `arch`).

        The architecture is ours (`architecture`) or read from the reference's class `name`
        (HierarchicalReasoningModel -> hrm, else trm). Reference-only keys are translated
        (seq_len -> canvas) or checked (mlp_t false; TRM: no_ACT_continue true); bookkeeping keys
        (name, loss, batch_size; TRM's unused H_layers; HRM's derived puzzle_emb_len) are ignored.
        """
        d = dict(d.get("arch", d))
        if "architecture" not in d:
            d["architecture"] = "hrm" if "HierarchicalReasoningModel" in str(d.get("name", "")) else "trm"
        if d.get("pos_encodings", "rope") not in POS_ENCODINGS:
            raise ValueError(f"TRMConfig: pos_encodings={d['pos_encodings']!r} is not supported "
                             f"(one of {', '.join(POS_ENCODINGS)})")
        if d.get("mlp_t", False):
            raise ValueError("TRMConfig: mlp_t=True (the Sudoku variant) is not supported")
        if d["architecture"] == "trm":
            if not d.get("no_ACT_continue", True):
                raise ValueError("TRMConfig: no_ACT_continue=False is not supported for TRM (the reference "
                                 "branch is broken); HRM always trains with the q_continue target")
            d["H_layers"] = 0  # the reference TRM ignores it
        if "seq_len" in d and "canvas" not in d:
            canvas = math.isqrt(int(d["seq_len"]))
            if canvas * canvas != int(d["seq_len"]):
                raise ValueError(f"TRMConfig: seq_len {d['seq_len']} is not a square canvas")
            d["canvas"] = canvas
        if d.get("puzzle_emb_len", 1) == 0 and d.get("puzzle_emb_ndim", 0) > 0:
            # Reference rule: 0 means ceil(ndim / hidden).
            d["puzzle_emb_len"] = -(-int(d["puzzle_emb_ndim"]) // int(d["hidden_size"]))
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def from_name(cls, name: str, **changes: Any) -> TRMConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return replace(PRESETS[name], **changes)


PRESETS: dict[str, TRMConfig] = {
    # The released ARC-AGI-2 checkpoints (TRM-ARC-AGI-II, arcprize verification, Sanjin2024).
    "paper": TRMConfig(),
    # Trelis all-200k / hard-1M: identical weights layout, one prefix slot.
    "trelis-emb1": TRMConfig(puzzle_emb_len=1),
    # Tests and the CPU demo: small width, few cycles, small canvas.
    "tiny": TRMConfig(hidden_size=64, num_heads=4, H_cycles=2, L_cycles=2, puzzle_emb_ndim=64,
                      puzzle_emb_len=1, canvas=12, halt_max_steps=4, forward_dtype="float32"),
    # HRM as released (sapientinc config/arch/hrm_v1.yaml = the TRM repo's hrm.yaml): H/L stacks of
    # 4 blocks, 2x2 cycles, one prefix slot (ceil(512 / 512)).
    "hrm": TRMConfig(architecture="hrm", H_cycles=2, L_cycles=2, H_layers=4, L_layers=4),
    # A tiny HRM for tests and CPU runs, the size of the tiny TRM.
    "hrm-tiny": TRMConfig(architecture="hrm", hidden_size=64, num_heads=4, H_cycles=2, L_cycles=2, H_layers=1,
                          L_layers=1, puzzle_emb_ndim=64, canvas=12, halt_max_steps=4, forward_dtype="float32"),
}
