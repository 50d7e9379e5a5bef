"""The HTML report of a run: one self-contained page with the scores, the curves and every task's
grids, attempts and votes.

Inputs: a run folder, from which it reads whichever of these files exist:
  challenges.json (or *challenges*.json)  the tasks (any layout `load_tasks` reads)
  solutions.json (or *solutions*.json)    their test outputs, for the right/wrong marks and scores
  submission.json                         the two attempts per test input
  predictions.npz                         every view's prediction (`Predictions.save`): the vote
  baseline-predictions.npz                the un-adapted model's predictions, for the comparison
  metrics.jsonl                           the training log (one JSON object per logged interval, and
                                          with per-task spending one per fit check: `fit_section`)
  study.json                              a study's curves per arm (`study_section` gives the layout)
  run.json                                the runner's record: who answered each test input (its
                                          "answers" counts), shown in the summary
A Kaggle notebook's output keeps submission.json at its top and the rest in a trm-run/ sub-folder
(submission/keep.py): each file is looked for in the folder, then in its trm-run/ (and a trm-run
folder given itself finds submission.json beside it). `challenges` and `solutions` name the task
files when the folder holds none (a downloaded output whose run could not keep them).
Callers add their own sections after the summary (`trm report` and the dry run add the timing
report's, from submission/report.py, when the folder holds timing-report.json).
Output: report.html (`write_report`), or its sections (`run_sections`) for a page of trm_lab/page.py.

The page references nothing outside itself: styles are inline, grids are PNG data URIs drawn by
trm_lab.draw, plots are matplotlib PNG data URIs (the optional `report` extra; without it the page
keeps its grids and tables and says how to get the plots), and a Content-Security-Policy forbids
any fetch. There is no JavaScript: the solved/unsolved filter is CSS.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trm_core.predictions import BASELINE_FILE, PREDICTIONS_FILE
from trm_core.safe_io import write_atomic
from trm_core.tasks import Task
from trm_lab import TOP_CANDIDATES, draw
from trm_lab.page import Section, esc, fmt, grid_figure, line_plots, plot_or_hint, render_page, table

REPORT_FILE = "report.html"


@dataclass
class RunData:
    """What a report is drawn from; every field may be missing."""

    tasks: list[Task] = field(default_factory=list)  # in file order
    submission: dict[str, Any] | None = None  # {task_id: [{"attempt_1": grid, "attempt_2": grid}, ...]}
    vote: Any = None  # trm_core.vote.Vote of the (adapted) predictions
    baseline: Any = None  # Vote of the un-adapted predictions
    metrics: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl rows
    study: dict[str, Any] | None = None
    answers: dict[str, int] | None = None  # test inputs per source (adapted, unadapted, fallback), from run.json
    record: dict[str, Any] | None = None  # run.json as read (the runner's record), for its timing section
    title: str = "trm-kit report"
    notes: list[str] = field(default_factory=list)  # files that could not be read, and why
    unreadable: list[str] = field(default_factory=list)  # "<path>: why" for each file that could not be used
    folder: Path | None = None  # the run folder read (None: put together in memory, e.g. by trm show)

    @property
    def solved_known(self) -> bool:
        return any(t.test_outputs is not None for t in self.tasks)


# ---------------------------------------------------------------------------------------------
# Scores
# ---------------------------------------------------------------------------------------------


def _same(a: object, b: object) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and bool(np.array_equal(a, b))


def attempts_of(run: RunData, task: Task, i: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The two attempts for test input i: from submission.json if it has them, else from the vote."""
    if run.submission is not None:
        entries = run.submission.get(task.id)
        if isinstance(entries, list) and i < len(entries) and isinstance(entries[i], Mapping):
            try:
                return (draw.as_grid(entries[i].get("attempt_1")), draw.as_grid(entries[i].get("attempt_2")))
            except (ValueError, TypeError):
                return None
    if run.vote is not None and run.vote.views(task.id, i):
        return run.vote.attempts(task.id, i, task.test_inputs[i][:30, :30])
    return None


def _vote_attempts(vote: Any, task: Task, i: int) -> tuple[np.ndarray, np.ndarray] | None:
    if vote is None or not vote.views(task.id, i):
        return None
    return vote.attempts(task.id, i, task.test_inputs[i][:30, :30])


