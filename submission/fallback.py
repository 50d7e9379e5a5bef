"""The fallback submission: the test input itself as both attempts, for every task id of the raw
challenges JSON, so a valid submission.json exists before anything else is tried.

Standard library only (built on trm_core/safe_io.py, the project's one grid check and atomic
writer): it is written before torch, numpy or the tasks themselves are known to load.
Input: the challenges file as parsed JSON (any shape). Output: (submission, broken task ids).
"""

from __future__ import annotations

from trm_core.safe_io import fallback_grid

ATTEMPT_KEYS = ("attempt_1", "attempt_2")


def fallback_submission(raw: object) -> tuple[dict[str, list], list[str]]:
    """(submission, ids of tasks whose test list is unreadable) for raw challenges JSON.

    Every task id is present; one entry per test input when the test list is readable, else one
    entry of [[0]] (the best guess at a count that cannot be read). A task is "broken" when its test
    list is not a non-empty list of {"input": grid} objects: validation cannot check it."""
    out: dict[str, list] = {}
    broken: list[str] = []
    if not isinstance(raw, dict):
        return out, broken
    for task_id, task in raw.items():
        tests = task.get("test") if isinstance(task, dict) else None
        if not isinstance(tests, list) or not tests:
            broken.append(str(task_id))
            out[str(task_id)] = [{k: [[0]] for k in ATTEMPT_KEYS}]
            continue
        if not all(isinstance(t, dict) and "input" in t for t in tests):
            broken.append(str(task_id))  # the count is known, but a validator cannot read the inputs
        entries = []
        for t in tests:
            g = fallback_grid(t.get("input") if isinstance(t, dict) else None)
            entries.append({k: [list(r) for r in g] for k in ATTEMPT_KEYS})
        out[str(task_id)] = entries
    return out, broken
