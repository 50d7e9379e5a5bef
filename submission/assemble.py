"""The run's submission.json: the fallback, then votes of the predictions laid over it, then the
final repair.

Input: the raw challenges JSON, the fallback built from it (submission/fallback.py), the tasks
being predicted and the prediction shard files (`<prefix>-r<rank>of<world>.npz`) as they arrive.
Output: submission.json, always written whole and atomically (validated by
trm_core.submission_file when it imports, else by safe_io's writer alone); a task the model has
no answer for keeps its fallback entry, a task whose test list cannot be read keeps [[0]].
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from trm_core import jsonio
from trm_core.safe_io import write_json_atomic


def dedupe(preds: Any) -> Any:
    """Drop repeated (task, test input, view) records (a retried shard re-predicts what a failed one
    saved); the first copy stays."""
    import numpy as np

    from trm_core.predictions import Predictions

    n = len(preds)
    if not n:
        return preds
    key = (preds.task.astype(np.int64) * (1 << 20) + preds.test_index.astype(np.int64)) * (1 << 24) + \
        preds.variant.astype(np.int64)
    _, first = np.unique(key, return_index=True)
    if len(first) == n:
        return preds
    out = Predictions(capacity=len(first))
    for i in sorted(first.tolist()):
        out.append(*preds.record(i))
    return out


def merge_shards(files: list[str], on_error: Callable[[str, Exception], None] | None = None) -> Any:
    """The prediction shard files merged, repeats dropped (None when none can be read); a shard
    that cannot be read is passed to `on_error` and left out (a killed shard loses only itself)."""
    from trm_core.predictions import Predictions

    parts = []
    for f in files:
        try:
            parts.append(Predictions.load(f))
        except Exception as e:  # noqa: BLE001 - a corrupt shard is dropped, not fatal
            if on_error is not None:
                on_error(f, e)
    return dedupe(Predictions.merge(parts)) if parts else None


class Answers:
    """What the run has to say for every task, and the file that says it."""

    def __init__(self, path: Path, log: Callable[[str], None], problem: Callable[[str], None]) -> None:
        self.path, self.log, self.problem = path, log, problem
        self.raw: object = None  # the challenges JSON as read
        self.clean: dict[str, Any] = {}  # tasks whose test inputs can be read (what validation checks)
        self.broken: list[str] = []  # tasks whose test list cannot be read: one [[0]] entry each
        self.fallback: dict[str, list] = {}
        self.task_ids: set[str] = set()  # the tasks being predicted
        self.writes = 0

    def write(self, submission: dict[str, list], what: str) -> bool:
        """Validate and write atomically; returns False (logged) when it could not."""
        try:
            from trm_core.submission_file import write_submission

            write_submission(self.path, submission, None if self.broken or not self.clean else self.raw)
        except ImportError:
            write_json_atomic(self.path, submission)
        except Exception as e:  # noqa: BLE001
            self.problem(f"could not write {what} submission: {type(e).__name__}: {e}")
            return False
        self.writes += 1
        self.log(f"wrote {self.path} ({what})")
        return True

    def merged(self, model_part: dict[str, list]) -> dict[str, list]:
        out = dict(self.fallback)
        for task_id, entries in model_part.items():
            if task_id in out and len(entries) == len(out[task_id]):
                out[task_id] = entries
        return out

    def load_predictions(self, files: list[str]) -> Any:
        return merge_shards(files, lambda f, e: self.problem(f"{f}: unreadable predictions ({e})"))

    def provisional(self, folder: Path, tag: str) -> None:
        try:
            files = sorted(str(f) for f in folder.glob(f"{tag}-a*-r*of*.npz"))
            if files:
                self.assemble(files, "provisional")
        except Exception as e:  # noqa: BLE001
            self.log(f"provisional submission skipped: {type(e).__name__}: {e}")

    def assemble(self, files: list[str], what: str, fill: list[str] | None = None) -> dict[str, Any]:
        """Vote the predictions in `files` and write the submission over the fallback; with `fill`,
        a task `files` has no prediction for takes the vote of the predictions in `fill` (views of
        two checkpoints are never voted together)."""
        from trm_core.submission_file import build_submission
        from trm_core.vote import vote

        answered = {t: task for t, task in self.clean.items() if t in self.task_ids}
        part: dict[str, list] = {}
        from_model = records = 0
        for group in (files, fill or []):
            preds = self.load_predictions(group) if group else None
            if preds is None or not len(preds):
                continue
            v = vote(preds)
            covered = {t for t, _ in v.pairs if t in answered and t not in part}
            part.update(build_submission(v, {t: answered[t] for t in covered}))
            from_model += sum(1 for t, _ in v.pairs if t in covered)
            records += len(preds)
        if not part:
            return {"records": 0, "from_model": 0}
        self.write(self.merged(part), f"{what}: {records} views, {from_model} test inputs from the model")
        return {"records": records, "from_model": from_model}

    def repair(self) -> int | None:
        """Validate and repair whatever is on disk; the number of repairs (None: trm_core not
        importable, the fallback written instead)."""
        current: object = {}
        try:
            current = jsonio.load(self.path, duplicates=[])
        except jsonio.JSONInputError:
            self.problem("submission.json missing or unreadable at the end: rebuilding from the fallback")
        try:
            from trm_core.submission_file import repair
        except ImportError:
            self.write(self.fallback, "fallback (trm_core not importable)")
            return None
        repaired, report = repair(current if isinstance(current, dict) else {}, self.clean)
        for task_id in self.broken:
            repaired[task_id] = self.fallback[task_id]
        for p in report[:20]:
            self.problem(f"final repair: {p}")
        if report or not self.path.is_file():
            self.write(repaired, "repaired")
        return len(report)
