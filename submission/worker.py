"""One job of the runner, in its own process: calibrate, post-train (under torchrun, one process per
GPU) or predict shards of the views (fixed shards, or the items of a work queue: submission/workqueue.py).

    python -m submission.worker --job JOB.json
    python -m torch.distributed.run --standalone --nproc-per-node G -m submission.worker --job JOB.json

Input: a job file written by submission.run, read as one of the typed jobs of submission/jobs.py
(`CalibrateJob`, `TrainJob`, `PredictJob`: their fields are documented there); each kind runs the
method of the same name here.
Output: `result.rank<r>.json` in job_dir: ok, error (oom | checkpoint | tasks | cancelled | crash),
message, part (what ran when it failed), started_at, ready_at (model and tasks loaded), ended_at and
the kind's figures; predictions go to `<prefix>-r<rank>of<world>.npz` (saved every save_every_s,
and on the way out of any failure, SIGTERM included, so a failed or killed shard keeps what it
did), the post-trained checkpoint to `<out_dir>/checkpoint/`.
Exit status: 0 done, 3 out of memory, 1 any other failure (13 for an injected abrupt exit, 14 when
the runner named by $TRM_RUNNER_PID died: a worker never outlives its runner).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from submission import faults as faults_mod
from submission.jobs import CalibrateJob, Job, PredictJob, TrainJob, job_from_json, read_job
from submission.lifeline import alive
from submission.measure import calibrate
from submission.scheduler import Plan, Watchdog
from trm_core.safe_io import write_atomic

OOM_STATUS = 3


def _write_json(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(data, indent=1, default=str) + "\n")


def classify(e: BaseException) -> str:
    """oom | checkpoint | tasks | cancelled | crash."""
    if isinstance(e, faults_mod.Cancelled):
        return "cancelled"
    text = str(e).lower()
    # only modules already loaded: a failure before torch was imported must not wait for its import
    # (seconds on a loaded CPU) before its result is written
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(e, torch.OutOfMemoryError):
        return "oom"
    if "out of memory" in text:
        return "oom"
    ckpt_mod = sys.modules.get("trm_core.checkpoint")
    if ckpt_mod is not None and isinstance(e, ckpt_mod.CheckpointError):
        return "checkpoint"
    if isinstance(e, _TaskMismatch):
        return "tasks"
    return "crash"


class _TaskMismatch(ValueError):
    pass


def load_job_tasks(job: Job) -> Any:
    """The job's tasks, loaded leniently at the checkpoint's canvas, in the job's order."""
    from trm_core.tasks import TaskSet, load_tasks

    loaded = load_tasks(job.challenges, strict=False, max_side=int(job.canvas))
    missing = [t for t in job.task_ids if t not in loaded.tasks]
    if missing:
        raise _TaskMismatch(f"{job.challenges}: tasks {missing[:5]} ({len(missing)}) did not load here")
    return TaskSet(tasks={t: loaded.tasks[t] for t in job.task_ids})


def _device(name: str) -> Any:
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("the job asks for cuda but torch sees no GPU")
    return torch.device(name)


