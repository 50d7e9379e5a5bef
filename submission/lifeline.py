"""One runner per working folder, and no runner without the notebook that started it.

- `RunnerLock`: the runner holds an exclusive lock on `<working>/trm-run/runner.lock` (which holds
  its pid) for its whole life. A second runner for the same folder, started while the first is
  alive (the run cell run again, a second notebook on the same machine), refuses with a message
  naming the pid that holds it: two runners writing one submission.json and sharing the GPUs would
  both lose. The lock is the kernel's (`fcntl.flock`), so it goes with the process that held it:
  a lock file left by a killed runner names a dead pid and blocks nothing.
- `watch_parent`: the notebook's run cell starts the runner in a session of its own (so that a
  kill reaches its whole process group) and names itself in $TRM_PARENT_PID. When that process
  goes (the kernel restarted, died or was shut down) the runner is told to stop, as by SIGTERM:
  it stops its jobs and writes what it has; if that has not ended it within PARENT_GRACE_S, it
  exits at once. Its workers watch the runner in turn ($TRM_RUNNER_PID, submission/worker.py), so
  the whole tree is gone within PARENT_POLL_S + PARENT_GRACE_S + the workers' own poll.

Standard library only; nothing happens at import time.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO

LOCK_NAME = "runner.lock"
PARENT_POLL_S = 0.5  # how often the runner looks for the process that started it
PARENT_GRACE_S = 15.0  # from the parent gone to the runner's exit, whatever it is doing then
PARENT_GONE_STATUS = 129  # 128 + SIGHUP: the terminal (here: the notebook) went away


def alive(pid: int) -> bool:
    """True while process pid runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except (OSError, IndexError):  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True


class LockHeld(Exception):
    """Another live runner holds the working folder; the message names its pid and the lock file."""


class RunnerLock:
    """The working folder's runner lock, held from `acquire()` to `release()` (or the process's end)."""

    def __init__(self, working_dir: str | os.PathLike) -> None:
        self.path = Path(working_dir) / "trm-run" / LOCK_NAME
        self.file: IO[str] | None = None

    def acquire(self) -> bool:
        """Take the lock: True when held, False when it cannot be taken here (no fcntl, a folder
        that cannot be written: the runner then runs unguarded and reports its own problems).
        LockHeld when a live process holds it."""
        try:
            import fcntl
        except ImportError:  # not a POSIX system
            return False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            f = open(self.path, "a+", encoding="utf-8")
        except OSError:
            return False
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read(64).strip() or "?"
            f.close()
            raise LockHeld(f"another runner (pid {holder}) is running for this working folder (it holds "
                           f"{self.path}): stop it first (interrupt its notebook cell, or kill {holder}); "
                           "a lock left by a runner that has died blocks nothing")
        except OSError:  # a file system without locks
            f.close()
            return False
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self.file = f
        return True

    def release(self) -> None:
        if self.file is not None:
            try:
                self.path.unlink()  # while still held: nobody can take it between the unlink and the close
            except OSError:
                pass
            self.file.close()
            self.file = None


def parent_from_env(environ: Mapping[str, str]) -> int | None:
    """The pid named by $TRM_PARENT_PID (set by the notebook's run cell), or None."""
    value = environ.get("TRM_PARENT_PID", "").strip()
    return int(value) if value.isdigit() and int(value) > 1 else None


def watch_parent(parent_pid: int, on_gone: Callable[[], None] | None = None, poll_s: float = PARENT_POLL_S,
                 grace_s: float = PARENT_GRACE_S) -> threading.Thread:
    """Watch parent_pid from a daemon thread. When it is gone: silence stdout and stderr (nobody
    reads the pipe any more, and a write to it would fail), send this process SIGTERM (the runner's
    orderly stop; `on_gone`, when given, is called instead), and after grace_s exit regardless."""
    direct = os.getppid() == parent_pid

    def gone() -> bool:
        # a direct parent that dies leaves this process to another (init, a subreaper): the pid
        # may be reused by then, the parent pid is not
        return (direct and os.getppid() != parent_pid) or not alive(parent_pid)

    def watch() -> None:
        while not gone():
            time.sleep(poll_s)
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
        except OSError:
            pass
        try:
            if on_gone is not None:
                on_gone()
            else:
                os.kill(os.getpid(), signal.SIGTERM)
        except Exception:  # noqa: BLE001 - the exit below still comes
            pass
        time.sleep(grace_s)
        os._exit(PARENT_GONE_STATUS)

    thread = threading.Thread(target=watch, name="parent-watch", daemon=True)
    thread.start()
    return thread
