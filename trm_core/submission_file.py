"""Kaggle submission file: build it from a vote, validate it, repair it, write it atomically.

Inputs: the challenges (the Kaggle `*_challenges.json` content: {task_id: {"train": [...],
"test": [{"input": grid}, ...]}}), a `Vote` (trm_core.vote) or any submission-like object.
Outputs: the submission {task_id: [{"attempt_1": grid, "attempt_2": grid}, ...]} with every task of
the challenges, one entry per test input in order, both attempts present, each grid a rectangular
list of lists of ints 0..9 with 1..30 rows and columns; a list of `Problem`s naming exactly what is
wrong with a file; a repaired submission that always validates.

Nothing here skips a test input: where the vote has nothing usable the fallback guess (the test
input itself, cut to 30x30) is written instead, so a missing prediction costs one answer, not the
day's submission.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trm_core import jsonio, safe_io
from trm_core.safe_io import MAX_SIDE, grid_problem
from trm_core.vote import Vote

ATTEMPT_KEYS = ("attempt_1", "attempt_2")
Grid = list[list[int]]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a submission (or, in a repair report, one thing that was fixed)."""

    message: str
    task_id: str | None = None
    test_index: int | None = None
    attempt: str | None = None

    def __str__(self) -> str:
        where = []
        if self.task_id is not None:
            where.append(f"task {self.task_id}")
        if self.test_index is not None:
            where.append(f"test {self.test_index}")
        if self.attempt is not None:
            where.append(self.attempt)
        return f"{', '.join(where)}: {self.message}" if where else self.message


