"""The runner's edges: a BOM'd challenges file, no search above the input folder, a malformed
TRM_FAULT, a tampered checkpoint, the un-adapted model filling in, tasks fitted to the time left,
and workers that die with their runner."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from submission.launch import InProcessLauncher
from submission.run import Runner, RunnerOptions
from submission.scheduler import Budget, Calibration, Workload, plan, tasks_that_fit
from trm_core.submission_file import validate

from test_runner import _options

REPO = Path(__file__).resolve().parent.parent
PLACEHOLDER = REPO / "submission" / "placeholder"
CHALLENGES = json.loads((PLACEHOLDER / "arc-agi_test_challenges.json").read_text())
IDS = ["0d3d703e", "25ff71a9", "1e0a9b12", "3b4c2228"]


def _input(tmp: Path, body: bytes | None = None) -> Path:
    folder = tmp / "input" / "arc"
    folder.mkdir(parents=True)
    if body is None:
        body = json.dumps({t: CHALLENGES[t] for t in IDS}).encode()
    (folder / "arc-agi_test_challenges.json").write_bytes(body)
    return folder


def _run(opts: RunnerOptions, environ: dict | None = None) -> tuple[dict | None, dict]:
    Runner(opts, launcher=InProcessLauncher(echo=lambda line: None), environ=environ or {},
           echo=lambda line: None).run()
    path = opts.working_dir / "submission.json"
    sub = json.loads(path.read_text()) if path.is_file() else None
    return sub, json.loads((opts.working_dir / "trm-run" / "run.json").read_text())


def test_a_bom_challenges_file_still_gets_a_submission(tmp_path: Path) -> None:
    body = b"\xef\xbb\xbf" + json.dumps({t: CHALLENGES[t] for t in IDS}).encode()
    sub, _ = _run(_options(tmp_path, _input(tmp_path, body), tmp_path / "none", 20.0))
    assert sub is not None and validate(sub, {t: CHALLENGES[t] for t in IDS}) == []


def test_the_raw_fallback_needs_neither_numpy_nor_torch(tmp_path: Path) -> None:
    inputs = _input(tmp_path, b"\xef\xbb\xbf" + json.dumps({t: CHALLENGES[t] for t in IDS}).encode())
    code = f"""
import sys
sys.modules["numpy"] = None
sys.modules["torch"] = None
from pathlib import Path
from submission.run import Runner, RunnerOptions
r = Runner(RunnerOptions(input_dir=Path({str(inputs)!r}), working_dir=Path({str(tmp_path / 'w')!r})),
           environ={{}}, echo=lambda line: None)
r.write_fallback()
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)
    sub = json.loads((tmp_path / "w" / "submission.json").read_text())
    assert sorted(sub) == sorted(IDS) and sub["0d3d703e"][0]["attempt_1"] == CHALLENGES["0d3d703e"]["test"][0]["input"]


def test_no_challenges_are_taken_from_above_the_input_folder(tmp_path: Path) -> None:
    _input(tmp_path)  # tmp/input/arc/arc-agi_test_challenges.json
    empty = tmp_path / "input" / "arc" / "empty"
    empty.mkdir()
    sub, record = _run(_options(tmp_path, empty, tmp_path / "none", 10.0))
    assert sub is None and "challenges" not in record.get("inputs", {})
    assert any("no test challenges file under" in p for p in record["problems"])


def test_a_malformed_trm_fault_is_rejected_once_at_the_start(tmp_path: Path) -> None:
    opts = _options(tmp_path, _input(tmp_path), tmp_path / "none", 10.0)
    runner = Runner(opts, launcher=InProcessLauncher(echo=lambda line: None),
                    environ={"TRM_FAULT": "predict:crash"}, echo=lambda line: None)
    runner.check_faults()
    assert runner.fault_spec == "" and any(p.startswith("TRM_FAULT rejected") for p in runner.problems)
    ok = Runner(opts, environ={"TRM_FAULT": "predict:crash:1:0"}, echo=lambda line: None)
    ok.check_faults()
    assert ok.fault_spec == "predict:crash:1:0" and not ok.problems


