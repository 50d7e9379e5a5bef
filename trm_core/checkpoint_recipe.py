"""What a checkpoint was trained with, and so how it is post-trained: its *recipe*.

Input: a kit checkpoint's manifest (a dict), or a registry entry. Output: a `Recipe` (AdamATan2
variant, EMA, puzzle_emb_len, where that was read) or None when the checkpoint records none, and
`choose(recipe, optimizer, ema)`: the settings a post-training run uses, with one line saying
where each came from (and a warning when the variant is unknown).

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

    def __post_init__(self) -> None:
        _check(asdict(self), "recipe")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, value: Any, where: str) -> Recipe:
        """A recipe from JSON: an object with exactly the fields above, each of its type."""
        if not isinstance(value, dict):
            raise RecipeError(f"{where} must be an object with {', '.join(FIELDS)}, got {type(value).__name__}")
        _check(value, where)
        missing = [name for name in FIELDS if name not in value]
        if missing:
            raise RecipeError(f"{where} lacks {', '.join(missing)}")
        return cls(**value)

    def describe(self) -> str:
        return f"optimizer {self.optimizer}, EMA {'on' if self.ema else 'off'} ({self.source})"


FIELDS = tuple(f.name for f in fields(Recipe))


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
              "source": (lambda v: isinstance(v, str) and 0 < len(v) <= 500, "a non-empty string")}
    for name, (ok, want) in checks.items():
        if name in value and not ok(value[name]):
            shown = repr(value[name]) if len(repr(value[name])) <= 40 else repr(value[name])[:40] + "..."
            raise RecipeError(f"{where}: {name} must be {want}, got {shown}")


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
             "puzzle_emb_len": puzzle_emb_len, "source": f"registry:{name}"}
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
        return Recipe(train["optimizer"], train["ema"], length if ok else None, "train record")
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
