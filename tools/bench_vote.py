"""Benchmark the voter: numba grid keys against a plain-Python sha256 voter, in the same run.

Workload (defaults = a Kaggle rerun): 240 tasks x 512 views x ~1.1 test inputs (about 135k
predictions). Each test input has a pool of distinct answers drawn with Zipf-like frequencies (the
right answer about a third of the views, a few near misses, a long tail), plus a share of one-off
garbage grids and a few 0x0 predictions; grid sides 1..30, mostly 5..20.

Both voters pool per test input, count votes, sum sigmoid(q), and rank by the reference rule.
The plain voter keys a dict by sha256(bytes([h, w]) + grid bytes), as the reference evaluator does.
The numba time excludes JIT compilation, which is reported on its own line; each voter's figure is
the best of --repeats runs, so a busy machine disturbs the comparison less. Both must agree.

    python tools/bench_vote.py [--tasks 240] [--views 512] [--two-test-share 0.1] [--seed 0]
"""

import argparse
import hashlib
import math
import os
import platform
import time

import numba
import numpy as np

from trm_core.predictions import Predictions, pack_grid
from trm_core.vote import vote


def _grid(rng: np.random.Generator) -> np.ndarray:
    h, w = (int(np.clip(rng.normal(12, 6), 1, 30)) for _ in range(2))
    return rng.integers(0, 10, (h, w), dtype=np.uint8)


def make_predictions(tasks: int, views: int, two_test_share: float, seed: int) -> Predictions:
    """Synthetic records with realistic duplication, added in packed batches as a predictor would."""
    rng = np.random.default_rng(seed)
    preds = Predictions(capacity=int(tasks * views * (1 + two_test_share)) + views)
    for t in range(tasks):
        task_id = f"{t:08x}"
        for test_index in range(2 if rng.random() < two_test_share else 1):
            answer = _grid(rng)
            pool = [answer]
            for _ in range(int(rng.integers(5, 30))):  # near misses of the answer, and other grids
                if rng.random() < 0.6:
                    g = answer.copy()
                    g[rng.integers(0, g.shape[0]), rng.integers(0, g.shape[1])] = rng.integers(0, 10)
                else:
                    g = _grid(rng)
                pool.append(g)
            pool.append(np.zeros((0, 0), np.uint8))
            weights = 1.0 / np.arange(1, len(pool) + 1) ** 1.3  # Zipf-like: the answer leads
            packed_pool = np.stack([pack_grid(g) for g in pool])  # [K, ROW]
            pick = rng.choice(len(pool), size=views, p=weights / weights.sum())
            grids = packed_pool[pick]  # [views, ROW]
            garbage = np.flatnonzero(rng.random(views) < 0.15)  # one-off grids, never repeated
            for i in garbage:
                grids[i] = pack_grid(_grid(rng))
            preds.extend_packed([task_id] * views, np.full(views, test_index), np.arange(views),
                                grids, rng.normal(0.0, 2.0, views))
    return preds


def plain_vote(records: list[tuple[str, int, np.ndarray, float]]) -> dict:
    """The reference-style voter in plain Python: sha256 keys in dicts, stable sort."""
    pools: dict = {}
    grids: dict = {}
    for task_id, test_index, grid, q in records:
        key = hashlib.sha256(bytes(grid.shape) + grid.tobytes()).hexdigest()
        grids[key] = grid
        stats = pools.setdefault((task_id, test_index), {}).setdefault(key, [0, 0.0])
        stats[0] += 1
        stats[1] += 1.0 / (1.0 + math.exp(-q))
    ranked = {}
    for pair, stats in pools.items():
        order = sorted(stats.items(), key=lambda kv: (kv[1][0], kv[1][1] / kv[1][0]), reverse=True)
        ranked[pair] = [(grids[k], s[0]) for k, s in order]
    return ranked


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=240)
    ap.add_argument("--views", type=int, default=512)
    ap.add_argument("--two-test-share", type=float, default=0.1, help="share of tasks with 2 test inputs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="each voter: best of this many runs")
    args = ap.parse_args()

    t0 = time.perf_counter()
    preds = make_predictions(args.tasks, args.views, args.two_test_share, args.seed)
    gen_s = time.perf_counter() - t0
    pairs = len(set(zip(preds.task.tolist(), preds.test_index.tolist())))
    print(f"machine: {platform.node()} | {_cpu()} | {os.cpu_count()} logical CPUs | "
          f"python {platform.python_version()} numpy {np.__version__} numba {numba.__version__}")
    print(f"workload: {args.tasks} tasks, {pairs} test inputs, {args.views} views -> "
          f"{len(preds)} predictions ({preds.data.nbytes / 2**20:.1f} MiB of grid words), "
          f"generated in {gen_s:.1f} s")

    small = make_predictions(2, 8, 0.0, args.seed + 1)
    t0 = time.perf_counter()
    vote(small)  # compiles every jitted kernel
    compile_s = time.perf_counter() - t0

    runs = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        fast = vote(preds, "reference")
        runs.append(time.perf_counter() - t0)
    numba_s = min(runs)

    records = [(preds.task_ids[t], int(i), preds.grid(k), float(q))  # what the reference holds
               for k, (t, i, q) in enumerate(zip(preds.task, preds.test_index, preds.q_halt))]
    plain_runs = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        slow = plain_vote(records)
        plain_runs.append(time.perf_counter() - t0)
    plain_s = min(plain_runs)

    candidates = 0
    for (task_id, test_index), ranked in slow.items():
        ours = fast.candidates(task_id, test_index)
        candidates += len(ours)
        assert [(c.grid.tobytes(), c.grid.shape, c.count) for c in ours] == \
            [(g.tobytes(), g.shape, n) for g, n in ranked], f"voters disagree on {task_id}#{test_index}"
    print(f"distinct candidates: {candidates}; both voters agree on every ranking")
    print(f"numba JIT compile (once per process): {compile_s:.2f} s")
    print(f"numba voter:  {numba_s * 1e3:8.1f} ms  (best of {args.repeats}: "
          f"{', '.join(f'{r * 1e3:.1f}' for r in runs)} ms)")
    print(f"plain sha256: {plain_s * 1e3:8.1f} ms  (best of {args.repeats}: "
          f"{', '.join(f'{r * 1e3:.1f}' for r in plain_runs)} ms)")
    print(f"speed-up: {plain_s / numba_s:.1f}x  (targets: numba < 1 s, speed-up >= 20x)")


if __name__ == "__main__":
    main()