def _passed(attempts: tuple[np.ndarray, np.ndarray] | None, truth: np.ndarray | None) -> tuple[bool, bool] | None:
    if attempts is None or truth is None:
        return None
    return _same(attempts[0], truth), _same(attempts[1], truth)


def _scores(run: RunData) -> list[tuple[str, dict[str, Any]]]:
    """Headline figures (Kaggle way, per test input) for each source of answers the run has."""
    from trm_core.evaluate import coverage

    solved = {t.id: [o for o in t.test_outputs] for t in run.tasks if t.test_outputs is not None}
    if not solved:
        return []
    out = []
    for name, vote in (("adapted" if run.baseline is not None else "model", run.vote), ("un-adapted", run.baseline)):
        if vote is None:
            continue
        rep = coverage(vote, solved, skip_empty=True)
        out.append((f"{name} (vote)", {"pass@1": rep.pass_at(1), "pass@2": rep.pass_at(2), "oracle": rep.oracle(),
                                        "passed": sum(p.passed(2) for p in rep.pairs), "total": len(rep.pairs),
                                        "views": max((p.views for p in rep.pairs), default=0)}))
    if run.submission is not None:
        first = two = total = 0
        for t in run.tasks:
            if t.test_outputs is None:
                continue
            for i, truth in enumerate(t.test_outputs):
                total += 1
                ok = _passed(attempts_of(run, t, i), truth) or (False, False)
                first += ok[0]
                two += ok[0] or ok[1]
        out.append(("submission.json", {"pass@1": first / total, "pass@2": two / total, "oracle": None,
                                         "passed": two, "total": total, "views": None}))
    return out


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------


def summary_section(run: RunData) -> Section:
    n_tests = sum(len(t.test_inputs) for t in run.tasks)
    parts = [f"<p>{len(run.tasks)} task(s), {n_tests} test input(s)"
             + ("" if run.solved_known else "; no solutions, so nothing is scored") + ".</p>"]
    scores = _scores(run)
    if scores:
        parts.append(table(["answers", "pass@1", "pass@2", "oracle", "right / test inputs", "views per input"],
                           [(name, fmt(s["pass@1"]), fmt(s["pass@2"]), fmt(s["oracle"]),
                             f"{s['passed']} / {s['total']}", fmt(s["views"])) for name, s in scores],
                           cls="scores"))
        parts.append('<p class="hint">pass@K: the right answer among the first K attempts; oracle: among any '
                     "candidate of the vote. Oracle well above pass@2: the selection loses answers.</p>")
    if run.answers:
        a = run.answers
        parts.append(f"<p>{sum(a.values())} test input(s) in submission.json answered by: {a['adapted']} the adapted "
                     f"model, {a['unadapted']} the un-adapted model, {a['fallback']} the fallback.</p>")
    if run.notes:
        parts.append("<ul class=\"notes\">" + "".join(f"<li>{esc(n)}</li>" for n in run.notes) + "</ul>")
    return Section("summary", "Summary", "".join(parts))


def _curve_rows(metrics: list[dict[str, Any]], key: str = "loss") -> list[dict[str, Any]]:
    # the last row with `key` per step (a resumed run appends again from where it stopped), in step
    # order: "loss" picks the training intervals, "fit" the fit checks written beside them
    by_step: dict[int, dict[str, Any]] = {}
    for m in metrics:
        if isinstance(m, dict) and isinstance(m.get("step"), (int, float)) and key in m:
            by_step[int(m["step"])] = m
    return [by_step[s] for s in sorted(by_step)]


FIT_COLUMNS = 12  # check steps shown in the fit timeline (evenly spaced, the last always)


