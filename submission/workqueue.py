"""The dynamic prediction queue: a prediction's views cut into work items, largest first, each taken
by whichever worker is free, so one slow worker (a slower GPU, a throttled one, a retried one)
cannot hold the whole phase the way a fixed shard per GPU does.

Input: the tasks to predict (their test inputs), the views per test input, the workers, the global
batch. Output: work items, kept as files in a queue folder the workers pull from:

    <queue>/todo/<order>-q<id>-a<attempt>.json   waiting; workers take the lowest <order> first
    <queue>/taken/<worker>--<file>               claimed (os.rename: exactly one worker gets it)
    <queue>/done/<file>                          predicted (its result record inside)

An item is a group of whole tasks in task order (a task's views are never split between items,
so a test input's vote reads one item's file); its size is its rows, views x test inputs, predicted
in batches of even size (`even_batch`: at most the worker's batch, so no item ends in a batch of
mostly padding). Items
hold at most 1/ITEMS_PER_WORKER of a worker's share and shrink as the rows left to cut do (guided
self-scheduling, TAIL), never below one batch; they are ordered largest first, so the last items
taken, the ones that decide when the phase ends, are the smallest: a worker 4x slower than the
others that takes one at the end delays the phase by little. Each item carries the retry policy's `Try`
(submission/retry.py): a worker that fails leaves its item in taken/; the runner gives that item
the policy's next try (out of memory: the same rows in half-size shards) back to todo/, or counts
it lost after max_attempts, and every other item is kept. Standard library only (the runner
imports this before torch); `only(variants, task_ids)` is what a worker predicts an item with.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from submission.retry import Try
from trm_core.safe_io import write_atomic

ITEMS_PER_WORKER = 8  # more items: a shorter tail on the slowest worker, more per-item overhead (a save each)
TAIL = 4  # items shrink towards the end: at most 1/TAIL of each worker's share of the rows still to cut


@dataclass(frozen=True)
class Item:
    """One work item: some whole tasks, predicted under the views of the job."""

    id: int
    order: int  # its place in the queue (0 = taken first): the largest items first
    task_ids: tuple[str, ...]
    rows: int  # views x test inputs: what it costs, in rows
    attempt: Try  # index, predict_batch (this item's rows per batch), shards [(rank, world)]

    @property
    def file(self) -> str:
        return f"{self.order:05d}-q{self.id}-a{self.attempt.index}.json"

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "order": self.order, "task_ids": list(self.task_ids), "rows": self.rows,
                "index": self.attempt.index, "predict_batch": self.attempt.predict_batch,
                "shards": [list(s) for s in self.attempt.shards], "why": self.attempt.why}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Item:
        try:
            t = Try("predict", index=int(d["index"]), predict_batch=int(d["predict_batch"]),
                    shards=tuple((int(r), int(w)) for r, w in d["shards"]), why=str(d.get("why", "")))
            item = cls(int(d["id"]), int(d["order"]), tuple(str(x) for x in d["task_ids"]), int(d["rows"]), t)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"a work item needs id, order, task_ids, rows, index, predict_batch and shards: {e}") \
                from None
        if not item.task_ids or item.attempt.predict_batch < 1 or not item.attempt.shards:
            raise ValueError(f"work item q{item.id}: needs task ids, a predict_batch >= 1 and shards")
        return item


def cut(rows_by_task: dict[str, int], workers: int, batch: int, per_worker: int = ITEMS_PER_WORKER) -> list[Item]:
    """The tasks (in their order, with their rows) grouped into items of at most about
    total / (workers x per_worker) rows, smaller as fewer rows are left to group (see TAIL) but
    not below `batch` (each item's rows per batch), then ordered largest first (ties keep task
    order). A task larger than its group's size is an item of its own."""
    total = sum(rows_by_task.values())
    cap = max(1, -(-total // max(1, workers * per_worker)))
    groups: list[tuple[list[str], int]] = []
    current: list[str] = []
    rows = 0
    left = total  # rows not yet in a closed group

    def target() -> int:  # guided: a group is at most cap, and at most 1/TAIL of each worker's share of what is left
        return max(1, batch, min(cap, -(-left // max(1, workers * TAIL))))

    for task_id, n in rows_by_task.items():
        if current and rows + n > target():  # a task that would overfill the group starts the next one
            groups.append((current, rows))
            current, left, rows = [], left - rows, 0
        current.append(task_id)
        rows += n
        if rows >= target():
            groups.append((current, rows))
            current, left, rows = [], left - rows, 0
    if current:
        groups.append((current, rows))
    ranked = sorted(range(len(groups)), key=lambda i: -groups[i][1])
    return [Item(i, order, tuple(groups[i][0]), groups[i][1],
                 Try("predict", predict_batch=even_batch(groups[i][1], batch), shards=((0, 1),)))
            for order, i in enumerate(ranked)]


def even_batch(rows: int, batch: int, multiple: int = 8) -> int:
    """Rows per batch for an item of `rows`: as many batches as `batch` needs, made even (rounded up
    to `multiple` rows, never above `batch`), so an item's last batch is not mostly padding: with
    whole-task items of a few batches each, padding every item's last batch would cost ~20% of the
    phase at the paper preset (65 items of ~5 batches, half a batch each), against < 1% this way."""
    batch = max(1, batch)
    n = -(-max(1, rows) // batch)
    even = -(-rows // n)
    return min(batch, -(-even // multiple) * multiple) if batch >= multiple else batch


class Queue:
    """The queue folder: put items, claim one (atomically), finish it, find what a dead worker held."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.todo, self.taken, self.done = (self.folder / s for s in ("todo", "taken", "done"))

    def make(self) -> Queue:
        for d in (self.todo, self.taken, self.done):
            d.mkdir(parents=True, exist_ok=True)
        return self

    def put(self, item: Item) -> None:
        write_atomic(self.todo / item.file, json.dumps(item.to_json()) + "\n")

    def claim(self, worker: str) -> Item | None:
        """The first item waiting, now this worker's (None when none is left). Two workers racing
        for one file: the rename succeeds for one, the other tries the next."""
        for f in sorted(self.todo.glob("*.json")):
            mine = self.taken / f"{worker}--{f.name}"
            try:
                os.rename(f, mine)
            except FileNotFoundError:
                continue  # another worker took it first
            return Item.from_json(json.loads(mine.read_text()))
        return None

    def finish(self, worker: str, item: Item, result: dict[str, Any]) -> None:
        """Record the item as predicted, with the worker's result (records, seconds, complete)."""
        write_atomic(self.done / item.file, json.dumps({**item.to_json(), "worker": worker, **result}) + "\n")
        (self.taken / f"{worker}--{item.file}").unlink(missing_ok=True)

    def held(self, worker: str) -> list[Item]:
        """Items `worker` claimed and did not finish (it failed with them)."""
        return [Item.from_json(json.loads(f.read_text())) for f in sorted(self.taken.glob(f"{worker}--*.json"))]

    def release(self, worker: str, item: Item) -> None:
        (self.taken / f"{worker}--{item.file}").unlink(missing_ok=True)

    def waiting(self) -> int:
        return len(list(self.todo.glob("*.json")))

    def finished(self) -> list[dict[str, Any]]:
        return [json.loads(f.read_text()) for f in sorted(self.done.glob("*.json"))]


def retried(item: Item, nxt: Try) -> Item:
    """The item with the retry policy's next try."""
    return replace(item, attempt=nxt)


class _Only:
    """The part of a `Variants` map that trm_core.batches.PredictViews reads, for some of its tasks:
    their tasks, counts and code rows keep the full map's identifiers, so the model's embedding
    rows (one per variant of every task it was built for) are the ones each view reads."""

    def __init__(self, variants: Any, task_ids: tuple[str, ...]) -> None:
        import numpy as np

        index = [variants.task_index(t) for t in task_ids]
        self.tasks = {t: variants.tasks[t] for t in task_ids}
        self.codes = variants.codes
        self.offsets = np.asarray([variants.offsets[i] for i in index], dtype=np.int64)  # task i's first code row
        self._counts = np.asarray([variants.offsets[i + 1] - variants.offsets[i] for i in index], dtype=np.int64)

    def counts(self) -> Any:
        return self._counts


def only(variants: Any, task_ids: tuple[str, ...]) -> Any:
    """`variants` restricted to `task_ids` for prediction (a task not in it: KeyError naming it)."""
    return _Only(variants, task_ids)
