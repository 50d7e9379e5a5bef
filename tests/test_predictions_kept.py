"""No model answer is lost: a prediction shard that fails (a crash, out of memory, a cancel, the
runner's SIGTERM) saves every view it predicted before the failure, and the runner's vote uses them.

The crashes are the fault injector's (submission/faults.py), at a chosen prediction batch: the seed
is picked by replaying the injector's own random stream, so the test does not hope for a seed."""

from __future__ import annotations

import json
import random
import signal
import threading
from pathlib import Path

import pytest

from submission.faults import parse_faults
from submission.jobs import PredictJob
from submission.worker import _terminate_raises, run_job
from trm_core.predictions import Predictions
from trm_core.submission_file import validate

from tests.test_runner import _challenges, _options, _run, small_input  # noqa: F401 - fixtures

pytestmark = pytest.mark.usefixtures("one_thread")

TASK = {"train": [{"input": [[1, 2], [3, 4]], "output": [[4, 3], [2, 1]]}], "test": [{"input": [[5, 6], [7, 8]]}]}


def _first_fire(spec: str, phase: str, attempt: int) -> int:
    """Which call of a job's injector (0 = the job's start, k = before prediction batch k) fires
    `spec`'s one fault: its random stream replayed (faults.Injector seeds it so)."""
    fault = parse_faults(spec)[0]
    rng = random.Random(f"{fault.seed}:{phase}:{attempt}:0")
    return next(i for i in range(10_000) if rng.random() < fault.probability)


def _seed_firing_at(calls: range, attempts: int, probability: float = 0.5) -> str:
    """A crash spec whose fault fires at one of `calls` in each of the first `attempts` attempts."""
    for seed in range(100_000):
        spec = f"predict:crash:{probability}:{seed}"
        if all(_first_fire(spec, "predict", a) in calls for a in range(attempts)):
            return spec
    raise AssertionError("no seed found")


def test_a_shard_that_crashes_keeps_the_views_it_predicted(tmp_path: Path, micro_checkpoint: Path) -> None:
    challenges = tmp_path / "c.json"
    challenges.write_text(json.dumps({"t1": TASK, "t2": TASK}))
    spec = _seed_firing_at(range(3, 4), 1)  # before batch 3: batches 1 and 2 are done, 4 views of 2 rows
    job = PredictJob(name="p", phase="predict", job_dir=str(tmp_path / "job"), challenges=str(challenges),
                     task_ids=["t1", "t2"], canvas=12, checkpoint=str(micro_checkpoint), device="cpu", fault=spec,
                     shards=[[0, 1]], views=4, predict_batch=2, deadline=1e12, prefix=str(tmp_path / "pred"),
                     save_every_s=3600.0)  # no periodic save: only the one on the way out
    assert run_job(job, in_process=True, log=lambda line: None) == 1
    result = json.loads((tmp_path / "job" / "result.rank0.json").read_text())
    assert result["ok"] is False and result["error"] == "crash" and "injected crash" in result["message"]
    kept = Predictions.load(tmp_path / "pred-r0of1.npz")
    assert len(kept) == 4 and result["saved_on_failure"]["records"] == 4
    assert set(kept.task_ids) <= {"t1", "t2"}


def test_sigterm_in_a_worker_process_raises_so_the_shard_saves() -> None:
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(BaseException) as caught:
        with _terminate_raises(True):
            signal.raise_signal(signal.SIGTERM)
    assert type(caught.value).__name__ == "Terminated" and not isinstance(caught.value, Exception)
    assert signal.getsignal(signal.SIGTERM) is previous  # put back on the way out

    seen: list[object] = []

    def in_a_thread() -> None:  # the in-process launcher's threads cannot take signals: left alone
        with _terminate_raises(True):
            seen.append(signal.getsignal(signal.SIGTERM))

    t = threading.Thread(target=in_a_thread)
    t.start()
    t.join()
    assert seen == [previous]


def test_every_attempt_crashing_mid_prediction_still_answers_from_the_model(
        tmp_path: Path, small_input: Path, micro_checkpoint: Path, monkeypatch) -> None:  # noqa: F811
    # each of the three attempts crashes after one to three batches, before its last; without the
    # save on the way out every attempt lost its views and the run ended on the fallback
    spec = _seed_firing_at(range(2, 5), 3)
    monkeypatch.setenv("TRM_FAULT", spec)
    opts = _options(tmp_path, small_input, micro_checkpoint, 30.0, predict_batch=2, save_every_s=3600.0,
                    views_min=4, views_target=4, views_max=4)
    sub, record, _ = _run(opts)
    assert validate(sub, _challenges(small_input)) == []
    tag = record["predict"]["tag"]
    attempts = next(p for p in record["phases"] if p["name"] == tag)["attempts"]
    assert len(attempts) == 3 and all(a["error"] == "crash" for a in attempts), attempts
    assert record["predict"]["files"] and record["predict"]["from_model"] >= 1
