"""Prediction as the runner runs it, one of two ways (QUEUES, the runner's --predict-queue):
static, one independent shard process per GPU (or CPU process), each retried on its own by the one
policy, so a failing shard loses only its own views; dynamic, one long-lived worker per GPU taking
work items (groups of whole tasks, largest first: submission/workqueue.py) as it frees up, so one
slow worker cannot hold the phase, and the retry policy applies per item.

Input: a checkpoint, the views and global batch, the deadline, and the runner's dispatcher,
retry policy and answers. Output: the shard files `<folder>/<tag>-a<attempt>-r<rank>of<world>.npz`
(dynamic: `<folder>/<tag>-a<attempt>-q<item>-r<rank>of<world>.npz`, and the queue's record of who
took which item)
(saved as they go, so a killed shard keeps what it did), the phase's status and its attempts;
while it runs, a provisional submission.json from the shards saved so far, and every
PROGRESS_EVERY_S a progress line (`Progress`: views saved of those planned, per shard, the rate
and the ETA), so an hour of prediction is never silent.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from submission.assemble import Answers
from submission.dispatch import Dispatcher
from submission.jobs import PredictJob
from submission.retry import RetryPolicy, Try
from submission.workqueue import Queue, cut, retried


PROGRESS_EVERY_S = 30.0  # a progress line at least this often while the shards predict
_SHARD = re.compile(r"-a(\d+)-((?:q\d+-)?r\d+of\d+)\.npz$")  # a shard, or a work item's shard (-q<item>)
QUEUES = ("static", "dynamic")  # --predict-queue: a fixed shard per GPU, or work items taken as workers free up


def saved_views(folder: Path, tag: str) -> dict[str, int]:
    """Views saved so far per shard ("r<rank>of<world>", or "q<item>-r<rank>of<world>" for a work
    item: records in its latest attempt's file, the most of any attempt), read from the files'
    record columns only; a file being replaced or not readable counts as nothing."""
    import numpy as np

    counts: dict[str, int] = {}
    for f in sorted(Path(folder).glob(f"{tag}-a*-r*of*.npz")):
        m = _SHARD.search(f.name)
        if m is None or not f.name.startswith(f"{tag}-a"):
            continue  # a temporary file (".tmp.npz") mid-save
        try:
            with np.load(f, allow_pickle=False) as z:
                n = int(z["variant"].shape[0])
        except Exception:  # noqa: BLE001 - progress is a view; the vote reports unreadable shards
            continue
        key = m.group(2)
        counts[key] = max(counts.get(key, 0), n)
    return counts


def _duration(s: float) -> str:
    s = max(0.0, s)
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"


@dataclass
class Progress:
    """Prediction progress as one line: views saved of those planned (views x test inputs), each
    shard's count, the rate since the first views were saved (launch and warm-up left out) and
    the ETA, against the time left before the shards stop. The shards save every
    save_every_s, so the figures trail the work by that much."""

    tag: str
    planned: int  # views x test inputs, all shards together
    until: float  # when the shards stop (their deadline)
    first: tuple[float, int] | None = field(default=None)  # (time, views) when views were first seen

    def line(self, counts: dict[str, int], now: float) -> str:
        done = sum(counts.values())
        share = f" ({100 * done / self.planned:.0f}%)" if self.planned else ""
        shards = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) if len(counts) <= 8 else \
            f"{len(counts)} files"  # a work queue's items: too many to name
        text = f"{self.tag} prediction: {done}/{self.planned} views saved{share}" + (f" [{shards}]" if shards else "")
        if done and self.first is None:
            self.first = (now, done)
        left = self.until - now
        if self.first is not None and now > self.first[0] and done > self.first[1]:
            rate = (done - self.first[1]) / (now - self.first[0])
            eta = max(0, self.planned - done) / rate
            late = f", past the {_duration(left)} left: the rest is cut" if eta > left else ""
            text += f"; {rate:.1f} views/s, ETA {_duration(eta)}{late}"
        else:
            text += f"; ETA after the next save, {_duration(left)} left"
        return text


@dataclass
class Prediction:
    dispatch: Dispatcher
    retry: RetryPolicy
    answers: Answers
    log: Callable[[str], None]
    problem: Callable[[str], None]
    folder: Path  # where the shard files go
    world: int  # shard processes
    save_every_s: float = 60.0  # a shard saves what it has this often
    provisional_every_s: float = 60.0  # submission.json is rewritten from the shards this often
    test_inputs: int = 0  # of the tasks predicted: views x test_inputs views are planned
    settle: dict[str, Any] = field(default_factory=dict)  # early exit / adaptive views (RunnerOptions.settle)
    queue: str = "static"  # QUEUES: static shards, or a dynamic work queue (submission/workqueue.py)
    tasks: dict[str, int] = field(default_factory=dict)  # test inputs per task, in task order (dynamic)
    record: dict[str, Any] = field(default_factory=dict)  # the queue's items: who took what (dynamic)

    def run(self, ckpt: Path, tag: str, phase: str, views: int, batch: int, deadline: float, kill_at: float,
            batch_s: float | None, provisional: bool) -> tuple[list[str], str, list[dict[str, Any]]]:
        """(shard files, status ok | ok (after retries) | partial | failed, attempts). batch_s: the
        planned time of one prediction batch (the heartbeat limit), None when nothing was planned."""
        if self.queue not in QUEUES:
            raise ValueError(f"Prediction.queue must be one of {QUEUES}, got {self.queue!r}")
        run = self._run_queue if self.queue == "dynamic" else self._run_static
        return run(ckpt, tag, phase, views, batch, deadline, kill_at, batch_s, provisional)

    def _ticker(self, tag: str, views: int, deadline: float, provisional: bool) -> tuple[Callable[[], None], float]:
        """(the tick run while the workers work: a progress line every PROGRESS_EVERY_S, a provisional
        submission every provisional_every_s; how often to call it)."""
        clock = self.dispatch.clock
        progress = Progress(tag, views * self.test_inputs, deadline)
        due = {"provisional": clock() + self.provisional_every_s, "progress": clock() + PROGRESS_EVERY_S}

        def tick() -> None:
            now = clock()
            if now >= due["progress"]:
                self.log(progress.line(saved_views(self.folder, tag), now))
                due["progress"] = now + PROGRESS_EVERY_S
            if provisional and now >= due["provisional"]:
                self.answers.provisional(self.folder, tag)
                due["provisional"] = clock() + self.provisional_every_s
        return tick, min(PROGRESS_EVERY_S, self.provisional_every_s) if provisional else PROGRESS_EVERY_S

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
