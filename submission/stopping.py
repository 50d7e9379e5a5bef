"""Stopping the runner on a signal: the notebook's run cell sends SIGTERM to the runner at its kill
time and SIGKILL 30 s later; in between the runner must stop its jobs, vote what they saved over
the fallback, and write submission.json and a complete run.json.

- `StopSwitch`: set by the signal handler; `clock()` (the runner's clock) raises `Stopped` once
  after that, so the run leaves whatever it is doing at its next look at the time (every wait for
  a job polls the clock ten times a second) and goes straight to its final phase. The handler
  itself never raises: an exception thrown into arbitrary code (the final write, a log line) is
  what this avoids. Once the final phase begins (`finishing`), the clock never raises again.
- `TrackedLauncher`: any launcher, remembering what it started, so `stop_all` ends every job
  still running (each handle's own kill, all of them at once).
- `on_signals(switch)`: installs the handler for SIGTERM (and SIGHUP) while the runner runs, in
  the main thread only, and puts the previous handlers back.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

STOP_SIGNALS = ("SIGTERM", "SIGHUP")


class Stopped(BaseException):
    """A stop signal arrived; raised once by StopSwitch.clock. A BaseException, so no phase's
    `except Exception` takes it for a failure of its own and carries on."""


class StopSwitch:
    def __init__(self, clock: Callable[[], float]) -> None:
        self.time = clock
        self.signal: str | None = None  # the name of the signal that asked the run to stop
        self.at: float | None = None  # when (the clock's time)
        self.raised = False
        self.finishing = False  # the final phase runs: nothing may interrupt it

    def request(self, name: str) -> None:
        """Called by the signal handler: remember, never raise."""
        if self.signal is None:
            self.signal, self.at = name, self.time()

    def clock(self) -> float:
        now = self.time()
        if self.signal is not None and not self.raised and not self.finishing:
            self.raised = True
            raise Stopped(self.signal)
        return now

    @property
    def exit_status(self) -> int:
        """128 + the signal's number once stopped by one (the shell's convention), else 0."""
        return 128 + int(getattr(signal, self.signal)) if self.signal else 0


class TrackedLauncher:
    """A launcher that remembers every handle it started."""

    def __init__(self, launcher: Any) -> None:
        self.launcher = launcher
        self.handles: list[Any] = []

    def start(self, job_path: Path, **kw: Any) -> Any:
        handle = self.launcher.start(job_path, **kw)
        self.handles.append(handle)
        return handle

    def stop_all(self, timeout_s: float = 12.0) -> list[str]:
        """Kill every job still running, all at once (each kill waits for its process); returns their
        names."""
        live = [h for h in self.handles if h.poll() is None]
        threads = [threading.Thread(target=h.kill, name=f"stop-{h.name}", daemon=True) for h in live]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=timeout_s)
        return [h.name for h in live]


@contextlib.contextmanager
def on_signals(switch: StopSwitch) -> Iterator[None]:
    """Route the stop signals to `switch` while the block runs (main thread only: Python delivers
    signals there, and elsewhere signal.signal raises)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for name in STOP_SIGNALS:
        sig = getattr(signal, name, None)
        if sig is not None:
            previous[sig] = signal.signal(sig, lambda signum, frame: switch.request(signal.Signals(signum).name))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
