"""The fallback-first runner the notebook calls: always leave a valid submission.json, in time.

    python -m submission.run --start-time T --deadline D --input-dir DIR --working-dir DIR --bundle-dir DIR [options]

Inputs: absolute Unix times (when the notebook started, and by when the final submission must be
written), the folder holding the test challenges (searched, never a fixed path), the writable
working folder, and the bundle folder (its checkpoint in `checkpoint/`). `--checkpoint` overrides
the bundle's checkpoint; the other options tune the budget (see `--help`).
Outputs, in the working folder: `submission.json` (valid from the first seconds, improved as
results arrive, validated and repaired at the end) and `trm-run/run.json` (plan vs actual per
phase, device, versions, seeds, problems) with `trm-run/plan.json`, and once the file is final, in
the time left, what `trm report` draws from a downloaded output (tasks, training log, votes, package
list, timing report: submission/keep.py); scratch files (checkpoints, per-shard predictions, job
files) go to --scratch-dir.

Order: write the fallback (the test input as both attempts, built from the raw JSON so every task id
is present even when a task does not parse) -> detect the run kind and hardware -> verify the bundle
-> load tasks leniently (a task that fails is named and keeps the fallback) -> calibrate -> plan ->
post-train on all GPUs (torchrun, with the scheduler's Watchdog) -> predict, each GPU a worker
taking work items, largest first, as it frees up (--predict-queue dynamic; static: a fixed shard
per GPU), so a failing worker loses only its item and a slow one cannot hold the phase, with provisional
submissions while it runs -> vote -> write. Every job is retried by one policy
(submission/retry.py): out of memory -> smaller pieces of the same batch, a crash -> again
(a torchrun group on fewer GPUs the second time), a hang -> killed at its heartbeat and retried,
out of time -> stop; what cannot be done keeps the fallback. The commit run (Kaggle's
"Save & Run All", not the scoring rerun) is a smoke run on a few tasks with few steps and views, and
still writes a complete file. Nothing escapes `main`: every error is logged. Exit status: 0; 2 when
an option is refused (every option is checked before anything starts, and the fallback is still
written from --input-dir to --working-dir); 128 + the signal's number when SIGTERM (the notebook's
kill time) or SIGHUP stopped the run: its jobs are stopped, what they saved is voted over the
fallback, and submission.json and run.json are written whole (submission/stopping.py); 3 when
another live runner holds the working folder's lock (nothing is written: the notebook's run cell
was run again while its first runner works). With $TRM_PARENT_PID set (the run cell sets it to the
kernel's pid) the runner stops as on SIGTERM when that process goes, and exits within
PARENT_GRACE_S whatever it is doing (submission/lifeline.py).

The deadline holds with a margin the runner measures: the final reserve (kept between the last
job's kill time and the deadline) is at least twice the measured cost of what follows a kill (the
final vote and write, the final check, run.json's saves), rehearsed once right after loading so
that imports and compilation happen then, plus STOP_S for the jobs to go. Every stop and kill
instant comes from one value, `Deadlines` (submission/clock.py), made at the start and replaced as
the run is calibrated, planned and measured.

The parts: submission/options.py (RunnerOptions and the command line built from it),
stopping.py (signals), fallback.py, bundle_check.py, record.py (run.json), clock.py (the deadlines), jobs.py (the
typed job files), dispatch.py
(launching and outcomes), retry.py, attempts.py (calibration, training and prediction attempts, side by
side), planning.py (the plan, the post-training config: arithmetic), training.py and predicting.py (what
their phases leave), assemble.py (votes over the fallback, the final
repair); this file runs them as a short sequence of phases (`Runner._run`).
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from submission import env as env_mod
from submission import faults as faults_mod
from submission import keep as keep_mod
from submission import lifeline
from submission.assemble import SOURCE_OF_TAG, Answers, dedupe, shard_files
from submission.attempts import CALIBRATION_UNIT_S, Calibrating, Prediction, Training
from submission.bundle_check import checkpoint_tampering, verify_bundle
from submission.clock import STOPPED_KEEP_S, Deadlines
from submission.dispatch import Dispatcher, Outcome
from submission.fallback import fallback_submission
from submission.launch import SubprocessLauncher
from submission.options import OptionsError, RunnerOptions, folders_from_args, options_from_args, parser
from submission.planning import Planner
from submission.record import RunLog, printable, save_json, show_id
from submission.retry import RetryPolicy
from submission.training import group_timeout as _group_timeout
from submission.scheduler import Calibration, Plan
from submission.stopping import Stopped, StopSwitch, TrackedLauncher, on_signals
from trm_core import jsonio
from trm_core.config import RecipeError, of_manifest
from trm_core.safe_io import MAX_SIDE

__all__ = ["CALIBRATION_UNIT_S", "STOPPED_KEEP_S", "Outcome", "Runner", "RunnerOptions", "_group_timeout", "dedupe",
           "fallback_submission", "main", "options_from_args", "parser"]

RUN_DIR = "trm-run"
FINAL_SAFETY = 2.0  # the final reserve holds this many times the measured cost of the final steps
BAD_OPTIONS_STATUS = 2
ALREADY_RUNNING_STATUS = 3  # another runner holds the working folder (submission/lifeline.py)


def manifest_canvas(manifest: Any, where: str | os.PathLike) -> int:
    """The canvas side a checkpoint manifest gives (config.canvas), or ValueError naming the file.

    An integer 1..30 (not a bool, a float such as 1e400 or a string): ARC grids are at most 30x30
    and so is a prediction record, so a larger canvas, whose crops can exceed 30, is refused here
    rather than failing every prediction shard."""
    config = manifest.get("config") if isinstance(manifest, dict) else None
    canvas = config.get("canvas") if isinstance(config, dict) else None
    if not isinstance(canvas, int) or isinstance(canvas, bool):
        shown = repr(canvas) if len(repr(canvas)) <= 40 else repr(canvas)[:40] + "..."
        raise ValueError(f"{where}: config.canvas must be an integer 1..{MAX_SIDE}, got {shown}")
    if not 1 <= canvas <= MAX_SIDE:
        raise ValueError(f"{where}: config.canvas {canvas} is outside 1..{MAX_SIDE} (ARC grids are at most "
                         f"{MAX_SIDE}x{MAX_SIDE}, and so are the predictions the notebook records)")
    return canvas


class Runner:
    """One run of the notebook's brain; `run()` never raises."""

    def __init__(self, opts: RunnerOptions, *, launcher: Any = None, environ: dict[str, str] | None = None,
                 clock: Callable[[], float] = time.time, echo: Callable[[str], None] | None = None) -> None:
        self.opts = opts
        self.stop = StopSwitch(clock)
        clock = self.clock = self.stop.clock  # raises Stopped once after a stop signal (see stopping.py)
        self.environ = dict(os.environ if environ is None else environ)
        self.start = opts.start_time if opts.start_time is not None else clock()
        self.times = Deadlines.at_start(self.start, opts.deadline, time_limit_s=opts.time_limit_s,
                                        margin_s=opts.margin_s)  # replaced as the run learns (see deadlines())
        deadline = self.times.deadline
        out = echo or (lambda line: print(line, flush=True))

        def say(line: str) -> None:  # every line printed: a task id or a worker's output may hold anything
            out(printable(line))

        self.final_check_s = 0.0  # the final check of the file on disk, measured (Answers.rehearse)
        self.run_dir = opts.working_dir / RUN_DIR
        self.scratch = opts.scratch_dir or Path(self.environ.get("TRM_SCRATCH") or tempfile.gettempdir()) / \
            f"trm-run-{int(self.start)}"
        self.launcher = TrackedLauncher(launcher or SubprocessLauncher(echo=say))
        # a job whose heartbeat stops for this long (or 10 of its steps) is killed and retried
        self.dispatch = Dispatcher(self.launcher, self.scratch, clock, self.times)
        self.rec = RunLog(self.run_dir / "run.json", self.start, deadline, clock, say, lambda: self.answers.writes)
        self.log, self.problem = self.rec.log, self.rec.problem
        self.record = self.rec.data  # what run.json holds besides phases and problems
        self.answers = Answers(opts.working_dir / "submission.json", self.log, self.problem)
        self.retry = RetryPolicy(opts.max_attempts)
        self.fault_spec = ""  # what every job injects: $TRM_FAULT once checked (see check_faults)
        self.challenges_path: Path | None = None
        self.kind, self.mode, self.device, self.world = "local", "full", "cpu", 1
        self.planner = Planner(opts, self.mode, self.device, self.world, 1.0, clock, deadline)
        self.checkpoint: Path | None = None
        self.canvas = 30
        self.tasks: Any = None  # TaskSet of the tasks to predict
        self.calibration: Calibration | None = None
        self.plan: Plan | None = None  # the latest plan (re-plans after a retry replace it)
        self.initial_plan: Plan | None = None  # phases are reported against it
        self.predictions: dict[str, list[str]] = {}
        self.on_stop: Callable[[], None] | None = None  # votes the prediction under way when a stop comes
        self.fallback_tried = False  # a signal in the first instant comes before the fallback

    # ---- bookkeeping -------------------------------------------------------------------------

    @property
    def sub_path(self) -> Path:
        return self.answers.path

    @property
    def problems(self) -> list[str]:
        return self.rec.problems

    def _phase(self, name: str, planned: float | None, started: float, status: str, **detail: Any) -> dict:
        self.record["answers"] = self.answers.who_answered()
        return self.rec.phase(name, planned, started, status, **detail)

    @property
    def final_steps_s(self) -> float:
        """FINAL_SAFETY x the measured cost of the steps after the last prediction: the slowest
        vote-and-write so far (rehearsed in load), the final check, and three saves of run.json
        (the prediction's phase, the vote's, the final one)."""
        a = self.answers
        return FINAL_SAFETY * (max(a.assemble_s, a.write_s) + self.final_check_s + 3 * self.rec.save_s)

    def deadlines(self) -> Deadlines:
        """The run's deadlines with the final steps' cost as measured now (it grows as writes and
        saves are timed): each phase takes its stop and kill instants from this."""
        return self.times.measured(self.final_steps_s)

    def _learn(self, times: Deadlines) -> None:
        """The run's deadlines from now on (the dispatcher's heartbeat limits come from them too)."""
        self.times = self.dispatch.times = times

    # ---- the whole run -------------------------------------------------------------------------

    def run(self) -> int:
        """The whole run; the exit status (0, or 128 + the signal's number when one stopped it)."""
        try:
            self._run()
        except Stopped:
            pass  # finalize says so
        except BaseException as e:  # noqa: BLE001 - the runner never raises past here
            self.problem(f"runner error: {type(e).__name__}: {e}\n{traceback.format_exc(limit=8)}")
        finally:
            self.stop.finishing = True  # first: a clock that raised in here would skip the final file
            self.finalize()
        return self.stop.exit_status

    def fallback_only(self, why: str) -> int:
        """Refused options: write the fallback (and run.json saying why), then BAD_OPTIONS_STATUS."""
        self.record["options_refused"] = why
        try:
            self.problem(f"options refused, only the fallback is written: {why}")
            self.write_fallback()
        except BaseException as e:  # noqa: BLE001 - as in run()
            self.problem(f"runner error: {type(e).__name__}: {e}")
        finally:
            self.stop.finishing = True
            self.finalize()
        return BAD_OPTIONS_STATUS

    def _run(self) -> None:
        """The phases, in order; each one that fails leaves the submission as it was."""
        self.log(f"deadline in {self.times.deadline - self.clock():.0f} s")
        self.write_fallback()
        self.check_faults()
        if not self.answers.fallback:
            return
        self.detect()
        self.load()
        if self.checkpoint is None or self.tasks is None or not len(self.tasks):
            return
        cal = self.calibrate()
        if cal is not None and self.make_plan(cal).fallback_only:
            return
        adapted = self.train(cal) if cal is not None else None
        summary = self.predict_final(adapted)
        if adapted:
            self.predict_unadapted(summary)

    # ---- phases: fallback, environment, inputs --------------------------------------------------

    def write_fallback(self) -> None:
        self.fallback_tried = True
        t0 = self.clock()
        # only under the given folder (a file found above it would answer someone else's tasks), in
        # the folder of the competition the bundle was built for when that folder is there
        bundle = self.opts.bundle_dir or env_mod.find_bundle(self.opts.input_dir)
        competition = env_mod.bundle_competition(bundle)
        choice = env_mod.choose_challenges(self.opts.input_dir, competition, skip=bundle)
        path = choice.path
        if path is None:
            self.problem(f"no test challenges file under {self.opts.input_dir}: nothing to answer"
                         if choice.how == "none" else f"{choice.describe()}: nothing answered")
            self._phase("fallback", None, t0, "failed")
            return
        if choice.how == "search" and competition:
            self.log(f"no folder for competition {competition} under {self.opts.input_dir}: "
                     f"answering the one challenges file found, {path}")
        self.record["inputs"] = {"challenges": str(path), "chosen_by": choice.how, "competition": competition}
        self.challenges_path = path
        repeated: list[str] = []
        a = self.answers
        try:  # standard library only, BOM tolerated; a task over the limits costs only itself
            a.raw, unreadable = jsonio.load_members(path, duplicates=repeated)
        except jsonio.JSONInputError as e:
            self.problem(f"{e}: no submission can be built")
            self._phase("fallback", None, t0, "failed")
            return
        for task_id, why in unreadable.items():
            self.problem(f"{path}: task {task_id} unreadable ({why}): one [[0]] entry")
        if repeated:
            self.problem(f"{path}: keys repeated in one object (the last one kept): {sorted(set(repeated))[:10]}")
        a.fallback, a.broken = fallback_submission(a.raw)
        if a.broken:
            self.problem(f"tasks with no readable test inputs (one [[0]] entry each): {a.broken}")
        if isinstance(a.raw, dict):
            a.clean = {t: v for t, v in a.raw.items() if str(t) not in a.broken}
        try:  # imported before the write, so the write's measured cost is a later write's
            import trm_core.submission_file  # noqa: F401
        except Exception:  # noqa: BLE001 - the write falls back to safe_io alone
            pass
        ok = a.write(a.fallback, "fallback")
        self.planner.write_s = self.final_steps_s  # until the rehearsal (in load) measures the final vote too
        n = sum(len(v) for v in a.fallback.values())
        self._phase("fallback", None, t0, "ok" if ok else "failed", tasks=len(a.fallback), test_inputs=n)

    def check_faults(self) -> None:
        """A malformed $TRM_FAULT is rejected here, once, instead of crashing every job."""
        spec = self.environ.get("TRM_FAULT", "")
        try:
            self.fault_spec = ",".join(str(f) for f in faults_mod.parse_faults(spec))
        except ValueError as e:
            self.problem(f"TRM_FAULT rejected, no fault injected: {e}")
            self.fault_spec = ""
        if self.fault_spec:
            self.log(f"fault injection: {self.fault_spec}")

    def detect(self) -> None:
        t0 = self.clock()
        environment = env_mod.detect(self.environ)
        self.kind = environment.kind
        mode = self.opts.run_mode
        if mode == "auto":
            mode = "full" if self.kind in ("rerun", "local") else "smoke"
        self.mode = mode
        if mode == "smoke":
            self._learn(self.times.smoke(self.start + self.opts.smoke_time_s))
        hw = environment.hardware
        want = self.opts.device or ("cuda" if hw.gpu_count else "cpu")
        if want == "cuda" and not hw.gpu_count:
            self.problem("--device cuda but no GPU is visible: using the CPU")
            want = "cpu"
        elif want == "cuda":
            usable, why = env_mod.cuda_usable()
            if not usable:  # every job sent to those GPUs would crash in turn, and nothing be answered
                self.problem(f"{hw.gpu_count} GPU(s) listed by {hw.source} but torch cannot use CUDA ({why}): "
                             "using the CPU")
                want = "cpu"
            elif usable < hw.gpu_count:
                self.problem(f"{hw.gpu_count} GPU(s) listed by {hw.source} but torch can use {usable}: using {usable}")
                hw = replace(hw, gpu_count=usable)
        self.device = self.dispatch.device = want
        self.world = min(self.opts.gpus or hw.gpu_count, hw.gpu_count) if want == "cuda" else self.opts.cpu_procs
        self.world = max(1, self.world)
        self.planner = Planner(self.opts, mode, want, self.world, self.planner.write_s, self.clock,
                               self.times.run_deadline)
        self.record.update(environment=environment.to_json(), run_mode=mode, device=want, world=self.world,
                           versions=env_mod.versions(), seeds={"seed": self.opts.seed},
                           options={k: str(v) if isinstance(v, Path) else v for k, v in asdict(self.opts).items()})
        self.log(f"{self.kind} run, {mode} mode: {hw.describe()}; {self.world} x {want}")
        self._phase("detect", None, t0, "ok")

    def load(self) -> None:
        """The bundle checked, the checkpoint found and checked, the tasks loaded leniently."""
        t0 = self.clock()
        ckpt, manifest = self._checkpoint()
        if ckpt is None:
            self._phase("load", None, t0, "failed")
            return
        self.checkpoint = ckpt
        self.record["inputs"]["checkpoint"] = str(ckpt)
        from trm_core.tasks import TaskSet, load_tasks

        loaded = load_tasks(self.challenges_path, strict=False, max_side=self.canvas)
        for p in loaded.problems:
            what = f"task {show_id(p.task_id)}" if p.task_id is not None else "a task"
            self.problem(f"{what} kept on the fallback: {p.file}: {p.where + ': ' if p.where else ''}{p.message}")
        self.record["task_problems"] = [{"task_id": p.task_id, "where": p.where, "message": p.message}
                                        for p in loaded.problems]
        ids = list(loaded.tasks)
        if self.mode == "smoke":
            ids = ids[: self.opts.smoke_tasks]
        self._use_tasks(TaskSet(tasks={t: loaded.tasks[t] for t in ids}))
        tests = sum(len(t.test_inputs) for t in self.tasks)
        pairs = sum(len(t.train) for t in self.tasks)
        self.record["tasks"] = {"in_file": len(self.answers.fallback), "loaded": len(loaded.tasks), "used": len(ids),
                                "test_inputs": tests, "train_pairs": pairs, "skipped": loaded.skipped,
                                "broken": self.answers.broken, "used_ids": ids}
        self.log(f"{len(ids)} task(s) to predict ({tests} test inputs, {pairs} demonstration pairs); "
                 f"{len(loaded.skipped)} skipped, canvas {self.canvas}")
        # the final vote and write, rehearsed: imports and compilation now, not at the deadline,
        # and its measured cost sizes the final reserve (and the plan's vote-and-write time)
        check_s = self.answers.rehearse(self.tasks, self.run_dir / "rehearsal.json")
        self.final_check_s = max(self.final_check_s, check_s)
        self.planner.write_s = self.final_steps_s
        self._phase("load", None, t0, "ok", final_reserve_s=self.deadlines().final_reserve_s,
                    vote_compile_s=self.answers.vote_compile_s)

    def _checkpoint(self) -> tuple[Path | None, Any]:
        """(the checked checkpoint folder, its manifest), or (None, None) with the problem said."""
        bundle = self.opts.bundle_dir
        if (bundle is None or not str(bundle)) and self.opts.checkpoint is None:
            bundle = env_mod.find_bundle(self.opts.input_dir)
        self.record.setdefault("inputs", {})["bundle_dir"] = str(bundle) if bundle else None
        if bundle is not None and Path(bundle).is_dir():
            bundle_problems = verify_bundle(bundle, check_python=True)
            for p in bundle_problems:
                self.problem(f"bundle: {p}")
            self.record["bundle_problems"] = bundle_problems
            try:
                self.record["bundle_id"] = json.loads((Path(bundle) / env_mod.BUNDLE_MARKER).read_text()).get("bundle_id")
            except (OSError, ValueError):
                pass
        ckpt = self.opts.checkpoint or (Path(bundle) / "checkpoint" if bundle else None)
        if ckpt is None or not (Path(ckpt) / "manifest.json").is_file():
            self.problem(f"no kit checkpoint (manifest.json) at {ckpt}: the fallback stays")
            return None, None
        ckpt = Path(ckpt)
        try:
            manifest = jsonio.load(ckpt / "manifest.json")
            self.canvas = manifest_canvas(manifest, ckpt / "manifest.json")
        except (OSError, ValueError) as e:
            self.problem(f"{ckpt}/manifest.json unusable ({e}): the fallback stays")
            return None, None
        try:
            recipe = of_manifest(manifest, str(ckpt / "manifest.json"))
        except RecipeError as e:  # the workers' checkpoint.load refuses it the same way
            self.problem(f"{e}: the fallback stays")
            return None, None
        post = self.planner.read_recipe(recipe)
        self.record["post_training"] = post.to_json()
        self.log(f"post-training: {post.why}")
        if post.warning:
            self.log(post.warning)
        tampered = checkpoint_tampering(ckpt, manifest,
                                        [] if self.opts.checkpoint else self.record.get("bundle_problems", []))
        if tampered:
            self.problem(f"checkpoint refused, not trained or predicted with: {tampered}; the fallback stays")
            self.record["checkpoint_refused"] = tampered
            return None, None
        return ckpt, manifest

    def _use_tasks(self, tasks: Any) -> None:
        """Predict `tasks`: every job from now on is told them."""
        self.tasks = tasks
        self.answers.task_ids = set(tasks.tasks)
        self.dispatch.common = {"challenges": str(self.challenges_path), "task_ids": list(tasks.tasks),
                                "canvas": self.canvas, "checkpoint": str(self.checkpoint), "seed": self.opts.seed,
                                "fault": self.fault_spec}

    # ---- phases: calibration and plan -----------------------------------------------------------

    def calibrate(self) -> Calibration | None:
        t0 = self.clock()
        calibrating = Calibrating(self.dispatch, self.retry, self.deadlines(), self.log, self.problem, self.planner)
        cal, status, attempts = calibrating.run()
        self.record["calibration"] = cal.to_json() if cal else None
        self.calibration = cal
        self._phase("calibrate", None, t0, status, attempts=attempts)
        if cal:
            self._learn(self.times.calibrated(cal.launch_s, cal.train_warmup_s + cal.predict_warmup_s))
            self.log(f"calibrated on {cal.device}: {cal.train_step_s:.4g} s/step of {cal.train_batch}, "
                     f"{cal.predict_batch_s:.4g} s/batch of {cal.predict_batch}, launch {cal.launch_s:.1f} s, "
                     f"warm-up {cal.train_warmup_s:.1f}/{cal.predict_warmup_s:.1f} s")
        return cal

    def make_plan(self, cal: Calibration) -> Plan:
        """Plan the run (only the tasks that fit when not all do) and record the plan."""
        self.plan = self.planner.plan(self.tasks, cal)
        if self.plan.fallback_only and len(self.tasks) > 1:
            keep = self.planner.fit_tasks(self.tasks, cal)
            if keep:
                from trm_core.tasks import TaskSet

                n, of = len(keep), len(self.tasks)
                self._use_tasks(TaskSet(tasks={t: self.tasks.tasks[t] for t in self.tasks.tasks if t in set(keep)}))
                self.record.setdefault("tasks", {})["fitted"] = {"kept": n, "of": of}
                self.problem(f"only {n} of {of} tasks fit before the deadline: predicting those "
                             "(fewest test inputs first); the others keep the fallback")
                self.plan = self.planner.plan(self.tasks, cal)
        # with the optimiser variant and EMA the training job gets, and why (a warning if unknown)
        save_json(self.run_dir / "plan.json", {**self.plan.to_json(), "post_training": self.planner.post.to_json(),
                                               "predict_queue": self.opts.predict_queue})
        self.record["plan"] = self.plan.to_json()
        self.record["planned_total_s"] = self.plan.end - self.start
        self.log(self.plan.render())
        if not self.plan.fallback_only:
            self._learn(self.times.planned(self.plan))
            self.initial_plan = self.plan
        self.record["deadlines"] = self.deadlines().to_json()  # as planned; each later phase takes its own
        return self.plan

    # ---- phase: post-training ---------------------------------------------------------------------

    def train(self, cal: Calibration) -> Path | None:
        """Post-train; returns the checkpoint to predict with (None: the raw one)."""
        p = self.plan
        t0 = self.clock()
        if p is None or p.steps <= 0:
            self._phase("train", 0.0, t0, "skipped", reason=p.reason if p else "no plan")
            return None
        training = Training(self.dispatch, self.retry, self.deadlines(), self.log, self.problem, self.planner,
                            self.scratch, seed=self.opts.seed)
        ckpt, status, self.plan, self.record["train"], attempts = training.run(self.tasks, cal, p, self.world)
        self._learn(self.times.replanned(self.plan))
        planned = p.phases["train_launch"] + p.phases["train"] + p.phases["save"]
        self._phase("train", planned, t0, status, attempts=attempts)
        return ckpt

    # ---- phases: prediction and vote --------------------------------------------------------------

    def predict_final(self, adapted: Path | None) -> dict[str, Any]:
        """Predict with the post-trained checkpoint (the raw one without it), vote, write."""
        if self.initial_plan is not None:
            views, batch = self.plan.views, self.plan.predict_batch
            planned = self.initial_plan.phases["predict_launch"] + self.initial_plan.phases["predict"]
        else:  # no calibration: predict with the raw checkpoint until the last stop, no training
            views, batch = self.planner.views(), self.planner.batches()[1]
            planned = None
        tag = "adapted" if adapted else "raw"
        source = SOURCE_OF_TAG[tag]
        self.on_stop = lambda: self.answers.assemble(self._saved(tag), "final, stopped", source=source)
        files = self.predict(adapted or self.checkpoint, tag, views, batch, planned, provisional=True)
        t0 = self.clock()
        summary = self.answers.assemble(files, "final", source=source) if files else {"records": 0, "from_model": 0}
        self.on_stop = None
        vw = self.initial_plan.phases["vote_write"] if self.initial_plan else None
        self._phase("vote_write", vw, t0, "ok" if files else "skipped", **summary)
        cal = self.calibration
        self.record["vote"] = {"compile_s": self.answers.vote_compile_s,  # the runner's first call, at load
                               "calibration_compile_s": cal.vote_compile_s if cal else None,
                               "s_per_view": cal.vote_s_per_view if cal else None,
                               "planned_s": vw, "actual_s": self.clock() - t0}
        self.record["predict"] = {"tag": tag, "views": views, "files": files, **summary}
        return {**summary, "files": files, "views": views, "batch": batch, "source": source}

    def predict_unadapted(self, final: dict[str, Any]) -> None:
        """The un-adapted checkpoint: as a baseline when asked, else to answer what the adapted
        model left unanswered (its views are voted apart)."""
        views, batch = final["views"], final["batch"]
        raw_files: list[str] = []
        source = final["source"]
        if final["from_model"] < self.test_inputs():
            tag = "baseline" if self.opts.baseline else "unadapted"
            self.on_stop = lambda: self.answers.assemble(final["files"], "final, stopped", fill=self._saved(tag),
                                                         source=source)
        if self.opts.baseline and self.plan is not None:
            planned = self.initial_plan.phases["baseline_launch"] + self.initial_plan.phases["baseline"]
            raw_files = self.predict(self.checkpoint, "baseline", views, batch, planned, provisional=False,
                                     last=True)
            self.record["baseline"] = {"views": views, "files": self.predictions.get("baseline", [])}
        elif final["from_model"] < self.test_inputs() and self._room_for_a_launch():
            self.log("adapted prediction left test inputs unanswered: predicting them with the un-adapted checkpoint")
            raw_files = self.predict(self.checkpoint, "unadapted", self.opts.smoke_views if self.mode == "smoke" else
                                     min(views, self.opts.views_min), batch, None, provisional=False,
                                     phase="baseline", last=True)
        if raw_files and final["from_model"] < self.test_inputs():
            t0 = self.clock()
            best = self.answers.assemble(final["files"], "final, un-adapted where the adapted model has no answer",
                                         fill=raw_files, source=source)
            self._phase("vote_write_fill", None, t0, "ok", **best)
            self.record["predict"]["filled_from_unadapted"] = best["from_model"] - final["from_model"]
        self.on_stop = None

    def _saved(self, tag: str) -> list[str]:
        """The shard files of prediction `tag` saved so far."""
        return shard_files(self.scratch / "predictions", tag)

    def predict(self, ckpt: Path, tag: str, views: int, batch: int, planned: float | None, provisional: bool,
                phase: str | None = None, last: bool = False) -> list[str]:
        """Shard processes over the GPUs (or CPU processes); returns the prediction files. It stops
        at the plan's predict stop, or the last stop (`last`: the un-adapted prediction after the
        final one, or nothing planned). phase (for fault injection): predict, or baseline for the
        un-adapted checkpoint after training."""
        t0 = self.clock()
        times = self.deadlines()
        stop = times.last_stop if last else times.prediction_stop()
        prediction = Prediction(self.dispatch, self.retry, times, self.log, self.problem, self.answers,
                                self.scratch / "predictions", self.world, self.opts.save_every_s,
                                self.opts.provisional_every_s, self.test_inputs(), self.opts.settle(),
                                self.opts.predict_queue,
                                {t.id: len(t.test_inputs) for t in self.tasks} if self.tasks is not None else {})
        files, status, attempts = prediction.run(
            ckpt, tag, phase or ("baseline" if tag == "baseline" else "predict"), views, batch, stop,
            batch_s=self.plan.predict_batch_s if self.plan else None, provisional=provisional)
        self.predictions[tag] = files
        queue = {"queue": prediction.record} if prediction.record else {}
        self._phase(tag, planned, t0, status, views=views, files=len(files), attempts=attempts,
                    predict_queue=self.opts.predict_queue, **queue)
        return files

    def _room_for_a_launch(self) -> bool:
        """Time for one more prediction launch to give something (start-up, warm-up, a batch, twice)."""
        cal, p = self.calibration, self.plan
        need = 2 * (cal.launch_s + cal.predict_warmup_s + (p.predict_batch_s if p else 0.0)) if cal else 10.0
        return self.deadlines().room_s(self.clock()) > need

    def test_inputs(self) -> int:
        return sum(len(t.test_inputs) for t in self.tasks) if self.tasks is not None else 0

    # ---- the last phase, whatever happened ---------------------------------------------------------

    def finalize(self) -> None:
        """Stop what still runs (after a stop signal: vote what its jobs saved), validate and repair
        whatever is on disk; always leaves a valid file when the challenges parse."""
        t0 = self.clock()
        try:
            if self.stop.signal:
                self._stopped()
            if not self.fallback_tried:
                self.write_fallback()
            if self.answers.raw is not None and self.answers.fallback:
                repairs = self.answers.repair()
                if repairs is not None:
                    self.record["final_repairs"] = repairs
                self.record["submission"] = {"path": str(self.sub_path), "writes": self.answers.writes}
        except Exception as e:  # noqa: BLE001
            self.problem(f"final check failed: {type(e).__name__}: {e}")
        # what the run leaves for `trm report`, once the file is final; the two saves that follow
        # (run.json, then the timing report of it) cost the slowest save so far each
        until = self.keep_until()
        self.keep_output(until - FINAL_SAFETY * 2 * self.rec.save_s)
        timing = self.clock() + FINAL_SAFETY * 2 * self.rec.save_s <= until
        # the last save is part of the run: its cost is the slowest save measured so far
        end = self.clock() + self.rec.save_s * (2 if timing else 1)
        self.record["finished_before_deadline"] = end <= self.times.deadline
        self._phase("finalize", None, t0, "ok")
        if timing:  # of run.json as saved just now: every phase, the final one included
            kept = keep_mod.write_timing(self.run_dir, self.rec.data)
            if any(isinstance(v, str) for v in kept.values()):
                self.log(f"timing report not kept: {kept}")
        else:
            self.log(f"timing report not kept: {until - self.clock():.1f} s left ({keep_mod.TIMING_JSON} "
                     "is drawn from run.json by `trm report`)")
        self.log(f"done in {end - self.start:.1f} s, {self.times.deadline - end:.1f} s before the deadline; "
                 f"{len(self.problems)} problem(s)")

    def keep_until(self) -> float:
        """When keeping files must be over (Deadlines.keep_until)."""
        if not self.stop.signal:
            return self.times.keep_until(None)
        return self.times.keep_until(self.stop.at if self.stop.at is not None else self.clock())

    def keep_output(self, until: float) -> None:
        """The files `trm report` needs, into trm-run/ (submission/keep.py), what fits before `until`."""
        try:
            tag = "adapted" if self._saved("adapted") else "raw"
            base = "baseline" if self._saved("baseline") else "unadapted"
            ckpt = (self.record.get("train") or {}).get("checkpoint")
            metrics = Path(ckpt).parent / keep_mod.METRICS if ckpt else None
            if metrics is None or not metrics.is_file():  # a failed training leaves its log too
                logs = sorted(self.scratch.glob(f"train-*/{keep_mod.METRICS}"), key=lambda p: p.stat().st_mtime)
                metrics = logs[-1] if logs else None
            src = keep_mod.Sources(challenges=self.challenges_path, metrics=metrics, predictions=self._saved(tag),
                                   baseline=self._saved(base) if tag == "adapted" else [],
                                   vote_s=self.answers.assemble_s)
            self.record["kept"] = keep_mod.keep(self.run_dir, src, until, self.clock, self.log)
        except Exception as e:  # noqa: BLE001 - the run is over and its file valid: only the extras are lost
            self.problem(f"keeping the run's files failed: {type(e).__name__}: {e}")

    def _stopped(self) -> None:
        """A stop signal came: end every job still running, then vote what the prediction under way
        saved (its shards save as they go) over the fallback."""
        t0 = self.clock()
        self.log(f"{self.stop.signal}: stopping the jobs and writing what they saved")
        stopped = self.launcher.stop_all()
        self.record["stopped"] = {"signal": self.stop.signal, "at_s": (self.stop.at or t0) - self.start,
                                  "jobs": stopped}
        status = "ok"
        if self.on_stop is not None:
            try:
                self.on_stop()
            except Exception as e:  # noqa: BLE001 - the file on disk stays as it was
                self.problem(f"vote after {self.stop.signal} failed: {type(e).__name__}: {e}")
                status = "failed"
        self._phase("stopped", None, t0, status, signal=self.stop.signal, jobs=stopped)