def fit_section(metrics: list[dict[str, Any]]) -> Section | None:
    """Per-task spending: each task's fit at each check and the rows it was handed (metrics.jsonl
    lines {"step", "fitted_tasks", "fit": {task_id: {"fitted", "exact_pairs", "pairs", "active",
    "weight", "rows"}}}, written by the training loop under a FitSchedule)."""
    checks = [m for m in _curve_rows(metrics, "fit") if isinstance(m["fit"], Mapping)]
    if not checks:
        return None
    shown = checks if len(checks) <= FIT_COLUMNS else \
        [checks[round(k * (len(checks) - 1) / (FIT_COLUMNS - 1))] for k in range(FIT_COLUMNS)]
    tasks = list(dict.fromkeys(tid for c in checks for tid in c["fit"]))

    def cell(entry: Any) -> str:
        if not isinstance(entry, Mapping):
            return "-"
        mark = "fitted" if entry.get("fitted") else f"{fmt(entry.get('exact_pairs'))}/{fmt(entry.get('pairs'))}"
        weight = entry.get("weight", 1.0)
        return mark + (" (out)" if weight == 0 else " (1/2)" if weight == 0.5 else "")

    rows = [(tid, *(cell(c["fit"].get(tid)) for c in shown), fmt((checks[-1]["fit"].get(tid) or {}).get("rows")))
            for tid in tasks]
    rows.append(("tasks fitted", *(fmt(c.get("fitted_tasks")) for c in shown), ""))
    body = table(["task", *(f"step {c['step']}" for c in shown), "rows handed out"], rows, cls="fit")
    return Section("fit", "Per-task fit", f"<p>{len(checks)} fit check(s) of {len(tasks)} task(s), steps "
                   f"{checks[0]['step']} to {checks[-1]['step']}: \"fitted\" when the vote answers every "
                   "demonstration pair, else exact pairs / pairs; (out): left the batches after that check, "
                   "(1/2): drawn at half weight. Rows handed out: up to the last check (metrics.jsonl).</p>" + body)


def curves_section(metrics: list[dict[str, Any]]) -> Section | None:
    """Loss, token accuracy and exact accuracy on the training rows against steps (metrics.jsonl)."""
    rows = _curve_rows(metrics)
    if not rows:
        return None
    steps = [r["step"] for r in rows]

    def col(key: str) -> list[float]:
        return [float(r.get(key, float("nan"))) for r in rows]

    plot = line_plots([("loss", "loss per row", {"loss": (steps, col("loss"))}),
                       ("accuracy on the training rows", "accuracy",
                        {"token": (steps, col("accuracy")), "exact": (steps, col("exact_accuracy"))})],
                      "step", "training curves")
    shown = rows if len(rows) <= 12 else [rows[round(k * (len(rows) - 1) / 11)] for k in range(12)]
    body = plot_or_hint(plot) + table(
        ["step", "loss", "token accuracy", "exact accuracy", "samples/s", "lr"],
        [(r["step"], fmt(r.get("loss"), 4), fmt(r.get("accuracy")), fmt(r.get("exact_accuracy")),
          fmt(r.get("samples_per_s"), 1), fmt(r.get("lr"), 6)) for r in shown])
    return Section("training", "Training curves", f"<p>{len(rows)} logged interval(s), steps {steps[0]} to "
                   f"{steps[-1]} (metrics.jsonl).</p>" + body)


def study_section(study: Mapping[str, Any]) -> Section | None:
    """A study's arms: pass@2 and demonstration exact accuracy against steps, and a table.

    study.json: {"config": {...}, "arms": {name: {"curve": [{"step", "demo_loss",
    "demo_token_accuracy", "demo_exact_accuracy", "pass@1", "pass@2", "oracle", "test_inputs"}, ...],
    "wall_s": float}}}.
    """
    arms = study.get("arms") if isinstance(study, Mapping) else None
    if not isinstance(arms, Mapping) or not arms:
        return None
    curves = {name: sorted((p for p in (arm.get("curve") or []) if isinstance(p, Mapping) and "step" in p),
                           key=lambda p: p["step"]) for name, arm in arms.items() if isinstance(arm, Mapping)}

    def series(key: str) -> dict[str, tuple[list[float], list[float]]]:
        return {name: ([p["step"] for p in c], [float(p.get(key, float("nan"))) for p in c])
                for name, c in curves.items() if c}

    plot = line_plots([("pass@2 on the test inputs", "pass@2", series("pass@2")),
                       ("exact accuracy on the demonstration pairs", "exact accuracy", series("demo_exact_accuracy"))],
                      "post-training step", "study curves per arm")
    rows = []
    for name, c in curves.items():
        last = c[-1] if c else {}
        best = max(c, key=lambda p: p.get("pass@2", -1.0)) if c else {}
        rows.append((name, fmt(last.get("step")), fmt(last.get("pass@1")), fmt(last.get("pass@2")),
                     fmt(last.get("oracle")), fmt(best.get("pass@2")) + f" @ {fmt(best.get('step'))}",
                     fmt(last.get("demo_loss"), 4), fmt(last.get("demo_exact_accuracy")),
                     fmt(last.get("test_inputs")), fmt(arms[name].get("wall_s"), 1), fmt(last.get("fitted_tasks"))))
    body = plot_or_hint(plot) + table(
        ["arm", "last step", "pass@1", "pass@2", "oracle", "best pass@2", "demo loss", "demo exact",
         "test inputs", "wall s", "tasks fitted"], rows, cls="study")
    config = study.get("config")
    if config:
        body += ("<details><summary>study configuration</summary><pre>"
                 f"{esc(json.dumps(config, indent=1, default=str))}</pre></details>")
    return Section("study", "Study", f"<p>{len(curves)} arm(s), figures at the last step of each arm.</p>" + body)


