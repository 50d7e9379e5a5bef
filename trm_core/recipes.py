"""Recipes that wire the pieces together: tasks -> variants -> sampler -> model -> train -> checkpoint.

`pretrain` builds a fresh TRM for a public task set; `posttrain` adapts a checkpoint to new tasks
(their demonstration pairs only) with one of the post-training modes. Both return the
TrainResult and leave a kit checkpoint whose manifest records how to rebuild the embedding-row
map (variant count, seed, task ids, fingerprint), so prediction uses exactly the trained rows.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import torch

from trm_core import __version__
from trm_core.checkpoint import Checkpoint, build_model
from trm_core.config import DataConfig, TrainConfig
from trm_core.distributed import rank_world
from trm_core.batches import TrainSampler
from trm_core.variants import Variants
from trm_core.loggers import MetricsLogger
from trm_core.model import TRM, TRMConfig
from trm_core.tasks import TaskSet
from trm_core.train import TrainResult, train

if TYPE_CHECKING:
    from trm_core.fit import FitSchedule


def variants_record(variants: Variants) -> dict[str, Any]:
    """What a manifest keeps so `variants_from_record` rebuilds the identical identifier map."""
    return {"num_variants": variants.num_variants, "seed": variants.seed,
            "permute_background": variants.permute_background, "task_ids": list(variants.task_ids),
            "num_identifiers": variants.num_identifiers, "fingerprint": variants.fingerprint()}


def variants_from_record(record: dict[str, Any], tasks: TaskSet) -> Variants:
    """Rebuild the trained identifier map for `tasks`; raises if the tasks are not the trained ones."""
    missing = [t for t in record["task_ids"] if t not in tasks.tasks]
    if missing:
        raise ValueError(f"the checkpoint was trained on tasks that are not here: {missing[:5]} "
                         f"({len(missing)} missing)")
    ordered = [tasks.tasks[t] for t in record["task_ids"]]
    variants = Variants(ordered, record["num_variants"], record["seed"], record.get("permute_background", False))
    if variants.fingerprint() != record["fingerprint"]:
        raise ValueError("these tasks give a different embedding-row map than the one trained "
                         "(task content or variant settings differ)")
    return variants


def _sampler(variants: Variants, cfg: TrainConfig, data: DataConfig, canvas: int) -> TrainSampler:
    rank, world = rank_world()
    return TrainSampler(variants, cfg.global_batch_size, seed=data.sampler_seed, rank=rank, world_size=world,
                        canvas=canvas, translate=data.translate, include_test_pairs=data.include_test_pairs,
                        max_examples_per_puzzle=data.max_examples_per_puzzle)


def _provenance(extra: dict[str, Any]) -> dict[str, Any]:
    return {"trained_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "trained_by": f"trm-kit {__version__}", "torch": torch.__version__, **extra}


def pretrain(tasks: TaskSet, model_cfg: TRMConfig, train_cfg: TrainConfig, data: DataConfig,
             out_dir: str | os.PathLike, *, device: torch.device | str = "cpu", model_seed: int = 0,
             source: str = "", stop: Callable[[int], bool] | None = None, deadline: float | None = None,
             log: Callable[[str], None] | None = None, logger: MetricsLogger | None = None) -> TrainResult:
    """Pre-train a fresh TRM on `tasks` (one embedding row per task variant)."""
    if train_cfg.mode != "pretrain":
        raise ValueError(f"pretrain needs TrainConfig.mode='pretrain', got {train_cfg.mode!r}")
    variants = Variants(tasks, data.num_variants, data.variant_seed, data.permute_background)
    cfg = model_cfg.with_(num_puzzle_identifiers=variants.num_identifiers)
    model = TRM(cfg, generator=torch.Generator().manual_seed(model_seed))
    manifest = {"provenance": _provenance({"source_name": "pretrain", "data": source, "model_seed": model_seed,
                                           "data_config": asdict(data)}),
                "variants": variants_record(variants)}
    kwargs = {"log": log} if log else {}
    return train(model, _sampler(variants, train_cfg, data, cfg.canvas), train_cfg, device=device,
                 out_dir=out_dir, stop=stop, deadline=deadline, manifest=manifest, logger=logger, **kwargs)


def task_variants(tasks: TaskSet, data: DataConfig) -> Variants:
    """Each task's original and data.num_variants augmented variants, one embedding row each: the
    rows post-training trains and the views prediction reads the test inputs through."""
    return Variants(tasks, data.num_variants, data.variant_seed, data.permute_background)


def prepare_posttrain(ckpt: Checkpoint, tasks: TaskSet, data: DataConfig, init: str = "mean",
                      seed: int = 0, variants: Variants | None = None) -> tuple[TRM, Variants]:
    """The checkpoint's trunk with a fresh embedding table for `tasks`' variants (`variants`, else
    task_variants(tasks, data))."""
    variants = variants if variants is not None else task_variants(tasks, data)
    model = build_model(ckpt, num_puzzle_identifiers=variants.num_identifiers, init=init,
                        generator=torch.Generator().manual_seed(seed))
    return model, variants


def posttrain(ckpt: Checkpoint, tasks: TaskSet, train_cfg: TrainConfig, data: DataConfig,
              out_dir: str | os.PathLike, *, device: torch.device | str = "cpu", init: str = "mean",
              source: str = "", stop: Callable[[int], bool] | None = None, deadline: float | None = None,
              log: Callable[[str], None] | None = None, logger: MetricsLogger | None = None,
              fit: FitSchedule | None = None, variants: Variants | None = None) -> TrainResult:
    """Adapt `ckpt` to `tasks` (their demonstration pairs) with train_cfg.mode.

    `variants`: the tasks' variants to train one row each (default task_variants(tasks, data));
    the checkpoint written records them, so prediction reads through the same views.
    `fit` spends the steps per task (trm_core/fit.py: fitted tasks leave the batches); None (the
    default) draws every task alike."""
    if train_cfg.mode == "pretrain":
        raise ValueError("posttrain takes a post-training mode: full, embeddings, embeddings-then-full or lora")
    if data.include_test_pairs:
        raise ValueError("posttrain trains on demonstration pairs only (include_test_pairs must be False)")
    model, variants = prepare_posttrain(ckpt, tasks, data, init, train_cfg.seed, variants)
    base = ckpt.manifest.get("provenance", {})
    manifest = {"provenance": _provenance({"source_name": "posttrain", "data": source, "base": base,
                                           "base_config": ckpt.config.to_dict(), "init": init,
                                           "data_config": asdict(data)}),
                "variants": variants_record(variants)}
    kwargs = {"log": log} if log else {}
    return train(model, _sampler(variants, train_cfg, data, ckpt.config.canvas), train_cfg, device=device,
                 out_dir=out_dir, stop=stop, deadline=deadline, manifest=manifest, logger=logger, fit=fit, **kwargs)


def model_for_tasks(ckpt: Checkpoint, tasks: TaskSet, num_views: int, seed: int = 0,
                    init: str = "mean") -> tuple[TRM, Variants, bool]:
    """A model and the Variants map to predict `tasks` with; the bool says whether it is adapted.

    A checkpoint post-trained on these tasks (its manifest records their variants) keeps its
    trained rows. Anything else (a pre-trained or slim checkpoint) gets fresh rows for the tasks'
    first `num_views` variants, initialised from its mean row: the un-adapted baseline.
    """
    record = ckpt.manifest.get("variants")
    if record and not ckpt.slim and all(t in tasks.tasks for t in record["task_ids"]):
        try:
            variants = variants_from_record(record, tasks)
            return build_model(ckpt), variants, True
        except ValueError:
            pass  # same ids, other content: these are not the trained tasks
    variants = Variants(tasks, max(0, num_views - 1), seed)
    model = build_model(ckpt, num_puzzle_identifiers=variants.num_identifiers, init=init,
                        generator=torch.Generator().manual_seed(seed))
    return model, variants, False
