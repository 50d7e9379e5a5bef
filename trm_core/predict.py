"""Augmentation-ensembled prediction: every test input under the first K variants of its task.

Input: a TRM whose embedding rows match a `Variants` map, and a PredictConfig. Each view runs the
ACT loop with evaluation semantics (exactly `halt_max_steps` steps, or fewer on request); the
argmax tokens are cropped, mapped back to the task's frame with the view's inverse augmentation
and stored, with the final step's q_halt logit, as one record in a `Predictions` container.
Batches mix tasks; only one batch of tokens exists at a time. Under torchrun each rank predicts a
disjoint shard; `gather` collects the shards on every rank.

Two switches stop spending compute once an answer is settled (both off by default; off, the
records are the same bits as without them):
  exit_rule     "fixed" reads every view after its steps (the reference). "q-halt" reads a view at
                the first step its q-head halts (TRM: q_halt > 0; HRM: q_halt > q_continue, the rules
                training uses); "stable" once its argmax grid is unchanged for `stable_steps`
                consecutive steps. A view that never exits is read at the last step. Exited rows
                leave the batch, so they cost no more compute.
  round_views   > 0 predicts in rounds of that many views per test input; after each round a test
                input whose top-2 attempts are settled (`settled`) gets no more views; the others
                continue up to num_views. A shard then owns whole test inputs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

import torch
import torch.distributed as dist

from trm_core.batches import PredictViews

from trm_core.variants import Variants
from trm_core.distributed import rank_world
from trm_core.encoding import crop_batch
from trm_core.model import TRM, Carry
from trm_core.predictions import Predictions
from trm_core.config import EXIT_RULES, PredictConfig
from trm_core.vote import Vote, vote
from trm_core.warmup import WarmupOverLimit, warmup_limit




@torch.inference_mode()
def predict_batch(model: TRM, batch: dict[str, torch.Tensor], steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Run `steps` ACT steps on one batch; returns argmax tokens [B, S] and q_halt logits [B]."""
    carry = model.initial_carry(batch)
    for _ in range(steps):
        carry, out = model(carry, batch)
    return out["logits"].argmax(-1), out["q_halt_logits"].float()


