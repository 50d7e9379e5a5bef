"""Notebook cell 3 of 3: validate and repair /kaggle/working/submission.json so the run always
leaves a file Kaggle can score, whatever happened before.

Template copied into the generated .ipynb by bundle/notebook.py. Standard library only (it must
work when the package failed to install) and it never raises. The grid check, the fallback grid
and the atomic writer are the project's own (trm_core/safe_io.py): in the generated notebook the
`# <safe_io>` block holds that file's text instead of its import, so the cell needs no package.

Inputs: the test challenges file chosen under TRM_KAGGLE_INPUT (default /kaggle/input) as the run
cell chooses it (`choose_challenges`: the file TRM_CHALLENGES_FILE if set, else the folder of the
competition named in the settings, else the only such file found) and the submission in
TRM_KAGGLE_WORKING (default /kaggle/working), which may be missing or malformed. Output:
submission.json rewritten atomically with every task id of the challenges file, one
{"attempt_1", "attempt_2"} dict per test input in order, each attempt a rectangular grid of ints
0-9, 1-30 cells a side. An attempt that is missing or invalid is replaced by the test input itself
(its top-left 30x30; [[0]] if that is not a grid); a task whose test list cannot be read keeps its
entries (else one [[0]] pair). When no file can be chosen (none, or several and no competition
folder), or the only one found by search holds few of the submission's task ids (another
competition's file), the submission keeps its own task ids and only its grids are repaired.

Then the verdict (`wasted_reasons`, read from <working>/trm-run/setup.json and run.json): a setup
check that failed (no bundle, another bundle id, refused wheels, a Python tag or pip failure, fewer
GPUs than the accelerator the bundle was built for), a runner that used fewer GPUs than that, or no
test input answered by a model (run.json's `answers`, or no run.json from this run) makes a run
not worth submitting. The cell then prints one banner saying why and, in a commit, interactive or
local run, raises `WastedRun` after submission.json is written, so the notebook shows as failed;
in the competition rerun it never raises, since the fallback file must still be scored
(`must_raise`). The deliberate raise is this cell's only one.
"""

from __future__ import annotations

import json
import os
import time

# <settings> (filled in by bundle/notebook.py)
SUBMISSION_NAME = "submission.json"
CHALLENGES_NAME = "arc-agi_test_challenges.json"
COMPETITION = ""  # the competition's slug, whose folder holds the challenges to answer ("": search)
# </settings>

# <safe_io> (the text of trm_core/safe_io.py in the generated notebook)
from trm_core.safe_io import fallback_grid, is_grid, write_json_atomic
# </safe_io>

ATTEMPTS = ("attempt_1", "attempt_2")
SEARCH_DEPTH = 5  # /kaggle/input/datasets/<owner>/<slug>/<folder>/<file>: the deepest layout searched
MAX_INT_DIGITS = 100  # a grid cell has one digit; a longer integer only has to be refused, not read
RUN_DIR = "trm-run"
MODEL_SOURCES = ("adapted", "unadapted")  # run.json's answers sources that are a model's (bar "fallback")
BANNER_WIDTH = 78


def log(msg):
    print(f"[trm final] {msg}", flush=True)


def fallback_for(test):
    return fallback_grid(test.get("input") if isinstance(test, dict) else None)


def repaired_pair(entry, test):
    """(the entry with both attempts valid, attempts replaced): a bad attempt becomes the fallback."""
    entry = entry if isinstance(entry, dict) else {}
    pair, replaced = {}, 0
    for key in ATTEMPTS:
        if is_grid(entry.get(key)):
            pair[key] = entry[key]
        else:
            pair[key] = fallback_for(test)
            replaced += 1
    return pair, replaced


def repair(submission, challenges):
    """(repaired submission, number of attempts replaced, notes) for a challenges dict."""
    fixed, replaced, notes = {}, 0, []
    if not isinstance(submission, dict):
        notes.append(f"submission is {type(submission).__name__}, not a dict: rebuilt from the test inputs")
        submission = {}
    for task_id, task in challenges.items():
        tests = task.get("test") if isinstance(task, dict) else None
        entries = submission.get(task_id)
        if not isinstance(entries, list):
            if task_id in submission:
                notes.append(f"{task_id}: entry is {type(entries).__name__}, not a list")
            entries = []
        if not isinstance(tests, list) or not tests:
            # the test count cannot be read: keep the entries given (the runner writes one [[0]]
            # pair for such a task), else one [[0]] pair, never an empty list
            tests = [None] * max(1, len(entries))
        elif len(entries) != len(tests):
            notes.append(f"{task_id}: {len(entries)} predictions for {len(tests)} test inputs")
        out = []
        for i, test in enumerate(tests):
            pair, n = repaired_pair(entries[i] if i < len(entries) else None, test)
            out.append(pair)
            replaced += n
        fixed[task_id] = out
    extra = [t for t in submission if t not in challenges]
    if extra:
        notes.append(f"dropped {len(extra)} task ids that are not in the challenges file, e.g. {extra[0]}")
    return fixed, replaced, notes


