"""The fallback-first runner the notebook calls: always leave a valid submission.json, in time.

    python -m submission.run --start-time T --deadline D --input-dir DIR --working-dir DIR --bundle-dir DIR [options]

Inputs: absolute Unix times (when the notebook started, and by when the final submission must be
written), the folder holding the test challenges (searched, never a fixed path), the writable
working folder, and the bundle folder (its checkpoint in `checkpoint/`). `--checkpoint` overrides
the bundle's checkpoint; the other options tune the budget (see `--help`).
Outputs, in the working folder: `submission.json` (valid from the first seconds, improved as
results arrive, validated and repaired at the end) and `trm-run/run.json` (plan vs actual per
phase, device, versions, seeds, problems) with `trm-run/plan.json`; scratch files (checkpoints,
per-shard predictions, job files) go to --scratch-dir.

Order: write the fallback (the test input as both attempts, built from the raw JSON so every task id
is present even when a task does not parse) -> detect the run kind and hardware -> verify the bundle
-> load tasks leniently (a task that fails is named and keeps the fallback) -> calibrate -> plan ->
post-train on all GPUs (torchrun, with the scheduler's Watchdog) -> predict, each GPU an
independent shard process (a failing shard loses only its own views) with provisional
submissions while it runs -> vote -> write. A worker that runs out of memory is retried with half
the batch, one that crashes is retried (torchrun groups with fewer GPUs the second time), one that
hangs is killed at its time limit; what cannot be done keeps the fallback. The commit run (Kaggle's
"Save & Run All", not the scoring rerun) is a smoke run on a few tasks with few steps and views, and
still writes a complete file. Nothing escapes `main`: every error is logged and the exit status is 0.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from submission import env as env_mod
from submission import faults as faults_mod
from submission.bundle_check import checkpoint_tampering, verify_bundle
from submission.fallback import fallback_submission
from trm_core import jsonio
from trm_core.safe_io import write_atomic, write_json_atomic
from submission.launch import Handle, SubprocessLauncher, wait
from submission.scheduler import Budget, Calibration, Plan, Workload, plan as make_plan, tasks_that_fit

RUN_DIR = "trm-run"
# calibration beats at every step and batch, but one unit may hold a cold start or a compilation:
# its heartbeat may pause 10 x this (or min_stall, if longer) before the job counts as hung
CALIBRATION_UNIT_S = 3.0
LINGER_S = 2.0  # a worker that wrote its result but has not exited after this long is stopped
FORMAT = "trm-kit-run/1"


@dataclass(frozen=True)
class RunnerOptions:
    """Everything the runner is told; the command-line flags map one to one."""

    input_dir: Path  # searched for the test challenges file
    working_dir: Path  # submission.json and trm-run/ go here
    bundle_dir: Path | None = None  # the bundle folder (found by its marker under input_dir if None)
    start_time: float | None = None  # when the notebook started (default: now)
    deadline: float | None = None  # by when the final submission is written (default: start + limit - margin)
    checkpoint: Path | None = None  # overrides <bundle>/checkpoint
    scratch_dir: Path | None = None  # default: $TRM_SCRATCH/run-<start> or a temp folder
    run_mode: str = "auto"  # auto (rerun/local: full, commit/interactive: smoke) | full | smoke
    device: str | None = None  # cpu | cuda (default: cuda when a GPU is seen)
    gpus: int | None = None  # GPUs to use (default: all seen)
    cpu_procs: int = 1  # processes on CPU (2 = a gloo DDP group and two prediction shards)
    train_mode: str = "embeddings-then-full"  # post-training mode (trm_core.train.MODES)
    lr: float = 1e-4
    puzzle_emb_lr: float = 1e-2
    train_batch: int | None = None  # global (default: 768 on GPUs, 32 on CPU)
    predict_batch: int | None = None  # global (default: 1024 on GPUs, 64 on CPU)
    views_min: int = 64
    views_target: int = 256
    views_max: int = 512
    max_epochs: float = 12_500.0
    max_steps: int | None = None
    time_limit_s: float = 12 * 3600.0
    margin_s: float = 1800.0
    reserve_min_s: float = 10.0
    baseline: bool = False  # also predict with the un-adapted checkpoint (for the dry run's comparison)
    seed: int = 0
    provisional_every_s: float = 60.0  # rewrite submission.json from finished shards this often
    save_every_s: float = 60.0  # prediction shards save what they have this often
    smoke_tasks: int = 4
    smoke_steps: int = 20
    smoke_views: int = 8
    smoke_time_s: float = 1200.0
    max_attempts: int = 3  # per job (calibration, training, each prediction shard group)

    def __post_init__(self) -> None:
        if self.run_mode not in ("auto", "full", "smoke"):
            raise ValueError(f"run_mode must be auto, full or smoke, got {self.run_mode!r}")
        if self.device not in (None, "cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda, got {self.device!r}")
        if self.cpu_procs < 1 or self.max_attempts < 1:
            raise ValueError("cpu_procs and max_attempts must be >= 1")


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """How one worker process (or torchrun group) ended."""

    name: str
    rc: int | None
    ended: str  # exited | finished (results written, lingering process stopped) | stalled | killed (time limit)
    launched_at: float
    ended_at: float
    ranks: int = 1  # result files expected
    results: list[dict[str, Any]] = field(default_factory=list)  # result.rank<r>.json contents

    @property
    def killed(self) -> bool:
        return self.ended == "killed"

    @property
    def ok(self) -> bool:
        return (not self.killed and len(self.results) == self.ranks and all(r.get("ok") for r in self.results)
                and (self.rc == 0 or self.ended == "finished"))

    @property
    def teardown_s(self) -> float:
        """From the last result written to the process gone (interpreter exit, torchrun teardown)."""
        ends = [r["ended_at"] for r in self.results if r.get("ended_at")]
        return max(0.0, self.ended_at - max(ends)) if ends else 0.0

    @property
    def error(self) -> str | None:
        if self.ok:
            return None
        if self.killed:
            return "timeout"
        if self.ended == "stalled":
            return "stalled"
        errors = [r.get("error") for r in self.results if not r.get("ok")]
        if "oom" in errors or self.rc == 3:
            return "oom"
        return next((e for e in errors if e), "died")

    @property
    def part(self) -> str | None:
        return next((r.get("part") for r in self.results if not r.get("ok")), None)

    @property
    def ready_at(self) -> float | None:
        times = [r["ready_at"] for r in self.results if r.get("ready_at")]
        return max(times) if times else None

    def summary(self) -> dict[str, Any]:
        msgs = [r.get("message") for r in self.results if r.get("message")]
        return {"name": self.name, "rc": self.rc, "ended": self.ended, "ok": self.ok, "error": self.error,
                "seconds": self.ended_at - self.launched_at, "messages": msgs[:4]}


class Runner:
    """One run of the notebook's brain; `run()` never raises."""

    def __init__(self, opts: RunnerOptions, *, launcher: Any = None, environ: dict[str, str] | None = None,
                 clock: Callable[[], float] = time.time, echo: Callable[[str], None] | None = None) -> None:
        self.opts = opts
        self.clock = clock
        self.environ = dict(os.environ if environ is None else environ)
        self.start = opts.start_time if opts.start_time is not None else clock()
        self.deadline = opts.deadline if opts.deadline is not None else \
            self.start + opts.time_limit_s - opts.margin_s
        self._echo = echo or (lambda line: print(line, flush=True))
        self.launcher = launcher or SubprocessLauncher(echo=self._echo)
        self.sub_path = opts.working_dir / "submission.json"
        self.run_dir = opts.working_dir / RUN_DIR
        self.scratch = opts.scratch_dir or Path(self.environ.get("TRM_SCRATCH") or tempfile.gettempdir()) / \
            f"trm-run-{int(self.start)}"
        self.problems: list[str] = []
        self.phases: list[dict[str, Any]] = []
        self.fault_spec = ""  # what every job injects: $TRM_FAULT once checked (see check_faults)
        self.record: dict[str, Any] = {"format": FORMAT, "start_time": self.start, "deadline": self.deadline}
        self.raw: object = None
        self.clean: dict[str, Any] = {}  # tasks whose test inputs can be read (what validation checks)
        self.broken: list[str] = []
        self.fallback: dict[str, list] = {}
        self.tasks: Any = None  # TaskSet of the tasks to predict
        self.plan: Plan | None = None
        self.initial_plan: Plan | None = None
        self.writes = 0
        self.checkpoint: Path | None = None
        self.canvas = 30
        self.world = 1
        self.device = "cpu"
        self.budget: Budget | None = None
        self.run_deadline = self.deadline
        self.final_reserve = max(1.0, min(60.0, 0.02 * (self.deadline - self.start)))
        self.grace = max(0.5, min(120.0, 0.02 * (self.deadline - self.start)))
        self.predictions: dict[str, list[str]] = {}
        self.write_s = 1.0  # measured when the fallback is written
        self.calibration: Calibration | None = None
        # a job whose heartbeat stops for this long (or 10 of its steps) is killed and retried
        self.min_stall = max(2.0, min(600.0, 0.1 * (self.deadline - self.start)))

    # ---- bookkeeping -------------------------------------------------------------------------

    def log(self, msg: str) -> None:
        self._echo(f"[trm runner +{self.clock() - self.start:7.1f}s] {msg}")

    def problem(self, msg: str) -> None:
        self.problems.append(msg)
        self.log(f"PROBLEM: {msg}")

    def left(self) -> float:
        return self.run_deadline - self.clock()

    def _phase(self, name: str, planned: float | None, started: float, status: str, **detail: Any) -> dict:
        rec = {"name": name, "planned_s": planned, "start": started - self.start, "actual_s": self.clock() - started,
               "status": status, **detail}
        self.phases.append(rec)
        self.save_record()
        return rec

    def save_record(self) -> None:
        try:
            self.record.update(phases=self.phases, problems=self.problems, writes=self.writes,
                               end_time=self.clock())
            self.record["actual_total_s"] = self.record["end_time"] - self.start
            write_atomic(self.run_dir / "run.json", json.dumps(self.record, indent=1, default=str) + "\n")
        except Exception as e:  # noqa: BLE001 - the record is best effort
            self.log(f"could not write run.json: {e}")

    # ---- submission writing ------------------------------------------------------------------

    def write(self, submission: dict[str, list], what: str) -> bool:
        """Validate and write atomically; returns False (logged) when it could not."""
        try:
            from trm_core.submission_file import write_submission

            write_submission(self.sub_path, submission, None if self.broken or not self.clean else self.raw)
        except ImportError:
            write_json_atomic(self.sub_path, submission)
        except Exception as e:  # noqa: BLE001
            self.problem(f"could not write {what} submission: {type(e).__name__}: {e}")
            return False
        self.writes += 1
        self.log(f"wrote {self.sub_path} ({what})")
        return True

    def merged(self, model_part: dict[str, list]) -> dict[str, list]:
        out = {k: v for k, v in self.fallback.items()}
        for task_id, entries in model_part.items():
            if task_id in out and len(entries) == len(out[task_id]):
                out[task_id] = entries
        return out

    # ---- phases --------------------------------------------------------------------------------

    def write_fallback(self) -> None:
        t0 = self.clock()
        # only under the given folder: a file found above it would answer someone else's tasks
        path = env_mod.find_challenges(self.opts.input_dir, skip=self.opts.bundle_dir)
        if path is None:
            self.problem(f"no test challenges file under {self.opts.input_dir}: nothing to answer")
            self._phase("fallback", None, t0, "failed")
            return
        self.record["inputs"] = {"challenges": str(path)}
        self.challenges_path = path
        repeated: list[str] = []
        try:
            self.raw = jsonio.load(path, duplicates=repeated)  # standard library only, BOM tolerated
        except jsonio.JSONInputError as e:
            self.problem(f"{e}: no submission can be built")
            self._phase("fallback", None, t0, "failed")
            return
        if repeated:
            self.problem(f"{path}: keys repeated in one object (the last one kept): {sorted(set(repeated))[:10]}")
        self.fallback, self.broken = fallback_submission(self.raw)
        if self.broken:
            self.problem(f"tasks with no readable test inputs (one [[0]] entry each): {self.broken}")
        if isinstance(self.raw, dict):
            self.clean = {t: v for t, v in self.raw.items() if str(t) not in self.broken}
        ok = self.write(self.fallback, "fallback")
        t_write = self.clock()  # what a later write costs, imports done: validate and serialise
        try:
            from trm_core.submission_file import validate

            validate(self.fallback, self.clean)
            json.dumps(self.fallback)
        except Exception:  # noqa: BLE001 - only a measurement
            pass
        self.write_s = 2 * (self.clock() - t_write) + 0.1
        n = sum(len(v) for v in self.fallback.values())
        self._phase("fallback", None, t0, "ok" if ok else "failed", tasks=len(self.fallback), test_inputs=n)

    def detect(self) -> None:
        t0 = self.clock()
        environment = env_mod.detect(self.environ)
        self.kind = environment.kind
        mode = self.opts.run_mode
        if mode == "auto":
            mode = "full" if self.kind in ("rerun", "local") else "smoke"
        self.mode = mode
        hw = environment.hardware
        want = self.opts.device or ("cuda" if hw.gpu_count else "cpu")
        if want == "cuda" and not hw.gpu_count:
            self.problem("--device cuda but no GPU is visible: using the CPU")
            want = "cpu"
        self.device = want
        self.world = min(self.opts.gpus or hw.gpu_count, hw.gpu_count) if want == "cuda" else self.opts.cpu_procs
        self.world = max(1, self.world)
        self.record.update(environment=environment.to_json(), run_mode=mode, device=want, world=self.world,
                           versions=_versions(), seeds={"seed": self.opts.seed}, options=_jsonable(asdict(self.opts)))
        self.log(f"{self.kind} run, {mode} mode: {hw.describe()}; {self.world} x {want}")
        self._phase("detect", None, t0, "ok")

    def load(self) -> None:
        t0 = self.clock()
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
            self._phase("load", None, t0, "failed")
            return
        self.checkpoint = Path(ckpt)
        try:
            manifest = jsonio.load(self.checkpoint / "manifest.json")
            self.canvas = int(manifest.get("config", {}).get("canvas", 30))
        except (OSError, ValueError, TypeError, AttributeError) as e:
            self.problem(f"{self.checkpoint}/manifest.json unreadable ({e}): the fallback stays")
            self.checkpoint = None
            self._phase("load", None, t0, "failed")
            return
        tampered = checkpoint_tampering(self.checkpoint, manifest,
                                        [] if self.opts.checkpoint else self.record.get("bundle_problems", []))
        if tampered:
            self.problem(f"checkpoint refused, not trained or predicted with: {tampered}; the fallback stays")
            self.record["checkpoint_refused"] = tampered
            self.checkpoint = None
            self._phase("load", None, t0, "failed")
            return
        self.record["inputs"]["checkpoint"] = str(self.checkpoint)
        from trm_core.tasks import TaskSet, load_tasks

        loaded = load_tasks(self.challenges_path, strict=False, max_side=self.canvas)
        for p in loaded.problems:
            self.problem(f"task kept on the fallback: {p}")
        self.record["task_problems"] = [{"task_id": p.task_id, "where": p.where, "message": p.message}
                                        for p in loaded.problems]
        ids = list(loaded.tasks)
        if self.mode == "smoke":
            ids = ids[: self.opts.smoke_tasks]
        self.tasks = TaskSet(tasks={t: loaded.tasks[t] for t in ids})
        tests = sum(len(t.test_inputs) for t in self.tasks)
        pairs = sum(len(t.train) for t in self.tasks)
        self.record["tasks"] = {"in_file": len(self.fallback), "loaded": len(loaded.tasks), "used": len(ids),
                                "test_inputs": tests, "train_pairs": pairs, "skipped": loaded.skipped,
                                "broken": self.broken, "used_ids": ids}
        self.log(f"{len(ids)} task(s) to predict ({tests} test inputs, {pairs} demonstration pairs); "
                 f"{len(loaded.skipped)} skipped, canvas {self.canvas}")
        self._phase("load", None, t0, "ok")

    # ---- jobs ----------------------------------------------------------------------------------

    def _job(self, kind: str, name: str, phase: str, **fields: Any) -> tuple[Path, dict[str, Any]]:
        job_dir = self.scratch / "jobs" / name
        job_dir.mkdir(parents=True, exist_ok=True)
        for old in job_dir.glob("result.rank*.json"):
            old.unlink()
        job = {"kind": kind, "name": name, "phase": phase, "job_dir": str(job_dir),
               "challenges": str(self.challenges_path), "task_ids": list(self.tasks.tasks), "canvas": self.canvas,
               "checkpoint": str(fields.pop("checkpoint", self.checkpoint)), "device": self.device,
               "seed": self.opts.seed, "fault": self.fault_spec, **fields}
        path = job_dir / "job.json"
        path.write_text(json.dumps(job, indent=1, default=str) + "\n")
        return path, job

    def _start(self, job_path: Path, name: str, nprocs: int = 1, distributed: bool = False,
               gpu: int | None = None) -> tuple[Handle, float]:
        gpus = None
        if self.device == "cuda":
            gpus = str(gpu) if gpu is not None else ",".join(str(i) for i in range(nprocs))
        return self.launcher.start(job_path, name=name, nprocs=nprocs, distributed=distributed, gpus=gpus,
                                   cpu=self.device == "cpu"), self.clock()

    def _outcome(self, name: str, job_dir: Path, rc: int | None, ended: str, launched: float,
                 ranks: int = 1) -> Outcome:
        results = []
        for p in sorted(job_dir.glob("result.rank*.json")):
            try:
                results.append(json.loads(p.read_text()))
            except (OSError, ValueError):
                pass
        return Outcome(name, rc, ended, launched, self.clock(), ranks, results)

    @staticmethod
    def _finished(job_dir: Path, ranks: int) -> Callable[[], bool]:
        return lambda: all((job_dir / f"result.rank{r}.json").is_file() for r in range(ranks))

    def _stall(self, job: dict[str, Any], launched: float, unit_s: float | None) -> Callable[[], bool]:
        """True once the job's heartbeat (a file touched every step or batch) is older than allowed:
        10 steps/batches and at least min_stall; before the first beat, also launch and warm-up."""
        if "heartbeat" not in job:
            return lambda: False
        beat = Path(job["heartbeat"])
        limit = max(self.min_stall, 10 * (unit_s or 0.0))  # no unit time known (calibration): min_stall
        cal = self.calibration
        first = limit + 3 * ((cal.launch_s + cal.train_warmup_s + cal.predict_warmup_s) if cal else 60.0)

        def stalled() -> bool:
            try:
                return time.time() - beat.stat().st_mtime > limit
            except OSError:
                return time.time() - launched > first
        return stalled

    def run_one(self, kind: str, name: str, phase: str, kill_at: float, nprocs: int = 1, distributed: bool = False,
                unit_s: float | None = None, **fields: Any) -> Outcome:
        if unit_s is not None:
            fields["heartbeat"] = str(self.scratch / "jobs" / name / "heartbeat")
        path, job = self._job(kind, name, phase, **fields)
        handle, launched = self._start(path, name, nprocs, distributed)
        job_dir = Path(job["job_dir"])
        ended = wait([handle], [kill_at], clock=self.clock, finished=[self._finished(job_dir, nprocs)],
                     linger_s=LINGER_S, stalled=[self._stall(job, time.time(), unit_s)])[0]
        out = self._outcome(name, job_dir, handle.poll(), ended, launched, nprocs)
        if not out.ok:
            self.problem(f"{name}: {out.error}" + (f" in {out.part}" if out.part else "") +
                         (f" ({out.summary()['messages'][0]})" if out.summary()["messages"] else ""))
        return out

    # ---- calibration and plan ------------------------------------------------------------------

    def _budget(self, train_batch: int, predict_batch: int) -> Budget:
        o = self.opts
        # write_s: the final build + validate + write, from the fallback's (measured, x2, + 0.1 s)
        common = dict(time_limit_s=o.time_limit_s, margin_s=min(o.margin_s, o.time_limit_s / 2),
                      train_batch=train_batch, predict_batch=predict_batch, reserve_min_s=o.reserve_min_s,
                      baseline=o.baseline, write_s=self.write_s)
        if self.mode == "smoke":
            k = max(1, o.smoke_views)
            return Budget(views_min=k, views_target=k, views_max=k, max_steps=o.smoke_steps, **common)
        return Budget(views_min=o.views_min, views_target=o.views_target, views_max=o.views_max,
                      max_epochs=o.max_epochs, max_steps=o.max_steps, **common)

    def _batches(self) -> tuple[int, int]:
        gpu = self.device == "cuda"
        tb = self.opts.train_batch or (768 if gpu else 32)
        pb = self.opts.predict_batch or (1024 if gpu else 64)
        # global batches split evenly over the processes
        return max(1, tb // self.world) * self.world, max(1, pb // self.world) * self.world

    def calibrate(self) -> Calibration | None:
        t0 = self.clock()
        train_b, pred_b = self._batches()
        local_t, local_p = train_b // self.world, pred_b // self.world
        views = self.opts.smoke_views if self.mode == "smoke" else self.opts.views_target
        attempts = []
        cal = None
        # a cold start (imports, numba compilation) on a loaded CPU can take most of a minute
        limit = max(min(60.0, 0.5 * self.left()), min(0.15 * self.left(), 1200.0))
        for attempt in range(self.opts.max_attempts):
            kill_at = min(self.clock() + limit, self.run_deadline - self.final_reserve)
            if kill_at - self.clock() < 1.0:
                break
            out = self.run_one("calibrate", f"calibrate-a{attempt}", "calibrate", kill_at, train_batch=local_t,
                               predict_batch=local_p, views=views, attempt=attempt, unit_s=CALIBRATION_UNIT_S)
            attempts.append(out.summary())
            if out.ok:
                c = out.results[0]["calibration"]
                ready = out.ready_at or out.launched_at
                # a launch costs start-up (imports, loading) plus tear-down (exit), both measured here
                cal = Calibration.from_json({**c, "launch_s": max(0.0, ready - out.launched_at) + out.teardown_s})
                break
            if out.error == "oom":
                if out.part == "predict":
                    local_p //= 2
                elif out.part == "train":
                    local_t //= 2
                else:
                    local_t, local_p = local_t // 2, local_p // 2
                if min(local_t, local_p) < 1:
                    break
                self.log(f"calibration out of memory: retrying with local batches {local_t} / {local_p}")
            elif out.error in ("checkpoint", "tasks", "timeout"):
                break
        self.record["calibration"] = cal.to_json() if cal else None
        self.calibration = cal
        self._phase("calibrate", None, t0, "ok" if cal else "failed", attempts=attempts)
        if cal:
            self.log(f"calibrated on {cal.device}: {cal.train_step_s:.4g} s/step of {cal.train_batch}, "
                     f"{cal.predict_batch_s:.4g} s/batch of {cal.predict_batch}, launch {cal.launch_s:.1f} s, "
                     f"warm-up {cal.train_warmup_s:.1f}/{cal.predict_warmup_s:.1f} s")
        return cal

    def make_plan(self, cal: Calibration, world: int | None = None, train_batch: int | None = None,
                  steps_done: int = 0) -> Plan:
        world = world or self.world
        if world > 1:  # a torchrun group takes longer to go: its ranks may linger up to LINGER_S
            cal = replace(cal, save_s=cal.save_s + LINGER_S)
            if self.device == "cpu":  # processes started together share the cores while they import
                cal = replace(cal, launch_s=cal.launch_s * world)
        train_b = train_batch or cal.train_batch * world
        pred_b = cal.predict_batch * world
        self.budget = self._budget(train_b, pred_b)
        work = Workload(tasks=len(self.tasks), test_inputs=sum(len(t.test_inputs) for t in self.tasks),
                        train_pairs=sum(len(t.train) for t in self.tasks), world=world)
        return make_plan(self.budget, work, cal, self.clock(), self.run_deadline, train_batch=train_b,
                         predict_batch=pred_b, steps_done=steps_done)

    def fit_tasks(self, cal: Calibration) -> Plan | None:
        """Not every task fits: keep those that do, fewest test inputs (so fewest views) first; the
        rest keep the fallback. Returns the plan for the kept tasks, None if not even one fits."""
        from trm_core.tasks import TaskSet

        order = sorted(self.tasks.tasks, key=lambda t: len(self.tasks.tasks[t].test_inputs))  # stable
        sizes = [(len(self.tasks.tasks[t].test_inputs), len(self.tasks.tasks[t].train)) for t in order]
        probe = self.make_plan(cal)  # the batches and budget of a plan, to size the subset with
        n = tasks_that_fit(self.budget, sizes, cal, self.clock(), self.run_deadline, world=probe.workload.world,
                           train_batch=probe.train_batch, predict_batch=probe.predict_batch)
        if n <= 0:
            return None
        keep = set(order[:n])
        self.tasks = TaskSet(tasks={t: task for t, task in self.tasks.tasks.items() if t in keep})
        self.record.setdefault("tasks", {})["fitted"] = {"kept": n, "of": len(order)}
        self.problem(f"only {n} of {len(order)} tasks fit before the deadline: predicting those "
                     "(fewest test inputs first); the others keep the fallback")
        return self.make_plan(cal)

    # ---- training ------------------------------------------------------------------------------

    def _train_config(self, p: Plan, micro: int = 0) -> dict[str, Any]:
        steps, ceiling = p.steps - p.steps_done, p.steps_ceiling
        return {"steps": ceiling, "global_batch_size": p.train_batch, "mode": self.opts.train_mode,
                "micro_batch_size": micro,
                "lr": self.opts.lr, "puzzle_emb_lr": self.opts.puzzle_emb_lr,
                "warmup_steps": min(2000, max(1, round(0.1 * p.steps))),
                # a constant rate after warm-up: stopping early never leaves the schedule half-way
                "lr_min_ratio": 1.0,
                # the trunk's EMA horizon (1 / (1 - rate)) at most a tenth of the run
                "ema_rate": min(0.999, max(0.5, 1 - 10 / max(p.steps, 1))),
                # a quarter of the *planned* steps frozen, however far past them the run goes
                "freeze_fraction": 0.25 * p.steps / max(ceiling, 1),
                "checkpoint_every": max(1, math.ceil(max(steps, 1) / 4)),
                "log_every": max(1, p.steps // 20), "seed": self.opts.seed}

    def train(self, cal: Calibration) -> Path | None:
        """Post-train; returns the checkpoint to predict with (None: the raw one)."""
        p = self.plan
        t0 = self.clock()
        if p is None or p.steps <= 0:
            self._phase("train", 0.0, t0, "skipped", reason=p.reason if p else "no plan")
            return None
        world, batch = self.world, p.train_batch
        micro = cal.train_micro_batch  # from the memory fit (0: the whole local batch fits)
        attempts: list[dict[str, Any]] = []
        adapted: Path | None = None
        partial: Path | None = None
        watch: dict[str, Any] = {}
        result: dict[str, Any] = {}
        planned = p.phases["train_launch"] + p.phases["train"] + p.phases["save"]
        trained_views: dict[Path, int] = {}  # a resumed run keeps its variants (its sampler checks them)
        for attempt in range(self.opts.max_attempts):
            out_dir = self.scratch / f"train-w{world}-b{batch}"
            resume_at = _saved_step(out_dir)
            if attempt:
                p = self.make_plan(cal, world=world, train_batch=batch, steps_done=resume_at)
                if p.steps <= resume_at:
                    self.log("no time left for another training attempt")
                    break
                if resume_at and out_dir in trained_views:
                    p = replace(p, views=min(p.views, trained_views[out_dir]))
                self.plan = p
            data_views = trained_views.setdefault(out_dir, p.views)
            kill_at = min(p.train_deadline + self.grace + 2 * cal.save_s + LINGER_S,
                          self.run_deadline - self.final_reserve)
            name = f"train-a{attempt}"
            self.log(f"{name}: {p.steps - resume_at} steps of {batch} on {world} x {self.device}"
                     + (f", resuming at step {resume_at}" if resume_at else ""))
            out = self.run_one("train", name, "train", kill_at, nprocs=world, distributed=world > 1,
                               plan=p.to_json(), train=self._train_config(p, micro),
                               pg_timeout_s=_group_timeout(self.left()),
                               data={"num_variants": max(0, data_views - 1), "variant_seed": self.opts.seed,
                                     "sampler_seed": self.opts.seed},
                               out_dir=str(out_dir), deadline=p.train_deadline, attempt=attempt, unit_s=p.step_s)
            attempts.append({**out.summary(), "world": world, "train_batch": batch, "micro_batch": micro,
                             "resume_at": resume_at})
            wfile = Path(self.scratch / "jobs" / name / "watchdog.json")
            if wfile.is_file():
                try:
                    watch = json.loads(wfile.read_text())
                except ValueError:
                    pass
            if out.ok:
                result = out.results[0] if out.results else {}
                ck = result.get("checkpoint")
                adapted = Path(ck) if ck else None
                break
            if (out_dir / "checkpoint" / "manifest.json").is_file():
                partial = out_dir / "checkpoint"
            if out.error == "timeout":
                break  # a hang: no time to lose on another try
            if out.error == "oom":
                # the same global batch in smaller micro-batches resumes the same run folder; only
                # single-row micro-batches that still do not fit change the batch (a fresh run)
                local = batch // world
                rows = micro or local
                if rows > 1:
                    micro = rows // 2
                    self.log(f"out of memory: retrying with micro-batches of {micro} (global batch {batch} kept)")
                    continue
                if batch // 2 < world:
                    break
                batch, micro = max(world, (batch // 2) // world * world), 0
                self.log(f"out of memory: retrying with a global batch of {batch}")
            elif attempt >= 1 and world > 1:
                world = max(1, world // 2)
                batch = max(world, batch // world * world)
                self.log(f"training failed twice: retrying on {world} process(es)")
        if watch.get("final_plan"):
            final = Plan.from_json(watch["final_plan"])
            self.plan = replace(self.plan, views=min(self.plan.views, final.views))
        ckpt = adapted or partial
        status = "ok" if adapted else ("partial" if partial else "failed")
        self.record["train"] = {"steps_planned": self.plan.steps, "steps_done": result.get("steps_done",
                                                                                          _saved_step(ckpt.parent) if ckpt else 0),
                                "stopped_early": result.get("stopped_early"), "samples_per_s": result.get("samples_per_s"),
                                "seconds": result.get("seconds"), "first_metrics": result.get("first_metrics"),
                                "last_metrics": result.get("last_metrics"),
                                "checkpoint": str(ckpt) if ckpt else None, "replans": watch.get("replans", []),
                                "stop_reason": watch.get("stop_reason"),
                                "measured_step_s": watch.get("measured_step_s"),
                                "micro_batch": result.get("micro_batch"), "compile": result.get("compile")}
        self._phase("train", planned, t0, status, attempts=attempts)
        return ckpt

    # ---- prediction ----------------------------------------------------------------------------

    def predict(self, ckpt: Path, tag: str, views: int, batch: int, deadline: float, planned: float | None,
                provisional: bool, phase: str | None = None) -> list[str]:
        """Shard processes over the GPUs (or CPU processes); returns the prediction files. phase
        (for fault injection): predict, or baseline for the un-adapted checkpoint after training."""
        phase = phase or ("baseline" if tag == "baseline" else "predict")
        t0 = self.clock()
        world = self.world
        if batch % world:
            batch = max(world, batch // world * world)
        pending: list[list[list[int]]] = [[[r, world]] for r in range(world)]  # shard groups, one per process
        attempts: list[dict[str, Any]] = []
        files: set[str] = set()
        prefix = self.scratch / "predictions" / tag
        prefix.parent.mkdir(parents=True, exist_ok=True)
        kill_at = min(deadline + self.grace, self.run_deadline - self.final_reserve)
        for attempt in range(self.opts.max_attempts):
            if not pending or kill_at - self.clock() <= 0.05:
                break
            handles, jobs = [], []
            for i, shards in enumerate(pending):
                name = f"{tag}-a{attempt}-g{i}"
                path, job = self._job("predict", name, phase, checkpoint=ckpt,
                                      shards=shards, views=views, predict_batch=batch, deadline=deadline,
                                      prefix=f"{prefix}-a{attempt}", save_every_s=self.opts.save_every_s,
                                      attempt=attempt, heartbeat=str(self.scratch / "jobs" / name / "heartbeat"))
                handles.append(self._start(path, name, gpu=i % max(1, world) if self.device == "cuda" else None))
                jobs.append((name, job, shards))
            tick = (lambda: self.provisional(tag)) if provisional else None
            unit = self.plan.predict_batch_s * len(shards) if self.plan else None
            ended = wait([h for h, _ in handles], [kill_at] * len(handles), clock=self.clock, tick=tick,
                         tick_every=self.opts.provisional_every_s,
                         finished=[self._finished(Path(job["job_dir"]), 1) for _, job, _ in jobs], linger_s=LINGER_S,
                         stalled=[self._stall(job, launched, unit) for (_, launched), (_, job, _) in zip(handles, jobs)])
            retry: list[list[list[int]]] = []
            for (handle, launched), how, (name, job, shards) in zip(handles, ended, jobs):
                out = self._outcome(name, Path(job["job_dir"]), handle.poll(), how, launched)
                attempts.append({**out.summary(), "shards": shards,
                                 "compile": next((r["compile"] for r in out.results if "compile" in r), None)})
                files.update(str(f) for f in prefix.parent.glob(f"{tag}-a{attempt}-r*of*.npz"))
                if out.ok:
                    continue
                self.problem(f"{name}: {out.error}" + (f" ({out.summary()['messages'][0]})"
                                                       if out.summary()["messages"] else ""))
                if out.error in ("timeout", "checkpoint", "tasks"):
                    continue  # its saved part stays; no time or no point for another try
                if out.error == "oom":
                    split = [[[2 * r, 2 * w], [2 * r + 1, 2 * w]] for r, w in shards if batch % (2 * w) == 0]
                    if len(split) == len(shards):
                        retry.append([s for pair in split for s in pair])
                        continue
                retry.append(shards)
            pending = retry
        self.predictions[tag] = sorted(files)
        failed = any(not a["ok"] for a in attempts)
        status = "failed" if not files else ("partial" if pending or failed else "ok")
        if status == "partial" and not pending and attempts and attempts[-1]["ok"]:
            status = "ok (after retries)"
        self._phase(tag, planned, t0, status, views=views, files=len(files), attempts=attempts)
        return sorted(files)

    def load_predictions(self, files: list[str]) -> Any:
        from trm_core.vote import Predictions

        parts = []
        for f in files:
            try:
                parts.append(Predictions.load(f))
            except Exception as e:  # noqa: BLE001 - a corrupt shard is dropped, not fatal
                self.problem(f"{f}: unreadable predictions ({e})")
        return dedupe(Predictions.merge(parts)) if parts else None

    def provisional(self, tag: str) -> None:
        try:
            files = sorted(str(f) for f in (self.scratch / "predictions").glob(f"{tag}-a*-r*of*.npz"))
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

        answered = {t: task for t, task in self.clean.items() if t in self.tasks.tasks}
        part: dict[str, list] = {}
        from_model = records = 0
        for group in (files, fill or []):
            preds = self.load_predictions(group) if group else None
            if preds is None or not len(preds):
                continue
            v = vote(preds)
            covered = {t for t, _ in v.pairs if t in answered and t not in part}
            built = build_submission(v, {t: answered[t] for t in covered})
            part.update(built)
            from_model += sum(1 for t, _ in v.pairs if t in covered)
            records += len(preds)
        if not part:
            return {"records": 0, "from_model": 0}
        self.write(self.merged(part), f"{what}: {records} views, {from_model} test inputs from the model")
        return {"records": records, "from_model": from_model}

    # ---- the whole run -------------------------------------------------------------------------

    def run(self) -> int:
        try:
            self._run()
        except BaseException as e:  # noqa: BLE001 - the runner never raises past here
            self.problem(f"runner error: {type(e).__name__}: {e}\n{traceback.format_exc(limit=8)}")
        finally:
            self.finalize()
        return 0

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

    def _run(self) -> None:
        self.log(f"deadline in {self.deadline - self.clock():.0f} s")
        self.write_fallback()
        self.check_faults()
        if not self.fallback:
            return
        self.detect()
        if self.mode == "smoke":
            self.run_deadline = min(self.deadline, self.start + self.opts.smoke_time_s)
        self.load()
        if self.checkpoint is None or self.tasks is None or not len(self.tasks):
            return
        cal = self.calibrate()
        if cal is not None:
            self.plan = self.make_plan(cal)
            if self.plan.fallback_only and len(self.tasks) > 1:
                self.plan = self.fit_tasks(cal) or self.plan
            self.plan.save(self.run_dir / "plan.json")
            self.record["plan"] = self.plan.to_json()
            self.record["planned_total_s"] = self.plan.end - self.start
            self.log(self.plan.render())
            if self.plan.fallback_only:
                return
            self.final_reserve = self.plan.phases["vote_write"] + 0.5 * self.plan.reserve_s
            self.initial_plan = self.plan  # phases are reported against it; re-plans are recorded apart
            adapted = self.train(cal)
            p = self.plan
            views, batch = p.views, p.predict_batch
            deadline = p.predict_deadline
            predict_planned = self.initial_plan.phases["predict_launch"] + self.initial_plan.phases["predict"]
        else:  # no calibration: predict with the raw checkpoint until the deadline, no training
            adapted = None
            views = self.opts.smoke_views if self.mode == "smoke" else self.opts.views_min
            batch = self._batches()[1]
            deadline = self.run_deadline - self.final_reserve - self.grace
            predict_planned = None
        tag = "adapted" if adapted else "raw"
        files = self.predict(adapted or self.checkpoint, tag, views, batch, deadline, predict_planned,
                             provisional=True)
        t0 = self.clock()
        summary = self.assemble(files, "final") if files else {"records": 0, "from_model": 0}
        vw = self.initial_plan.phases["vote_write"] if self.initial_plan else None
        self._phase("vote_write", vw, t0, "ok" if files else "skipped", **summary)
        self.record["predict"] = {"tag": tag, "views": views, "files": files, **summary}
        if not adapted:
            return
        raw_files: list[str] = []
        if self.opts.baseline and self.plan is not None:
            planned = self.initial_plan.phases["baseline_launch"] + self.initial_plan.phases["baseline"]
            raw_files = self.predict(self.checkpoint, "baseline", views, batch,
                                     self.run_deadline - self.final_reserve - self.grace, planned, provisional=False)
            self.record["baseline"] = {"views": views, "files": self.predictions.get("baseline", [])}
        elif summary["from_model"] < self.test_inputs() and self._room_for_a_launch():
            # the adapted model answered nothing (or not everything): the un-adapted one fills in
            self.log("adapted prediction left test inputs unanswered: predicting them with the un-adapted checkpoint")
            raw_files = self.predict(self.checkpoint, "unadapted", self.opts.smoke_views if self.mode == "smoke" else
                                     min(views, self.opts.views_min), batch,
                                     self.run_deadline - self.final_reserve - self.grace, None, provisional=False,
                                     phase="baseline")
        if raw_files and summary["from_model"] < self.test_inputs():
            t0 = self.clock()
            best = self.assemble(files, "final, un-adapted where the adapted model has no answer", fill=raw_files)
            self._phase("vote_write_fill", None, t0, "ok", **best)
            self.record["predict"]["filled_from_unadapted"] = best["from_model"] - summary["from_model"]

    def _room_for_a_launch(self) -> bool:
        """Time for one more prediction launch to give something (start-up, warm-up, a batch, twice)."""
        cal, p = self.calibration, self.plan
        need = 2 * (cal.launch_s + cal.predict_warmup_s + (p.predict_batch_s if p else 0.0)) if cal else 10.0
        return self.run_deadline - self.final_reserve - self.grace - self.clock() > need

    def test_inputs(self) -> int:
        return sum(len(t.test_inputs) for t in self.tasks) if self.tasks is not None else 0

    def finalize(self) -> None:
        """Validate and repair whatever is on disk; always leaves a valid file when the challenges parse."""
        t0 = self.clock()
        try:
            if self.raw is not None and self.fallback:
                current: object = {}
                try:
                    current = jsonio.load(self.sub_path, duplicates=[])
                except jsonio.JSONInputError:
                    self.problem("submission.json missing or unreadable at the end: rebuilding from the fallback")
                try:
                    from trm_core.submission_file import repair

                    repaired, report = repair(current if isinstance(current, dict) else {}, self.clean)
                    for task_id in self.broken:
                        repaired[task_id] = self.fallback[task_id]
                    for p in report[:20]:
                        self.problem(f"final repair: {p}")
                    if report or not self.sub_path.is_file():
                        self.write(repaired, "repaired")
                    self.record["final_repairs"] = len(report)
                except ImportError:
                    self.write(self.fallback, "fallback (trm_core not importable)")
                self.record["submission"] = {"path": str(self.sub_path), "writes": self.writes}
        except Exception as e:  # noqa: BLE001
            self.problem(f"final check failed: {type(e).__name__}: {e}")
        end = self.clock()
        self.record["finished_before_deadline"] = end <= self.deadline
        self._phase("finalize", None, t0, "ok")
        self.log(f"done in {end - self.start:.1f} s, {self.deadline - end:.1f} s before the deadline; "
                 f"{len(self.problems)} problem(s)")


def dedupe(preds: Any) -> Any:
    """Drop repeated (task, test input, view) records (a retried shard re-predicts what a failed one
    saved); the first copy stays."""
    import numpy as np

    from trm_core.vote import Predictions

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


def _group_timeout(left_s: float) -> float:
    """A process group's timeout: a hung rendezvous or collective must fail while time is left to
    recover (a tenth of what is left, between 60 s and 10 minutes)."""
    return max(60.0, min(600.0, 0.1 * left_s))


def _saved_step(out_dir: Path | None) -> int:
    """The step of the checkpoint a training folder holds (0 if none)."""
    if out_dir is None:
        return 0
    try:
        return int(json.loads((Path(out_dir) / "checkpoint" / "manifest.json").read_text())["train"]["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for mod in ("torch", "numpy", "numba", "trm_core"):
        try:
            m = __import__(mod)
            out[mod] = getattr(m, "__version__", "?")
        except Exception:  # noqa: BLE001
            out[mod] = "not importable"
    return out


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def _path_or_none(text: str) -> Path | None:
    return Path(text) if text else None  # the notebook passes "" when it found no bundle


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m submission.run", description=__doc__.split("\n")[0])
    p.add_argument("--start-time", type=float, default=None, help="Unix time the notebook started (default: now)")
    p.add_argument("--deadline", type=float, default=None,
                   help="Unix time the final submission must be written by (default: start + limit - margin)")
    p.add_argument("--input-dir", type=Path, default=Path("/kaggle/input"), help="searched for the test challenges")
    p.add_argument("--working-dir", type=Path, default=Path("/kaggle/working"))
    p.add_argument("--bundle-dir", type=_path_or_none, default=None,
                   help="the bundle folder (default: found by its marker)")
    p.add_argument("--checkpoint", type=_path_or_none, default=None, help="kit checkpoint (default: <bundle>/checkpoint)")
    p.add_argument("--scratch-dir", type=_path_or_none, default=None)
    p.add_argument("--run-mode", choices=("auto", "full", "smoke"), default="auto")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None)
    p.add_argument("--gpus", type=int, default=None)
    p.add_argument("--cpu-procs", type=int, default=1)
    p.add_argument("--train-mode", default="embeddings-then-full",
                   choices=("full", "embeddings", "embeddings-then-full", "lora"))
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--puzzle-emb-lr", type=float, default=1e-2)
    p.add_argument("--train-batch", type=int, default=None)
    p.add_argument("--predict-batch", type=int, default=None)
    p.add_argument("--views-min", type=int, default=64)
    p.add_argument("--views-target", type=int, default=256)
    p.add_argument("--views-max", type=int, default=512)
    p.add_argument("--max-epochs", type=float, default=12_500.0)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--time-limit", dest="time_limit_s", type=float, default=12 * 3600.0)
    p.add_argument("--margin", dest="margin_s", type=float, default=1800.0)
    p.add_argument("--reserve-min", dest="reserve_min_s", type=float, default=10.0)
    p.add_argument("--baseline", action="store_true", help="also predict with the un-adapted checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--provisional-every", dest="provisional_every_s", type=float, default=60.0)
    p.add_argument("--save-every", dest="save_every_s", type=float, default=60.0)
    p.add_argument("--smoke-tasks", type=int, default=4)
    p.add_argument("--smoke-steps", type=int, default=20)
    p.add_argument("--smoke-views", type=int, default=8)
    p.add_argument("--smoke-time", dest="smoke_time_s", type=float, default=1200.0)
    p.add_argument("--max-attempts", type=int, default=3)
    return p


def options_from_args(argv: list[str] | None = None) -> RunnerOptions:
    return RunnerOptions(**vars(parser().parse_args(argv)))


def main(argv: list[str] | None = None, **runner_kwargs: Any) -> int:
    """Parse, run, exit 0 whatever happens (an unusable command line is reported, then 0 too)."""
    start = time.time()
    try:
        opts = options_from_args(argv)
    except SystemExit as e:  # argparse: --help (0) or bad options (2)
        return int(e.code or 0) if e.code == 0 else 0
    except Exception as e:  # noqa: BLE001
        print(f"[trm runner] bad options: {e}", flush=True)
        return 0
    if opts.start_time is None:
        opts = replace(opts, start_time=start)
    return Runner(opts, **runner_kwargs).run()


if __name__ == "__main__":
    status = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Everything is written and fsynced by now. Interpreter teardown with torch and numba loaded
    # takes seconds on a loaded CPU (measured 8 s at load 7 on 2 cores), past any deadline margin:
    # skip it rather than hope for it.
    os._exit(status)