def _candidates_html(vote: Any, task: Task, i: int, truth: np.ndarray | None, top: int) -> str:
    cands = vote.candidates(task.id, i)
    views = vote.views(task.id, i)
    rank = vote.rank_of(task.id, i, truth, skip_empty=True) if truth is not None and truth.size else None
    where = "" if truth is None else (
        f"; the right answer ranks {rank}" if rank is not None else "; no view produced the right answer")
    figs = []
    for k, c in enumerate(cands[:top]):
        mark = None if truth is None else _same(c.grid, truth)
        figs.append(grid_figure(c.grid, f"#{k + 1} {c.count} vote{'s' if c.count != 1 else ''}, q {c.q_mean:.2f}",
                                size="small", mark=mark, role="candidate",
                                extra=f' data-votes="{c.count}"'))
    return (f'<p class="votes">{views} view(s), {len(cands)} distinct grid(s){where}.</p>'
            f'<div class="row">{"".join(figs)}</div>')


def _task_status(run: RunData, task: Task) -> tuple[int, int]:
    """(test inputs right within two attempts, test inputs that have both attempts and a known answer)."""
    if task.test_outputs is None:
        return 0, 0
    marks = [_passed(attempts_of(run, task, i), truth) for i, truth in enumerate(task.test_outputs)]
    return sum(bool(ok[0] or ok[1]) for ok in marks if ok), sum(ok is not None for ok in marks)


def task_html(run: RunData, task: Task, top: int = TOP_CANDIDATES) -> str:
    """One task: demonstration pairs, then per test input the attempts beside the truth and the vote."""
    right, known = _task_status(run, task)
    solved = known > 0 and right == known
    cls = "task" + (" solved" if solved else "") + (" unknown" if not known else "")
    badge = "" if not known else f'<span class="badge {"ok" if solved else "no"}">{right}/{known} right</span>'
    parts = [f'<section class="{cls}" id="task-{esc(task.id)}" data-task="{esc(task.id)}">'
             f"<h3>{esc(task.id)} {badge}</h3>", '<div class="demos">']
    for k, (x, y) in enumerate(task.train):
        parts.append(f'<div class="pair">{grid_figure(x, f"demo {k} input", role="demo-input")}<span class="arrow">'
                     f'&#8594;</span>{grid_figure(y, f"demo {k} output", role="demo-output")}</div>')
    parts.append("</div>")
    for i, x in enumerate(task.test_inputs):
        truth = task.test_outputs[i] if task.test_outputs is not None else None
        attempts = attempts_of(run, task, i)
        ok = _passed(attempts, truth)
        parts.append(f'<div class="test" data-test="{i}"><h4>test input {i}</h4><div class="row">')
        parts.append(grid_figure(x, "test input", role="test-input"))
        if attempts is not None:
            for a in (0, 1):
                parts.append(grid_figure(attempts[a], f"attempt {a + 1}", mark=None if ok is None else ok[a],
                                         role=f"attempt-{a + 1}"))
        elif run.submission is not None or run.vote is not None:
            parts.append('<p class="hint">no attempts for this test input</p>')
        if truth is not None:
            parts.append(grid_figure(truth, "truth", role="truth"))
        parts.append("</div>")
        if run.vote is not None and run.vote.views(task.id, i):
            parts.append(_candidates_html(run.vote, task, i, truth, top))
        base = _vote_attempts(run.baseline, task, i)
        if base is not None:
            bok = _passed(base, truth)
            parts.append('<div class="baseline"><p>un-adapted model: '
                         f"{run.baseline.views(task.id, i)} view(s), "
                         f"{len(run.baseline.candidates(task.id, i))} distinct grid(s)</p><div class=\"row\">")
            for a in (0, 1):
                parts.append(grid_figure(base[a], f"un-adapted attempt {a + 1}", size="small",
                                         mark=None if bok is None else bok[a], role=f"baseline-{a + 1}"))
            parts.append("</div></div>")
        parts.append("</div>")
    parts.append("</section>")
    return "".join(parts)


