"""Starting and stopping worker jobs: real processes (one, or torchrun over G), or threads for tests.

Input: a job file (see submission.worker), how many processes, whether they form a torchrun group,
and which GPU a lone process may see. Output: a `Handle` to poll and kill. A subprocess runs in its
own session, so `kill()` ends its whole process group (torchrun and every rank); its output lines are
passed to `echo` prefixed with the job name.

The in-process launcher runs submission.worker.run_job in a thread: killing it sets a cancel event
that the job checks at every step and batch. Tests use it for many cheap fault-injection trials.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol


class Handle(Protocol):
    name: str

    def poll(self) -> int | None: ...

    def kill(self, quiet: bool = False) -> None: ...


def _package_root() -> str:
    # the folder holding the `submission` package, so `-m submission.worker` resolves from any cwd
    return str(Path(__file__).resolve().parent.parent)


class _ProcessHandle:
    def __init__(self, name: str, proc: subprocess.Popen, echo: Callable[[str], None]) -> None:
        self.name, self.proc = name, proc
        self.quiet = False
        self.reader = threading.Thread(target=self._read, args=(echo,), daemon=True)
        self.reader.start()

    def _read(self, echo: Callable[[str], None]) -> None:
        assert self.proc.stdout is not None
        for line in iter(self.proc.stdout.readline, ""):
            if not self.quiet:
                echo(f"[{self.name}] {line.rstrip()}")

    def poll(self) -> int | None:
        return self.proc.poll()

    def kill(self, quiet: bool = False) -> None:
        """SIGTERM the process group, SIGKILL what is left after 5 s. quiet: drop its last output
        (a job that is done only lingers; its launcher's complaints about the signal are noise)."""
        self.quiet = quiet
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                break
            try:
                self.proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        self.reader.join(timeout=2)


def gpu_env(env: dict[str, str]) -> dict[str, str]:
    """A GPU worker's environment: expandable allocator segments (a planned peak does not fail on
    fragmentation) and NCCL settings that turn a hung collective into an error. Set before the
    worker starts, since both are read when CUDA and NCCL initialise."""
    from trm_core.distributed import hang_settings
    from trm_core.memory import set_alloc_conf

    set_alloc_conf(env)
    hang_settings(env)
    return env


class SubprocessLauncher:
    """Workers as child processes of this interpreter."""

    def __init__(self, python: str = sys.executable, echo: Callable[[str], None] = print,
                 env: dict[str, str] | None = None) -> None:
        self.python, self.echo, self.env = python, echo, env

    def command(self, job_path: Path, nprocs: int, distributed: bool) -> list[str]:
        worker = ["-m", "submission.worker", "--job", str(job_path)]
        if distributed and nprocs > 1:
            return [self.python, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nprocs),
                    *worker]
        return [self.python, *worker]

    def start(self, job_path: Path, *, name: str, nprocs: int = 1, distributed: bool = False,
              gpus: str | None = None, cpu: bool = False) -> Handle:
        env = dict(os.environ if self.env is None else self.env)
        env["PYTHONUNBUFFERED"] = "1"
        env["TRM_RUNNER_PID"] = str(os.getpid())  # workers (torchrun's too) exit when this process dies
        if cpu:
            # OpenMP threads that spin while waiting collapse throughput (measured 20x) when the
            # cores are shared with another process; passive waiting costs little when they are not
            env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_package_root(), env.get("PYTHONPATH", "")) if p)
        if gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpus
            gpu_env(env)
        proc = subprocess.Popen(self.command(job_path, nprocs, distributed), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1, env=env, start_new_session=True)
        return _ProcessHandle(name, proc, self.echo)


class _ThreadHandle:
    def __init__(self, name: str) -> None:
        self.name = name
        self.cancel = threading.Event()
        self.rc: int | None = None
        self.killed = False
        self.thread: threading.Thread | None = None

    def poll(self) -> int | None:
        if self.killed:
            return -signal.SIGKILL
        return self.rc

    def kill(self, quiet: bool = False) -> None:
        self.cancel.set()
        self.killed = True
        if self.thread is not None:
            self.thread.join(timeout=5)


class InProcessLauncher:
    """Workers as threads of this process (one process per job; no torchrun group)."""

    def __init__(self, echo: Callable[[str], None] = print) -> None:
        self.echo = echo

    def start(self, job_path: Path, *, name: str, nprocs: int = 1, distributed: bool = False,
              gpus: str | None = None, cpu: bool = False) -> Handle:
        from submission.jobs import read_job
        from submission.worker import run_job

        if nprocs != 1:
            raise ValueError("the in-process launcher runs one process per job; use SubprocessLauncher for torchrun")
        job = read_job(job_path)
        handle = _ThreadHandle(name)

        def target() -> None:
            handle.rc = run_job(job, cancel=handle.cancel, in_process=True,
                                log=lambda line: self.echo(f"[{name}] {line}"))

        handle.thread = threading.Thread(target=target, name=name, daemon=True)
        handle.thread.start()
        return handle


def wait(handles: list[Handle], kill_at: list[float], clock: Callable[[], float] = time.time,
         tick: Callable[[], None] | None = None, tick_every: float = 60.0, poll_s: float = 0.1,
         finished: list[Callable[[], bool]] | None = None, linger_s: float = 2.0,
         stalled: list[Callable[[], bool]] | None = None) -> list[str]:
    """Wait for every handle; returns how each ended: "exited", "finished", "stalled" or "killed".

    A handle still running at its kill time is killed ("killed"); one whose progress stopped
    (stalled[i]() true: no heartbeat for too long) is killed early ("stalled"), so a hang costs
    minutes, not the rest of the run. One whose job says it is done (finished[i]() true: every rank
    wrote its result) but whose process lingers (torchrun teardown, interpreter exit) for more than
    linger_s is stopped and counts as "finished".
    tick() runs every tick_every seconds while waiting (e.g. a provisional submission).
    """
    state = [""] * len(handles)
    done_at: list[float | None] = [None] * len(handles)
    next_tick = clock() + tick_every
    while True:
        now = clock()
        for i, h in enumerate(handles):
            if state[i]:
                continue
            if h.poll() is not None:
                state[i] = "exited"
                continue
            if finished is not None and finished[i]():
                done_at[i] = done_at[i] or now
            if done_at[i] is not None and (now - done_at[i] >= linger_s or now >= kill_at[i]):
                h.kill(quiet=True)
                state[i] = "finished"
            elif now >= kill_at[i]:
                h.kill()
                state[i] = "killed"
            elif done_at[i] is None and stalled is not None and stalled[i]():
                h.kill()
                state[i] = "stalled"
        if all(state):
            return state
        if tick is not None and now >= next_tick:
            tick()
            next_tick = clock() + tick_every
        time.sleep(poll_s)