@torch.inference_mode()
def predict_batch_exit(model: TRM, batch: dict[str, torch.Tensor], steps: int, rule: str,
                       stable_steps: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run up to `steps` ACT steps on one batch, reading each row at its exit step (`rule`, see the
    module docstring); returns argmax tokens [B, S], q_halt logits [B] at that step and the steps
    each row ran [B] int32. A row that has exited leaves the batch: later steps run on the others only.
    """
    if rule not in EXIT_RULES:
        raise ValueError(f"exit rule must be one of {EXIT_RULES}, got {rule!r}")
    hrm = model.config.architecture == "hrm"
    inputs = batch["inputs"]
    B, device = inputs.shape[0], inputs.device
    tokens = torch.zeros(inputs.shape, dtype=torch.long, device=device)  # [B, S]
    q_out = torch.zeros(B, dtype=torch.float32, device=device)
    used = torch.zeros(B, dtype=torch.int32, device=device)
    rows = torch.arange(B, device=device)  # original row of each row still running
    same = torch.zeros(B, dtype=torch.int32, device=device)  # consecutive steps its grid did not change
    carry = model.initial_carry(batch)
    prev = None
    for step in range(1, steps + 1):
        carry, out = model(carry, batch)
        tok, q = out["logits"].argmax(-1), out["q_halt_logits"].float()  # [b, S], [b]
        if step == steps:
            done = torch.ones_like(q, dtype=torch.bool)
        elif rule == "q-halt":  # the halting rule of training (model.forward)
            done = q > (out["q_continue_logits"].float() if hrm else 0)
        elif rule == "stable" and prev is not None:
            same = torch.where((tok == prev).all(-1), same + 1, 0)
            done = same >= stable_steps
        else:
            done = torch.zeros_like(q, dtype=torch.bool)
        idx = rows[done]
        tokens[idx], q_out[idx], used[idx] = tok[done], q[done], step
        if bool(done.all()):
            break
        if bool(done.any()):  # drop the exited rows from everything the next step reads
            keep = ~done
            carry = Carry(z_H=carry.z_H[keep], z_L=carry.z_L[keep], steps=carry.steps[keep],
                          halted=carry.halted[keep], current_data={k: v[keep] for k, v in carry.current_data.items()})
            batch = {k: v[keep] for k, v in batch.items()}
            rows, tok, same = rows[keep], tok[keep], same[keep]
        prev = tok
    return tokens, q_out, used


def settled(voted: Vote, task_id: str, test_index: int, views_left: int, margin: int = 0) -> bool:
    """Whether the test input's two attempts (its top-2 usable candidates, as a set) are decided.

    Exact: no way of casting the `views_left` views still to come can move another candidate into
    the top 2 under the vote's rule. Ranks are by count first (reference, count), so the 3rd (or a new
    grid, count 0) must stay strictly below the 2nd even with every view left: n2 > n3 + views_left
    (a tie is not safe: the reference breaks it by mean q of views not seen yet). q-weighted ranks by
    the sum of sigmoid(q) < 1 per view: s2 > s3 + views_left. A 0x0 candidate is never an attempt,
    so it is not counted. margin > 0 also settles when the 2nd leads the 3rd by `margin` votes, or,
    with a single usable candidate, when it has `margin` votes (the stated-margin rule; not exact).
    """
    if views_left <= 0:
        return True
    count, q_sum = voted.ranked_keys(task_id, test_index, skip_empty=True)  # best first
    n = [int(count[k]) if k < len(count) else 0 for k in range(3)]
    key = [float(q_sum[k]) if k < len(q_sum) else 0.0 for k in range(3)] if voted.rule == "q-weighted" else n
    if key[1] > key[2] + views_left:
        return True
    if margin > 0:
        return n[0] >= margin if len(count) == 1 else (len(count) >= 2 and n[1] - n[2] >= margin)
    return False


def predict(model: TRM, variants: Variants, cfg: PredictConfig, *, device: torch.device | str = "cpu",
            stop: Callable[[], bool] | None = None, deadline: float | None = None,
            on_batch: Callable[[Predictions, int, int], None] | None = None,
            log: Callable[[str], None] | None = None, shard: tuple[int, int] | None = None,
            status: dict[str, Any] | None = None) -> Predictions:
    """This rank's predictions, in view order. Stops cleanly between batches on `stop()` or `deadline`.

    on_batch(predictions, batches_done, batches_total) runs after every batch, e.g. to write a
    provisional submission (with round_views, batches_total is an upper bound until the last batch).
    shard=(rank, world_size) predicts that shard without a process group
    (independent processes, so one failing loses only its own shard); default: the torchrun rank.
    `status["compile"]` tells how it ran: off, on, or "fallback: <why>" (compiling failed or the first
    batch ran past cfg.compile_limit_s; eager after). status also receives the work done and the work
    the reference would have done: "views" / "views_full" and "act_steps" / "act_steps_full".
    """
    status = {} if status is None else status
    rank, world = rank_world() if shard is None else shard
    device = torch.device(device)
    limit = model.config.halt_max_steps
    if cfg.halt_steps is not None and cfg.halt_steps > limit:
        # model.forward halts (and restarts) every row at halt_max_steps: more calls would re-read the batch
        raise ValueError(f"halt_steps {cfg.halt_steps} is above the model's halt_max_steps {limit}: "
                         f"ask for at most {limit} ACT steps")
    model.to(device).eval()
    compiled = cfg.compile if cfg.compile is not None else device.type == "cuda"
    eager = None
    if compiled:  # a second shard in the same process reuses the first's compiled recursion
        eager = getattr(model.recursion, "_torchdynamo_orig_callable", model.recursion)
        if "recursion" not in vars(model):
            model.recursion = torch.compile(model.recursion)
    status["compile"] = "on" if compiled else "off"
    steps = cfg.halt_steps or limit
    canvas = model.config.canvas
    views = PredictViews(variants, cfg.num_views, cfg.batch_size, canvas=canvas, rank=rank, world_size=world,
                         order=cfg.order)
    preds = Predictions(capacity=max(1, views.num_rows // world + views.local_batch_size))
    work = {"act_steps": 0, "act_steps_full": 0}

    def run(tensors: dict[str, torch.Tensor], real: int) -> tuple[np.ndarray, np.ndarray]:
        if cfg.exit_rule == "fixed":
            tokens, q = predict_batch(model, tensors, steps)
            used = None
        else:
            tokens, q, used = predict_batch_exit(model, tensors, steps, cfg.exit_rule, cfg.stable_steps)
        work["act_steps_full"] += real * steps
        work["act_steps"] += real * steps if used is None else int(used[:real].sum())
        return tokens.cpu().numpy(), q.cpu().numpy()

    t0 = time.perf_counter()
    first, done, total = True, 0, 0
    batches = _adaptive(views, variants, cfg, rank, world, preds) if cfg.round_views else \
        ((batch, done, len(views)) for done, batch in enumerate(views, start=1))
    for batch, done, total in batches:
        if (deadline is not None and time.time() >= deadline) or (stop is not None and stop()):
            if log:
                log(f"prediction stopped after {done - 1}/{total} batches")
            break
        tensors = {k: (v.pin_memory() if device.type == "cuda" else v).to(device, non_blocking=True)
                   for k, v in batch.tensors().items()}
        real = sum(view is not None for view in batch.views)  # padding rows sit at the end
        if cfg.round_views:  # a round's last batch is short: no compute on padding
            tensors = {k: v[:real] for k, v in tensors.items()}
        if compiled and first:
            try:
                with warmup_limit(cfg.compile_limit_s):
                    tokens, q = run(tensors, real)
            except (Exception, WarmupOverLimit) as e:  # noqa: BLE001 - a compiler failure: eager is always available
                if isinstance(e, torch.OutOfMemoryError):
                    raise
                why = str(e) if isinstance(e, WarmupOverLimit) else \
                    f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
                if log:
                    log(f"torch.compile failed ({why}); predicting eagerly")
                status["compile"] = f"fallback: {why}"
                model.recursion = eager
                tokens, q = run(tensors, real)
        else:
            tokens, q = run(tensors, real)
        first = False
        for grid, view, q_halt in zip(crop_batch(tokens, canvas), batch.views, q):
            if view is None:  # padding row
                continue
            preds.append(view.task_id, view.test_index, view.variant, view.augmentation.invert(grid), float(q_halt))
        if on_batch is not None:
            on_batch(preds, done, total)
        if log and (done % 20 == 0 or done == total):
            rate = len(preds) / max(time.perf_counter() - t0, 1e-9)
            log(f"predict {done}/{total} batches | {len(preds)} views | {rate:.1f} views/s")
    else:
        if cfg.round_views and on_batch is not None and done != total:  # settled inputs left rows unused
            on_batch(preds, done, done)
    full = len(preds)  # fixed count: every view asked for; adaptive: this shard's inputs under num_views each
    if cfg.round_views:
        full = sum(int(min(k, cfg.num_views)) * len(task.test_inputs)
                   for j, (k, task) in enumerate(zip(variants.counts(), variants.tasks.values())) if j % world == rank)
    status.update(views=len(preds), views_full=full, **work)
    if log and (cfg.round_views or cfg.exit_rule != "fixed"):
        log(f"predict: {len(preds)} of {full} views, {work['act_steps']} of {work['act_steps_full']} ACT steps")
    return preds


def _adaptive(views: PredictViews, variants: Variants, cfg: PredictConfig, rank: int, world: int,
              preds: Predictions):
    """(batch, batches done, batches total) of the adaptive view count: rounds of cfg.round_views views
    per open test input, variant-major like order="variant"; after each round the inputs `settled`
    under the vote so far (`preds`, filled by the caller between batches) are closed. This shard owns
    the test inputs of every world-th task from `rank` (a task's test inputs share one shard)."""
    tasks = list(variants.tasks.values())
    counts = [int(k) for k in np.minimum(variants.counts(), cfg.num_views)]  # views per task
    open_ = [(t, i) for t in range(rank, len(tasks), world) for i in range(len(tasks[t].test_inputs))]
    size = views.local_batch_size
    done, lo = 0, 0
    while open_:
        hi = lo + cfg.round_views
        rows = [(t, v, i) for v in range(lo, hi) for t, i in open_ if v < counts[t]]
        left = sum(max(0, counts[t] - hi) for t, _ in open_)  # the most rows later rounds can take
        chunks = [rows[j:j + size] for j in range(0, len(rows), size)]
        total = done + len(chunks) + -(-left // size)  # an upper bound: inputs that settle take none of `left`
        for chunk in chunks:
            done += 1
            yield views._encode(chunk), done, total  # _encode: rows -> one padded ViewBatch
        voted = vote(preds, cfg.rule)
        open_ = [(t, i) for t, i in open_
                 if not settled(voted, tasks[t].id, i, counts[t] - min(hi, counts[t]), cfg.settle_margin)]
        lo = hi


def gather(preds: Predictions) -> Predictions:
    """Every rank's predictions merged in rank order (a collective; a no-op on one process)."""
    rank, world = rank_world()
    if world == 1:
        return preds
    group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None
    parts: list[Predictions | None] = [None] * world
    dist.all_gather_object(parts, preds, group=group)
    return Predictions.merge([p for p in parts if p is not None])

