"""The time limit of a compile warm-up (the first compiled training step or prediction batch).

Input: a limit in seconds. Output: a context manager that raises WarmupOverLimit when the block
runs past it, so training and prediction drop the compiled code and carry on eagerly, exactly as
after a compiler error. In the main thread a SIGALRM timer interrupts the block itself (a compile
that hangs costs the limit, not the job's time); elsewhere, where signals cannot be delivered,
the block runs to its end and the limit is checked afterwards.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class WarmupOverLimit(BaseException):
    """The warm-up ran past its limit. A BaseException, so that no `except Exception` inside the
    compiler can swallow it on its way out."""


def over_limit_reason(limit_s: float) -> str:
    return f"warm-up over its {limit_s:g} s limit"


@contextmanager
def warmup_limit(limit_s: float) -> Iterator[None]:
    """Raise WarmupOverLimit if the block takes longer than `limit_s` seconds (0 = no limit)."""
    if limit_s <= 0:
        yield
        return
    t0 = time.monotonic()
    timer = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if timer:
        def on_alarm(signum, frame) -> None:
            raise WarmupOverLimit(over_limit_reason(limit_s))

        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, limit_s)
    try:
        yield
    finally:
        if timer:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    if time.monotonic() - t0 > limit_s:
        raise WarmupOverLimit(over_limit_reason(limit_s))