def repair_without_challenges(submission):
    """Best effort when the challenges file cannot be chosen or read: keep the submission's task
    ids and structure, fix bad grids."""
    fixed, replaced = {}, 0
    for task_id, entries in (submission.items() if isinstance(submission, dict) else []):
        if not isinstance(entries, list):
            continue
        out = []
        for entry in entries:
            pair, n = repaired_pair(entry, None)
            out.append(pair)
            replaced += n
        fixed[task_id] = out
    return fixed, replaced


def answers_other_tasks(submission, challenges):
    """True when most of the submission's task ids are not in the challenges file: it was written
    for another file (the runner writes every id of the file it answers)."""
    if not isinstance(submission, dict) or not submission:
        return False
    return 2 * sum(1 for t in submission if t not in challenges) > len(submission)


def challenge_files(root, skip):
    """Every CHALLENGES_NAME file under root, at most SEARCH_DEPTH folders down, in sorted order;
    the folder `skip` (the bundle) is not searched."""
    root, skip = os.path.normpath(root), os.path.normpath(skip) if skip else ""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if os.path.join(dirpath, d) != skip)
        if dirpath[len(root):].count(os.sep) >= SEARCH_DEPTH:
            dirnames[:] = []
        if CHALLENGES_NAME in filenames:
            found.append(os.path.join(dirpath, CHALLENGES_NAME))
    return found


def choose_challenges(input_root, skip):
    """(the test challenges file or None, how it was chosen, the files seen). TRM_CHALLENGES_FILE
    wins. Else the folder of the competition this bundle was built for decides, in either layout
    (<input>/competitions/<slug>/, <input>/<slug>/): the file at its top, or the one file inside.
    Only when neither folder exists is the whole input searched, and then only a single file is
    taken: last year's competition or a dataset attached beside this one holds a file of the same
    name, and answering it would give Kaggle a submission for other tasks. Several: None."""
    override = os.environ.get("TRM_CHALLENGES_FILE")
    if override:
        return (override if os.path.isfile(override) else None), "TRM_CHALLENGES_FILE", [override]
    found, how = None, "search"
    for folder in ([os.path.join(input_root, "competitions", COMPETITION), os.path.join(input_root, COMPETITION)]
                   if COMPETITION else []):
        if os.path.isdir(folder):
            top = os.path.join(folder, CHALLENGES_NAME)
            found, how = ([top] if os.path.isfile(top) else challenge_files(folder, skip)), "competition"
            break
    if found is None:
        found = challenge_files(input_root, skip)
    return (found[0] if len(found) == 1 else None), how, found


def describe_choice(input_root, path, how, found):
    """Log lines saying which challenges file was chosen, or loudly why none was."""
    if how == "TRM_CHALLENGES_FILE":
        return [f"challenges: {path} (TRM_CHALLENGES_FILE)" if path else
                f"ERROR: TRM_CHALLENGES_FILE={found[0]} is not a file"]
    where = f"competition {COMPETITION}'s folder" if how == "competition" else f"{input_root}"
    if len(found) > 1:
        return ([f"ERROR: {len(found)} {CHALLENGES_NAME} files in {where}, refusing to guess which one "
                 "is the competition's:"] + [f"ERROR:   {f}" for f in found[:20]] +
                ([f"ERROR:   ... and {len(found) - 20} more"] if len(found) > 20 else []) +
                [f"ERROR: attach the competition ({COMPETITION or 'no slug in this notebook'}) or set "
                 "TRM_CHALLENGES_FILE to the file to answer"])
    if not found:
        return [f"ERROR: no {CHALLENGES_NAME} in {where}"]
    if how == "search" and COMPETITION:
        return [f"WARNING: no folder for competition {COMPETITION} under {input_root} (competitions/"
                f"{COMPETITION}/ or {COMPETITION}/): answering the only {CHALLENGES_NAME} found, {path}"]
    return [f"challenges: {path} (by {how})"]


def parse_int(text):
    """A JSON integer, or None (which no grid accepts) for one longer than MAX_INT_DIGITS: Python
    refuses to convert over 4300 digits and would fail the whole file for one task's cell."""
    return int(text) if len(text) <= MAX_INT_DIGITS else None