def main(argv: list[str] | None = None, **runner_kwargs: Any) -> int:
    """Parse and run; the exit status (see the module docstring). Nothing raises past here: refused
    options still get the fallback written (from the folders the command line names) and exit
    BAD_OPTIONS_STATUS; a stop signal during the run ends it as `Runner.run` says. The working
    folder is locked first (ALREADY_RUNNING_STATUS, nothing written, while another runner holds it),
    and with $TRM_PARENT_PID set the run stops when that process (the notebook's kernel) goes."""
    start = time.time()
    try:
        opts = options_from_args(argv)
    except SystemExit as e:  # --help
        return int(e.code) if isinstance(e.code, int) else 0
    except Exception as e:  # noqa: BLE001 - OptionsError, or anything else a command line can cause
        why = str(e)
        print(printable(f"[trm runner] bad options: {why}"), flush=True)
        try:
            folders = replace(folders_from_args(argv), start_time=start)
        except (OptionsError, SystemExit) as f:
            print(printable(f"[trm runner] no fallback written either: {f}"), flush=True)
            return BAD_OPTIONS_STATUS
        return _locked(folders.working_dir, lambda: Runner(folders, **runner_kwargs).fallback_only(why))
    if opts.start_time is None and (opts.deadline is None or opts.deadline > start):
        opts = replace(opts, start_time=start)  # a deadline already past: the runner's clock starts it

    def run() -> int:
        runner = Runner(opts, **runner_kwargs)
        with on_signals(runner.stop):
            parent = lifeline.parent_from_env(os.environ)
            if parent is not None:
                lifeline.watch_parent(parent)
            return runner.run()

    return _locked(opts.working_dir, run)


def _locked(working_dir: Path, body: Callable[[], int]) -> int:
    """body() while holding the working folder's runner lock; ALREADY_RUNNING_STATUS, with nothing
    written, while another live runner holds it."""
    lock = lifeline.RunnerLock(working_dir)
    try:
        lock.acquire()
    except lifeline.LockHeld as e:
        print(printable(f"[trm runner] not starting: {e}"), flush=True)
        return ALREADY_RUNNING_STATUS
    try:
        return body()
    finally:
        lock.release()


if __name__ == "__main__":
    status = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Everything is written and fsynced by now. Interpreter teardown with torch and numba loaded
    # takes seconds on a loaded CPU (measured 8 s at load 7 on 2 cores), past any deadline margin:
    # skip it rather than hope for it.
    os._exit(status)
