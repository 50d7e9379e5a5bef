"""The run's clock: the session's limits, and every stop and kill instant the runner uses.

Inputs: the Kaggle session limit and the margins below (the one source of these numbers: the
scheduler's Budget, the runner's options and the generated notebook's cells are filled from
them; `session_deadline` = start + limit - margin), then, for one run, its start and deadline,
its plan and its calibration. Output:
`Deadlines`, a frozen value made once at the start (`Deadlines.at_start`) and replaced, never
changed, as the run learns more: the smoke run's end (`smoke`), the measured cost of the final
steps (`measured`), the calibration (`calibrated`), the plan (`planned`, `replanned`). Each job's
instants (when it should stop, when it is killed) are its methods, so one attempt's arithmetic
reads in one place. Every instant is a Unix time; durations end in `_s`.

The order (each <= the next):
    train stop (the plan's train_deadline) <= predict stop (the plan's predict_deadline)
    last stop (where a job with no planned stop stops) = kill limit - grace
    every job's kill instant <= kill limit = run deadline - final reserve
    kill limit <= run deadline (the deadline; sooner in a smoke run) <= deadline
A planned stop may fall past the last stop (the plan keeps its own reserve): its job is then killed
at the kill limit. The final reserve, kept between the last kill and the run deadline, is the most
of a floor (2% of the run, 1..60 s), the plan's vote and write with half its reserve, and STOP_S
plus the measured cost of the final steps. Standard library only: the runner reads this before
anything heavy loads.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

TIME_LIMIT_S = 12 * 3600  # Kaggle's limit for a code-competition notebook run
RUNNER_MARGIN_S = 30 * 60  # kept free before the limit: container start and mounting come before cell 1,
# the final cell after the runner
RUNNER_KILL_GRACE_S = 15 * 60  # the notebook kills a runner still alive this long after its deadline

STOP_S = 1.0  # from a job's kill time to its process gone: the 0.1 s poll, SIGTERM, the exit
LINGER_S = 2.0  # a worker that wrote its result but has not exited after this long is stopped
STOPPED_KEEP_S = 12.0  # after a stop signal, the files kept for `trm report` are written within this
FIRST_BEAT_S = 60.0  # how long a job may take to its first heartbeat (past stall_s / 3) before calibration
# calibration: a cold start (imports, numba compilation) on a loaded CPU can take most of a minute
CALIBRATION_MIN_S, CALIBRATION_MAX_S = 60.0, 1200.0


def session_deadline(start: float, time_limit_s: float = TIME_LIMIT_S, margin_s: float = RUNNER_MARGIN_S) -> float:
    """The runner's deadline in a session that started at `start`: start + limit - margin."""
    return start + time_limit_s - margin_s


def _share(span: float, share: float, low: float, high: float) -> float:
    return max(low, min(high, share * span))