def load_json(path):
    try:
        with open(path, encoding="utf-8-sig") as f:  # a byte-order mark is not an error
            return json.load(f, parse_int=parse_int)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as e:
        log(f"{path} is unreadable ({type(e).__name__}: {e}); rebuilding it")
        return None


def union_of(paths):
    """Every task of the readable candidate files (the first file holding an id wins)."""
    union = {}
    for candidate in paths:
        tasks = load_json(candidate)
        for task_id, task in (tasks.items() if isinstance(tasks, dict) else []):
            union.setdefault(task_id, task)
    return union


def run_kind(environ):
    """"rerun", "commit", "interactive" or "local", as submission/env.py::run_kind decides (this
    cell cannot import the package: it may not be installed)."""
    flag = str(environ.get("KAGGLE_IS_COMPETITION_RERUN", "")).strip().lower()
    if flag and flag not in ("0", "false"):
        return "rerun"
    kind = str(environ.get("KAGGLE_KERNEL_RUN_TYPE", "")).strip().lower()
    if kind == "batch":
        return "commit"
    return "interactive" if kind else "local"


def read_record(path):
    """A JSON object from path, or None (missing, unreadable, not an object): never raises."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f, parse_int=parse_int)
        return value if isinstance(value, dict) else None
    except (OSError, ValueError, RecursionError):
        return None


def _number(value):
    """value when it is a finite number (a NaN count must not pass for an answer), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if value == value and abs(value) != float("inf") else None


def _same_start(record, start):
    """True when record's start_time is this notebook run's start (the run cell passes it to the
    runner with 3 decimals): a record left by an earlier run in the same folder is not this run's."""
    if start is None:
        return True
    t = _number(record.get("start_time") if isinstance(record, dict) else None)
    return t is not None and abs(t - start) < 0.01


def wasted_reasons(setup, run, start, runner_started=True):
    """Why this run is not worth submitting: [] when it is. setup, run: setup.json and run.json as
    read (None: missing or unreadable); start: this notebook run's start time (None: not known, any
    record counts); runner_started: False when the run cell said it did not start the runner."""
    reasons = []
    if not isinstance(setup, dict) or not _same_start(setup, start):
        reasons.append("setup recorded no checks for this run (trm-run/setup.json): was cell 1 run?")
        setup = {}
    elif setup.get("ok") is not True:
        problems = setup.get("problems") if isinstance(setup.get("problems"), list) else []
        reasons += [f"setup: {p}" for p in problems if isinstance(p, str)] or ["setup: failed (see cell 1)"]
    checks = setup.get("checks") if isinstance(setup.get("checks"), dict) else {}
    gpus = checks.get("gpus") if isinstance(checks.get("gpus"), dict) else {}
    expected = _number(gpus.get("expected")) if gpus.get("accelerator") else None
    if not runner_started or not isinstance(run, dict) or not _same_start(run, start):
        reasons.append("the runner wrote no trm-run/run.json in this run: no test input was answered by a model")
        return reasons
    answers = run.get("answers") if isinstance(run.get("answers"), dict) else {}
    counts = answers.get("counts") if isinstance(answers.get("counts"), dict) else {}
    by_model = sum(max(0, _number(counts.get(s)) or 0) for s in MODEL_SOURCES)
    total = _number(answers.get("test_inputs"))
    if by_model <= 0:
        of = f" of {total:g}" if total is not None else ""
        reasons.append(f"0{of} test inputs answered by a model: submission.json holds the fallback only "
                       "(the runner's problems are in trm-run/run.json)")
    if expected:
        used = _number(run.get("world")) if run.get("device") == "cuda" else 0
        if used is not None and used < expected:
            reasons.append(f"the runner used {used:g} GPU(s) ({run.get('device')}), the bundle was built for "
                           f"{gpus.get('accelerator')} with {expected:g}")
    return reasons


def must_raise(kind, reasons):
    """Whether the last cell fails the notebook: only for a wasted run, and never in the
    competition rerun, whose file (the fallback included) must be scored."""
    return bool(reasons) and kind != "rerun"


def banner(kind, reasons, path, written=True):
    """The lines of the one block that says a run is not worth submitting, and why."""
    bar = "#" * BANNER_WIDTH
    title = "TRM-KIT: THIS RUN IS NOT WORTH SUBMITTING"
    lines = [bar, "###  " + title + " " * max(1, BANNER_WIDTH - 8 - len(title)) + "###", bar]
    lines += [f"  - {r}" for r in reasons]
    lines.append(f"  {path} is valid (every task, two attempts each), but answers with the fallback where "
                 "no model did." if written else f"  {path} could not be written (see above).")
    if must_raise(kind, reasons):
        lines.append(f"  {kind} run: this cell raises so that the notebook shows as failed. Fix the above "
                     "before you submit.")
    else:
        lines.append(f"  {kind} run: not raising, the file above is scored as it is.")
    return lines + [bar]


