"""What a prediction leaves while it runs: the views its shards saved, the progress line, and
the tick that prints it and rewrites the provisional submission.

The prediction's attempts (submission/attempts.py `Prediction`) run one of two ways (QUEUES, the
runner's --predict-queue): static, one independent shard process per GPU (or CPU process), each
retried on its own by the one policy, so a failing shard loses only its own views; dynamic, one
long-lived worker per GPU taking work items (groups of whole tasks, largest first:
submission/workqueue.py) as it frees up, so one slow worker cannot hold the phase, and the retry
policy applies per item. Their shard files, `<folder>/<tag>-a<attempt>-r<rank>of<world>.npz`
(dynamic: `<folder>/<tag>-a<attempt>-q<item>-r<rank>of<world>.npz`), are saved as they go, so a
killed shard keeps what it did.

Input: the shard folder and the prediction's tag. Output: `saved_views` (views saved per shard,
read from the files' record columns), `Progress` (views saved of those planned, per shard, the rate
and the ETA, as one line) and `ticker` (while the workers work: that line every PROGRESS_EVERY_S,
so an hour of prediction is never silent, and a provisional submission.json from the shards saved
so far).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from submission.assemble import Answers


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


def ticker(log: Callable[[str], None], answers: Answers, folder: Path, clock: Callable[[], float], tag: str,
           planned: int, until: float, provisional: bool, provisional_every_s: float
           ) -> tuple[Callable[[], None], float]:
    """(the tick run while a prediction's workers work: a progress line every PROGRESS_EVERY_S, a
    provisional submission from the shards in `folder` every provisional_every_s; how often to call
    it). planned: views x test inputs; until: when the workers stop."""
    progress = Progress(tag, planned, until)
    due = {"provisional": clock() + provisional_every_s, "progress": clock() + PROGRESS_EVERY_S}

    def tick() -> None:
        now = clock()
        if now >= due["progress"]:
            log(progress.line(saved_views(folder, tag), now))
            due["progress"] = now + PROGRESS_EVERY_S
        if provisional and now >= due["provisional"]:
            answers.provisional(folder, tag)
            due["provisional"] = clock() + provisional_every_s
    return tick, min(PROGRESS_EVERY_S, provisional_every_s) if provisional else PROGRESS_EVERY_S