@dataclass(frozen=True)
class Deadlines:
    """Every stop and kill instant of one run (Unix times) and the durations they derive from."""

    start: float  # when the notebook started
    deadline: float  # the final submission.json is written by this
    run_deadline: float  # the runner's own end: the deadline, sooner in a smoke run
    reserve_floor_s: float  # the least final reserve: 2% of the run, 1..60 s
    grace_s: float  # a job still running at its planned stop is killed this much later: 2% of the run, 0.5..120 s
    stall_s: float  # a job whose heartbeat stops this long (or 10 of its steps) is hung: 10% of the run, 2..600 s
    linger_s: float = LINGER_S  # a worker done but not gone is stopped after this; a group may linger this long
    first_beat_s: float = FIRST_BEAT_S  # launch and warm-up before a job's first heartbeat (from calibration)
    plan_reserve_s: float = 0.0  # the first plan's vote and write with half its reserve (0: no plan)
    final_steps_s: float = 0.0  # the measured cost of what follows a kill (vote, write, check, saves), with safety
    train_stop: float | None = None  # the plan's train_deadline: training stops by this (None: no plan)
    predict_stop: float | None = None  # the plan's predict_deadline: the adapted prediction stops by this

    @classmethod
    def at_start(cls, start: float, deadline: float | None = None, *, time_limit_s: float = TIME_LIMIT_S,
                 margin_s: float = RUNNER_MARGIN_S) -> Deadlines:
        """The deadlines of a run from `start` to `deadline` (None: start + limit - margin), before
        anything is measured or planned."""
        if deadline is None:
            deadline = session_deadline(start, time_limit_s, margin_s)
        span = deadline - start
        return cls(start=start, deadline=deadline, run_deadline=deadline,
                   reserve_floor_s=_share(span, 0.02, 1.0, 60.0), grace_s=_share(span, 0.02, 0.5, 120.0),
                   stall_s=_share(span, 0.1, 2.0, 600.0))

    # ---- what the run learns ---------------------------------------------------------------------

    def smoke(self, end: float) -> Deadlines:
        """A smoke run ends at `end` (or the deadline, if sooner)."""
        return replace(self, run_deadline=min(self.deadline, end))

    def measured(self, final_steps_s: float) -> Deadlines:
        """With the cost of the final steps as measured now."""
        return replace(self, final_steps_s=final_steps_s)

    def calibrated(self, launch_s: float, warmup_s: float) -> Deadlines:
        """A job's first heartbeat may come after a launch and its warm-ups (as calibrated)."""
        return replace(self, first_beat_s=launch_s + warmup_s)

    def planned(self, plan: Any) -> Deadlines:
        """The first plan (a scheduler.Plan, not fallback only): its stops, and its vote and write
        (with half its reserve) kept in the final reserve."""
        return replace(self.replanned(plan), plan_reserve_s=plan.phases["vote_write"] + 0.5 * plan.reserve_s)

    def replanned(self, plan: Any) -> Deadlines:
        """A later plan's stops (a retry's, or training's last re-plan); the final reserve stays."""
        return replace(self, train_stop=plan.train_deadline, predict_stop=plan.predict_deadline)

    # ---- the instants ----------------------------------------------------------------------------

    @property
    def final_reserve_s(self) -> float:
        """Seconds kept between the last job's kill and the run deadline."""
        return max(self.reserve_floor_s, self.plan_reserve_s, STOP_S + self.final_steps_s)

    @property
    def kill_limit(self) -> float:
        """No job runs past this."""
        return self.run_deadline - self.final_reserve_s

    @property
    def last_stop(self) -> float:
        """Where a job with no planned stop stops (the un-adapted prediction, a prediction with no plan)."""
        return self.kill_limit - self.grace_s

    def left_s(self, now: float) -> float:
        """Seconds to the run deadline."""
        return self.run_deadline - now

    def room_s(self, now: float) -> float:
        """Seconds a job started now may work before the last stop."""
        return self.last_stop - now

    def calibration_limit_s(self, now: float) -> float:
        """How long a calibration attempt may run: half the time left up to a minute, else 15% of it
        up to 20 minutes, whichever is more."""
        left = self.left_s(now)
        return max(min(CALIBRATION_MIN_S, 0.5 * left), min(0.15 * left, CALIBRATION_MAX_S))

    def kill_after(self, now: float, limit_s: float) -> float:
        """The kill instant of a job started now that may run limit_s."""
        return min(now + limit_s, self.kill_limit)

    def train_kill(self, train_stop: float, save_s: float) -> float:
        """The kill instant of a training attempt that stops by `train_stop`: the grace, its two
        saves (checkpoint and state) and its ranks lingering, never past the kill limit."""
        return min(train_stop + self.grace_s + 2 * save_s + self.linger_s, self.kill_limit)

    def predict_kill(self, stop: float) -> float:
        """The kill instant of a prediction that stops by `stop`."""
        return min(stop + self.grace_s, self.kill_limit)

    def prediction_stop(self) -> float:
        """When the final prediction stops: the plan's predict stop, else the last stop."""
        return self.predict_stop if self.predict_stop is not None else self.last_stop

    def keep_until(self, stopped_at: float | None) -> float:
        """When keeping the run's files must be over: the deadline; after a stop signal at
        `stopped_at`, STOPPED_KEEP_S past it at most (the notebook's SIGKILL follows its SIGTERM by
        30 s, whatever the deadline)."""
        if stopped_at is None:
            return self.deadline
        return stopped_at + STOPPED_KEEP_S if stopped_at >= self.deadline else \
            min(self.deadline, stopped_at + STOPPED_KEEP_S)

    def to_json(self) -> dict[str, Any]:
        """Every field, and the derived instants, for run.json."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d.update(final_reserve_s=self.final_reserve_s, kill_limit=self.kill_limit, last_stop=self.last_stop)
        return d
