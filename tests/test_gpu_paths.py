"""The GPU code paths that a CPU can still exercise: compiled prediction's eager fallback, the
process-group timeout and NCCL settings, and the torch version floor."""

from __future__ import annotations

import configparser
import json
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from test_accumulate import _slow_compile
from trm_core.variants import Variants
from trm_core.model import TRM, TRMConfig
from trm_core.config import PredictConfig
from trm_core.predict import predict
from trm_core.tasks import load_tasks

ROOT = Path(__file__).resolve().parent.parent
CHALLENGES = ROOT / "submission" / "placeholder" / "arc-agi_test_challenges.json"


def _broken_compile(calls: list):
    def broken_compile(fn, *args, **kwargs):
        def compiled(*a, **kw):
            calls.append(1)
            raise RuntimeError("inductor: no C compiler found")
        return compiled
    return broken_compile


@pytest.mark.parametrize("fake_compile, why", [
    (_broken_compile, "fallback: RuntimeError: inductor: no C compiler found"),
    (_slow_compile, "fallback: warm-up over its 0.2 s limit"),
], ids=["compiler-error", "warm-up-over-limit"])
def test_a_compile_failure_in_prediction_falls_back_to_eager(monkeypatch, fake_compile, why: str) -> None:
    tasks = load_tasks(CHALLENGES)
    variants = Variants(tasks, 2, seed=0)
    cfg = TRMConfig.from_name("tiny", canvas=12, num_puzzle_identifiers=variants.num_identifiers)

    def run(compile_: bool, status: dict) -> object:
        model = TRM(cfg, generator=torch.Generator().manual_seed(0))
        return predict(model, variants, PredictConfig(num_views=3, batch_size=8, halt_steps=2, compile=compile_,
                                                      compile_limit_s=0.2), status=status)

    eager_status: dict = {}
    eager = run(False, eager_status)
    calls: list = []
    monkeypatch.setattr(torch, "compile", fake_compile(calls))
    status: dict = {}
    fell_back = run(True, status)
    assert eager_status["compile"] == "off" and status["compile"] == why
    assert calls == [1] and len(fell_back) == len(eager) > 0
    # the eager run's answers, bit for bit: same grids, same logits, same order
    assert np.array_equal(eager.q_halt, fell_back.q_halt) and np.array_equal(eager.data, fell_back.data)
    assert np.array_equal(eager.variant, fell_back.variant)


def test_torch_floor_matches_the_apis_used() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    floor = re.search(r"torch>=([\d.]+)", cfg["options"]["install_requires"]).group(1)
    # torch.OutOfMemoryError (worker, train, predict) and torch.compile's fullgraph-free use need 2.5
    assert tuple(int(x) for x in floor.split(".")[:2]) >= (2, 5)
    assert hasattr(torch, "OutOfMemoryError")


def _stall_runner(tmp_path: Path, budget_s: float):
    from submission.run import Runner, RunnerOptions

    now = time.time()
    opts = RunnerOptions(input_dir=tmp_path, working_dir=tmp_path / "w", checkpoint=tmp_path / "none",
                         scratch_dir=tmp_path / "s", start_time=now, deadline=now + budget_s)
    return Runner(opts, environ={}, echo=lambda line: None)


def test_a_hung_calibration_or_raw_prediction_is_killed_at_its_heartbeat_limit(tmp_path: Path) -> None:
    from submission.launch import InProcessLauncher, wait
    from submission.run import CALIBRATION_UNIT_S

    from submission.jobs import job_from_json

    runner = _stall_runner(tmp_path, 400.0)  # stall_s: 10% of the budget = 40 s
    beat = tmp_path / "heartbeat"
    beat.touch()
    hang = {"kind": "calibrate", "phase": "calibrate", "name": "cal", "job_dir": str(tmp_path), "fault":
            "calibrate:hang:1:0", "heartbeat": str(beat), "checkpoint": "x", "challenges": "x", "task_ids": ["x"],
            "canvas": 12, "device": "cpu", "train_batch": 2, "predict_batch": 2, "views": 1}
    job = job_from_json(hang)
    calibration = runner.dispatch.stall(job, time.time(), CALIBRATION_UNIT_S)
    raw_predict = runner.dispatch.stall(job, time.time(), None)  # no plan, no unit time: it used to have no stall check
    limit = max(runner.dispatch.times.stall_s, 10 * CALIBRATION_UNIT_S)
    assert limit == 40.0
    for stalled in (calibration, raw_predict):
        os.utime(beat, (time.time() - limit + 2,) * 2)
        assert not stalled()
        os.utime(beat, (time.time() - limit - 2,) * 2)
        assert stalled()

    # and wait() kills a job whose heartbeat stopped long before its kill time
    launcher = InProcessLauncher(echo=lambda line: None)
    job_path = tmp_path / "job.json"
    job_path.write_text(json.dumps(hang))
    handle = launcher.start(job_path, name="cal")
    time.sleep(1.0)  # its first beat (at the start point) is in; then it hangs
    t0 = time.time()
    os.utime(beat, (t0 - 1000,) * 2)
    ended = wait([handle], [t0 + 60], stalled=[runner.dispatch.stall(job, t0, CALIBRATION_UNIT_S)], poll_s=0.05)
    assert ended == ["stalled"] and time.time() - t0 < 10