def tasks_section(run: RunData, top: int = TOP_CANDIDATES) -> Section | None:
    """Every task, solved ones first, with an index table and a CSS-only solved/unsolved filter."""
    if not run.tasks:
        return None
    status = {t.id: _task_status(run, t) for t in run.tasks}

    def order(t: Task) -> int:
        right, known = status[t.id]
        return 0 if known and right == known else (1 if right else 2)

    tasks = sorted(run.tasks, key=order)  # stable: file order within each group
    index_rows = []
    for t in tasks:
        right, known = status[t.id]
        state = "-" if not known else ("solved" if right == known else ("partly" if right else "not solved"))
        index_rows.append(f'<tr><td><a href="#task-{esc(t.id)}">{esc(t.id)}</a></td><td>{len(t.train)}</td>'
                          f"<td>{len(t.test_inputs)}</td><td>{esc(state)}</td>"
                          f"<td>{'-' if not known else f'{right}/{known}'}</td></tr>")
    index = ('<table class="index"><thead><tr><th>task</th><th>demos</th><th>test inputs</th><th>state</th>'
             f"<th>right</th></tr></thead><tbody>{''.join(index_rows)}</tbody></table>")
    solved = sum(1 for t in run.tasks if status[t.id][1] and status[t.id][0] == status[t.id][1])
    filters = ('<input type="radio" name="show" id="show-all" checked><label for="show-all">all</label>'
               '<input type="radio" name="show" id="show-solved"><label for="show-solved">solved</label>'
               '<input type="radio" name="show" id="show-unsolved"><label for="show-unsolved">not solved</label>')
    scored = any(known for _, known in status.values())
    head = (f"{solved} of {len(run.tasks)} task(s) solved (every test input right within two attempts); solved "
            "tasks first." if scored else f"{len(run.tasks)} task(s); no attempts with a known answer to mark.")
    body = (f"<p>{head}</p>"
            f"<details><summary>index</summary>{index}</details>{filters}"
            f'<div class="tasks">{"".join(task_html(run, t, top) for t in tasks)}</div>')
    return Section("tasks", "Tasks", body)


def run_sections(run: RunData, extra: Sequence[Section] = (), top: int = TOP_CANDIDATES) -> list[Section]:
    """Summary, the extra sections (e.g. the dry run's timing), training curves, per-task fit, study, tasks."""
    def note(name: str, why: str) -> None:
        run.notes.append(f"{name}: {why}")
        run.unreadable.append(f"{run.folder / name if run.folder else name}: {why}")

    def drawn(name: str, draw_it: Any) -> Section | None:
        try:
            return draw_it()
        except Exception as e:  # noqa: BLE001 - a file of the wrong shape: named, the rest drawn
            note(name, f"not drawn ({type(e).__name__}: {e})")
            return None

    curves = drawn("metrics.jsonl", lambda: curves_section(run.metrics))
    fit = drawn("metrics.jsonl", lambda: fit_section(run.metrics))
    study = drawn("study.json", lambda: study_section(run.study)) if run.study else None
    if run.study and study is None and not any("study.json" in u for u in run.unreadable):
        note("study.json", "no arms to draw (expected {\"arms\": {name: {\"curve\": [...]}}})")
    tasks = drawn("challenges.json", lambda: tasks_section(run, top))
    summary = summary_section(run) if run.tasks or run.notes else None  # a training folder has no tasks
    found = [summary, *extra, curves, fit, study, tasks]
    return [s for s in found if s is not None]


# ---------------------------------------------------------------------------------------------
# Reading a run folder
# ---------------------------------------------------------------------------------------------


RUN_SUBDIR = "trm-run"  # where the notebook's runner keeps its record and what `trm report` draws