class WastedRun(RuntimeError):
    """Raised by the last cell, after submission.json is written, when the run is not worth submitting."""


def verdict(working):
    """(run kind, reasons): this run's outcome from its records, never raising. reasons is None
    when cell 1 did not run in this kernel (no TRM_START_TIME): this cell then only repairs the file."""
    kind = run_kind(os.environ)
    try:
        start = float(os.environ["TRM_START_TIME"])
    except KeyError:
        return kind, None
    except ValueError:
        start = None
    try:
        folder = os.path.join(working, RUN_DIR)
        started = os.environ.get("TRM_RUNNER_RC") != ""  # "": the run cell ran and did not start it
        return kind, wasted_reasons(read_record(os.path.join(folder, "setup.json")),
                                    read_record(os.path.join(folder, "run.json")), start, started)
    except Exception as e:  # noqa: BLE001 - a run that cannot be judged is not called fine
        return kind, [f"the run's records could not be read: {type(e).__name__}: {e}"]


def main():
    working = os.environ.get("TRM_KAGGLE_WORKING", "/kaggle/working")
    written = check(working)
    kind, reasons = verdict(working)
    if reasons is None:
        log("cell 1 did not run in this kernel: the run is not judged, the file only repaired")
        return
    if reasons:
        for line in banner(kind, reasons, os.path.join(working, SUBMISSION_NAME), written):
            log(line)
    if must_raise(kind, reasons):
        raise WastedRun(f"{len(reasons)} reason(s) this run is not worth submitting (the block above): "
                        + "; ".join(reasons)[:2000])
    if not reasons:
        log(f"run checked: set up, answered by a model ({kind} run)")


def check(working):
    """Repair (or build) submission.json in working; True when it was written."""
    written = False
    try:
        input_root = os.environ.get("TRM_KAGGLE_INPUT", "/kaggle/input")
        os.makedirs(working, exist_ok=True)
        path = os.path.join(working, SUBMISSION_NAME)
        submission = load_json(path)
        challenges_path, how, found = choose_challenges(input_root, os.environ.get("TRM_BUNDLE_DIR", ""))
        for line in describe_choice(input_root, challenges_path, how, found):
            log(line)
        challenges = load_json(challenges_path) if challenges_path else None
        keep_ids = False
        if isinstance(challenges, dict) and answers_other_tasks(submission, challenges):
            missing = sum(1 for t in submission if t not in challenges)
            if how == "search":
                # a file found by search alone may be another competition's: never trade a submission
                # for the real tasks for one answering a decoy
                log(f"WARNING: {missing} of the submission's {len(submission)} task ids are not in {challenges_path}, "
                    "which was only found by search: keeping the submission's task ids, repairing grids only")
                keep_ids = True
            else:
                log(f"WARNING: {missing} of the submission's {len(submission)} task ids are not in "
                    f"{challenges_path} ({how}): the submission answered other tasks; rebuilt for this file's")
        if isinstance(challenges, dict) and not keep_ids:
            fixed, replaced, notes = repair(submission, challenges)
        else:
            if not keep_ids:
                log(f"WARNING: no readable {CHALLENGES_NAME} chosen under {input_root}: only fixing grids in place")
            union = union_of(found) if submission is None and len(found) > 1 else {}
            if union:
                # no file at all is a run Kaggle cannot score; one answering every candidate's tasks
                # holds the real ones (a scorer reads the ids it needs)
                log(f"ERROR: no {path}: writing the fallback for the tasks of all {len(found)} candidate files "
                    f"({len(union)} tasks), since none could be chosen")
                fixed, replaced, notes = repair({}, union)
            elif submission is None:
                log(f"ERROR: no {path} and no challenges to rebuild it from")
                return written
            else:
                fixed, replaced = repair_without_challenges(submission)
                notes = []
        for note in notes[:20]:
            log(note)
        write_json_atomic(path, fixed)
        written = True
        outputs = sum(len(v) for v in fixed.values())
        log(f"{path}: {len(fixed)} tasks, {outputs} test outputs, {replaced} attempts filled with the fallback "
            f"({time.strftime('%H:%M:%S')})")
    except Exception as e:  # the last cell must not fail the notebook
        log(f"ERROR: could not check the submission: {type(e).__name__}: {e}")
    return written


if __name__ == "__main__":
    main()
