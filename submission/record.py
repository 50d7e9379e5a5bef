"""The run's record, `trm-run/run.json`, kept as the run goes: every phase (planned vs actual
seconds, status, details), every problem met, and the log lines on stdout.

Input: the phases as they end and whatever the runner records (plan, calibration, tasks, ...).
Output: run.json rewritten atomically after every phase (best effort: a record that cannot be
written is logged, never fatal).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trm_core.safe_io import write_atomic

FORMAT = "trm-kit-run/1"


class RunLog:
    def __init__(self, path: Path, start: float, deadline: float, clock: Callable[[], float],
                 echo: Callable[[str], None], writes: Callable[[], int]) -> None:
        self.path, self.start, self.clock, self.echo, self.writes = path, start, clock, echo, writes
        self.problems: list[str] = []
        self.phases: list[dict[str, Any]] = []
        self.data: dict[str, Any] = {"format": FORMAT, "start_time": start, "deadline": deadline}

    def log(self, msg: str) -> None:
        self.echo(f"[trm runner +{self.clock() - self.start:7.1f}s] {msg}")

    def problem(self, msg: str) -> None:
        self.problems.append(msg)
        self.log(f"PROBLEM: {msg}")

    def phase(self, name: str, planned: float | None, started: float, status: str, **detail: Any) -> dict:
        """Record a phase that ran from `started` until now, and save."""
        rec = {"name": name, "planned_s": planned, "start": started - self.start, "actual_s": self.clock() - started,
               "status": status, **detail}
        self.phases.append(rec)
        self.save()
        return rec

    def save(self) -> None:
        try:
            self.data.update(phases=self.phases, problems=self.problems, writes=self.writes(), end_time=self.clock())
            self.data["actual_total_s"] = self.data["end_time"] - self.start
            write_atomic(self.path, json.dumps(self.data, indent=1, default=str) + "\n")
        except Exception as e:  # noqa: BLE001 - the record is best effort
            self.log(f"could not write run.json: {e}")