def run_folders(run_dir: Path) -> list[Path]:
    """The folders a run's files are looked for in, in order: run_dir, its trm-run/, and for a
    trm-run folder given itself the folder above it (where the notebook writes submission.json)."""
    folders = [run_dir]
    if (run_dir / RUN_SUBDIR).is_dir():
        folders.append(run_dir / RUN_SUBDIR)
    if run_dir.resolve().name == RUN_SUBDIR:
        folders.append(run_dir.resolve().parent)
    return folders


def run_file(run_dir: str | os.PathLike, name: str) -> Path | None:
    """The first file called `name` in `run_folders(run_dir)`, or None."""
    return next((f / name for f in run_folders(Path(run_dir)) if (f / name).is_file()), None)


def _find(run_dir: Path, exact: str, pattern: str) -> Path | None:
    for folder in run_folders(run_dir):
        if (folder / exact).is_file():
            return folder / exact
        found = sorted(folder.glob(pattern))
        if found:
            return found[0]
    return None


def _read_json(path: Path, notes: list[str]) -> Any:
    """The file's JSON by the rules of trm_core.jsonio, or None with a note naming the file and why."""
    from trm_core import jsonio

    try:
        return jsonio.load(path, duplicates=[])
    except jsonio.JSONInputError as e:
        notes.append(f"{path.name}: not readable ({str(e).removeprefix(f'{path}: ')})")
        return None


def read_metrics(path: Path, notes: list[str] | None = None) -> list[dict[str, Any]]:
    """metrics.jsonl rows; a torn last line (a crash mid-write) is skipped. Any other line that is
    not a JSON object (within jsonio's limits) is skipped and counted in `notes`."""
    from trm_core import jsonio

    rows, skipped = [], 0
    try:
        lines = path.read_bytes().decode("utf-8", errors="replace").splitlines()
    except OSError as e:
        if notes is not None:
            notes.append(f"{path.name}: not readable ({e.strerror})")
        return rows
    for i, line in enumerate(lines):
        try:
            row = jsonio.loads(line, path.name)
        except jsonio.JSONLimitError:
            skipped += 1
            continue
        except jsonio.JSONInputError:
            skipped += i < len(lines) - 1  # only the last line may be torn by a crash
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            skipped += 1
    if skipped and notes is not None:
        notes.append(f"{path.name}: {skipped} line(s) skipped: not JSON objects within the limits")
    return rows


