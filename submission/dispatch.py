"""Launching the runner's jobs and reading how they ended.

Input: a typed job (submission/jobs.py), when it must be killed, and the run's `Deadlines` (how
long a heartbeat may pause, how long a finished worker may linger). `Dispatcher` writes the job
file, starts it through a launcher (subprocesses or torchrun on Kaggle, threads in the tests),
waits with submission.launch.wait (results written, time limit, heartbeat stall), and returns an
`Outcome`: the exit status, how it ended and each rank's result.rank<r>.json.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from submission.clock import Deadlines
from submission.jobs import Job
from submission.launch import Handle, wait


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

    def describe(self) -> str:
        """One line for the run's problems: the job, its error, where, and its first message."""
        msgs = self.summary()["messages"]
        return f"{self.name}: {self.error}" + (f" in {self.part}" if self.part else "") + \
            (f" ({msgs[0]})" if msgs else "")


class Dispatcher:
    """Writes, starts and waits for the jobs of one run."""

    def __init__(self, launcher: Any, scratch: Path, clock: Callable[[], float], times: Deadlines) -> None:
        self.launcher, self.scratch, self.clock, self.times = launcher, scratch, clock, times
        self.device = "cpu"
        self.common: dict[str, Any] = {}  # the fields every job shares (tasks, checkpoint, seed, fault)

    def job(self, cls: type[Job], name: str, phase: str, **fields: Any) -> Job:
        """A job of kind `cls` in a fresh folder, its file written."""
        job_dir = self.scratch / "jobs" / name
        job_dir.mkdir(parents=True, exist_ok=True)
        for old in job_dir.glob("result.rank*.json"):
            old.unlink()
        job = cls(name=name, phase=phase, job_dir=str(job_dir), device=self.device, **{**self.common, **fields})
        job.write()
        return job

    def heartbeat(self, name: str) -> str:
        return str(self.scratch / "jobs" / name / "heartbeat")

    def start(self, job: Job, nprocs: int = 1, distributed: bool = False,
              gpu: int | None = None) -> tuple[Handle, float]:
        gpus = None
        if self.device == "cuda":
            gpus = str(gpu) if gpu is not None else ",".join(str(i) for i in range(nprocs))
        return self.launcher.start(Path(job.job_dir) / "job.json", name=job.name, nprocs=nprocs,
                                   distributed=distributed, gpus=gpus, cpu=self.device == "cpu"), self.clock()

    def outcome(self, job: Job, rc: int | None, ended: str, launched: float, ranks: int = 1) -> Outcome:
        results = []
        for p in sorted(Path(job.job_dir).glob("result.rank*.json")):
            try:
                results.append(json.loads(p.read_text()))
            except (OSError, ValueError):
                pass
        return Outcome(job.name, rc, ended, launched, self.clock(), ranks, results)

    @staticmethod
    def finished(job: Job, ranks: int = 1) -> Callable[[], bool]:
        return lambda: all((Path(job.job_dir) / f"result.rank{r}.json").is_file() for r in range(ranks))

    def stall(self, job: Job, launched: float, unit_s: float | None) -> Callable[[], bool]:
        """True once the job's heartbeat (a file touched every step or batch) is older than allowed:
        10 steps/batches and at least the run's stall_s; before the first beat, also launch and
        warm-up (first_beat_s, three times)."""
        if job.heartbeat is None:
            return lambda: False
        beat = Path(job.heartbeat)
        limit = max(self.times.stall_s, 10 * (unit_s or 0.0))  # no unit time known (calibration): stall_s
        first = limit + 3 * self.times.first_beat_s

        def stalled() -> bool:
            try:
                return time.time() - beat.stat().st_mtime > limit
            except OSError:
                return time.time() - launched > first
        return stalled

    def run_one(self, job: Job, kill_at: float, nprocs: int = 1, unit_s: float | None = None) -> Outcome:
        """Start one job (a torchrun group when nprocs > 1) and wait for it to end."""
        handle, launched = self.start(job, nprocs, distributed=nprocs > 1)
        ended = wait([handle], [kill_at], clock=self.clock, finished=[self.finished(job, nprocs)],
                     linger_s=self.times.linger_s, stalled=[self.stall(job, time.time(), unit_s)])[0]
        return self.outcome(job, handle.poll(), ended, launched, nprocs)

    def run_many(self, jobs: list[Job], kill_at: float, unit_s: float | None, tick: Callable[[], None] | None,
                 tick_every: float, gpus: list[int | None]) -> list[Outcome]:
        """Start independent one-process jobs together (one per GPU) and wait for all of them."""
        started = [self.start(job, gpu=gpu) for job, gpu in zip(jobs, gpus)]
        ended = wait([h for h, _ in started], [kill_at] * len(jobs), clock=self.clock, tick=tick,
                     tick_every=tick_every, finished=[self.finished(job) for job in jobs],
                     linger_s=self.times.linger_s,
                     stalled=[self.stall(job, launched, unit_s) for (_, launched), job in zip(started, jobs)])
        return [self.outcome(job, h.poll(), how, launched) for (h, launched), how, job in zip(started, ended, jobs)]
