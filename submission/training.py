"""What post-training leaves: run.json's "train" entry (planned vs done, the watchdog's re-plans,
per-task rows), the step a run folder's checkpoint reached, and a process group's timeout.

The training attempts themselves are submission/attempts.py `Training`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from submission.scheduler import Plan


def train_record(plan: Plan, result: dict[str, Any], watch: dict[str, Any], ckpt: Path | None) -> dict[str, Any]:
    """run.json's "train" entry: planned vs done, the watchdog's re-plans, the last metrics."""
    return {"steps_planned": plan.steps,
            "steps_done": result.get("steps_done", saved_step(ckpt.parent) if ckpt else 0),
            "stopped_early": result.get("stopped_early"), "samples_per_s": result.get("samples_per_s"),
            "seconds": result.get("seconds"), "first_metrics": result.get("first_metrics"),
            "last_metrics": result.get("last_metrics"), "checkpoint": str(ckpt) if ckpt else None,
            "replans": watch.get("replans", []), "stop_reason": watch.get("stop_reason"),
            "measured_step_s": watch.get("measured_step_s"), "micro_batch": result.get("micro_batch"),
            "compile": result.get("compile")}


def per_task(plan: Plan, tasks: int, run_dir: Path | None) -> dict[str, Any]:
    """run.json's "train.per_task": the rows the plan gives each task on average and, from the fit
    checks of per-task spending (metrics.jsonl), the fitted count at every check and the rows each
    task received (min, median, max)."""
    out: dict[str, Any] = {"rows_planned": round(plan.steps * plan.train_batch / max(tasks, 1), 1)}
    lines = []
    try:
        text = (run_dir / "metrics.jsonl").read_text() if run_dir else ""
    except OSError:
        text = ""
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("fit"), dict):
            lines.append(record)
    if lines:
        out["fitted"] = [[r.get("step"), r.get("fitted_tasks")] for r in lines]
        rows = sorted(int(f.get("rows", 0)) for f in lines[-1]["fit"].values() if isinstance(f, dict))
        if rows:
            out["rows"] = {"min": rows[0], "median": rows[len(rows) // 2], "max": rows[-1]}
    return out


def group_timeout(left_s: float) -> float:
    """A process group's timeout: a hung rendezvous or collective must fail while time is left to
    recover (a tenth of what is left, between 60 s and 10 minutes)."""
    return max(60.0, min(600.0, 0.1 * left_s))


def saved_step(out_dir: Path | None) -> int:
    """The step of the checkpoint a training folder holds (0 if none)."""
    if out_dir is None:
        return 0
    try:
        return int(json.loads((Path(out_dir) / "checkpoint" / "manifest.json").read_text())["train"]["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
