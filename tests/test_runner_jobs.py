"""The runner's job files (submission/jobs.py), its one retry policy (submission/retry.py) and its
options (submission/options.py, planning.py): typed jobs survive the trip through JSON and name
what is wrong; every kind of failure maps to the attempt the runner makes next; the command line
is the options' fields, and unset rates are left to TrainConfig."""

from pathlib import Path

import pytest

from submission.jobs import CalibrateJob, PredictJob, TrainJob, job_from_json, read_job
from submission.retry import RetryPolicy, Try

COMMON = dict(phase="train", challenges="c.json", task_ids=["a", "b"], canvas=12, checkpoint="ckpt",
              device="cpu", seed=3, attempt=1, fault="")


def test_each_kind_survives_its_job_file(tmp_path: Path) -> None:
    jobs = [CalibrateJob(name="cal", job_dir=str(tmp_path / "c"), train_batch=4, predict_batch=8, views=2,
                         **{**COMMON, "phase": "calibrate"}),
            TrainJob(name="tr", job_dir=str(tmp_path / "t"), plan={"steps": 5}, train={"steps": 5}, data={},
                     out_dir="out", pg_timeout_s=60.0, heartbeat="hb", **COMMON),
            PredictJob(name="pr", job_dir=str(tmp_path / "p"), shards=[[0, 2], [1, 2]], views=4, predict_batch=16,
                       deadline=1e9, prefix="pre", **{**COMMON, "phase": "baseline"})]
    for job in jobs:
        path = job.write()
        assert path == Path(job.job_dir) / "job.json"
        back = read_job(path)
        assert type(back) is type(job) and back == job and back.to_json()["kind"] == job.kind


def test_a_malformed_job_is_named_not_run(tmp_path: Path) -> None:
    good = CalibrateJob(name="cal", job_dir=str(tmp_path), train_batch=4, predict_batch=8, views=2,
                        **{**COMMON, "phase": "calibrate"}).to_json()
    with pytest.raises(ValueError, match="kind is one of"):
        job_from_json({**good, "kind": "evaluate"})
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['batch'\]"):
        job_from_json({**good, "batch": 3})
    with pytest.raises(ValueError, match="views"):
        job_from_json({k: v for k, v in good.items() if k != "views"})
    with pytest.raises(ValueError, match="phase must be one of"):
        job_from_json({**good, "phase": "warmup"})
    with pytest.raises(ValueError, match="shards"):
        PredictJob(name="p", job_dir=".", shards=[[2, 2]], views=1, predict_batch=1, deadline=0.0, prefix="x",
                   **{**COMMON, "phase": "predict"})
    (tmp_path / "job.json").write_text("{not json")
    with pytest.raises(ValueError, match="job.json"):
        read_job(tmp_path / "job.json")


POLICY = RetryPolicy(max_attempts=3)


def test_training_out_of_memory_keeps_the_global_batch_until_single_rows() -> None:
    t = Try("train", world=2, train_batch=64, micro_batch=0)
    t = POLICY.next("oom", "train", t)
    assert (t.index, t.world, t.train_batch, t.micro_batch) == (1, 2, 64, 16)  # 32 rows per process, halved
    assert "global batch 64 kept" in t.why
    one_row = Try("train", index=1, world=2, train_batch=64, micro_batch=1)
    t = POLICY.next("oom", "train", one_row)
    assert (t.train_batch, t.micro_batch) == (32, 0)  # a fresh run with half the batch
    assert POLICY.next("oom", "train", Try("train", world=4, train_batch=4, micro_batch=1)) is None


def test_a_crash_retries_and_a_second_one_takes_fewer_processes() -> None:
    t = POLICY.next("crash", None, Try("train", world=4, train_batch=64, micro_batch=8))
    assert (t.index, t.world, t.train_batch) == (1, 4, 64)
    t = POLICY.next("stalled", "train", t)  # a hang killed at its heartbeat counts as a crash
    assert (t.index, t.world, t.train_batch, t.micro_batch) == (2, 2, 64, 8)
    assert POLICY.next("crash", None, t) is None  # max_attempts reached


@pytest.mark.parametrize("error", ["timeout", "checkpoint", "tasks"])
def test_what_a_retry_cannot_fix_stops(error: str) -> None:
    for job in ("calibrate", "train", "predict"):
        assert POLICY.next(error, None, Try(job, world=1, train_batch=8, predict_batch=8, shards=((0, 1),))) is None
    assert POLICY.next(None, None, Try("train")) is None  # nothing to retry after a success


def test_calibration_and_prediction_shrink_what_ran_out_of_memory() -> None:
    cal = Try("calibrate", train_batch=8, predict_batch=16)
    assert (POLICY.next("oom", "predict", cal).train_batch, POLICY.next("oom", "predict", cal).predict_batch) == (8, 8)
    assert (POLICY.next("oom", "train", cal).train_batch, POLICY.next("oom", "train", cal).predict_batch) == (4, 16)
    assert (POLICY.next("oom", "load", cal).train_batch, POLICY.next("oom", "load", cal).predict_batch) == (4, 8)
    assert POLICY.next("oom", "load", Try("calibrate", train_batch=1, predict_batch=4)) is None
    shard = Try("predict", predict_batch=16, shards=((1, 2),))
    assert POLICY.next("oom", "predict", shard).shards == ((2, 4), (3, 4))
    odd = Try("predict", predict_batch=6, shards=((1, 4),))  # 6 rows do not split over 8 shards
    assert POLICY.next("oom", "predict", odd).shards == ((1, 4),)


