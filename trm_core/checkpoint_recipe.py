"""What a checkpoint was trained with, and so how it is post-trained: its *recipe*.

Input: a kit checkpoint's manifest (a dict), or a registry entry. Output: a `Recipe` (AdamATan2
variant, EMA, puzzle_emb_len, where that was read) or None when the checkpoint records none, and
`choose(recipe, optimizer, ema)`: the settings a post-training run uses, with one line saying
where each came from (and a warning when the variant is unknown), and `post_settings`: the one
post-training recipe, every TrainConfig field a post-training run of a planned length takes.

A checkpoint is post-trained with the recipe it was trained with: the two AdamATan2 variants
(`original`, `lucidrains`) scale their updates differently, so the other one moves weights that
were trained with the first off their basin. The registry records the variant of each release
(pretrained/registry.json); converting or bundling a registry entry writes it into the slim
checkpoint's manifest as {"recipe": {"optimizer", "ema", "puzzle_emb_len", "source"}}. A
checkpoint trained by trm-kit also carries its `train` record, which says the same.

Standard library only: the runner reads it before torch loads.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, fields
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
    trm_core.registry reads it); puzzle_emb_len from its config when written there, else the
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
# tuning set that chose them, are in the README ("The post-training recipe").
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
