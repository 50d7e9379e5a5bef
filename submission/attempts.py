"""The runner's jobs, side by side: calibration, training and prediction attempts.

Every phase that runs a job has the same shape: launch it (a typed job file, submission/jobs.py)
with its stop and kill instants taken from the run's `Deadlines` (submission/clock.py), watch it
through the dispatcher (results written, heartbeat, kill instant: submission/dispatch.py), read its
`Outcome`, and ask the one RetryPolicy (submission/retry.py) for the next try or give up:

    phase        each attempt                    stops by                  killed at
    Calibrating  one process, unit times         -                         kill_after(calibration_limit_s)
    Training     a torchrun group, a checkpoint  the plan's train stop     train_kill(stop, save_s)
    Prediction   a shard or a worker per GPU     the plan's predict stop,  predict_kill(stop)
                 (a work queue), shard files     else the last stop

Each class holds what its attempts share (dispatcher, retry policy, deadlines, log, problem) and
its `run` returns what the phase made, its status (ok | ok (after retries) | partial | failed)
and each attempt's summary for run.json. What the numbers are (the plan, the training config) is
submission/planning.py; what a phase leaves behind is training.py (the training record) and
predicting.py (saved views, the progress line).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from submission.assemble import Answers
from submission.clock import Deadlines
from submission.dispatch import Dispatcher, Outcome
from submission.jobs import CalibrateJob, PredictJob, TrainJob
from submission.planning import Planner
from submission.predicting import QUEUES, ticker
from submission.retry import RetryPolicy, Try
from submission.scheduler import Calibration, Plan
from submission.training import group_timeout, per_task, read_json, saved_step, train_record
from submission.workqueue import Queue, cut, retried
from trm_core.config import describe_settings

# calibration beats at every step and batch, but one unit may hold a cold start or a compilation:
# its heartbeat may pause 10 x this (or the run's stall_s, if longer) before the job counts as hung
CALIBRATION_UNIT_S = 3.0


@dataclass
class Calibrating:
    """Measure the unit times (a training step, a prediction batch, launch, save) in one process,
    at the planner's per-process batches."""

    dispatch: Dispatcher
    retry: RetryPolicy
    times: Deadlines  # the run's, as the phase starts: an attempt runs calibration_limit_s at most
    log: Callable[[str], None]
    problem: Callable[[str], None]
    planner: Planner

    def run(self) -> tuple[Calibration | None, str, list[dict[str, Any]]]:
        """(the measured unit times or None, status ok | failed, attempts)."""
        planner, clock = self.planner, self.dispatch.clock
        train_b, pred_b = planner.batches()
        views = planner.opts.smoke_views if planner.mode == "smoke" else planner.opts.views_target
        limit_s = self.times.calibration_limit_s(clock())
        attempts: list[dict[str, Any]] = []
        t: Try | None = Try("calibrate", train_batch=train_b // planner.world, predict_batch=pred_b // planner.world)
        while t is not None:
            kill_at = self.times.kill_after(clock(), limit_s)
            if kill_at - clock() < 1.0:
                break
            name = f"calibrate-a{t.index}"
            job = self.dispatch.job(CalibrateJob, name, "calibrate", train_batch=t.train_batch,
                                    predict_batch=t.predict_batch, views=views, attempt=t.index,
                                    heartbeat=self.dispatch.heartbeat(name))
            out = self.dispatch.run_one(job, kill_at, unit_s=CALIBRATION_UNIT_S)
            attempts.append(out.summary())
            if out.ok:
                c = out.results[0]["calibration"]
                ready = out.ready_at or out.launched_at
                # a launch costs start-up (imports, loading) plus tear-down (exit), both measured here
                launch_s = max(0.0, ready - out.launched_at) + out.teardown_s
                return Calibration.from_json({**c, "launch_s": launch_s}), "ok", attempts
            self.problem(out.describe())
            t = self.retry.next(out.error, out.part, t)
            if t is not None:
                self.log(t.why)
        return None, "failed", attempts


@dataclass
class Training:
    """Post-train along a plan: a torchrun group per attempt; out of memory resumes the same run
    folder with smaller micro-batches (a run folder is named by its world size and global batch, so
    a run with another batch starts fresh), a retry is planned again from where the last one saved."""

    dispatch: Dispatcher
    retry: RetryPolicy
    times: Deadlines  # the run's, as the phase starts: each attempt stops by its plan's train stop
    log: Callable[[str], None]
    problem: Callable[[str], None]
    planner: Planner
    scratch: Path  # run folders train-w<world>-b<batch>/ go here
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
            watch = read_json(self.scratch / "jobs" / out.name / "watchdog.json") or watch
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
        record["settings"] = asdict(self.planner.train_config(p))  # the recipe's choices for the plan it ended on
        record["spend"] = self.planner.fit_schedule(p, cal) or "uniform"
        record["per_task"] = per_task(p, len(tasks), ckpt.parent if ckpt else None)
        return ckpt, status, p, record, attempts

    def once(self, t: Try, p: Plan, out_dir: Path, resume_at: int, views: int, cal: Calibration) -> Outcome:
        """One training attempt along plan `p`, as a torchrun group of t.world processes. It stops by
        the plan's train stop (read by the worker from the plan in its job file; its watchdog may
        move it sooner) and is killed at times.train_kill."""
        kill_at = self.times.train_kill(p.train_deadline, cal.save_s)
        name = f"train-a{t.index}"
        train = self.planner.train_config(p, t.micro_batch)
        self.log(f"{name}: {p.steps - resume_at} steps of {t.train_batch} on {t.world} x {self.dispatch.device}"
                 + (f", resuming at step {resume_at}" if resume_at else "") + f"; recipe: {describe_settings(asdict(train))}")
        fit = self.planner.fit_schedule(p, cal)
        if fit:
            self.log(f"{name}: per-task spending, a fit check every {fit['every']} steps")
        job = self.dispatch.job(TrainJob, name, "train", plan=p.to_json(), train=train, fit=fit,
                                pg_timeout_s=group_timeout(self.times.left_s(self.dispatch.clock())),
                                data={"num_variants": max(0, views - 1), "variant_seed": self.seed,
                                      "sampler_seed": self.seed},
                                out_dir=str(out_dir), attempt=t.index,
                                heartbeat=self.dispatch.heartbeat(name))
        out = self.dispatch.run_one(job, kill_at, nprocs=t.world, unit_s=p.step_s)
        if not out.ok:
            self.problem(out.describe())
        return out


@dataclass
class Prediction:
    """Predict the views of every test input: static shards, or a dynamic work queue (QUEUES)."""

    dispatch: Dispatcher
    retry: RetryPolicy
    times: Deadlines  # the run's, as the phase starts: the kill instant of a prediction that stops by `stop`
    log: Callable[[str], None]
    problem: Callable[[str], None]
    answers: Answers  # rewritten provisionally from the shards saved so far
    folder: Path  # where the shard files go
    world: int  # shard processes
    save_every_s: float = 60.0  # a shard saves what it has this often
    provisional_every_s: float = 60.0  # submission.json is rewritten from the shards this often
    test_inputs: int = 0  # of the tasks predicted: views x test_inputs views are planned
    settle: dict[str, Any] = field(default_factory=dict)  # early exit / adaptive views (RunnerOptions.settle)
    queue: str = "static"  # QUEUES: static shards, or a dynamic work queue (submission/workqueue.py)
    tasks: dict[str, int] = field(default_factory=dict)  # test inputs per task, in task order (dynamic)
    record: dict[str, Any] = field(default_factory=dict)  # the queue's items: who took what (dynamic)

    def run(self, ckpt: Path, tag: str, phase: str, views: int, batch: int, stop: float, batch_s: float | None,
            provisional: bool) -> tuple[list[str], str, list[dict[str, Any]]]:
        """(shard files, status ok | ok (after retries) | partial | failed, attempts). The workers stop
        by `stop` and are killed at times.predict_kill(stop). batch_s: the planned time of one
        prediction batch (the heartbeat limit), None when nothing was planned."""
        if self.queue not in QUEUES:
            raise ValueError(f"Prediction.queue must be one of {QUEUES}, got {self.queue!r}")
        run = self._run_queue if self.queue == "dynamic" else self._run_static
        return run(ckpt, tag, phase, views, batch, stop, self.times.predict_kill(stop), batch_s, provisional)

    def _ticker(self, tag: str, views: int, stop: float, provisional: bool) -> tuple[Callable[[], None], float]:
        return ticker(self.log, self.answers, self.folder, self.dispatch.clock, tag, views * self.test_inputs, stop,
                      provisional, self.provisional_every_s)

    def _run_static(self, ckpt: Path, tag: str, phase: str, views: int, batch: int, deadline: float,
                    kill_at: float, batch_s: float | None, provisional: bool
                    ) -> tuple[list[str], str, list[dict[str, Any]]]:
        """Each GPU (CPU process) one shard of every global batch, retried on its own."""
        world = self.world
        if batch % world:
            batch = max(world, batch // world * world)
        pending = [Try("predict", predict_batch=batch, shards=((r, world),)) for r in range(world)]
        attempts: list[dict[str, Any]] = []
        files: set[str] = set()
        lost = 0  # shard groups that failed with no try left
        self.folder.mkdir(parents=True, exist_ok=True)
        tick, tick_every = self._ticker(tag, views, deadline, provisional)
        while pending and kill_at - self.dispatch.clock() > 0.05:
            a = pending[0].index
            names = [f"{tag}-a{a}-g{i}" for i in range(len(pending))]
            jobs = [self.dispatch.job(PredictJob, name, phase, checkpoint=str(ckpt), shards=[list(s) for s in t.shards],
                                      views=views, predict_batch=batch, deadline=deadline,
                                      prefix=f"{self.folder / tag}-a{a}", save_every_s=self.save_every_s, attempt=a,
                                      settle=self.settle,
                                      heartbeat=self.dispatch.heartbeat(name))
                    for name, t in zip(names, pending)]
            unit = batch_s * max(len(t.shards) for t in pending) if batch_s is not None else None
            gpus = [i % world if self.dispatch.device == "cuda" else None for i in range(len(jobs))]
            outs = self.dispatch.run_many(jobs, kill_at, unit, tick, tick_every, gpus)
            files.update(str(f) for f in self.folder.glob(f"{tag}-a{a}-r*of*.npz"))
            retry: list[Try] = []
            for t, out in zip(pending, outs):
                attempts.append({**out.summary(), "shards": [list(s) for s in t.shards],
                                 "compile": next((r["compile"] for r in out.results if "compile" in r), None)})
                if out.ok:
                    continue
                self.problem(out.describe())
                nxt = self.retry.next(out.error, out.part, t)
                if nxt is None:
                    lost += 1
                    continue
                self.log(nxt.why)
                retry.append(nxt)
            pending = retry
        failed = any(not a["ok"] for a in attempts)
        status = "failed" if not files else "partial" if pending or lost else "ok (after retries)" if failed else "ok"
        return sorted(files), status, attempts

    def _run_queue(self, ckpt: Path, tag: str, phase: str, views: int, batch: int, deadline: float,
                   kill_at: float, batch_s: float | None, provisional: bool
                   ) -> tuple[list[str], str, list[dict[str, Any]]]:
        """One long-lived worker per GPU (CPU process) taking work items, largest first, until none is
        left. A worker that fails costs the item it held: the retry policy gives that item its next
        try (back in the queue, for whichever worker is free next) or gives it up; the items done
        stay done. Workers that failed are started again, in rounds, while items wait."""
        if not self.tasks:
            raise ValueError("a dynamic prediction queue needs Prediction.tasks (test inputs per task)")
        world = self.world
        local = max(1, batch // world)  # each worker's rows per batch: a static shard's
        queue = Queue(self.folder / f"{tag}-queue").make()
        items = cut({t: views * n for t, n in self.tasks.items()}, world, local)
        for item in items:
            queue.put(item)
        self.log(f"{tag} prediction: {len(items)} work items for {world} worker(s), largest first "
                 f"({items[0].rows} to {items[-1].rows} rows)")
        attempts: list[dict[str, Any]] = []
        given_up: list[int] = []
        retried_items: list[int] = []
        futile = Try("predict")  # rounds in which every worker failed before finishing an item
        tick, tick_every = self._ticker(tag, views, deadline, provisional)
        rounds = 0
        while queue.waiting() and kill_at - self.dispatch.clock() > 0.05 and self.dispatch.clock() < deadline:
            names = [f"{tag}-q{rounds}-w{i}" for i in range(min(world, queue.waiting()))]
            jobs = [self.dispatch.job(PredictJob, name, phase, checkpoint=str(ckpt), shards=[[0, 1]], views=views,
                                      predict_batch=local, deadline=deadline, prefix=str(self.folder / tag),
                                      save_every_s=self.save_every_s, attempt=rounds,
                                      heartbeat=self.dispatch.heartbeat(name), queue=str(queue.folder),
                                      settle=self.settle)
                    for name in names]
            gpus = [i % world if self.dispatch.device == "cuda" else None for i in range(len(jobs))]
            outs = self.dispatch.run_many(jobs, kill_at, batch_s, tick, tick_every, gpus)
            progress_made = False
            for job, out in zip(jobs, outs):
                done = [it for r in out.results for it in r.get("items") or []]
                progress_made = progress_made or bool(done)
                attempts.append({**out.summary(), "items": [it["id"] for it in done],
                                 "compile": next((r["compile"] for r in out.results if "compile" in r), None)})
                if not out.ok:
                    self.problem(out.describe())
                for item in queue.held(job.name):
                    queue.release(job.name, item)
                    nxt = self.retry.next(out.error or "died", out.part, item.attempt)
                    if nxt is None:
                        given_up.append(item.id)
                        self.problem(f"work item q{item.id} ({len(item.task_ids)} task(s)) given up after "
                                     f"{item.attempt.index + 1} attempt(s): its tasks keep what it saved, "
                                     "or the fallback")
                        continue
                    self.log(f"work item q{item.id}: {nxt.why}")
                    queue.put(retried(item, nxt))
                    retried_items.append(item.id)
            rounds += 1
            if not progress_made and not any(not o.ok for o in outs):
                break  # nothing failed and nothing was done: another round would do the same
            if not progress_made:
                nxt = self.retry.next(next((o.error for o in outs if o.error), "died"), None, futile)
                if nxt is None:
                    break
                futile = nxt
        finished = queue.finished()
        self.record = {"items": len(items), "per_worker": self._per_worker(finished, world),
                       "retried": sorted(set(retried_items)), "given_up": given_up, "left": queue.waiting(),
                       "rounds": rounds, "incomplete": [d["id"] for d in finished if not d.get("complete")]}
        files = sorted(str(f) for f in self.folder.glob(f"{tag}-a*-q*-r*of*.npz"))
        failed = any(not a["ok"] for a in attempts)
        short = given_up or queue.waiting() or self.record["incomplete"]
        status = "failed" if not files else "partial" if short else "ok (after retries)" if failed else "ok"
        return files, status, attempts

    @staticmethod
    def _per_worker(finished: list[dict[str, Any]], world: int) -> dict[str, dict[str, float]]:
        """Items and rows each worker slot (w<i>, every round together) predicted, and its seconds."""
        out = {f"w{i}": {"items": 0, "rows": 0, "seconds": 0.0} for i in range(world)}
        for d in finished:
            slot = str(d.get("worker", "")).rsplit("-", 1)[-1]
            if slot in out:
                out[slot]["items"] += 1
                out[slot]["rows"] += int(d.get("rows", 0))
                out[slot]["seconds"] += float(d.get("seconds", 0.0))
        return out