def test_the_command_line_is_built_from_the_options() -> None:
    from dataclasses import MISSING, fields

    from submission.options import OptionsError, RunnerOptions, options_from_args, parser
    from submission.scheduler import Budget

    dests = {a.dest for a in parser()._actions if a.dest != "help"}
    assert dests == {f.name for f in fields(RunnerOptions)}  # one flag per field, none re-typed
    opts = options_from_args(["--time-limit", "600", "--margin", "60", "--bundle-dir", "", "--baseline"])
    assert (opts.time_limit_s, opts.margin_s, opts.bundle_dir, opts.baseline) == (600.0, 60.0, None, True)
    assert opts.input_dir == Path("/kaggle/input") and opts.working_dir == Path("/kaggle/working")
    for f in fields(RunnerOptions):
        if f.default is not MISSING:
            assert getattr(opts, f.name) == f.default or f.name in ("time_limit_s", "margin_s", "baseline")
    assert (opts.views_min, opts.views_target, opts.views_max, opts.max_epochs) == \
        (Budget.views_min, Budget.views_target, Budget.views_max, Budget.max_epochs)
    with pytest.raises(OptionsError, match="--run-mode"):  # one line, not argparse's usage and exit
        options_from_args(["--run-mode", "fast"])


def test_unset_learning_rates_are_the_post_training_recipes(tmp_path: Path) -> None:
    from submission.options import RunnerOptions
    from submission.planning import Planner
    from submission.scheduler import Budget, Calibration, Workload, plan as make_plan
    from trm_core.config import POST_EMB_LR, POST_LR, Recipe
    from trm_core.config import TrainConfig

    cal = Calibration(device="cpu", train_batch=8, predict_batch=16, train_step_s=0.05, predict_batch_s=0.1,
                      launch_s=1.0, train_warmup_s=0.5, predict_warmup_s=0.5, save_s=0.2)
    plan = make_plan(Budget(views_min=2, views_target=4, views_max=8, max_steps=40, train_batch=8, predict_batch=16),
                     Workload(tasks=2, test_inputs=2, train_pairs=6), cal, 0.0, 100.0)
    assert plan.steps > 0
    planner = Planner(RunnerOptions(input_dir=tmp_path, working_dir=tmp_path), "full", "cpu", 1, 1.0,
                      lambda: 0.0, 100.0)
    cfg = planner.train_config(plan)
    assert isinstance(cfg, TrainConfig)
    assert (cfg.lr, cfg.puzzle_emb_lr, cfg.steps, cfg.global_batch_size) == \
        (POST_LR, POST_EMB_LR, plan.steps_ceiling, 8)
    planner.read_recipe(Recipe("original", True, 1, "train record", lr=1e-3, puzzle_emb_lr=0.1))
    again = planner.train_config(plan)
    assert (again.lr, again.puzzle_emb_lr) == (1e-3, 0.1)
    set_ = Planner(RunnerOptions(input_dir=tmp_path, working_dir=tmp_path, lr=3e-4), "full", "cpu", 1, 1.0,
                   lambda: 0.0, 100.0).train_config(plan)
    assert set_.lr == 3e-4


def test_help_shows_every_default_and_what_none_falls_back_to() -> None:
    from dataclasses import fields

    from submission import clock
    from submission.options import RunnerOptions, help_text, parser
    from trm_core.config import POST_EMB_LR, POST_LR

    shown = {f.name: help_text(f) for f in fields(RunnerOptions)}
    for f in fields(RunnerOptions):  # a None default says what it falls back to, any other is shown
        assert "default:" in shown[f.name] or f.type == "bool" or f.name == "max_steps", f.name
    assert f"else {POST_LR:g})" in shown["lr"] and f"else {POST_EMB_LR:g})" in shown["puzzle_emb_lr"]
    assert f"(default: {clock.TIME_LIMIT_S})" in shown["time_limit_s"]
    assert f"(default: {clock.RUNNER_MARGIN_S})" in shown["margin_s"]
    page = parser().format_help()  # what `python -m submission.run --help` prints
    assert f"{POST_LR:g})" in page and f"{POST_EMB_LR:g})" in page and f"{clock.TIME_LIMIT_S})" in page


def test_a_training_job_carries_a_typed_config_as_a_plain_object(tmp_path: Path) -> None:
    import json

    from trm_core.config import TrainConfig

    cfg = TrainConfig(steps=7, mode="full", lr=3e-4)
    job = TrainJob(name="tr", job_dir=str(tmp_path), plan={"steps": 7}, train=cfg, data={}, out_dir="out",
                   **COMMON)
    on_disk = json.loads(job.write().read_text())["train"]
    assert isinstance(on_disk, dict) and on_disk["lr"] == 3e-4 and on_disk["steps"] == 7
    back = read_job(tmp_path / "job.json")
    assert isinstance(back.train, TrainConfig) and back.train == cfg
    on_disk["learning_rate"] = 1e-3  # a misspelt setting is named, never trained with the default
    (tmp_path / "job.json").write_text(json.dumps({**job.to_json(), "train": on_disk}))
    with pytest.raises(ValueError, match=r"job.json.*train.*unknown field.*learning_rate"):
        read_job(tmp_path / "job.json")
