"""Notebook cell 2 of 3: run the trm-kit runner (`python -m submission.run`) as a subprocess with
the deadline, streaming its output, and stop it if it overruns.

Template copied into the generated .ipynb by bundle/notebook.py. Standard library only; never
raises. A subprocess keeps torch, CUDA and any crash out of the notebook kernel, and can be killed.

Inputs (environment, set by cell 1): TRM_START_TIME, TRM_BUNDLE_DIR, TRM_SETUP_OK; TRM_KAGGLE_INPUT
and TRM_KAGGLE_WORKING override /kaggle/input and /kaggle/working; TRM_TIME_LIMIT_S overrides the
session limit (for dry runs). The runner gets absolute Unix times: `--start-time` (when cell 1
started) and `--deadline` (start + limit - margin, by which it must have written its final
submission), plus `--input-dir` (the test challenges file itself, chosen by `choose_challenges`:
TRM_CHALLENGES_FILE, else the folder of the competition named in the settings, else the only such
file under the input; with none or several the runner is not started), `--working-dir` and
`--bundle-dir`. If the runner is still alive
KILL_GRACE_S after its deadline, its whole process group is killed so that cell 3 still runs
inside the session limit. Interrupting the cell stops the runner the same way (SIGTERM, SIGKILL
INTERRUPT_WAIT_S later) before the interrupt goes on; the runner is given this kernel's pid as
TRM_PARENT_PID and stops by itself when the kernel goes (restarted, shut down), and its workers
follow it. A second runner started for the same working folder while one is alive refuses (exit
status 3). Output: TRM_RUNNER_RC in the environment.
"""

import os
import signal
import subprocess
import sys
import threading
import time

# <settings> (filled in by bundle/notebook.py)
RUNNER_MODULE = "submission.run"
TIME_LIMIT_S = 12 * 3600  # Kaggle's limit for a code-competition notebook run
RUNNER_MARGIN_S = 1800  # container start and input mounting happen before cell 1: keep a margin
KILL_GRACE_S = 900  # how long past its deadline the runner may go before it is killed
CHALLENGES_NAME = "arc-agi_test_challenges.json"
COMPETITION = ""  # the competition's slug, whose folder holds the challenges to answer ("": search)
EXTRA_ARGS = []  # further runner arguments
# </settings>

INTERRUPT_WAIT_S = 10  # an interrupted cell gives the runner this long to write what it has, then kills it
FINAL_CELL_RESERVE_S = 300  # never let the kill time eat the last minutes the final cell needs
SEARCH_DEPTH = 5  # /kaggle/input/datasets/<owner>/<slug>/<folder>/<file>: the deepest layout searched


def log(msg):
    start = float(os.environ.get("TRM_START_TIME", time.time()))
    print(f"[trm run {time.time() - start:7.1f}s] {msg}", flush=True)


def challenge_files(root, skip):
    """Every CHALLENGES_NAME file under root, at most SEARCH_DEPTH folders down, in sorted order;
    the folder `skip` (the bundle) is not searched."""
    root, skip = os.path.normpath(root), os.path.normpath(skip) if skip else ""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if os.path.join(dirpath, d) != skip)
        if dirpath[len(root):].count(os.sep) >= SEARCH_DEPTH:
            dirnames[:] = []
        if CHALLENGES_NAME in filenames:
            found.append(os.path.join(dirpath, CHALLENGES_NAME))
    return found


def choose_challenges(input_root, skip):
    """(the test challenges file or None, how it was chosen, the files seen). TRM_CHALLENGES_FILE
    wins. Else the folder of the competition this bundle was built for decides, in either layout
    (<input>/competitions/<slug>/, <input>/<slug>/): the file at its top, or the one file inside.
    Only when neither folder exists is the whole input searched, and then only a single file is
    taken: last year's competition or a dataset attached beside this one holds a file of the same
    name, and answering it would give Kaggle a submission for other tasks. Several: None."""
    override = os.environ.get("TRM_CHALLENGES_FILE")
    if override:
        return (override if os.path.isfile(override) else None), "TRM_CHALLENGES_FILE", [override]
    found, how = None, "search"
    for folder in ([os.path.join(input_root, "competitions", COMPETITION), os.path.join(input_root, COMPETITION)]
                   if COMPETITION else []):
        if os.path.isdir(folder):
            top = os.path.join(folder, CHALLENGES_NAME)
            found, how = ([top] if os.path.isfile(top) else challenge_files(folder, skip)), "competition"
            break
    if found is None:
        found = challenge_files(input_root, skip)
    return (found[0] if len(found) == 1 else None), how, found


