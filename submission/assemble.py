"""The run's submission.json: the fallback, then votes of the predictions laid over it, then the
final repair.

Input: the raw challenges JSON, the fallback built from it (submission/fallback.py), the tasks
being predicted and the prediction shard files (`<prefix>-r<rank>of<world>.npz`) as they arrive.
Output: submission.json, always written whole and atomically (validated by
trm_core.submission_file when it imports, else by safe_io's writer alone); a task the model has
no answer for keeps its fallback entry, a task whose test list cannot be read keeps [[0]].
Who answered each test input (SOURCES: the adapted model, the un-adapted one, or the fallback) is
kept with the file (`Answers.sources`, `Answers.who_answered()` for run.json). A prediction whose
q_halt score is not finite (a model with NaN or infinite weights or logits) is never an answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trm_core import jsonio
from trm_core.safe_io import write_json_atomic

SOURCES = ("adapted", "unadapted", "fallback")
# prediction tags (submission/run.py) -> who answered: "raw" predicts with the un-adapted checkpoint
# when nothing was post-trained, "baseline" and "unadapted" after post-training
SOURCE_OF_TAG = {"adapted": "adapted", "raw": "unadapted", "baseline": "unadapted", "unadapted": "unadapted"}


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


def finite_only(preds: Any) -> tuple[Any, int]:
    """(the records whose q_halt score is finite, how many were dropped). A model whose weights or
    logits went NaN (a diverged post-training) scores every view NaN, and its argmax grids are
    noise: they must not outvote the fallback."""
    import numpy as np

    from trm_core.predictions import Predictions

    ok = np.isfinite(preds.q_halt)
    bad = int(len(ok) - ok.sum())
    if not bad:
        return preds, 0
    out = Predictions(capacity=max(1, len(ok) - bad))
    for i in np.flatnonzero(ok).tolist():
        out.append(*preds.record(i))
    return out, bad


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


def shard_files(folder: Path, tag: str) -> list[str]:
    """The prediction shard files of `tag` in `folder`, every attempt's, as saved so far."""
    return sorted(str(f) for f in Path(folder).glob(f"{tag}-a*-r*of*.npz"))


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
        self.written: dict[str, list] = {}  # what the last write put in the file
        self.sources: dict[str, list[str]] = {}  # per task, per test input: who answered it (SOURCES)
        self.write_s = 0.0  # the longest write so far (validate, serialise, fsync)
        self.assemble_s = 0.0  # the longest assembly so far (read the shards, vote, build, write)
        self.said_non_finite: set[str] = set()  # sources whose non-finite views were reported
        self.vote_compile_s = 0.0  # the voter's first call in this process (numba compiling it, or loading its cache)

    def write(self, submission: dict[str, list], what: str, sources: dict[str, list[str]] | None = None) -> bool:
        """Validate and write atomically; returns False (logged) when it could not. sources: who
        answered each test input of `submission` (default: the fallback, everywhere)."""
        t0 = time.perf_counter()
        try:
            from trm_core.submission_file import write_submission

            write_submission(self.path, submission, None if self.broken or not self.clean else self.raw)
        except ImportError:
            write_json_atomic(self.path, submission)
        except Exception as e:  # noqa: BLE001
            self.problem(f"could not write {what} submission: {type(e).__name__}: {e}")
            return False
        self.write_s = max(self.write_s, time.perf_counter() - t0)
        self.writes += 1
        self.written = submission
        self.sources = sources if sources is not None else \
            {t: ["fallback"] * len(e) if isinstance(e, list) else [] for t, e in submission.items()}
        self.log(f"wrote {self.path} ({what})")
        return True

    def who_answered(self) -> dict[str, Any]:
        """run.json's "answers": how many test inputs each source answered in the file as last
        written, and per task id the source of each test input, in test order."""
        counts = dict.fromkeys(SOURCES, 0)
        for per_test in self.sources.values():
            for s in per_test:
                counts[s] += 1
        return {"test_inputs": sum(counts.values()), "counts": counts, "by_task": self.sources}

    def merged(self, model_part: dict[str, list], part_sources: dict[str, list[str]] | None = None
               ) -> tuple[dict[str, list], dict[str, list[str]]]:
        """The fallback with the model's entries laid over it, and who answered each test input."""
        out = dict(self.fallback)
        sources = {t: ["fallback"] * len(e) for t, e in out.items()}
        for task_id, entries in model_part.items():
            if task_id in out and len(entries) == len(out[task_id]):
                out[task_id] = entries
                sources[task_id] = (part_sources or {}).get(task_id) or ["fallback"] * len(entries)
        return out, sources

    def load_predictions(self, files: list[str]) -> Any:
        return merge_shards(files, lambda f, e: self.problem(f"{f}: unreadable predictions ({e})"))

    def provisional(self, folder: Path, tag: str) -> None:
        try:
            files = shard_files(folder, tag)
            if files:
                self.assemble(files, "provisional", source=SOURCE_OF_TAG.get(tag, "unadapted"))
        except Exception as e:  # noqa: BLE001
            self.log(f"provisional submission skipped: {type(e).__name__}: {e}")

    def assemble(self, files: list[str], what: str, fill: list[str] | None = None, source: str = "adapted",
                 fill_source: str = "unadapted") -> dict[str, Any]:
        """Vote the predictions in `files` and write the submission over the fallback; with `fill`,
        a task `files` has no prediction for takes the vote of the predictions in `fill` (views of
        two checkpoints are never voted together). source, fill_source: who answers through
        `files` and through `fill` (SOURCES)."""
        from trm_core.submission_file import build_submission
        from trm_core.vote import vote

        t0 = time.perf_counter()
        answered = {t: task for t, task in self.clean.items() if t in self.task_ids}
        part: dict[str, list] = {}
        part_sources: dict[str, list[str]] = {}
        from_model = records = 0
        for group, who in ((files, source), (fill or [], fill_source)):
            preds = self.load_predictions(group) if group else None
            if preds is None or not len(preds):
                continue
            preds, bad = finite_only(preds)
            if bad and who not in self.said_non_finite:  # once, not at every provisional write
                self.said_non_finite.add(who)
                self.problem(f"{bad} {who} prediction(s) with a non-finite score dropped (NaN or infinite "
                             "weights or logits): they answer nothing")
            if not len(preds):
                continue
            v = vote(preds)
            pairs = set(v.pairs)
            covered = {t for t, _ in pairs if t in answered and t not in part}
            part.update(build_submission(v, {t: answered[t] for t in covered}))
            for t in covered:
                part_sources[t] = [who if (t, i) in pairs else "fallback" for i in range(len(part[t]))]
            from_model += sum(1 for t, _ in pairs if t in covered)
            records += len(preds)
        if not part:
            return {"records": 0, "from_model": 0}
        merged, sources = self.merged(part, part_sources)
        self.write(merged, f"{what}: {records} views, {from_model} test inputs from the model", sources)
        self.assemble_s = max(self.assemble_s, time.perf_counter() - t0)
        return {"records": records, "from_model": from_model}

    def rehearse(self, tasks: Any, path: Path) -> float:
        """Vote one view per test input (the input itself), write the result to `path` (not the
        submission) and check it as the final repair does; returns the check's seconds, and counts
        the rest as an assembly (assemble_s). Done once early, so that the final vote's imports and
        compilation happen then and what the last steps cost is known before the deadline nears; the
        first vote call (compiling) is timed apart (vote_compile_s), so the final reserve and the
        plan hold the vote at what it costs once compiled."""
        try:
            import numpy as np

            from trm_core.predictions import Predictions
            from trm_core.submission_file import build_submission, repair
            from trm_core.vote import vote

            preds = Predictions()
            for task in tasks:
                for i, x in enumerate(task.test_inputs):
                    preds.append(task.id, i, 0, np.asarray(x)[:30, :30], 0.0)
            t0 = time.perf_counter()
            vote(preds)  # the first call compiles the voter (or loads numba's cache): once, not at each vote
            self.vote_compile_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            part = build_submission(vote(preds), {t.id: self.clean[t.id] for t in tasks if t.id in self.clean})
            stand_in = Answers(Path(path), lambda line: None, self.problem)
            stand_in.write(part, "rehearsal")
            self.assemble_s = max(self.assemble_s, time.perf_counter() - t0)
            t0 = time.perf_counter()
            repair(jsonio.load(stand_in.path, duplicates=[]), self.clean)
            check_s = time.perf_counter() - t0
            stand_in.path.unlink(missing_ok=True)
            return check_s
        except Exception as e:  # noqa: BLE001 - only a measurement
            self.log(f"final-write rehearsal skipped: {type(e).__name__}: {e}")
            return 0.0

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
            self.write(repaired, "repaired", self._kept_sources(repaired))
        return len(report)

    def _kept_sources(self, repaired: dict[str, list]) -> dict[str, list[str]]:
        """Who answers each entry of a repaired file: an entry the repair kept as last written keeps
        its source; one it changed is the fallback's."""
        out = {}
        for t, entries in repaired.items():
            before, was = self.written.get(t) or [], self.sources.get(t) or []
            out[t] = [was[i] if i < len(before) and i < len(was) and before[i] == e else "fallback"
                      for i, e in enumerate(entries)]
        return out