def test_a_tampered_checkpoint_is_not_used(tmp_path: Path, micro_checkpoint: Path) -> None:
    ckpt = shutil.copytree(micro_checkpoint, tmp_path / "ckpt")
    data = bytearray((ckpt / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF  # one bit of one weight
    (ckpt / "model.safetensors").write_bytes(bytes(data))
    sub, record = _run(_options(tmp_path, _input(tmp_path), ckpt, 20.0))
    assert "sha256" in record["checkpoint_refused"]
    names = [p["name"] for p in record["phases"]]
    assert "calibrate" not in names and "train" not in names  # nothing ran with it
    assert sub["0d3d703e"][0]["attempt_1"] == CHALLENGES["0d3d703e"]["test"][0]["input"]  # the fallback


CAL = Calibration(device="cpu", train_batch=8, predict_batch=16, train_step_s=0.05, predict_batch_s=0.1,
                  launch_s=1.0, train_warmup_s=0.5, predict_warmup_s=0.5, save_s=0.2)


def test_the_unadapted_model_fills_in_when_adapted_prediction_always_fails(tmp_path: Path, micro_checkpoint: Path,
                                                                           monkeypatch) -> None:
    import torch

    torch.set_num_threads(1)

    adapted = shutil.copytree(micro_checkpoint, tmp_path / "adapted")

    def calibrate(self):  # fixed unit times: this test is about what follows, not the measurement
        self.calibration = CAL
        return CAL

    def train(self, cal):  # a post-trained checkpoint, as training leaves one
        self._phase("train", 0.0, self.clock(), "ok")
        return adapted

    monkeypatch.setattr(Runner, "calibrate", calibrate)
    monkeypatch.setattr(Runner, "train", train)
    opts = _options(tmp_path, _input(tmp_path), micro_checkpoint, 60.0)
    sub, record = _run(opts, {"TRM_FAULT": "predict:crash:1:0"})  # every attempt of adapted prediction
    assert validate(sub, {t: CHALLENGES[t] for t in IDS}) == []
    phases = {p["name"]: p for p in record["phases"]}
    assert phases["adapted"]["status"] == "failed" and phases["unadapted"]["status"] == "ok", phases
    assert record["predict"]["from_model"] == 0
    assert record["predict"]["filled_from_unadapted"] == 6  # every test input answered by a model
    # ... and the record says which: no report reads "0 answered by the model" off from_model
    assert record["answers"]["counts"] == {"adapted": 0, "unadapted": 6, "fallback": 0}
    assert all(s == ["unadapted"] * len(CHALLENGES[t]["test"]) for t, s in record["answers"]["by_task"].items())


def test_more_tasks_than_time_predicts_the_tasks_that_fit() -> None:
    budget = Budget(views_min=8, views_target=16, views_max=32, max_steps=100)
    cal = Calibration(device="cpu", train_batch=8, predict_batch=64, train_step_s=0.05, predict_batch_s=0.5,
                      launch_s=5.0, train_warmup_s=1.0, predict_warmup_s=1.0, save_s=0.5)
    sizes = [(1 + i % 3, 3) for i in range(10_000)]
    whole = Workload(tasks=10_000, test_inputs=sum(t for t, _ in sizes), train_pairs=30_000)
    assert plan(budget, whole, cal, 0.0, 100.0).fallback_only  # all of them: nothing fits
    order = sorted(sizes)  # fewest test inputs first
    n = tasks_that_fit(budget, order, cal, 0.0, 100.0)
    assert 0 < n < 10_000
    fit = Workload(tasks=n, test_inputs=sum(t for t, _ in order[:n]), train_pairs=sum(p for _, p in order[:n]))
    assert not plan(budget, fit, cal, 0.0, 100.0).fallback_only
    more = Workload(tasks=n + 1, test_inputs=fit.test_inputs + order[n][0], train_pairs=fit.train_pairs + 3)
    assert plan(budget, more, cal, 0.0, 100.0).fallback_only


def _pids_running(pattern: str) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if pattern in cmd and state != "Z":
                out.append(int(d.name))
    return out


@pytest.mark.slow
def test_workers_die_with_their_runner(tmp_path: Path, micro_checkpoint: Path) -> None:
    inputs = _input(tmp_path)
    scratch = tmp_path / "scratch"
    now = time.time()
    env = {**os.environ, "TRM_FAULT": "calibrate:hang:1:0", "PYTHONPATH": str(REPO)}
    runner = subprocess.Popen([sys.executable, "-m", "submission.run", "--start-time", str(now), "--deadline",
                               str(now + 300), "--input-dir", str(inputs), "--working-dir", str(tmp_path / "w"),
                               "--checkpoint", str(micro_checkpoint), "--scratch-dir", str(scratch)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def workers() -> list[int]:  # the runner's own command line names the scratch folder too
        return [pid for pid in _pids_running(str(scratch)) if pid != runner.pid]

    try:
        end = time.time() + 120
        while not workers() and time.time() < end:
            time.sleep(0.2)
        assert workers(), "no worker started"
        runner.send_signal(signal.SIGKILL)
        runner.wait()
        # a worker polls every 0.5 s once its interpreter runs, but a worker still loading torch holds
        # the GIL for seconds (tens on a loaded 2-core machine); a hung worker without the watch would
        # never go, so a generous bound still tells the two apart
        end = time.time() + 60
        while workers() and time.time() < end:
            time.sleep(0.2)
        left = workers()
        assert left == [], [(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:300]) for pid in left]
    finally:
        runner.kill()
        for pid in workers():
            os.kill(pid, signal.SIGKILL)


def test_a_failure_is_classified_without_importing_torch() -> None:
    code = ("import sys; sys.modules['torch'] = None; sys.modules['trm_core.checkpoint'] = None\n"
            "from submission.worker import classify\n"
            "print(classify(RuntimeError('injected crash')), classify(RuntimeError('CUDA out of memory')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["crash", "oom"], out.stderr


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["train:exit:0.3:1", "predict:hang:1:2", "calibrate:crash:1:3", "train:slow:0.2:4:0.5"])
def test_real_process_faults_hold_on_a_loaded_cpu(spec: str, tmp_path: Path, micro_checkpoint: Path) -> None:
    inputs = _input(tmp_path)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # a concurrent process on the cores
    try:
        now = time.time()
        deadline = now + 45
        cmd = [sys.executable, "-m", "submission.run", "--start-time", str(now), "--deadline", str(deadline),
               "--input-dir", str(inputs), "--working-dir", str(tmp_path / "w"), "--checkpoint",
               str(micro_checkpoint), "--scratch-dir", str(tmp_path / "s"), "--views-min", "2", "--views-target", "4",
               "--views-max", "8", "--train-batch", "8", "--predict-batch", "16", "--reserve-min", "1",
               "--max-steps", "200"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO,
                              env={**os.environ, "TRM_FAULT": spec})
        ended = time.time()
    finally:
        busy.kill()
        busy.wait()
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert ended <= deadline + 1, proc.stdout[-2000:]
    sub = json.loads((tmp_path / "w" / "submission.json").read_text())
    assert validate(sub, {t: CHALLENGES[t] for t in IDS}) == []
    # the contract under load is the one above: a valid file and the runner gone within the 1 s the
    # run cell allows past the deadline; run.json's own strict flag may read False by a fraction of it
    assert "finished_before_deadline" in json.loads((tmp_path / "w" / "trm-run" / "run.json").read_text())
