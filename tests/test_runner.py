"""The fallback-first runner: a valid submission.json exists from the first seconds and at the end,
whatever the workers do (crash, run out of memory, hang, slow down, die) and wherever the deadline
falls; retries, the commit-run smoke mode, the command line that never raises.

Most runs use the in-process launcher (workers as threads, a micro model, seconds per run); the
real-process path is exercised by tests/test_dry_run.py (torchrun with two gloo processes) and by
the slow trials at the end of this file."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from submission.faults import Fault, parse_faults
from submission.launch import InProcessLauncher
from submission.run import Runner, RunnerOptions, dedupe, fallback_submission, main
from trm_core.submission_file import validate

REPO = Path(__file__).resolve().parent.parent
PLACEHOLDER = REPO / "submission" / "placeholder"
CHALLENGES = json.loads((PLACEHOLDER / "arc-agi_test_challenges.json").read_text())


@pytest.fixture(scope="module")
def small_input(tmp_path_factory) -> Path:
    """Four placeholder tasks (six test inputs) in a competition folder."""
    folder = tmp_path_factory.mktemp("input") / "competitions" / "arc"
    folder.mkdir(parents=True)
    ids = ["0d3d703e", "25ff71a9", "1e0a9b12", "3b4c2228"]
    (folder / "arc-agi_test_challenges.json").write_text(json.dumps({t: CHALLENGES[t] for t in ids}))
    return folder


pytestmark = pytest.mark.usefixtures("one_thread")


def _options(tmp: Path, inputs: Path, ckpt: Path | None, budget: float, **kw) -> RunnerOptions:
    now = time.time()
    base = dict(input_dir=inputs, working_dir=tmp / "working", checkpoint=ckpt, scratch_dir=tmp / "scratch",
                start_time=now, deadline=now + budget, views_min=2, views_target=4, views_max=8, train_batch=8,
                predict_batch=16, reserve_min_s=0.3, provisional_every_s=0.5, save_every_s=0.3, max_steps=40)
    base.update(kw)
    return RunnerOptions(**base)


def _run(opts: RunnerOptions, environ: dict | None = None) -> tuple[dict, dict, float]:
    # the runner reads its environment from `environ` only; a test's TRM_FAULT is passed on explicitly
    environ = dict(environ or {})
    if "TRM_FAULT" in os.environ:
        environ.setdefault("TRM_FAULT", os.environ["TRM_FAULT"])
    Runner(opts, launcher=InProcessLauncher(echo=lambda line: None), environ=environ,
           echo=lambda line: None).run()
    returned = time.time()
    sub = json.loads((opts.working_dir / "submission.json").read_text())
    record = json.loads((opts.working_dir / "trm-run" / "run.json").read_text())
    return sub, record, returned


def _challenges(folder: Path) -> dict:
    return json.loads((folder / "arc-agi_test_challenges.json").read_text())


# ---- the fallback ----------------------------------------------------------------------------------


def test_fallback_covers_every_task_even_malformed_ones() -> None:
    raw = {
        "ok": {"train": [], "test": [{"input": [[1, 2], [3, 4]]}, {"input": [[5]]}]},
        "big": {"test": [{"input": [[1] * 40] * 35}]},
        "bad_grid": {"test": [{"input": [[1, 2], [3]]}]},
        "no_test": {"train": []},
        "test_not_list": {"test": "x"},
        "no_input": {"test": [{"output": [[1]]}]},
        "not_a_task": 7,
    }
    sub, broken = fallback_submission(raw)
    assert list(sub) == list(raw)
    assert sub["ok"] == [{"attempt_1": [[1, 2], [3, 4]], "attempt_2": [[1, 2], [3, 4]]},
                         {"attempt_1": [[5]], "attempt_2": [[5]]}]
    assert np.array(sub["big"][0]["attempt_1"]).shape == (30, 30)  # cut to the top-left 30x30
    assert sub["bad_grid"][0]["attempt_1"] == [[0]]
    assert set(broken) == {"no_test", "test_not_list", "no_input", "not_a_task"}
    clean = {t: v for t, v in raw.items() if t not in broken}
    assert validate({t: sub[t] for t in clean}, clean) == []
    assert fallback_submission([1, 2]) == ({}, [])


def test_no_checkpoint_still_leaves_a_valid_file_with_every_task(tmp_path: Path, small_input: Path) -> None:
    raw = _challenges(small_input)
    raw["broken"] = {"test": "?"}
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "arc-agi_test_challenges.json").write_text(json.dumps(raw))
    sub, record, returned = _run(_options(tmp_path, inputs, tmp_path / "missing", 20.0))
    assert set(sub) == set(raw) and sub["broken"] == [{"attempt_1": [[0]], "attempt_2": [[0]]}]
    assert validate({t: sub[t] for t in raw if t != "broken"}, {t: raw[t] for t in raw if t != "broken"}) == []
    assert any("no kit checkpoint" in p for p in record["problems"])
    assert record["phases"][0]["name"] == "fallback" and record["phases"][0]["status"] == "ok"
    assert returned - record["start_time"] < 15  # gave up at once, did not wait for the deadline


# ---- a normal run -----------------------------------------------------------------------------------


def test_in_process_run_improves_on_the_fallback_and_records_everything(tmp_path: Path, small_input: Path,
                                                                        micro_checkpoint: Path) -> None:
    opts = _options(tmp_path, small_input, micro_checkpoint, 30.0, baseline=True)
    sub, record, returned = _run(opts)
    assert validate(sub, _challenges(small_input)) == []
    assert returned <= opts.deadline and record["finished_before_deadline"]
    phases = {p["name"]: p for p in record["phases"]}
    assert [p["name"] for p in record["phases"]][:4] == ["fallback", "detect", "load", "calibrate"]
    for name in ("calibrate", "train", "adapted", "vote_write", "baseline"):
        assert phases[name]["status"].startswith("ok"), (name, phases[name])
    for name in ("train", "adapted", "baseline", "vote_write"):
        assert phases[name]["planned_s"] is not None and phases[name]["actual_s"] >= 0
    assert record["plan"]["steps"] > 0 and record["plan"]["views"] >= 2
    assert record["train"]["steps_done"] >= 1 and record["train"]["checkpoint"]
    assert record["predict"]["tag"] == "adapted" and record["predict"]["from_model"] == 6
    assert record["baseline"]["files"] and record["writes"] >= 2
    assert record["planned_total_s"] > 0 and record["actual_total_s"] > 0
    for key in ("environment", "versions", "seeds", "calibration", "tasks", "run_mode", "device"):
        assert key in record, key
    assert record["environment"]["kind"] == "local" and record["run_mode"] == "full"
    assert (opts.working_dir / "trm-run" / "plan.json").is_file()
    # the training stayed within the plan's training deadline (plus the save)
    train = phases["train"]
    assert train["start"] + train["actual_s"] <= record["plan"]["train_deadline"] - record["start_time"] + 5
    times = record["deadlines"]  # the run's one clock, as planned: the plan's stops, inside the run
    assert times["train_stop"] == record["plan"]["train_deadline"] <= times["predict_stop"] <= times["run_deadline"]
    assert times["last_stop"] < times["kill_limit"] <= times["run_deadline"] == times["deadline"] == opts.deadline


def test_commit_run_is_a_smoke_run_with_a_complete_file(tmp_path: Path, micro_checkpoint: Path) -> None:
    opts = _options(tmp_path, PLACEHOLDER, micro_checkpoint, 30.0, smoke_tasks=2, smoke_steps=5, smoke_views=2)
    sub, record, returned = _run(opts, environ={"KAGGLE_KERNEL_RUN_TYPE": "Batch"})
    assert record["environment"]["kind"] == "commit" and record["run_mode"] == "smoke"
    assert record["tasks"]["used"] == 2 and record["plan"]["views"] == 2 and record["plan"]["steps"] <= 5
    assert validate(sub, CHALLENGES) == []  # every task of the file, not only the smoke subset
    answered = record["predict"]["from_model"]
    assert 0 < answered < sum(len(t["test"]) for t in CHALLENGES.values())


@pytest.mark.parametrize("kind", ["oom", "crash"])
def test_failed_training_is_retried(kind: str, tmp_path: Path, small_input: Path, micro_checkpoint: Path,
                                    monkeypatch) -> None:
    monkeypatch.setenv("TRM_FAULT", f"train:{kind}:0.05:7:1")  # first attempt only, at step 25 (seeded)
    opts = _options(tmp_path, small_input, micro_checkpoint, 30.0)
    sub, record, _ = _run(opts)
    attempts = next(p for p in record["phases"] if p["name"] == "train")["attempts"]
    assert attempts[0]["error"] == kind and attempts[1]["ok"]
    # the same global batch, resumed from the last checkpoint it saved; out of memory: in half-size micro-batches
    assert attempts[1]["train_batch"] == attempts[0]["train_batch"] and attempts[1]["resume_at"] > 0
    if kind == "oom":
        assert attempts[0]["micro_batch"] == 0 and attempts[1]["micro_batch"] == attempts[0]["train_batch"] // 2
    else:
        assert attempts[1]["micro_batch"] == attempts[0]["micro_batch"] == 0
    assert validate(sub, _challenges(small_input)) == [] and record["predict"]["tag"] == "adapted"


def test_a_crashed_prediction_shard_is_retried(tmp_path: Path, small_input: Path, micro_checkpoint: Path,
                                               monkeypatch) -> None:
    monkeypatch.setenv("TRM_FAULT", "predict:crash:1:2:1")
    sub, record, _ = _run(_options(tmp_path, small_input, micro_checkpoint, 30.0))
    attempts = next(p for p in record["phases"] if p["name"] == "adapted")["attempts"]
    assert attempts[0]["error"] == "crash" and attempts[-1]["ok"]
    assert record["predict"]["from_model"] == 6 and validate(sub, _challenges(small_input)) == []


# ---- fault injection: at least 20 seeded trials --------------------------------------------------------


def _trial(seed: int) -> tuple[str | None, float, float]:
    rng = random.Random(seed)
    kind = rng.choice(["crash", "oom", "hang", "slow", "exit", None])
    phase = rng.choice(["calibrate", "train", "predict"])
    prob = rng.choice([1.0, 0.3, 0.05])
    spec = None if kind is None else f"{phase}:{kind}:{prob}:{seed}" + (":0.3" if kind == "slow" else "")
    budget = rng.uniform(2.5, 6.0)
    max_steps = rng.choice([10, 60, 10_000])  # 10_000: the deadline falls in the middle of training
    return spec, budget, max_steps


@pytest.mark.parametrize("seed", range(20))
def test_fault_trials_always_leave_a_valid_file_before_the_deadline(seed: int, tmp_path: Path, small_input: Path,
                                                                    micro_checkpoint: Path, monkeypatch) -> None:
    spec, budget, max_steps = _trial(seed)
    if spec:
        monkeypatch.setenv("TRM_FAULT", spec)
    else:
        monkeypatch.delenv("TRM_FAULT", raising=False)
    opts = _options(tmp_path, small_input, micro_checkpoint, budget, max_steps=max_steps)
    sub, record, returned = _run(opts)
    assert validate(sub, _challenges(small_input)) == [], (spec, budget)
    assert returned <= opts.deadline, (spec, budget, returned - opts.deadline)
    assert record["finished_before_deadline"]


def test_deadline_reached_mid_prediction_keeps_what_was_predicted(tmp_path: Path, small_input: Path,
                                                                  micro_checkpoint: Path, monkeypatch) -> None:
    # calibration sees fast batches; then every prediction batch takes 0.5 s longer (24 batches), so the deadline
    # arrives while the views are still being predicted
    monkeypatch.setenv("TRM_FAULT", "predict:slow:1:0:0.5")
    opts = _options(tmp_path, small_input, micro_checkpoint, 8.0, max_steps=10, predict_batch=2, save_every_s=0.2)
    sub, record, returned = _run(opts)
    assert returned <= opts.deadline and record["finished_before_deadline"]
    assert validate(sub, _challenges(small_input)) == []
    predicted = next(p for p in record["phases"] if p["name"] == "adapted")
    assert predicted["actual_s"] > predicted["planned_s"]  # it ran into the deadline
    assert record["predict"]["records"] < record["plan"]["views"] * 6  # cut short ...
    assert record["predict"]["from_model"] >= 1  # ... yet its first views answer test inputs


def test_fault_specs_parse_and_reject_nonsense() -> None:
    assert parse_faults("train:oom:0.5:3,predict:slow:1:0:0.2") == [Fault("train", "oom", 0.5, 3),
                                                                    Fault("predict", "slow", 1.0, 0, 0.2)]
    for bad in ("train:oom:2:0", "nowhere:oom:1:0", "train:melt:1:0", "train:oom"):
        with pytest.raises(ValueError):
            parse_faults(bad)


# ---- pieces ------------------------------------------------------------------------------------------


def test_dedupe_keeps_the_first_copy_of_each_view() -> None:
    from trm_core.predictions import Predictions

    p = Predictions()
    g = np.array([[1, 2]], np.uint8)
    p.append("a", 0, 0, g, 0.5)
    p.append("a", 0, 1, g, 0.1)
    p.append("a", 0, 0, g + 1, 0.9)  # a retried shard predicting view 0 again
    p.append("b", 0, 0, g, 0.2)
    d = dedupe(p)
    assert len(d) == 3 and d.record(0)[3].tolist() == [[1, 2]] and d.record(0)[4] == 0.5
    assert dedupe(d) is d


def test_prediction_shards_without_a_process_group_are_disjoint_and_complete() -> None:
    from trm_core.variants import Variants
    from trm_core.model import TRM, TRMConfig
    from trm_core.config import PredictConfig
    from trm_core.predict import predict
    from trm_core.tasks import load_tasks

    tasks = load_tasks(PLACEHOLDER / "arc-agi_test_challenges.json", strict=False, max_side=12)
    variants = Variants(tasks, 3, seed=0)
    cfg = TRMConfig.from_name("tiny", hidden_size=16, num_heads=2, H_cycles=1, L_cycles=1, halt_max_steps=1,
                              puzzle_emb_ndim=16, num_puzzle_identifiers=variants.num_identifiers)
    model = TRM(cfg, generator=torch.Generator().manual_seed(0))
    pc = PredictConfig(num_views=3, batch_size=8)

    def keys(p):
        return {(p.task_ids[t], int(i), int(v)) for t, i, v in zip(p.task, p.test_index, p.variant)}

    whole = keys(predict(model, variants, pc))
    a, b = keys(predict(model, variants, pc, shard=(0, 2))), keys(predict(model, variants, pc, shard=(1, 2)))
    assert a and b and not a & b and a | b == whole


def test_main_never_raises(tmp_path: Path, capsys) -> None:
    # refused options end in one line and status 2; with no folder to use, nothing is written
    assert main(["--no-such-flag"]) == 2
    assert "bad options: unrecognized arguments: --no-such-flag" in capsys.readouterr().out
    assert main(["--input-dir", str(tmp_path / "nothing"), "--working-dir", str(tmp_path / "w"),
                 "--deadline", str(time.time() + 5)]) == 0
    assert "no test challenges file" in capsys.readouterr().out
    assert not (tmp_path / "w" / "submission.json").exists()


# ---- real processes (slow) ----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["train:exit:0.3:1", "predict:hang:1:2", "calibrate:crash:1:3", "train:slow:0.2:4:0.5"])
def test_real_process_faults_leave_a_valid_file_in_time(spec: str, tmp_path: Path, small_input: Path,
                                                        micro_checkpoint: Path) -> None:
    now = time.time()
    deadline = now + 45
    cmd = [sys.executable, "-m", "submission.run", "--start-time", str(now), "--deadline", str(deadline),
           "--input-dir", str(small_input), "--working-dir", str(tmp_path / "w"), "--checkpoint", str(micro_checkpoint),
           "--scratch-dir", str(tmp_path / "s"), "--views-min", "2", "--views-target", "4", "--views-max", "8",
           "--train-batch", "8", "--predict-batch", "16", "--reserve-min", "1", "--max-steps", "200"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={**os.environ, "TRM_FAULT": spec})
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert time.time() <= deadline + 1
    sub = json.loads((tmp_path / "w" / "submission.json").read_text())
    assert validate(sub, _challenges(small_input)) == []
    record = json.loads((tmp_path / "w" / "trm-run" / "run.json").read_text())
    assert record["finished_before_deadline"]
    if ":slow:" in spec:  # slow steps are not a failure: the watchdog re-plans around them
        assert record["train"]["replans"]
    else:  # the fault was seen and logged
        assert record["problems"]