def load_run(run_dir: str | os.PathLike, rule: str = "reference", *, challenges: str | os.PathLike | None = None,
             solutions: str | os.PathLike | None = None) -> RunData:
    """Everything a report can show from the files in run_dir (see the module docstring);
    `challenges` / `solutions`: task files to use instead of the folder's."""
    from trm_core.tasks import load_tasks
    from trm_core.predictions import Predictions
    from trm_core.vote import vote

    d = Path(run_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: not a folder")
    for given in (challenges, solutions):
        if given is not None and not Path(given).is_file():
            raise FileNotFoundError(f"{given}: not a file")
    run = RunData(title=f"trm-kit report: {d.resolve().name}", folder=d)
    challenges = Path(challenges) if challenges is not None else _find(d, "challenges.json", "*challenges*.json")
    if challenges is not None:
        solutions = Path(solutions) if solutions is not None else _find(d, "solutions.json", "*solutions*.json")
        try:
            loaded = load_tasks(challenges, solutions=solutions, strict=False)
            run.tasks = list(loaded)
            run.notes += [str(p) for p in loaded.problems[:20]]
            run.unreadable += [f"{p.file}: {p.message}" for p in loaded.problems if p.task_id is None]
            if loaded.problems and not run.tasks and not run.unreadable:
                run.unreadable.append(f"no usable task: {loaded.problems[0]}")
        except (ValueError, OSError) as e:
            run.notes.append(f"{challenges.name}: {e}")
            run.unreadable.append(f"{challenges}: {e}")
    seen = len(run.notes)
    if (path := run_file(d, "submission.json")) is not None:
        sub = _read_json(path, run.notes)
        run.submission = sub if isinstance(sub, dict) else None
        if sub is not None and not is_submission(sub):
            run.notes.append("submission.json: not a submission {task_id: [{attempt_1, attempt_2}, ...]}")
    for name, attr in ((PREDICTIONS_FILE, "vote"), (BASELINE_FILE, "baseline")):
        if (path := run_file(d, name)) is not None:
            try:
                setattr(run, attr, vote(Predictions.load(path), rule))
            except (OSError, ValueError) as e:
                run.notes.append(f"{name}: {str(e).removeprefix(f'{path}: ')}")
    if (path := run_file(d, "metrics.jsonl")) is not None:
        run.metrics = read_metrics(path, run.notes)
    if (path := run_file(d, "study.json")) is not None:
        study = _read_json(path, run.notes)
        run.study = study if isinstance(study, dict) else None
        if study is not None and run.study is None:
            run.notes.append(f"study.json: not a JSON object (got {type(study).__name__})")
    if (path := run_file(d, "run.json")) is not None:
        record = _read_json(path, run.notes)
        run.answers = _answer_counts(record)
        run.record = record if isinstance(record, dict) else None
        if record is not None and run.record is None:
            run.notes.append(f"run.json: not a JSON object (got {type(record).__name__})")
    # each note starts with its file's name
    run.unreadable += [f"{run_file(d, note.split(':', 1)[0]) or d / note.split(':', 1)[0]}:{note.split(':', 1)[1]}"
                       for note in run.notes[seen:]]
    return run


def _answer_counts(record: object) -> dict[str, int] | None:
    """run.json's test inputs per source, when it holds them as counts (else None)."""
    answers = record.get("answers") if isinstance(record, dict) else None
    counts = answers.get("counts") if isinstance(answers, dict) else None
    keys = ("adapted", "unadapted", "fallback")
    if not isinstance(counts, dict) or not all(type(counts.get(k)) is int and counts[k] >= 0 for k in keys):
        return None
    return {k: counts[k] for k in keys}


def write_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, *,
                 sections: Sequence[Section] = (), title: str | None = None, top: int = TOP_CANDIDATES,
                 run: RunData | None = None) -> Path:
    """Read run_dir (or take `run`, already read), write its report (default run_dir/report.html,
    atomically) and return the path. `sections` are added after the summary (the dry run passes its
    timing section here); a section that cannot be drawn is named in run.notes and run.unreadable.
    """
    run = load_run(run_dir) if run is None else run
    page = render_page(title or run.title, run_sections(run, sections, top))
    return write_atomic(Path(out) if out is not None else Path(run_dir) / REPORT_FILE, page)


# ---------------------------------------------------------------------------------------------
# A quick look at a task file or a submission (`trm show`)
# ---------------------------------------------------------------------------------------------


def is_submission(content: object) -> bool:
    """True for a Kaggle submission: {task_id: [{"attempt_1": ..., "attempt_2": ...}, ...]}."""
    return (isinstance(content, dict) and bool(content) and all(
        isinstance(v, list) and v and all(isinstance(e, dict) and "attempt_1" in e for e in v)
        for v in content.values()))


def show_page(run: RunData, title: str) -> str:
    """The summary and the tasks of `run` as one page."""
    return render_page(title, [s for s in (summary_section(run), tasks_section(run)) if s is not None])


def task_picture(run: RunData, cell_px: int = 160) -> np.ndarray:
    """Every task of `run` as one RGB picture, grids only: a row per demonstration pair (input, output),
    then a row per test input (input, attempt 1, attempt 2, truth), attempts framed green when right
    and red when wrong, a grey rule between tasks."""
    rows: list[list[np.ndarray]] = []

    def pic(grid: np.ndarray) -> np.ndarray:
        g = draw.as_grid(grid)
        if g.size == 0:
            return np.full((12, 12, 3), 200, np.uint8)  # a 0x0 prediction: a light grey square
        return draw.grid_image(g, draw.cell_side(max(g.shape), cell_px, 3, 16))

    for k, task in enumerate(run.tasks):
        if k:
            rows.append([np.full((2, 600, 3), 175, np.uint8)])
        for x, y in task.train:
            rows.append([pic(x), pic(y)])
        for i, x in enumerate(task.test_inputs):
            truth = task.test_outputs[i] if task.test_outputs is not None else None
            row = [pic(x)]
            attempts = attempts_of(run, task, i)
            ok = _passed(attempts, truth)
            if attempts is not None:
                for a in (0, 1):
                    colour = draw.BACKGROUND if ok is None else (draw.RIGHT if ok[a] else draw.WRONG)
                    row.append(draw.framed(pic(attempts[a]), colour))
            if truth is not None:
                row.append(pic(truth))
            rows.append(row)
    return draw.compose(rows)
