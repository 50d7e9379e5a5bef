"""Benchmark the prediction queue: one worker made slow, static shards against the dynamic queue.

Workload: the placeholder tasks copied --copies times under new ids (8 x 8 = 64 tasks, 104 test
inputs), --views views each, predicted by --workers CPU worker processes (one torch thread each)
with the demo checkpoint, a global batch of --batch rows. Worker 1 is made --slow times slower by
the fault injector (TRM_FAULT-style `predict:slow:1:0:<s>`, s = (slow - 1) x one batch's time,
measured here first), in both runs: the same machine, the same work, the same slow worker.

Printed, for each of --repeats static-then-dynamic pairs: the phase time of each mode (launch to
the last worker gone, what the runner waits for) and the ideal split (every worker busy until the
end: a run's launch overhead plus all rows at the summed rates its workers measured), at the static
run's rates (the same for both modes: per-item overhead shows as dynamic / ideal above 1) and at
the dynamic run's own rates (the other engineer's load on a shared machine moves rates between
runs), and the ratios phase / ideal.

    python tools/bench_queue.py [--copies 8] [--views 8] [--batch 16] [--workers 2] [--slow 4] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from submission.clock import Deadlines  # noqa: E402
from submission.dispatch import Dispatcher  # noqa: E402
from submission.attempts import Prediction  # noqa: E402
from submission.launch import SubprocessLauncher  # noqa: E402
from submission.retry import RetryPolicy  # noqa: E402


class _SlowOne(Dispatcher):
    """Jobs of worker slot `slot` (static: -g<slot>, dynamic: -w<slot>) carry the slow fault."""

    def __init__(self, *a, slot: int, fault: str, **kw) -> None:
        super().__init__(*a, **kw)
        self.slot, self.fault = slot, fault

    def job(self, cls, name, phase, **fields):
        if name.endswith((f"-g{self.slot}", f"-w{self.slot}")):
            fields["fault"] = self.fault
        return super().job(cls, name, phase, **fields)


def _batch_seconds(ckpt: Path, challenges: Path, views: int, local: int) -> float:
    """Steady seconds of one local batch, one torch thread (as a worker runs)."""
    import torch

    from trm_core import checkpoint
    from trm_core.config import PredictConfig
    from trm_core.predict import predict
    from trm_core.recipes import model_for_tasks
    from trm_core.tasks import load_tasks

    torch.set_num_threads(1)
    tasks = load_tasks(challenges, strict=False, max_side=12)
    model, variants, _ = model_for_tasks(checkpoint.load(ckpt, verify=False), tasks, views, 0)
    marks: list[float] = []
    predict(model, variants, PredictConfig(num_views=views, batch_size=local),
            stop=lambda: len(marks) > 6, on_batch=lambda p, d, t: marks.append(time.perf_counter()))
    steady = [b - a for a, b in zip(marks[1:], marks[2:])]
    return sum(steady) / len(steady)


def _run(mode: str, args, folder: Path, challenges: Path, ids: list[str], fault: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    launcher = SubprocessLauncher(echo=lambda line: None, env=env)
    scratch = folder / mode
    t0 = time.time()
    # an hour to predict, killed 100 s past it; a heartbeat may pause 600 s
    times = replace(Deadlines.at_start(t0, t0 + 7200.0), grace_s=100.0)
    dispatch = _SlowOne(launcher, scratch, time.time, times, slot=1, fault=fault)
    dispatch.common = {"challenges": str(challenges), "task_ids": ids, "canvas": 12,
                       "checkpoint": str(args.checkpoint), "seed": 0, "fault": ""}
    tests = json.loads(challenges.read_text())
    per_task = {t: len(tests[t]["test"]) for t in ids}
    lines: list[str] = []
    p = Prediction(dispatch, RetryPolicy(1), times, lines.append, lines.append, None, scratch / "predictions",
                   args.workers, save_every_s=600.0, test_inputs=sum(per_task.values()), queue=mode, tasks=per_task)
    t0 = time.time()
    files, status, attempts = p.run(Path(args.checkpoint), "adapted", "predict", args.views, args.batch, t0 + 3600,
                                    None, provisional=False)
    phase = time.time() - t0
    shards = []
    for job in sorted((scratch / "jobs").iterdir()):
        result = json.loads((job / "result.rank0.json").read_text())
        shards.append({"job": job.name, "seconds": sum(s["seconds"] for s in result.get("shards", [])),
                       "rows": sum(s["records"] for s in result.get("shards", [])),
                       "items": len(result.get("items") or [])})
    if status != "ok":
        raise SystemExit(f"{mode}: the prediction ended {status}: {lines[-3:]}")
    return {"phase_s": phase, "workers": shards, "queue": p.record}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", type=Path, default=REPO / "pretrained" / "demo")
    ap.add_argument("--copies", type=int, default=8)
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--batch", type=int, default=16, help="global rows per batch (each worker: batch / workers)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--slow", type=float, default=4.0, help="how many times slower worker 1 is")
    ap.add_argument("--repeats", type=int, default=2, help="static then dynamic, this many times")
    args = ap.parse_args()
    raw = json.loads((REPO / "submission" / "placeholder" / "arc-agi_test_challenges.json").read_text())
    copies = {f"{t}c{c}": task for c in range(args.copies) for t, task in raw.items()}
    rows = sum(len(t["test"]) for t in copies.values()) * args.views
    local = args.batch // args.workers
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        challenges = folder / "challenges.json"
        challenges.write_text(json.dumps(copies))
        batch_s = _batch_seconds(args.checkpoint, challenges, args.views, local)
        fault = f"predict:slow:1:0:{(args.slow - 1) * batch_s:.4f}"
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
              f"python {platform.python_version()}")
        print(f"work: {len(copies)} tasks, {rows} rows ({args.views} views), global batch {args.batch} "
              f"({local} per worker), {args.workers} CPU worker processes, demo checkpoint; worker 1 made "
              f"{args.slow:g}x slower ({fault}, one batch {batch_s * 1000:.1f} ms)")
        for r in range(args.repeats):
            static = _run("static", args, folder / f"r{r}", challenges, list(copies), fault)
            dynamic = _run("dynamic", args, folder / f"r{r}", challenges, list(copies), fault)
            _report(r, static, dynamic, rows)


def _ideal(run: dict, rows: int) -> float:
    """The run's launch overhead (phase - the busiest worker's predicting time) plus all rows at
    the summed rates its workers predicted at: every worker busy until the end."""
    busiest = max(w["seconds"] for w in run["workers"])
    rate = sum(w["rows"] / w["seconds"] for w in run["workers"] if w["seconds"] > 0)
    return run["phase_s"] - busiest + rows / rate


def _report(r: int, static: dict, dynamic: dict, rows: int) -> None:
    s, d = static["phase_s"], dynamic["phase_s"]
    ideal_s, ideal_d = _ideal(static, rows), _ideal(dynamic, rows)
    print(f"run {r}:")
    print(f"  static : phase {s:.1f} s; per worker (predicting s, rows): "
          + ", ".join(f"{w['seconds']:.1f} s {w['rows']}" for w in static["workers"]))
    print(f"  dynamic: phase {d:.1f} s; {dynamic['queue']['items']} items; per worker (predicting s, rows, items): "
          + ", ".join(f"{w['seconds']:.1f} s {w['rows']} {w['items']}" for w in dynamic["workers"]))
    print(f"  ideal split at the static run's worker rates {ideal_s:.1f} s: static / ideal {s / ideal_s:.3f}, "
          f"dynamic / ideal {d / ideal_s:.3f}")
    print(f"  ideal split at the dynamic run's worker rates {ideal_d:.1f} s: dynamic / ideal {d / ideal_d:.3f}")
    print(f"  static / dynamic {s / d:.2f}")


if __name__ == "__main__":
    main()
