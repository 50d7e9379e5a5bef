"""Post-training as the runner runs it: a torchrun group per attempt, retried by the one policy.

Input: the plan, the calibration, the tasks, and the runner's dispatcher, retry policy and
planner. Output: the checkpoint to predict with (the finished run's, or the last one a failed
attempt saved), the phase's status, the plan as it ended (re-plans after a retry and the
watchdog's view count) and run.json's "train" entry. Out of memory resumes the same run folder
with smaller micro-batches; a run folder is named by its world size and global batch, so a run
with another batch starts fresh.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from submission.clock import Deadlines
from submission.dispatch import Dispatcher, Outcome
from submission.jobs import TrainJob
from submission.planning import Planner
from submission.retry import RetryPolicy, Try
from submission.scheduler import Calibration, Plan
from trm_core.checkpoint_recipe import describe_settings


@dataclass
class Training:
    dispatch: Dispatcher
    retry: RetryPolicy
    planner: Planner
    scratch: Path
    log: Callable[[str], None]
    problem: Callable[[str], None]
    times: Deadlines  # the run's, as the phase starts: each attempt's stop is its plan's, its kill from these
    seed: int = 0

    def run(self, tasks: Any, cal: Calibration, p: Plan, world: int) -> tuple[Path | None, str, Plan, dict[str, Any],
                                                                             list[dict[str, Any]]]:
        """(checkpoint or None, status ok | partial | failed, the final plan, record, attempts)."""
        attempts: list[dict[str, Any]] = []
        adapted = partial = None
        watch: dict[str, Any] = {}
        result: dict[str, Any] = {}
        trained_views: dict[Path, int] = {}  # a resumed run keeps its variants (its sampler checks them)
        t: Try | None = Try("train", world=world, train_batch=p.train_batch, micro_batch=cal.train_micro_batch)
        while t is not None:
            out_dir = self.scratch / f"train-w{t.world}-b{t.train_batch}"
            resume_at = saved_step(out_dir)
            if t.index:
                again = self.planner.plan(tasks, cal, world=t.world, train_batch=t.train_batch, steps_done=resume_at)
                if again.steps <= resume_at:
                    self.log("no time left for another training attempt")
                    break
                p = again
                if resume_at and out_dir in trained_views:
                    p = replace(p, views=min(p.views, trained_views[out_dir]))
            out = self.once(t, p, out_dir, resume_at, trained_views.setdefault(out_dir, p.views), cal)
            attempts.append({**out.summary(), "world": t.world, "train_batch": t.train_batch,
                             "micro_batch": t.micro_batch, "resume_at": resume_at})
            watch = _read_json(self.scratch / "jobs" / out.name / "watchdog.json") or watch
            if out.ok:
                result = out.results[0] if out.results else {}
                adapted = Path(result["checkpoint"]) if result.get("checkpoint") else None
                break
            if (out_dir / "checkpoint" / "manifest.json").is_file():
                partial = out_dir / "checkpoint"
            t = self.retry.next(out.error, out.part, t)
            if t is not None:
                self.log(t.why)
        if watch.get("final_plan"):
            p = replace(p, views=min(p.views, Plan.from_json(watch["final_plan"]).views))
        ckpt = adapted or partial
        status = "ok" if adapted else ("partial" if partial else "failed")
        record = train_record(p, result, watch, ckpt)
        record["settings"] = self.planner.train_config(p)  # the recipe's choices for the plan it ended on
        record["spend"] = self.planner.fit_schedule(p, cal) or "uniform"
        record["per_task"] = per_task(p, len(tasks), ckpt.parent if ckpt else None)
        return ckpt, status, p, record, attempts

    def once(self, t: Try, p: Plan, out_dir: Path, resume_at: int, views: int, cal: Calibration) -> Outcome:
        """One training attempt along plan `p`, as a torchrun group of t.world processes."""
        kill_at = self.times.train_kill(p.train_deadline, cal.save_s)
        name = f"train-a{t.index}"
        train = self.planner.train_config(p, t.micro_batch)
        self.log(f"{name}: {p.steps - resume_at} steps of {t.train_batch} on {t.world} x {self.dispatch.device}"
                 + (f", resuming at step {resume_at}" if resume_at else "") + f"; recipe: {describe_settings(train)}")
        fit = self.planner.fit_schedule(p, cal)
        if fit:
            self.log(f"{name}: per-task spending, a fit check every {fit['every']} steps")
        job = self.dispatch.job(TrainJob, name, "train", plan=p.to_json(), train=train, fit=fit,
                                pg_timeout_s=group_timeout(self.times.left_s(self.dispatch.clock())),
                                data={"num_variants": max(0, views - 1), "variant_seed": self.seed,
                                      "sampler_seed": self.seed},
                                out_dir=str(out_dir), deadline=p.train_deadline, attempt=t.index,
                                heartbeat=self.dispatch.heartbeat(name))
        out = self.dispatch.run_one(job, kill_at, nprocs=t.world, unit_s=p.step_s)
        if not out.ok:
            self.problem(out.describe())
        return out


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


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