class SubmissionError(ValueError):
    """A submission that would be rejected; .problems lists why."""

    def __init__(self, problems: list[Problem], where: str = "submission") -> None:
        self.problems = problems
        shown = "\n  ".join(str(p) for p in problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        super().__init__(f"{where}: {len(problems)} problem(s):\n  {shown}{more}")


# ---------------------------------------------------------------------------------------------
# Challenges
# ---------------------------------------------------------------------------------------------


def load_json(path: str | Path) -> object:
    """Parse a JSON file by the rules of trm_core.jsonio (BOM, repeated keys, limits); errors
    (JSONInputError, a ValueError) name the file and the position."""
    return jsonio.load(path)


def challenge_inputs(challenges: Mapping, where: str = "challenges") -> dict[str, list]:
    """{task_id: [test input grid, ...]} in challenge order, from Kaggle challenges content."""
    if not isinstance(challenges, Mapping):
        raise ValueError(f"{where}: expected a JSON object of tasks, got {type(challenges).__name__}")
    out = {}
    for task_id, task in challenges.items():
        tests = task.get("test") if isinstance(task, Mapping) else None
        if not isinstance(tests, list) or not tests:
            raise ValueError(f"{where}: task {task_id} has no 'test' list of inputs")
        grids = []
        for i, pair in enumerate(tests):
            if not isinstance(pair, Mapping) or "input" not in pair:
                raise ValueError(f"{where}: task {task_id} test {i} has no 'input' grid")
            grids.append(pair["input"])
        out[str(task_id)] = grids
    return out


# ---------------------------------------------------------------------------------------------
# Grids
# ---------------------------------------------------------------------------------------------


def to_grid(grid: np.ndarray | list) -> Grid:
    """A plain list-of-lists of ints from an array-like grid [h, w]."""
    return [[int(v) for v in row] for row in np.asarray(grid).tolist()]


def fallback_grid(test_input: object) -> Grid:
    """The guess used where nothing better exists: the test input itself, cut to its top-left
    30x30; [[0]] if the input is not a usable rectangular grid of ints 0..9."""
    if isinstance(test_input, np.ndarray):
        test_input = test_input.tolist()
    return safe_io.fallback_grid(test_input)


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def validate(submission: object, challenges: Mapping) -> list[Problem]:
    """Every problem that would make Kaggle reject `submission` for these challenges ([] = valid).

    Checks: a JSON object; every challenge task present, no extra task; per task a list with one
    entry per test input; each entry an object with exactly attempt_1 and attempt_2; each grid
    valid (see grid_problem).
    """
    counts = {t: len(g) for t, g in challenge_inputs(challenges).items()}
    if not isinstance(submission, Mapping):
        return [Problem(f"submission is not a JSON object of tasks (got {type(submission).__name__})")]
    problems = []
    for task_id in counts:
        if task_id not in submission:
            problems.append(Problem(f"missing task (expected {counts[task_id]} entries)", task_id))
    for task_id, entries in submission.items():
        if task_id not in counts:
            problems.append(Problem("extra task, not in the challenges", str(task_id)))
            continue
        if not isinstance(entries, list):
            problems.append(Problem(f"expected a list of {counts[task_id]} attempt objects, got "
                                    f"{type(entries).__name__}", task_id))
            continue
        if len(entries) != counts[task_id]:
            problems.append(Problem(f"has {len(entries)} entries, expected {counts[task_id]} "
                                    "(one per test input)", task_id))
        for i, entry in enumerate(entries):
            if not isinstance(entry, Mapping):
                problems.append(Problem(f"entry is not an object with attempt_1/attempt_2 (got "
                                        f"{type(entry).__name__})", task_id, i))
                continue
            for key in entry:
                if key not in ATTEMPT_KEYS:
                    problems.append(Problem(f"unexpected key {key!r}", task_id, i))
            for key in ATTEMPT_KEYS:
                if key not in entry:
                    problems.append(Problem("missing attempt", task_id, i, key))
                    continue
                why = grid_problem(entry[key])
                if why is not None:
                    problems.append(Problem(why, task_id, i, key))
    return problems


def validate_file(path: str | Path, challenges: Mapping) -> list[Problem]:
    """validate() for a file; a missing file or invalid JSON is reported as a problem too."""
    path = Path(path)
    if not path.is_file():
        return [Problem(f"{path}: file not found")]
    try:
        submission = jsonio.load(path)
    except jsonio.JSONInputError as e:
        return [Problem(str(e))]
    return validate(submission, challenges)


# ---------------------------------------------------------------------------------------------
# Building, repairing, writing
# ---------------------------------------------------------------------------------------------


def build_submission(vote: Vote, challenges: Mapping, fill: str = "fallback",
                     fallback: Callable[[object], Grid] = fallback_grid) -> dict[str, list]:
    """The Kaggle submission for every test input of `challenges`, in challenge order.

    Attempts come from vote.attempts (0x0 candidates skipped, `fill` policy for a missing second
    attempt); a test input without any usable prediction gets fallback(test input) twice.
    """
    out = {}
    for task_id, inputs in challenge_inputs(challenges).items():
        entries = []
        for i, x in enumerate(inputs):
            a1, a2 = vote.attempts(task_id, i, np.asarray(fallback(x), np.uint8), fill=fill)
            entries.append({"attempt_1": to_grid(a1), "attempt_2": to_grid(a2)})
        out[task_id] = entries
    return out


def readable_tasks(raw: Mapping[str, object]) -> dict[str, object]:
    """The tasks of raw challenges whose test list can be read (a non-empty list of objects with
    an "input"): what validation can check a submission against."""
    return {t: task for t, task in raw.items()
            if isinstance(task, Mapping) and isinstance(task.get("test"), list) and task["test"]
            and all(isinstance(x, Mapping) and "input" in x for x in task["test"])}


def complete_submission(part: Mapping[str, list], raw: Mapping[str, object]) -> dict[str, list]:
    """A submission with every task of `raw` (raw challenges content, unreadable tasks included):
    part's entries where they cover the task's test inputs, else the fallback; a task whose test
    list cannot be read gets one entry of [[0]] attempts (its count is unknown)."""
    readable = readable_tasks(raw)
    out = {}
    for task_id, task in raw.items():
        if task_id not in readable:
            out[task_id] = [{key: [[0]] for key in ATTEMPT_KEYS}]
            continue
        tests = task["test"]
        entries = part.get(task_id)
        if not isinstance(entries, list) or len(entries) != len(tests):
            entries = [{key: fallback_grid(x["input"]) for key in ATTEMPT_KEYS} for x in tests]
        out[task_id] = entries
    return out


def reference_submission(vote: Vote, challenges: Mapping) -> dict[str, list]:
    """What the reference evaluator writes, for parity checks only (NOT valid for Kaggle): a test
    input with no prediction is skipped, a 0x0 winner is written as [], a lone candidate is
    repeated."""
    out = {}
    for task_id, inputs in challenge_inputs(challenges).items():
        entries = []
        for i in range(len(inputs)):
            picks = vote.reference_attempts(task_id, i)
            if picks is not None:
                entries.append({"attempt_1": to_grid(picks[0]), "attempt_2": to_grid(picks[1])})
        out[task_id] = entries
    return out


def repair(submission: object, challenges: Mapping,
           fallback: Callable[[object], Grid] = fallback_grid) -> tuple[dict[str, list], list[Problem]]:
    """A valid submission made from `submission`: every valid attempt is kept, everything missing
    or invalid is filled with fallback(test input), extra tasks and keys are dropped.

    Returns (repaired, report): the report lists each fix, located by task/test/attempt.
    """
    report = []
    inputs = challenge_inputs(challenges)
    if not isinstance(submission, Mapping):
        report.append(Problem(f"not a JSON object of tasks (got {type(submission).__name__}); "
                              "every task filled with the fallback"))
        submission = {}
    for task_id in submission:
        if task_id not in inputs:
            report.append(Problem("dropped: extra task, not in the challenges", str(task_id)))
    out = {}
    for task_id, xs in inputs.items():
        entries = submission.get(task_id)
        whole = True  # the whole task is replaced; report it once, not per attempt
        if task_id not in submission:
            report.append(Problem("filled with the fallback: missing task", task_id))
            entries = []
        elif not isinstance(entries, list):
            report.append(Problem(f"filled with the fallback: entries were a "
                                  f"{type(entries).__name__}, not a list", task_id))
            entries = []
        else:
            whole = False
            if len(entries) > len(xs):
                report.append(Problem(f"dropped {len(entries) - len(xs)} entries beyond the "
                                      f"{len(xs)} test input(s)", task_id))
        fixed = []
        for i, x in enumerate(xs):
            entry = entries[i] if i < len(entries) else None
            if not isinstance(entry, Mapping):
                if not whole:
                    why = "missing entry" if entry is None and i >= len(entries) else \
                        f"entry is not an object (got {type(entry).__name__})"
                    report.append(Problem(f"filled with the fallback: {why}", task_id, i))
                fixed.append({key: fallback(x) for key in ATTEMPT_KEYS})
                continue
            extra = [k for k in entry if k not in ATTEMPT_KEYS]
            if extra:
                report.append(Problem(f"dropped unexpected keys {extra}", task_id, i))
            new = {}
            for key in ATTEMPT_KEYS:
                why = "missing attempt" if key not in entry else grid_problem(entry[key])
                if why is None:
                    new[key] = [list(row) for row in entry[key]]
                else:
                    new[key] = fallback(x)
                    report.append(Problem(f"filled with the fallback: {why}", task_id, i, key))
            fixed.append(new)
        out[task_id] = fixed
    leftover = validate(out, challenges)
    if leftover:  # only possible with a fallback function that returns invalid grids
        raise SubmissionError(leftover, where="repair (check the fallback function)")
    return out, report


def _plain(obj: object) -> object:
    # numpy arrays and scalars -> JSON-native lists and ints, so validation sees what gets written
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def write_submission(path: str | Path, submission: Mapping, challenges: Mapping | None) -> Path:
    """Validate, then write atomically: a temporary file in the same folder, fsync, os.replace.

    A reader never sees a half-written file; an invalid submission raises SubmissionError and
    leaves any existing file untouched. challenges=None checks only the grids (no task list).
    """
    path = Path(path)
    submission = _plain(submission)
    if challenges is not None:
        problems = validate(submission, challenges)
    elif not isinstance(submission, Mapping):
        problems = [Problem(f"submission is not a JSON object (got {type(submission).__name__})")]
    else:
        problems = [Problem(why, t, i, k) for t, entries in submission.items()
                    for i, e in enumerate(entries if isinstance(entries, list) else [])
                    for k in ATTEMPT_KEYS
                    if (why := grid_problem(e.get(k) if isinstance(e, Mapping) else None))]
    if problems:
        raise SubmissionError(problems, where=str(path))
    safe_io.write_json_atomic(path, submission)
    return path
