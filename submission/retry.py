"""One retry policy for every job: how a failed attempt changes the next one.

Input: how an attempt ended (an `Outcome`'s error: oom | crash | died | stalled | timeout |
checkpoint | tasks, and the part it was in) and what it ran with (a `Try`).
Output: the next `Try`, with a sentence saying why, or None when there is nothing to retry:

- out of memory  -> the same global batch in smaller pieces: calibration halves the per-process
                    batch it was measuring; training halves its micro-batch (it resumes from its
                    saved state in the same run folder) and only a single-row micro-batch that
                    still does not fit halves the global batch (a fresh run); a prediction shard
                    is split in two, so each process predicts half the rows at a time
- crash or hang  -> the same again (a hang was killed when its heartbeat stopped); a training
                    group that failed twice tries again on half the processes (fewer GPUs)
- time limit, a checkpoint or tasks that do not load -> stop: another try would only repeat it
- max_attempts tries -> stop
"""

from __future__ import annotations

from dataclasses import dataclass, replace

FINAL_ERRORS = ("timeout", "checkpoint", "tasks")  # retrying cannot help


@dataclass(frozen=True)
class Try:
    """What one attempt of a job runs with."""

    job: str  # calibrate | train | predict
    index: int = 0  # 0 for the first attempt
    world: int = 1  # processes in the group (training); 1 for a calibration or a prediction process
    train_batch: int = 0  # training: global rows per step; calibration: rows per process
    micro_batch: int = 0  # training: rows per forward/backward (0: the whole per-process batch)
    predict_batch: int = 0  # prediction: global rows per batch; calibration: rows per process
    shards: tuple[tuple[int, int], ...] = ()  # prediction: the (rank, world) shards of this process
    why: str = ""  # what changed from the attempt before

    def smaller(self, part: str | None) -> Try | None:
        """The same work in smaller pieces after running out of memory (None: nothing smaller)."""
        if self.job == "calibrate":
            tb, pb = self.train_batch, self.predict_batch
            if part == "predict":
                pb //= 2
            elif part == "train":
                tb //= 2
            else:
                tb, pb = tb // 2, pb // 2
            if min(tb, pb) < 1:
                return None
            return replace(self, train_batch=tb, predict_batch=pb,
                           why=f"calibration out of memory: retrying with local batches {tb} / {pb}")
        if self.job == "train":
            rows = self.micro_batch or self.train_batch // self.world
            if rows > 1:
                return replace(self, micro_batch=rows // 2, why=f"out of memory: retrying with micro-batches of "
                               f"{rows // 2} (global batch {self.train_batch} kept)")
            if self.train_batch // 2 < self.world:
                return None
            batch = max(self.world, (self.train_batch // 2) // self.world * self.world)
            return replace(self, train_batch=batch, micro_batch=0,
                           why=f"out of memory: retrying with a global batch of {batch}")
        split = tuple(s for r, w in self.shards for s in ((2 * r, 2 * w), (2 * r + 1, 2 * w))
                      if self.predict_batch % (2 * w) == 0)
        if len(split) != 2 * len(self.shards):
            return replace(self, why="out of memory: the batch does not split further; retrying as it was")
        return replace(self, shards=split, why=f"out of memory: retrying as {len(split)} half-size shards")

    def fewer_processes(self) -> Try:
        world = max(1, self.world // 2)
        return replace(self, world=world, train_batch=max(world, self.train_batch // world * world),
                       why=f"training failed twice: retrying on {world} process(es)")


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3

    def next(self, error: str | None, part: str | None, attempt: Try) -> Try | None:
        """The attempt after `attempt`, which ended with `error` (None: it succeeded)."""
        if error is None or error in FINAL_ERRORS or attempt.index + 1 >= self.max_attempts:
            return None
        if error == "oom":
            nxt = attempt.smaller(part)
        elif attempt.job == "train" and attempt.index >= 1 and attempt.world > 1:
            nxt = attempt.fewer_processes()
        else:
            nxt = replace(attempt, why=f"{error}: retrying")
        return None if nxt is None else replace(nxt, index=attempt.index + 1)