class _Job:
    def __init__(self, job: Job, rank: int, cancel: threading.Event | None, in_process: bool,
                 log: Callable[[str], None]) -> None:
        self.job, self.rank, self.cancel, self.in_process, self.log = job, rank, cancel, in_process, log
        self.result: dict[str, Any] = {"name": job.name, "kind": job.kind, "rank": rank}
        self.part = "start"
        self.beat_at = 0.0
        self.kinds: dict[type, Callable[[], None]] = {CalibrateJob: self.calibrate, TrainJob: self.train,
                                                      PredictJob: self.predict}

    def beat(self) -> None:
        """Touch the job's heartbeat file (at most every 0.5 s): the runner kills a job whose
        heartbeat stops, long before its deadline."""
        path, now = self.job.heartbeat, time.time()
        if path and now - self.beat_at >= 0.5:
            Path(path).touch()
            self.beat_at = now

    def injector(self, rank: int, attempt: int | None = None) -> faults_mod.Injector:
        """Faults for this job (attempt: the job's unless given, e.g. a work item's)."""
        spec = self.job.fault
        specs = faults_mod.parse_faults(spec if spec is not None else os.environ.get("TRM_FAULT"))
        return faults_mod.Injector(specs, self.job.phase, self.job.attempt if attempt is None else attempt, rank,
                                   cancel=self.cancel, in_process=self.in_process, log=self.log)

    def hook(self, inj: faults_mod.Injector) -> Callable[[str, int], None]:
        def point(part: str, index: int) -> None:
            self.part = part
            inj(part, index)
        return point

    def load(self) -> tuple[Any, Any]:
        from trm_core import checkpoint

        self.part = "load"
        # the runner checked the weights' sha256 once before any job; each worker need not hash again
        ckpt = checkpoint.load(self.job.checkpoint, verify=False)
        tasks = load_job_tasks(self.job)
        self.result["ready_at"] = time.time()
        return ckpt, tasks

    # ---- kinds ---------------------------------------------------------------------------------

    def calibrate(self) -> None:
        job = self.job
        assert isinstance(job, CalibrateJob)
        inject = self.hook(self.injector(self.rank))

        def point(part: str, index: int) -> None:  # every calibration step and batch is a heartbeat
            self.beat()
            inject(part, index)

        point("start", 0)
        ckpt, tasks = self.load()
        cal = calibrate(ckpt, tasks, train_batch=job.train_batch, predict_batch=job.predict_batch,
                        views=job.views, device=_device(job.device), seed=job.seed,
                        hook=point, log=self.log, scratch=job.job_dir)
        self.result["calibration"] = cal.to_json()

    def train(self) -> None:
        from trm_core.distributed import process_group
        from trm_core.fit import FitSchedule
        from trm_core.config import DataConfig
        from trm_core.recipes import posttrain

        job = self.job
        assert isinstance(job, TrainJob)
        with process_group(job.device, job.pg_timeout_s) as (rank, world, device):
            self.rank = self.result["rank"] = rank
            point = self.hook(self.injector(rank))
            point("start", 0)
            ckpt, tasks = self.load()
            dog = Watchdog(Plan.from_json(job.plan), log=self.log if rank == 0 else None)
            watch_path = Path(job.job_dir) / "watchdog.json"

            def stop(step: int) -> bool:
                point("train", step)
                if rank == 0:
                    self.beat()
                decision = dog.stop(step)
                if rank == 0 and (decision or dog.replans and dog.replans[-1]["step"] == step):
                    _write_json(watch_path, dog.to_json())
                return decision

            cfg = job.train  # read through TrainConfig.from_dict (submission/jobs.py)
            data = DataConfig(**job.data)
            self.part = "train"
            fit = FitSchedule(**job.fit) if job.fit else None
            res = posttrain(ckpt, tasks, cfg, data, job.out_dir, device=device, init=job.init,
                            stop=stop, deadline=dog.initial.train_deadline, source=job.challenges,
                            log=self.log if rank == 0 else (lambda line: None), fit=fit)
            if dog.stop_reason is None:  # train() ran its last step without asking the watchdog again
                dog.stop_reason = f"all {res.steps_done} steps of the run done"
            if rank == 0:
                _write_json(watch_path, dog.to_json())
            self.result.update(world=world, steps_done=res.steps_done, stopped_early=res.stopped_early,
                               seconds=res.seconds, samples_per_s=res.samples_per_s,
                               checkpoint=str(res.checkpoint) if res.checkpoint else None,
                               first_metrics=res.first_metrics, last_metrics=res.last_metrics,
                               micro_batch=res.micro_batch, compile=res.compile, memory_fit=res.memory_fit,
                               watchdog=dog.to_json())

    def predict(self) -> None:
        from trm_core.recipes import model_for_tasks

        job = self.job
        assert isinstance(job, PredictJob)
        point = self.hook(self.injector(self.rank))
        point("start", 0)
        ckpt, tasks = self.load()
        views, batch = job.views, job.predict_batch
        model, variants, adapted = model_for_tasks(ckpt, tasks, views, job.seed)
        self.result.update(adapted=adapted, views=views, shards=[])
        device = _device(job.device)
        if job.queue is not None:
            self._predict_items(model, variants, device)
            return
        for rank, world in job.shards:
            path = Path(f"{job.prefix}-r{rank}of{world}.npz")
            self.result["shards"].append(self._predict_shard(model, variants, device, batch, (rank, world), path,
                                                             point))

    def _predict_items(self, model: Any, variants: Any, device: Any) -> None:
        """Take items from the job's queue until none is left (or the deadline): each predicted
        with its own try's batch and shards, its tasks' views only, then marked done. A failure
        leaves the item taken, for the runner's retry policy; the items done before it are kept."""
        from submission.workqueue import Queue, only

        job = self.job
        assert isinstance(job, PredictJob) and job.queue is not None
        queue = Queue(Path(job.queue))
        self.result["items"] = []
        while time.time() < job.deadline:
            item = queue.claim(job.name)
            if item is None:
                break
            # faults are drawn per item and attempt (at its batches), so a retried item meets its fault elsewhere
            point = self.hook(self.injector(item.id, item.attempt.index))
            t0 = time.time()
            sub = only(variants, item.task_ids)
            shards = [self._predict_shard(model, sub, device, item.attempt.predict_batch, (rank, world),
                                          Path(f"{job.prefix}-a{item.attempt.index}-q{item.id}-r{rank}of{world}.npz"),
                                          point)
                      for rank, world in item.attempt.shards]
            done = {"records": sum(s["records"] for s in shards), "complete": all(s["complete"] for s in shards),
                    "seconds": time.time() - t0}
            queue.finish(job.name, item, done)
            self.result["items"].append({"id": item.id, "attempt": item.attempt.index, **done})
            self.result["shards"].extend(shards)

    def _predict_shard(self, model: Any, variants: Any, device: Any, batch: int, shard: tuple[int, int], path: Path,
                       point: Callable[[str, int], None]) -> dict[str, Any]:
        """Predict one shard of `variants`' views to `path`, saved every save_every_s and on the way
        out of any failure; its record for the result."""
        from trm_core.config import PredictConfig
        from trm_core.predict import predict

        job = self.job
        assert isinstance(job, PredictJob)
        views, save_every, deadline = job.views, job.save_every_s, job.deadline
        rank, world = shard
        state: dict[str, Any] = {"done": 0, "total": 0, "saved": time.time(), "preds": None, "saved_n": 0}

        def stop() -> bool:
            point("predict", state["done"])
            self.beat()
            return False

        def on_batch(preds: Any, done: int, total: int) -> None:
            state["done"], state["total"], state["preds"] = done, total, preds
            if time.time() - state["saved"] >= save_every:
                _save_predictions(preds, path)
                state["saved"], state["saved_n"] = time.time(), len(preds)

        self.part = "predict"
        t0 = time.time()
        status: dict[str, str] = {}
        try:
            with _terminate_raises(not self.in_process):
                preds = predict(model, variants, PredictConfig(num_views=views, batch_size=batch, order="variant",
                                                               **job.settle),
                                device=device, stop=stop, deadline=deadline, on_batch=on_batch,
                                shard=(rank, world), status=status)
        except BaseException:
            # a crash, an out-of-memory, a cancel or a kill's SIGTERM: every batch predicted since
            # the last periodic save is kept, so the runner's vote uses it
            self._keep(state, path)
            raise
        self.result["compile"] = status.get("compile", "off")
        spent = {k: status[k] for k in ("views", "views_full", "act_steps", "act_steps_full") if k in status}
        _save_predictions(preds, path)
        return {"rank": rank, "world": world, "path": str(path), "records": len(preds),
                "batches_done": state["done"], "batches_total": state["total"],
                "complete": state["done"] == state["total"] and state["total"] > 0, "seconds": time.time() - t0,
                **spent}

    def _keep(self, state: dict[str, Any], path: Path) -> None:
        """Save a failing shard's predictions made since its last save (never raises: the failure
        being reported matters more)."""
        preds = state["preds"]
        if preds is None or len(preds) <= state["saved_n"]:
            return
        try:
            _save_predictions(preds, path)
        except Exception as e:  # noqa: BLE001
            self.log(f"could not save the {len(preds)} predictions made before the failure: {e}")
            return
        self.result["saved_on_failure"] = {"path": str(path), "records": len(preds)}
        self.log(f"saved the {len(preds)} predictions made before the failure to {path}")

    def run(self) -> int:
        """Run the job; record the outcome in result.rank<r>.json; return the exit status."""
        self.result["started_at"] = time.time()
        status = 0
        try:
            self.kinds[type(self.job)]()
            self.result["ok"] = True
        except BaseException as e:  # noqa: BLE001 - every failure is reported to the runner, then ends the job
            if isinstance(e, faults_mod.AbruptExit):
                return faults_mod.EXIT_STATUS  # an abrupt death writes nothing
            kind = classify(e)
            self.result.update(ok=False, error=kind, part=self.part, message=f"{type(e).__name__}: {e}",
                               traceback=traceback.format_exc(limit=8))
            self.log(f"failed ({kind}) in {self.part}: {type(e).__name__}: {e}")
            status = OOM_STATUS if kind == "oom" else 1
        finally:
            self.result["ended_at"] = time.time()
            if "ok" in self.result:
                _write_json(Path(self.job.job_dir) / f"result.rank{self.rank}.json", self.result)
        return status