def describe_choice(input_root, path, how, found):
    """Log lines saying which challenges file was chosen, or loudly why none was."""
    if how == "TRM_CHALLENGES_FILE":
        return [f"challenges: {path} (TRM_CHALLENGES_FILE)" if path else
                f"ERROR: TRM_CHALLENGES_FILE={found[0]} is not a file"]
    where = f"competition {COMPETITION}'s folder" if how == "competition" else f"{input_root}"
    if len(found) > 1:
        return ([f"ERROR: {len(found)} {CHALLENGES_NAME} files in {where}, refusing to guess which one "
                 "is the competition's:"] + [f"ERROR:   {f}" for f in found[:20]] +
                ([f"ERROR:   ... and {len(found) - 20} more"] if len(found) > 20 else []) +
                [f"ERROR: attach the competition ({COMPETITION or 'no slug in this notebook'}) or set "
                 "TRM_CHALLENGES_FILE to the file to answer"])
    if not found:
        return [f"ERROR: no {CHALLENGES_NAME} in {where}"]
    if how == "search" and COMPETITION:
        return [f"WARNING: no folder for competition {COMPETITION} under {input_root} (competitions/"
                f"{COMPETITION}/ or {COMPETITION}/): answering the only {CHALLENGES_NAME} found, {path}"]
    return [f"challenges: {path} (by {how})"]


def stream(pipe):
    for line in iter(pipe.readline, ""):
        print(line, end="", flush=True)


def stop(proc, term_wait=30):
    """SIGTERM the runner's process group, then SIGKILL after term_wait seconds."""
    for sig, wait in ((signal.SIGTERM, term_wait), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def time_limit(text):
    """The session limit in seconds: TIME_LIMIT_S, or TRM_TIME_LIMIT_S (a rehearsal's) when set; None,
    logged, when that is not a number of seconds that leaves the runner any time."""
    if text is None:
        return float(TIME_LIMIT_S)
    try:
        limit = float(text)
    except ValueError:
        limit = float("nan")
    if not limit > RUNNER_MARGIN_S or limit == float("inf"):
        log(f"ERROR: TRM_TIME_LIMIT_S={text[:40]!r} is not a number of seconds above the runner's margin "
            f"({RUNNER_MARGIN_S} s), so the runner would have no time: not starting it; the next cell writes "
            "a valid submission")
        return None
    return limit


def main():
    os.environ["TRM_RUNNER_RC"] = ""
    try:
        start = float(os.environ.setdefault("TRM_START_TIME", repr(time.time())))
        if os.environ.get("TRM_SETUP_OK") != "1":
            log("setup did not finish (see cell 1): not starting the runner; the next cell writes a valid submission")
            return
        limit = time_limit(os.environ.get("TRM_TIME_LIMIT_S"))
        if limit is None:
            return
        deadline = start + limit - RUNNER_MARGIN_S
        kill_at = min(deadline + KILL_GRACE_S, start + limit - FINAL_CELL_RESERVE_S)
        input_root = os.environ.get("TRM_KAGGLE_INPUT", "/kaggle/input")
        working = os.environ.get("TRM_KAGGLE_WORKING", "/kaggle/working")
        bundle_dir = os.environ.get("TRM_BUNDLE_DIR", "")
        scratch = os.environ.get("TRM_SCRATCH", "/tmp/trm-kit")
        os.makedirs(working, exist_ok=True)
        os.makedirs(scratch, exist_ok=True)
        challenges, how, found = choose_challenges(input_root, bundle_dir)
        for line in describe_choice(input_root, challenges, how, found):
            log(line)
        if challenges is None:
            log("not starting the runner: it would have no tasks, or the wrong ones; the next cell keeps "
                "the submission's task ids")
            return
        cmd = [sys.executable, "-m", RUNNER_MODULE,
               "--start-time", f"{start:.3f}", "--deadline", f"{deadline:.3f}",
               "--input-dir", challenges,
               "--working-dir", working, "--bundle-dir", bundle_dir] + [str(a) for a in EXTRA_ARGS]
        log(f"deadline in {deadline - time.time():.0f}s, hard stop in {kill_at - time.time():.0f}s")
        log("running: " + " ".join(cmd))
        # the runner stops when this kernel goes (restarted, shut down): it watches TRM_PARENT_PID
        env = dict(os.environ, PYTHONUNBUFFERED="1", TRM_PARENT_PID=str(os.getpid()))
        # cwd = scratch: `-m submission.run` must import the installed package, not a stray folder
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                cwd=scratch, env=env, start_new_session=True)
        try:
            reader = threading.Thread(target=stream, args=(proc.stdout,), daemon=True)
            reader.start()
            while proc.poll() is None:
                if time.time() >= kill_at:
                    log("runner overran its deadline: stopping it")
                    stop(proc)
                    break
                time.sleep(1.0)
            reader.join(timeout=10)
        except BaseException:
            # an interrupted cell (KeyboardInterrupt) must not leave the runner holding the GPUs: it
            # runs in a session of its own, which the interrupt does not reach
            log("interrupted: stopping the runner")
            stop(proc, INTERRUPT_WAIT_S)
            log(f"runner stopped (exit code {proc.returncode})")
            raise
        os.environ["TRM_RUNNER_RC"] = str(proc.returncode)
        log(f"runner exited with code {proc.returncode}")
    except Exception as e:  # a notebook must go on to its last cell
        log(f"ERROR: could not run the runner: {type(e).__name__}: {e}")


if __name__ == "__main__":
    main()
