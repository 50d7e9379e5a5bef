"""The job files the runner writes and a worker reads: one typed record per kind of job.

Input/output: `<job_dir>/job.json`, a JSON object {"kind": ..., field: value, ...}. `Job` holds
what every job needs (which tasks, which checkpoint, where to report); `CalibrateJob`, `TrainJob`
and `PredictJob` add their own fields. `read_job(path)` / `job_from_json(obj)` check the kind and
the fields (a missing or unknown field is named), so a worker never starts on a malformed file.
A training job carries a typed TrainConfig, a plain object of its fields on disk, read back
through TrainConfig.from_dict (which refuses an unknown field by name). Standard library only
(trm_core.config is too): the runner writes jobs before torch is imported.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from trm_core.config import TrainConfig
from trm_core.safe_io import write_atomic

PHASES = ("calibrate", "train", "predict", "baseline")  # what fault injection names a job's phase


@dataclass(frozen=True, kw_only=True)
class Job:
    """Fields common to every job."""

    kind: ClassVar[str] = ""
    name: str  # unique per attempt, e.g. train-a1; names the job folder
    phase: str  # calibrate | train | predict | baseline (for fault injection)
    job_dir: str  # the worker writes result.rank<r>.json here
    challenges: str  # the challenges file the runner read
    task_ids: list[str]  # the tasks to use, in order
    canvas: int  # the checkpoint's canvas: tasks are loaded at this size
    checkpoint: str  # the kit checkpoint folder to load
    device: str  # cpu | cuda
    seed: int = 0
    attempt: int = 0  # which attempt of this job (fault injection may target one)
    fault: str | None = None  # a spec as in submission.faults; None: $TRM_FAULT
    heartbeat: str | None = None  # a file touched at every step or batch (at most every 0.5 s)

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise ValueError(f"job {self.name}: phase must be one of {PHASES}, got {self.phase!r}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"job {self.name}: device must be cpu or cuda, got {self.device!r}")
        if not self.task_ids or self.canvas < 1:
            raise ValueError(f"job {self.name}: needs at least one task id and a canvas >= 1")

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}

    def write(self) -> Path:
        """Write `<job_dir>/job.json` atomically; return its path."""
        path = Path(self.job_dir) / "job.json"
        write_atomic(path, json.dumps(self.to_json(), indent=1, default=str) + "\n")
        return path


@dataclass(frozen=True, kw_only=True)
class CalibrateJob(Job):
    """Measure a training step and a prediction batch at these per-process sizes."""

    kind: ClassVar[str] = "calibrate"
    train_batch: int
    predict_batch: int
    views: int


@dataclass(frozen=True, kw_only=True)
class TrainJob(Job):
    """Post-train under torchrun (one process per GPU), stopped by the scheduler's Watchdog."""

    kind: ClassVar[str] = "train"
    plan: dict[str, Any]  # scheduler.Plan JSON: training stops by its train_deadline (the watchdog may move it sooner)
    train: TrainConfig  # how to train (a dict given is read through TrainConfig.from_dict)
    data: dict[str, Any]  # DataConfig fields
    out_dir: str  # the run folder; the post-trained checkpoint goes to <out_dir>/checkpoint/
    init: str = "mean"  # how new tasks' embedding rows start
    pg_timeout_s: float | None = None  # the process group's timeout
    fit: dict[str, Any] | None = None  # FitSchedule fields: per-task spending (None: every task drawn alike)

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.train, dict):  # read from a job file: typed here, an unknown field refused by name
            try:
                object.__setattr__(self, "train", TrainConfig.from_dict(self.train))
            except (TypeError, ValueError) as e:
                raise ValueError(f"job {self.name}: train: {e}") from None


@dataclass(frozen=True, kw_only=True)
class PredictJob(Job):
    """Predict shards of the views, saving what is done every save_every_s."""

    kind: ClassVar[str] = "predict"
    shards: list[list[int]]  # [[rank, world], ...] predicted one after the other
    views: int
    predict_batch: int
    deadline: float
    prefix: str  # predictions go to <prefix>-r<rank>of<world>.npz
    save_every_s: float = 60.0
    settle: dict[str, Any] = field(default_factory=dict)  # PredictConfig's exit_rule, stable_steps, round_views,
    # settle_margin, rule ({}: the reference: every view, every ACT step)
    queue: str | None = None  # a work-queue folder (submission/workqueue.py): predict the items taken from it
    # until none is left, each to <prefix>-a<attempt>-q<item>-r<rank>of<world>.npz; shards is then unused

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.shards or any(len(s) != 2 or not 0 <= s[0] < s[1] for s in self.shards):
            raise ValueError(f"job {self.name}: shards must be [[rank, world], ...] with 0 <= rank < world")


KINDS: dict[str, type[Job]] = {cls.kind: cls for cls in (CalibrateJob, TrainJob, PredictJob)}


def job_from_json(obj: object) -> Job:
    """The typed job for a parsed job file; ValueError naming what is wrong."""
    if not isinstance(obj, dict) or obj.get("kind") not in KINDS:
        kind = obj.get("kind") if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"a job must be an object whose kind is one of {sorted(KINDS)}, got {kind!r}")
    cls = KINDS[obj["kind"]]
    names = {f.name for f in fields(cls)}
    given = {k: v for k, v in obj.items() if k != "kind"}
    unknown = sorted(set(given) - names)
    if unknown:
        raise ValueError(f"{obj['kind']} job: unknown field(s) {unknown}")
    try:
        return cls(**given)
    except TypeError as e:  # a required field missing
        raise ValueError(f"{obj['kind']} job: {e}") from None


def read_job(path: str | os.PathLike) -> Job:
    """The job in a job file; ValueError naming the file when it is not one."""
    try:
        return job_from_json(json.loads(Path(path).read_text()))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None
