"""One runner per notebook: a second runner for the same working folder refuses while the first is
alive (a lock left by a killed one blocks nothing); the runner stops when the notebook kernel that
started it goes, or when its cell is interrupted, and its workers go with it. Real processes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bundle.notebook import fill_template
from submission import lifeline
from submission.run import ALREADY_RUNNING_STATUS, BAD_OPTIONS_STATUS, Runner, main

from test_runner_hygiene import IDS, _input, _options, _pids_running

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
LOADED = 20.0  # what a loaded 2-core machine may add to a bound the code guarantees


def _gone(pids: list[int], within: float) -> bool:
    end = time.time() + within
    while time.time() < end:
        if not any(lifeline.alive(p) for p in pids):
            return True
        time.sleep(0.2)
    return not any(lifeline.alive(p) for p in pids)


def test_a_second_runner_refuses_while_the_first_holds_the_folder(tmp_path: Path, capsys) -> None:
    work = tmp_path / "w"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom submission.lifeline import RunnerLock\n"
                               "lock = RunnerLock(sys.argv[1])\nassert lock.acquire()\nprint('held', flush=True)\ntime.sleep(600)",
                               str(work)], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        argv = ["--input-dir", str(_input(tmp_path)), "--working-dir", str(work), "--views-min", "0"]
        assert main(argv) == ALREADY_RUNNING_STATUS
        out = capsys.readouterr().out
        assert f"another runner (pid {holder.pid})" in out and "runner.lock" in out, out
        assert not (work / "submission.json").exists()  # the live runner's file is left alone
    finally:
        holder.kill()
        holder.wait()
    # the lock file is still there, naming a dead pid: it blocks nothing
    assert (work / "trm-run" / lifeline.LOCK_NAME).read_text().strip() == str(holder.pid)
    assert main(argv) == BAD_OPTIONS_STATUS  # refused options: the fallback is written, under the lock
    assert sorted(json.loads((work / "submission.json").read_text())) == sorted(IDS)
    assert not (work / "trm-run" / lifeline.LOCK_NAME).exists()  # released on the way out


def test_a_folder_that_cannot_hold_a_lock_does_not_stop_the_runner(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert lifeline.RunnerLock(blocker).acquire() is False  # trm-run/ cannot be made under a file


WATCHER = """
import os, signal, sys, time
from submission import lifeline
if sys.argv[2] == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a runner busy past its grace
lifeline.watch_parent(int(sys.argv[1]), grace_s=float(sys.argv[3]))
print("watching", flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("term", ["obey-term", "ignore-term"])
def test_a_runner_whose_parent_is_gone_exits(tmp_path: Path, term: str) -> None:
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    child = subprocess.Popen([sys.executable, "-c", WATCHER, str(parent.pid), term, "1.0"], env=ENV,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "watching"
        time.sleep(1.0)
        assert child.poll() is None  # the parent lives: the runner goes on
        parent.kill()
        parent.wait()
        rc = child.wait(timeout=lifeline.PARENT_POLL_S + 1.0 + LOADED)
        assert rc == (-signal.SIGTERM if term == "obey-term" else lifeline.PARENT_GONE_STATUS)
    finally:
        parent.kill()
        child.kill()


def test_a_runner_whose_direct_parent_is_killed_exits(tmp_path: Path) -> None:
    # the kernel (here: a Python process) started the runner; killing it leaves the runner to init
    code = (f"import subprocess, sys, os, time\nc = subprocess.Popen([sys.executable, '-c', {WATCHER!r}, "
            "str(os.getpid()), 'obey-term', '1.0'], stdout=subprocess.DEVNULL)\nprint(c.pid, flush=True)\n"
            "time.sleep(600)")
    parent = subprocess.Popen([sys.executable, "-c", code], env=ENV, stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    try:
        time.sleep(2.0)
        assert lifeline.alive(child)
        parent.kill()
        parent.wait()
        assert _gone([child], lifeline.PARENT_POLL_S + lifeline.PARENT_GRACE_S + LOADED)
    finally:
        parent.kill()
        if lifeline.alive(child):
            os.kill(child, signal.SIGKILL)


def test_cuda_that_torch_cannot_use_falls_back_to_the_cpu(tmp_path: Path, monkeypatch) -> None:
    """nvidia-smi lists a GPU but torch cannot use CUDA (a CPU build, an old driver): every job sent
    there would crash in turn; the runner says so once and uses the CPU."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("torch can use CUDA here")
    from submission import env as env_mod

    monkeypatch.setattr(env_mod, "_gpus_from_nvidia_smi", lambda: [("NVIDIA L4", 23 << 30)])
    runner = Runner(_options(tmp_path, _input(tmp_path), None, 30.0, device="cuda"), environ={},
                    echo=lambda line: None)
    runner.detect()
    assert runner.device == "cpu" and runner.record["device"] == "cpu"
    assert any("torch cannot use CUDA" in p and "using the CPU" in p for p in runner.problems), runner.problems


def test_device_gpu_is_refused_in_one_line(tmp_path: Path, capsys) -> None:
    argv = ["--input-dir", str(_input(tmp_path)), "--working-dir", str(tmp_path / "w"), "--device", "gpu"]
    assert main(argv) == BAD_OPTIONS_STATUS
    out = capsys.readouterr().out
    assert "--device: invalid choice: 'gpu'" in out and "Traceback" not in out
    assert sorted(json.loads((tmp_path / "w" / "submission.json").read_text())) == sorted(IDS)


# ---- the whole chain: run cell -> runner -> worker ------------------------------------------------------

RUN_CELL_PARENT = """
import os, sys
src = open(sys.argv[1]).read()
print("parent", os.getpid(), flush=True)
exec(compile(src, "<run cell>", "exec"), {"__name__": "__main__"})
"""


@pytest.mark.slow
@pytest.mark.parametrize("how", ["kernel killed", "cell interrupted"])
def test_the_runner_and_its_workers_go_with_the_notebook(tmp_path: Path, micro_checkpoint: Path, how: str) -> None:
    inputs = _input(tmp_path)
    scratch = tmp_path / "scratch"
    cell = tmp_path / "run_cell.py"
    cell.write_text(fill_template("cell_run.py", {"EXTRA_ARGS": ["--checkpoint", str(micro_checkpoint),
                                                                 "--scratch-dir", str(scratch)]}))
    env = {**ENV, "TRM_FAULT": "calibrate:hang:1:0", "TRM_SETUP_OK": "1", "TRM_BUNDLE_DIR": "",
           "TRM_KAGGLE_INPUT": str(inputs), "TRM_KAGGLE_WORKING": str(tmp_path / "w"), "TRM_SCRATCH": str(tmp_path),
           "TRM_CHALLENGES_FILE": str(inputs / "arc-agi_test_challenges.json"), "TRM_TIME_LIMIT_S": "2400",
           "TRM_START_TIME": repr(time.time())}
    parent = subprocess.Popen([sys.executable, "-c", RUN_CELL_PARENT, str(cell)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)

    def tree() -> list[int]:  # the runner and its workers: every process naming the scratch folder
        return [pid for pid in _pids_running(str(scratch)) if pid != parent.pid]

    try:
        end = time.time() + 180
        while len(tree()) < 2 and time.time() < end:  # the runner, and a worker hanging in calibration
            time.sleep(0.3)
        started = tree()
        assert len(started) >= 2, "no runner and worker started"
        if how == "kernel killed":
            parent.kill()
            bound = lifeline.PARENT_POLL_S + lifeline.PARENT_GRACE_S + 0.5 + 5.0  # + the worker's poll, its kill
        else:
            parent.send_signal(signal.SIGINT)
            bound = 10 + 10 + 0.5  # the cell's SIGTERM wait, its SIGKILL wait, the worker's poll
        assert _gone(started, bound + LOADED), [p for p in started if lifeline.alive(p)]
        if how == "cell interrupted":
            out = parent.communicate(timeout=30)[0]
            assert "interrupted: stopping the runner" in out and "KeyboardInterrupt" in out, out[-3000:]
    finally:
        parent.kill()
        for pid in tree():
            os.kill(pid, signal.SIGKILL)
