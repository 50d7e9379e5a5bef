"""The run's record, `trm-run/run.json`, kept as the run goes: every phase (planned vs actual
seconds, status, details), every problem met, and the log lines on stdout.

Input: the phases as they end and whatever the runner records (plan, calibration, tasks, ...).
Output: run.json rewritten atomically after every phase (best effort: a record that cannot be
written is logged, never fatal), as strict JSON: a NaN or infinity anywhere in it (a loss that
diverged, a rate measured over no time) is written as null, so any JSON parser reads the file.
Log lines are printed with control characters escaped (`printable`, `show_id`): a task id is
data from the challenges file, and a NUL or an escape sequence in it must not reach the log raw.
"""

from __future__ import annotations

import json
import math
import time
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trm_core.safe_io import write_atomic

FORMAT = "trm-kit-run/1"
# line and paragraph separators, and the bidirectional overrides that reorder what a reader sees
_INVISIBLE = {"Zl", "Zp"}
_BIDI = {chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))}


def printable(line: str, keep: str = "\n") -> str:
    """`line` with every control character (bar those in `keep`) written as its escape (\\x00,
    \\x1b, \\u2028, ...)."""
    return "".join(repr(c)[1:-1] if c not in keep and (unicodedata.category(c) == "Cc" or c in _BIDI or
                                                     unicodedata.category(c) in _INVISIBLE) else c
                   for c in line)


def show_id(task_id: object) -> str:
    """A task id as a log line may show it: itself when plain, else escaped like repr (a newline
    in an id must not start a line of its own)."""
    text = str(task_id)
    return text if text.isprintable() else printable(text, keep="")


def strict(value: Any) -> Any:
    """`value` with every non-finite float (NaN, +-inf) replaced by None, for strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    return value


def strict_dumps(value: Any) -> str:
    """Strict JSON text (no NaN or Infinity tokens); anything not JSON is written as its str."""
    return json.dumps(strict(value), indent=1, default=str, allow_nan=False) + "\n"


def save_json(path: Path, value: Any) -> None:
    """`value` as strict JSON at `path`, atomically (run.json, plan.json)."""
    write_atomic(path, strict_dumps(value))


class RunLog:
    def __init__(self, path: Path, start: float, deadline: float, clock: Callable[[], float],
                 echo: Callable[[str], None], writes: Callable[[], int]) -> None:
        self.path, self.start, self.clock, self.echo, self.writes = path, start, clock, echo, writes
        self.problems: list[str] = []
        self.phases: list[dict[str, Any]] = []
        self.data: dict[str, Any] = {"format": FORMAT, "start_time": start, "deadline": deadline}
        self.save_s = 0.0  # the longest save so far (serialise, write, fsync): the final one costs as much

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
        t0 = time.perf_counter()
        try:
            self.data.update(phases=self.phases, problems=self.problems, writes=self.writes(), end_time=self.clock())
            self.data["actual_total_s"] = self.data["end_time"] - self.start
            save_json(self.path, self.data)
        except Exception as e:  # noqa: BLE001 - the record is best effort
            self.log(f"could not write run.json: {e}")
        self.save_s = max(self.save_s, time.perf_counter() - t0)