class Terminated(BaseException):
    """SIGTERM arrived (the runner kills a job with SIGTERM, then SIGKILL 5 s later). A
    BaseException, so that no `except Exception` on the way (the compile fallback) swallows it."""


@contextlib.contextmanager
def _terminate_raises(enabled: bool) -> Iterator[None]:
    """Within: SIGTERM raises Terminated, so a killed shard saves what it predicted on its way out.
    Only in a process's main thread (the in-process launcher cancels its threads instead)."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminated(signum: int, frame: Any) -> None:
        raise Terminated("SIGTERM: the runner stopped this job")

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _save_predictions(preds: Any, path: Path) -> None:
    """Atomically: a reader never sees a half-written shard."""
    tmp = path.with_name(path.stem + ".tmp.npz")
    preds.save(tmp)
    os.replace(tmp, path)


def run_job(job: Job | dict[str, Any], *, cancel: threading.Event | None = None, in_process: bool = False,
            log: Callable[[str], None] | None = None) -> int:
    """Run one job (typed, or its parsed JSON) in this process (the in-process launcher uses this)."""
    job = job if isinstance(job, Job) else job_from_json(job)
    rank = int(os.environ.get("RANK", "0")) if not in_process else 0
    name = job.name
    out = log or (lambda line: print(f"[{name} r{rank}] {line}", file=sys.stderr, flush=True))
    return _Job(job, rank, cancel, in_process, out).run()


ORPHAN_STATUS = 14  # the runner that started this worker is gone


def exit_with_runner(runner_pid: int, every_s: float = 0.5) -> threading.Thread:
    """Watch the runner from a daemon thread and end this process when it dies: workers run in
    their own session (so a kill reaches a whole torchrun group), which a runner's death does not reach."""
    def watch() -> None:
        while alive(runner_pid):
            time.sleep(every_s)
        try:  # stderr is a pipe the dead runner read: writing to it raises BrokenPipeError
            print(f"[worker] runner {runner_pid} is gone: exiting", file=sys.stderr, flush=True)
        except (OSError, ValueError):
            pass
        os._exit(ORPHAN_STATUS)

    thread = threading.Thread(target=watch, name="runner-watch", daemon=True)
    thread.start()
    return thread


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m submission.worker", description=__doc__.split("\n")[0])
    parser.add_argument("--job", required=True, help="job file written by submission.run")
    args = parser.parse_args(argv)
    runner_pid = os.environ.get("TRM_RUNNER_PID", "")
    if runner_pid.isdigit():
        exit_with_runner(int(runner_pid))
    return run_job(read_job(args.job))


if __name__ == "__main__":
    sys.exit(main())
