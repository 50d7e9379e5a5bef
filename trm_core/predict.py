"""Augmentation-ensembled prediction: every test input under the first K variants of its task.

Input: a TRM whose embedding rows match a `Variants` map, and a PredictConfig. Each view runs the
ACT loop with evaluation semantics (exactly `halt_max_steps` steps, or fewer on request); the
argmax tokens are cropped, mapped back to the task's frame with the view's inverse augmentation
and stored, with the final step's q_halt logit, as one record in a `Predictions` container.
Batches mix tasks; only one batch of tokens exists at a time. Under torchrun each rank predicts a
disjoint shard; `gather` collects the shards on every rank.
"""

from __future__ import annotations

import numbers
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from trm_core.batches import PredictViews

from trm_core.variants import Variants
from trm_core.distributed import rank_world
from trm_core.encoding import crop_batch
from trm_core.model import TRM
from trm_core.predictions import Predictions
from trm_core.warmup import WarmupOverLimit, warmup_limit


@dataclass(frozen=True)
class PredictConfig:
    num_views: int = 256  # views per test input, the original included (the paper: 256 ~ 512)
    batch_size: int = 256  # rows per forward over all ranks
    halt_steps: int | None = None  # ACT steps per view; None = the model's halt_max_steps
    order: str = "variant"  # "variant": a run cut short has seen every task under its first views
    compile: bool | None = None  # torch.compile the recursion; None = on CUDA only. A failure falls back to eager
    compile_limit_s: float = 600.0  # seconds the first compiled batch (the warm-up) may take; 0 = no limit

    def __post_init__(self) -> None:
        # an integer >= 1, not a bool or a float: a batch of -1 or 2.5 rows is a mistake to name, not to round
        for name in ("num_views", "batch_size", "halt_steps"):
            value = getattr(self, name)
            if name == "halt_steps" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"PredictConfig.{name} must be an integer >= 1, got {value!r}")
        if self.compile_limit_s < 0:
            raise ValueError(f"PredictConfig.compile_limit_s must be >= 0 (0 = no limit), got {self.compile_limit_s}")


@torch.inference_mode()
def predict_batch(model: TRM, batch: dict[str, torch.Tensor], steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Run `steps` ACT steps on one batch; returns argmax tokens [B, S] and q_halt logits [B]."""
    carry = model.initial_carry(batch)
    for _ in range(steps):
        carry, out = model(carry, batch)
    return out["logits"].argmax(-1), out["q_halt_logits"].float()


def predict(model: TRM, variants: Variants, cfg: PredictConfig, *, device: torch.device | str = "cpu",
            stop: Callable[[], bool] | None = None, deadline: float | None = None,
            on_batch: Callable[[Predictions, int, int], None] | None = None,
            log: Callable[[str], None] | None = None, shard: tuple[int, int] | None = None,
            status: dict[str, str] | None = None) -> Predictions:
    """This rank's predictions, in view order. Stops cleanly between batches on `stop()` or `deadline`.

    on_batch(predictions, batches_done, batches_total) runs after every batch, e.g. to write a
    provisional submission. shard=(rank, world_size) predicts that shard without a process group
    (independent processes, so one failing loses only its own shard); default: the torchrun rank.
    `status["compile"]` tells how it ran: off, on, or "fallback: <why>" (compiling failed or the first
    batch ran past cfg.compile_limit_s; eager after).
    """
    status = {} if status is None else status
    rank, world = rank_world() if shard is None else shard
    device = torch.device(device)
    model.to(device).eval()
    compiled = cfg.compile if cfg.compile is not None else device.type == "cuda"
    eager = None
    if compiled:  # a second shard in the same process reuses the first's compiled recursion
        eager = getattr(model.recursion, "_torchdynamo_orig_callable", model.recursion)
        if "recursion" not in vars(model):
            model.recursion = torch.compile(model.recursion)
    status["compile"] = "on" if compiled else "off"
    steps = cfg.halt_steps or model.config.halt_max_steps
    canvas = model.config.canvas
    views = PredictViews(variants, cfg.num_views, cfg.batch_size, canvas=canvas, rank=rank, world_size=world,
                         order=cfg.order)
    preds = Predictions(capacity=max(1, views.num_rows // world + views.local_batch_size))
    total = len(views)
    t0 = time.perf_counter()
    for done, batch in enumerate(views, start=1):
        if (deadline is not None and time.time() >= deadline) or (stop is not None and stop()):
            if log:
                log(f"prediction stopped after {done - 1}/{total} batches")
            break
        tensors = {k: (v.pin_memory() if device.type == "cuda" else v).to(device, non_blocking=True)
                   for k, v in batch.tensors().items()}
        if compiled and done == 1:
            try:
                with warmup_limit(cfg.compile_limit_s):
                    tokens, q = predict_batch(model, tensors, steps)
            except (Exception, WarmupOverLimit) as e:  # noqa: BLE001 - a compiler failure: eager is always available
                if isinstance(e, torch.OutOfMemoryError):
                    raise
                why = str(e) if isinstance(e, WarmupOverLimit) else \
                    f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
                if log:
                    log(f"torch.compile failed ({why}); predicting eagerly")
                status["compile"] = f"fallback: {why}"
                model.recursion = eager
                tokens, q = predict_batch(model, tensors, steps)
        else:
            tokens, q = predict_batch(model, tensors, steps)
        tokens, q = tokens.cpu().numpy(), q.cpu().numpy()
        for grid, view, q_halt in zip(crop_batch(tokens, canvas), batch.views, q):
            if view is None:  # padding row
                continue
            preds.append(view.task_id, view.test_index, view.variant, view.augmentation.invert(grid), float(q_halt))
        if on_batch is not None:
            on_batch(preds, done, total)
        if log and (done % 20 == 0 or done == total):
            rate = len(preds) / max(time.perf_counter() - t0, 1e-9)
            log(f"predict {done}/{total} batches | {len(preds)} views | {rate:.1f} views/s")
    return preds


def gather(preds: Predictions) -> Predictions:
    """Every rank's predictions merged in rank order (a collective; a no-op on one process)."""
    rank, world = rank_world()
    if world == 1:
        return preds
    group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None
    parts: list[Predictions | None] = [None] * world
    dist.all_gather_object(parts, preds, group=group)
    return Predictions.merge([p for p in parts if p is not None])

