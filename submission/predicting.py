"""Prediction as the runner runs it: one independent shard process per GPU (or CPU process), each
retried on its own by the one policy, so a failing shard loses only its own views.

Input: a checkpoint, the views and global batch, the deadline, and the runner's dispatcher,
retry policy and answers. Output: the shard files `<folder>/<tag>-a<attempt>-r<rank>of<world>.npz`
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


PROGRESS_EVERY_S = 30.0  # a progress line at least this often while the shards predict
_SHARD = re.compile(r"-a(\d+)-r(\d+)of(\d+)\.npz$")


def saved_views(folder: Path, tag: str) -> dict[str, int]:
    """Views saved so far per shard ("r<rank>of<world>": records in its latest attempt's file, the
    most of any attempt), read from the files' record columns only; a file being replaced or not
    readable counts as nothing."""
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
        key = f"r{m.group(2)}of{m.group(3)}"
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
        shards = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
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
        tick_every = min(PROGRESS_EVERY_S, self.provisional_every_s) if provisional else PROGRESS_EVERY_S
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