def test_group_timeout_and_nccl_settings() -> None:
    from submission.launch import gpu_env
    from submission.run import _group_timeout
    from trm_core.distributed import group_timeout, hang_settings

    assert _group_timeout(12 * 3600) == 600 and _group_timeout(100) == 60 and _group_timeout(3000) == 300
    assert group_timeout({}).total_seconds() == 600 and group_timeout({"TRM_PG_TIMEOUT_S": "90"}).total_seconds() == 90
    env = hang_settings({"TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC": "30"})
    assert env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1" and env["TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC"] == "30"
    env = gpu_env({})
    assert env["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True" and env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"


def test_roofline_traffic_extrapolates_from_two_small_canvases() -> None:
    from trm_core import perf as roofline
    from trm_core.model import ReasoningModule
    from trm_core.perf import BANDWIDTH, PEAK_BF16

    cfg = TRMConfig.from_name("tiny", canvas=8)
    direct_fwd = roofline._call(ReasoningModule(cfg, cfg.L_layers), cfg, grad=False)[1]
    direct_grad = roofline._call(ReasoningModule(cfg, cfg.L_layers), cfg, grad=True)[1]
    t = roofline.measure(cfg, rows=1)
    calls, grad_calls = cfg.H_cycles * (cfg.L_cycles + 1), cfg.L_cycles + 1
    assert t.predict_bytes == pytest.approx(calls * direct_fwd, rel=0.01)
    assert t.train_bytes == pytest.approx((calls - grad_calls) * direct_fwd + grad_calls * direct_grad, rel=0.01)
    assert roofline.measure(cfg, rows=64).train_bytes < t.train_bytes  # the weights' casts are shared by the rows
    mfu = roofline.roofline_mfu(t.train_intensity, PEAK_BF16["L4"], BANDWIDTH["L4"])
    assert 0 < mfu < 1 and roofline.roofline_mfu(1e6, 1.0, 1.0) == 1.0


def test_roofline_of_an_hrm_counts_both_levels() -> None:
    from trm_core import perf as roofline
    from trm_core.model import ReasoningModule

    cfg = TRMConfig.from_name("hrm-tiny", canvas=8, H_layers=2)
    l_fwd = roofline._call(ReasoningModule(cfg, cfg.L_layers), cfg, grad=False)[1]
    h_fwd = roofline._call(ReasoningModule(cfg, cfg.H_layers), cfg, grad=False)[1]
    t = roofline.measure(cfg, rows=1)
    assert t.predict_bytes == pytest.approx(cfg.H_cycles * (cfg.L_cycles * l_fwd + h_fwd), rel=0.01)
    assert t.train_bytes > 2 * t.predict_bytes  # the Q target's forward and the one-step backward
    learned = roofline.measure(cfg.with_(pos_encodings="learned"), rows=1)
    assert 0 < learned.predict_bytes < t.predict_bytes  # no rotary tables to read


def test_projection_without_a_measurement_uses_the_roofline_and_says_so() -> None:
    from submission.projection import project

    p = project(TRMConfig.from_name("tiny"), "L4", 4)
    assert p.mfu_source.startswith("eager roofline") and p.mfu_train < 0.2
    assert project(TRMConfig.from_name("tiny"), "L4", 4, roofline=False).mfu_source == "assumed"
