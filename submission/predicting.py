"""Prediction as the runner runs it: one independent shard process per GPU (or CPU process), each
retried on its own by the one policy, so a failing shard loses only its own views.

Input: a checkpoint, the views and global batch, the deadline, and the runner's dispatcher,
retry policy and answers. Output: the shard files `<folder>/<tag>-a<attempt>-r<rank>of<world>.npz`
(saved as they go, so a killed shard keeps what it did), the phase's status and its attempts;
while it runs, a provisional submission.json from the shards saved so far.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from submission.assemble import Answers
from submission.dispatch import Dispatcher
from submission.jobs import PredictJob
from submission.retry import RetryPolicy, Try


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
    settle: dict[str, Any] = field(default_factory=dict)  # early exit / adaptive views (RunnerOptions.settle)

    def run(self, ckpt: Path, tag: str, phase: str, views: int, batch: int, deadline: float, kill_at: float,
            batch_s: float | None, provisional: bool) -> tuple[list[str], str, list[dict[str, Any]]]:
        """(shard files, status ok | ok (after retries) | partial | failed, attempts). batch_s: the
        planned time of one prediction batch (the heartbeat limit), None when nothing was planned."""
        world = self.world
        if batch % world:
            batch = max(world, batch // world * world)
        pending = [Try("predict", predict_batch=batch, shards=((r, world),)) for r in range(world)]
        attempts: list[dict[str, Any]] = []
        files: set[str] = set()
        lost = 0  # shard groups that failed with no try left
        self.folder.mkdir(parents=True, exist_ok=True)
        tick = (lambda: self.answers.provisional(self.folder, tag)) if provisional else None
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
            outs = self.dispatch.run_many(jobs, kill_at, unit, tick, self.provisional_every_s, gpus)
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
