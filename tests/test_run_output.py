"""What a run leaves to look at afterwards, and what it says while it runs: the files the runner
keeps in trm-run/ (at the end, after a stop signal, within the time left), `trm report` on a
downloaded output folder, `trm dry-run --calibration` from a run's record, the prediction progress
lines and the training log's time rule."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from spawned import leave
import torch
from click.testing import CliRunner

from submission import keep as keep_mod
from submission.cli import report_cmd
from submission.launch import InProcessLauncher
from submission.predicting import Progress, saved_views
from submission.run import STOPPED_KEEP_S, Runner, RunnerOptions
from trm_core.predictions import Predictions
from trm_core.submission_file import validate

REPO = Path(__file__).resolve().parent.parent
PLACEHOLDER = REPO / "submission" / "placeholder"
CHALLENGES = json.loads((PLACEHOLDER / "arc-agi_test_challenges.json").read_text())


pytestmark = pytest.mark.usefixtures("one_thread")


def _options(tmp: Path, ckpt: Path | None, budget: float, **kw) -> RunnerOptions:
    now = time.time()
    base = dict(input_dir=PLACEHOLDER, working_dir=tmp / "working", checkpoint=ckpt, scratch_dir=tmp / "scratch",
                start_time=now, deadline=now + budget, views_min=2, views_target=4, views_max=8, train_batch=8,
                predict_batch=16, reserve_min_s=0.3, provisional_every_s=0.5, save_every_s=0.3, max_steps=40)
    base.update(kw)
    return RunnerOptions(**base)


def _runner(opts: RunnerOptions, lines: list[str] | None = None, environ: dict | None = None) -> Runner:
    return Runner(opts, launcher=InProcessLauncher(echo=lambda line: None), environ=environ or {},
                  echo=(lines.append if lines is not None else lambda line: None))


@pytest.fixture(scope="module")
def kaggle_output(tmp_path_factory, micro_checkpoint: Path) -> tuple[Path, list[str]]:
    """A whole run on the placeholder tasks (post-training, the baseline pass), as the notebook
    leaves it in /kaggle/working: submission.json and trm-run/. Returns (working folder, log lines)."""
    tmp = tmp_path_factory.mktemp("run")
    lines: list[str] = []
    opts = _options(tmp, micro_checkpoint, 40.0, baseline=True)
    assert _runner(opts, lines).run() == 0
    return opts.working_dir, lines


# ---- what the run keeps ---------------------------------------------------------------------------------


def test_a_run_keeps_what_the_report_needs_in_trm_run(kaggle_output: tuple[Path, list[str]]) -> None:
    working, lines = kaggle_output
    run_dir = working / "trm-run"
    record = json.loads((run_dir / "run.json").read_text())
    assert validate(json.loads((working / "submission.json").read_text()), CHALLENGES) == []
    for name in ("challenges.json", "metrics.jsonl", "predictions.npz", "baseline-predictions.npz", "packages.txt"):
        assert isinstance(record["kept"][name], int) and (run_dir / name).stat().st_size == record["kept"][name], name
    assert json.loads((run_dir / "challenges.json").read_text()) == CHALLENGES
    # the votes: every view the final vote used, for every test input of every task
    preds = Predictions.load(run_dir / "predictions.npz")
    assert len(preds) == record["predict"]["records"] and set(preds.task_ids) == set(CHALLENGES)
    assert len(Predictions.load(run_dir / "baseline-predictions.npz")) > 0
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows and rows[-1]["step"] == record["train"]["steps_done"]
    packages = (run_dir / "packages.txt").read_text().splitlines()
    assert packages[0].startswith("# python ") and any(p.lower().startswith("numpy==") for p in packages)
    assert any(p.lower().startswith("torch==") for p in packages)
    # the timing report is of the final run.json: every phase, finalize included, and the GPU names
    timing = json.loads((run_dir / "timing-report.json").read_text())
    assert [p["name"] for p in timing["phases"]] == [p["name"] for p in record["phases"]]
    assert timing["phases"][-1]["name"] == "finalize" and "gpu_names" in timing["device"]["hardware"]
    assert "planned s" in (run_dir / "timing-report.txt").read_text()
    assert any("kept in" in line for line in lines)
    assert record["finished_before_deadline"]


def test_report_on_a_downloaded_output_draws_timings_curves_and_every_task(kaggle_output, tmp_path: Path) -> None:
    working, _ = kaggle_output
    for folder in (working, working / "trm-run"):  # the output folder, or its trm-run/ given itself
        page = tmp_path / f"{folder.name}.html"
        result = CliRunner().invoke(report_cmd, [str(folder), "-o", str(page)])
        assert result.exit_code == 0, result.output
        html = page.read_text()
        for section in ('id="summary"', 'id="timing"', 'id="training"', 'id="tasks"'):
            assert section in html, section
        for task_id in CHALLENGES:
            assert f'data-task="{task_id}"' in html, task_id
        assert 'role="candidate"' in html and 'role="baseline-1"' in html  # the votes, both models
        assert 'role="attempt-1"' in html  # submission.json's attempts, beside the trm-run folder


def test_report_without_kept_files_uses_run_json_and_a_challenges_option(kaggle_output, tmp_path: Path) -> None:
    """An output whose run had no time to keep anything but run.json: the timing section is drawn
    from run.json, and --challenges gives the tasks."""
    working, _ = kaggle_output
    out = tmp_path / "out"
    (out / "trm-run").mkdir(parents=True)
    (out / "submission.json").write_text((working / "submission.json").read_text())
    (out / "trm-run" / "run.json").write_text((working / "trm-run" / "run.json").read_text())
    result = CliRunner().invoke(report_cmd, [str(out)])
    assert result.exit_code == 0, result.output
    html = (out / "report.html").read_text()
    assert 'id="timing"' in html and 'id="tasks"' not in html
    result = CliRunner().invoke(report_cmd, [str(out), "--challenges", str(PLACEHOLDER / "arc-agi_test_challenges.json"),
                                             "--solutions", str(PLACEHOLDER / "arc-agi_test_solutions.json")])
    assert result.exit_code == 0, result.output
    html = (out / "report.html").read_text()
    assert all(f'data-task="{t}"' in html for t in CHALLENGES) and "right / test inputs" in html


@pytest.mark.parametrize("name, content", [
    ("predictions.npz", b"PK\x03\x04 not really a zip"),
    ("run.json", b"[" * 5000),
    ("run.json", b"\xff\xfe not utf-8"),
    ("timing-report.json", b'{"phases": "not a list"}'),
    ("metrics.jsonl", b'{"step": 1e999999, "loss": NaN}\n[1, 2]\n'),
])
def test_a_hostile_kept_file_is_named_and_the_rest_drawn(name: str, content: bytes, kaggle_output,
                                                        tmp_path: Path) -> None:
    working, _ = kaggle_output
    out = tmp_path / "out"
    (out / "trm-run").mkdir(parents=True)
    (out / "submission.json").write_text((working / "submission.json").read_text())
    for f in (working / "trm-run").iterdir():
        (out / "trm-run" / f.name).write_bytes(f.read_bytes())
    (out / "trm-run" / name).write_bytes(content)
    result = CliRunner().invoke(report_cmd, [str(out)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    assert (out / "report.html").is_file()
    if name != "metrics.jsonl":  # lines that are not rows are skipped and counted, the others drawn
        assert result.exit_code == 1 and name in result.output, result.output
    assert all(f'data-task="{t}"' in (out / "report.html").read_text() for t in CHALLENGES)


def test_keeping_skips_what_does_not_fit_and_removes_an_earlier_runs_files(tmp_path: Path) -> None:
    run_dir = tmp_path / "trm-run"
    run_dir.mkdir()
    (run_dir / "predictions.npz").write_bytes(b"an earlier run's")
    big = tmp_path / "challenges.json"
    big.write_bytes(b"{}" + b" " * 4_000_000)  # 4 MB: 0.2 s at KEEP_RATE
    now = [100.0]
    src = keep_mod.Sources(challenges=big)
    kept = keep_mod.keep(run_dir, src, until=100.3, clock=lambda: now[0], log=lambda line: None)
    assert kept["challenges.json"].startswith("skipped: 0.3 s left") and not (run_dir / "challenges.json").exists()
    assert kept["packages.txt"] > 0  # small: it fits
    assert kept["predictions.npz"] == "skipped: the run has none" and not (run_dir / "predictions.npz").exists()
    kept = keep_mod.keep(run_dir, src, until=101.0, clock=lambda: now[0], log=lambda line: None)
    assert kept["challenges.json"] == big.stat().st_size


def test_a_file_that_cannot_be_kept_is_named_and_the_others_kept(tmp_path: Path) -> None:
    run_dir = tmp_path / "trm-run"
    (run_dir / "challenges.json").mkdir(parents=True)  # a folder where the copy must go
    (run_dir / "challenges.json" / "x").write_text("x")
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 1}\n')
    kept = keep_mod.keep(run_dir, keep_mod.Sources(challenges=PLACEHOLDER / "arc-agi_test_challenges.json",
                                                   metrics=metrics, predictions=[str(tmp_path / "gone.npz")]),
                         until=time.time() + 60, clock=time.time, log=lambda line: None)
    assert kept["challenges.json"].startswith("skipped: ") and "Error" in kept["challenges.json"]
    assert kept["metrics.jsonl"] == metrics.stat().st_size and kept["predictions.npz"] == "skipped: the run has none"
    torn = tmp_path / "adapted-a0-r0of1.npz"
    torn.write_bytes(b"PK\x03\x04 torn")
    kept = keep_mod.keep(run_dir, keep_mod.Sources(predictions=[str(torn)]), until=time.time() + 60, clock=time.time,
                         log=lambda line: None)
    assert kept["predictions.npz"] == "skipped: ValueError: no shard could be read"


def test_the_package_list_stops_at_its_time(tmp_path: Path) -> None:
    ticks = iter(range(1000))
    text = keep_mod.packages(until=3, clock=lambda: next(ticks))
    lines = text.splitlines()
    assert lines[1] == "# cut short: out of time" and len(lines) == 2 + 3


def test_after_a_stop_signal_files_are_kept_within_a_bound_even_past_the_deadline(tmp_path: Path) -> None:
    t = [1000.0]
    opts = _options(tmp_path, None, 50.0, start_time=1000.0, deadline=1050.0)
    runner = Runner(opts, environ={}, clock=lambda: t[0], echo=lambda line: None)
    assert runner.keep_until() == 1050.0
    t[0] = 1080.0  # the notebook's SIGTERM at its kill time, after the runner's deadline
    runner.stop.request("SIGTERM")
    assert runner.keep_until() == 1080.0 + STOPPED_KEEP_S
    early = Runner(opts, environ={}, clock=lambda: 1045.0, echo=lambda line: None)
    early.stop.request("SIGTERM")  # before the deadline: the deadline still bounds it
    assert early.keep_until() == 1050.0


def test_a_stopped_run_still_keeps_its_files(tmp_path: Path) -> None:
    runner = _runner(_options(tmp_path, None, 30.0))
    runner.stop.request("SIGTERM")  # the signal came as the runner started
    runner.run()
    record = json.loads((tmp_path / "working" / "trm-run" / "run.json").read_text())
    assert record["stopped"]["signal"] == "SIGTERM"
    assert isinstance(record["kept"]["challenges.json"], int) and isinstance(record["kept"]["packages.txt"], int)
    assert (tmp_path / "working" / "trm-run" / "timing-report.json").is_file()


# ---- progress -----------------------------------------------------------------------------------------------


def test_progress_line_counts_saved_views_and_gives_an_eta_after_warm_up() -> None:
    p = Progress("adapted", planned=1000, until=1000.0)
    assert "0/1000 views saved (0%)" in p.line({}, 10.0) and "ETA after the next save" in p.line({}, 10.0)
    assert "ETA after the next save" in p.line({"r0of2": 100, "r1of2": 100}, 40.0)  # the first save: no rate yet
    line = p.line({"r0of2": 200, "r1of2": 200}, 60.0)  # 200 views in 20 s: 10 views/s, 600 to go
    assert "400/1000 views saved (40%) [r0of2 200, r1of2 200]" in line and "10.0 views/s, ETA 60 s" in line
    late = p.line({"r0of2": 210, "r1of2": 210}, 980.0)
    assert "the rest is cut" in late


def test_saved_views_reads_shard_files_and_skips_temporary_ones(tmp_path: Path) -> None:
    def shard(name: str, n: int) -> None:
        p = Predictions()
        for i in range(n):
            p.append("t", 0, i, np.zeros((2, 2), np.uint8), 0.0)
        p.save(tmp_path / name)

    shard("adapted-a0-r0of2.npz", 3)
    shard("adapted-a1-r0of2.npz", 5)  # a retry of the same shard
    shard("adapted-a0-r1of2.npz", 4)
    shard("adapted-a0-r1of2.tmp.npz", 9)  # being written
    shard("baseline-a0-r0of1.npz", 7)
    (tmp_path / "adapted-a2-r1of2.npz").write_bytes(b"torn")
    assert saved_views(tmp_path, "adapted") == {"r0of2": 5, "r1of2": 4}


def test_the_runner_prints_prediction_progress(tmp_path: Path, micro_checkpoint: Path, monkeypatch) -> None:
    monkeypatch.setattr("submission.predicting.PROGRESS_EVERY_S", 0.3)
    monkeypatch.setenv("TRM_FAULT", "predict:slow:1:0:0.2")
    lines: list[str] = []
    opts = _options(tmp_path, micro_checkpoint, 30.0, max_steps=0, predict_batch=2, save_every_s=0.2)
    _runner(opts, lines, environ={"TRM_FAULT": os.environ["TRM_FAULT"]}).run()
    progress = [line for line in lines if "prediction:" in line and "views saved" in line]
    assert len(progress) >= 2, lines[-20:]
    assert any("views/s, ETA" in line for line in progress), progress


# ---- the training log's time rule ------------------------------------------------------------------------------


def _train(clock, log_every: int, steps: int = 6, rank: int = 0, world: int = 1) -> tuple[list[str], list[dict]]:
    from trm_core.batches import TrainSampler
    from trm_core.model import TRM, TRMConfig
    from trm_core.tasks import Task
    from trm_core.config import TrainConfig
    from trm_core.train import train
    from trm_core.variants import Variants

    rng = np.random.default_rng(0)
    grids = [rng.integers(0, 3, (4, 4)).astype(np.uint8) for _ in range(3)]
    variants = Variants([Task(id="t", train=[(g, g.T.copy()) for g in grids[:2]], test_inputs=[grids[2]])], 1, seed=0)
    cfg = TRMConfig.from_name("tiny", canvas=6, num_puzzle_identifiers=variants.num_identifiers + 3, halt_max_steps=2,
                              hidden_size=16, num_heads=2, puzzle_emb_ndim=16, H_cycles=1, L_cycles=1)
    model = TRM(cfg, generator=torch.Generator().manual_seed(0))
    lines: list[str] = []
    tc = TrainConfig(steps=steps, global_batch_size=4, warmup_steps=1, lr=1e-3, ema=False, log_every=log_every)
    logger_rows: list[dict] = []

    class Rows:
        def log(self, m, step):
            logger_rows.append(dict(m))

        def close(self):
            pass

    train(model, TrainSampler(variants, 4, seed=0, canvas=6, rank=rank, world_size=world), tc, log=lines.append,
          logger=Rows(), clock=clock)
    return lines, logger_rows


def test_training_logs_at_least_every_30_s_whatever_log_every() -> None:
    t = [0.0]

    def slow() -> float:  # each look at the clock: 31 s later, so every step begins 30 s past the last line
        t[0] += 31.0
        return t[0]

    lines, rows = _train(slow, log_every=1000)
    assert [r["step"] for r in rows] == list(range(1, 7)), [r["step"] for r in rows]  # before: only step 6
    assert all(line.startswith(f"step {k + 1}/6") for k, line in enumerate(lines))
    t[0] = 0.0

    def steady() -> float:  # 10 s per look, one look per step between lines: a line every third or fourth step
        t[0] += 10.0
        return t[0]

    _, rows = _train(steady, log_every=1000, steps=12)
    steps = [r["step"] for r in rows]
    assert 3 <= len(steps) < 12 and steps[-1] == 12, steps


def test_training_log_is_unchanged_when_log_every_comes_first() -> None:
    still = [0.0]
    lines, rows = _train(lambda: still[0], log_every=2)  # a clock that never moves: no line on time
    assert [r["step"] for r in rows] == [2, 4, 6]
    fast = [0.0]

    def ticking() -> float:  # 1 s per look: 30 s are never reached between two lines two steps apart
        fast[0] += 1.0
        return fast[0]

    again, rows2 = _train(ticking, log_every=2)
    assert [r["step"] for r in rows2] == [2, 4, 6]
    for a, b in zip(rows, rows2):  # the same figures, bar those that are rates over the clock
        keep = {k for k in a if k not in ("samples_per_s", "mfu", "eta_s")}
        assert {k: a[k] for k in keep} == {k: b[k] for k in keep}


def _ddp_log_worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    import torch.distributed as dist

    from trm_core import train as train_mod

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        t = [0.0]

        def late() -> float:  # only rank 1 sees 30 s pass at every step
            t[0] += 31.0
            return t[0]

        original = train_mod.train

        def train_with(*a, **kw):
            return original(*a, **{**kw, "clock": late if rank == 1 else (lambda: 0.0)})

        train_mod.train = train_with
        try:
            _, rows = _train(None, log_every=1000, steps=4, rank=rank, world=world)
        finally:
            train_mod.train = original
        if rank == 0:
            Path(out_file).write_text(json.dumps([r["step"] for r in rows]))
    finally:
        dist.destroy_process_group()
    leave()  # written and destroyed: no teardown (tests/spawned.py)


def test_the_time_rule_holds_every_rank_to_the_same_lines(tmp_path: Path) -> None:
    """Two gloo processes whose clocks disagree: the one that sees 30 s pass makes every rank end
    the interval (each line is a collective), so the run neither hangs nor loses a line."""
    import torch.multiprocessing as mp

    init_file, out_file = str(tmp_path / "init"), tmp_path / "steps.json"
    mp.spawn(_ddp_log_worker, args=(2, init_file, str(out_file)), nprocs=2, join=True)
    assert json.loads(out_file.read_text()) == [1, 2, 3, 4]


# ---- dry-run --calibration ---------------------------------------------------------------------------------------


def _l4_times() -> dict:
    """A run of the paper model on an L4, as its run.json records it: 15% MFU training, 10% predicting."""
    from trm_core.model import TRMConfig, flops_per_sample
    from trm_core.perf import PEAK_BF16

    paper = TRMConfig.from_name("paper")
    train = flops_per_sample(paper, train=True) * 192
    predict = flops_per_sample(paper, train=False) * paper.halt_max_steps * 256
    return {"device": "NVIDIA L4", "train_batch": 192, "train_step_s": train / (0.15 * PEAK_BF16["L4"]),
            "train_warmup_s": 40.0, "predict_batch": 256, "predict_batch_s": predict / (0.10 * PEAK_BF16["L4"]),
            "predict_warmup_s": 20.0, "launch_s": 35.0, "save_s": 5.0, "steps_timed": 3, "batches_timed": 2,
            "source": "measured", "train_flops_per_step": train, "predict_flops_per_batch": predict}


def _l4_record(tmp_path: Path, **changes) -> Path:
    cal = {**_l4_times(), **changes}
    (tmp_path / "trm-run").mkdir(parents=True, exist_ok=True)
    path = tmp_path / "trm-run" / "run.json"
    path.write_text(json.dumps({"format": "trm-kit-run/1", "calibration": cal}))
    return path


def test_dry_run_projects_from_a_runs_measured_unit_times(tmp_path: Path) -> None:
    from bundle.dry_run import DryRunOptions, _projections, measured_calibration
    from trm_core.model import TRMConfig

    _l4_record(tmp_path)
    measured = measured_calibration(tmp_path)  # the downloaded output folder: found in trm-run/
    paper = TRMConfig.from_name("paper")
    (proj,) = _projections(paper, {}, DryRunOptions(calibration=tmp_path), measured)
    assert proj["mfu_source"].startswith("measured on NVIDIA L4 by the run in") and "its unit times" in proj["mfu_source"]
    cal = proj["calibration"]  # the target's per-GPU batches are the budget's: 768 / 4 and 1024 / 4
    times = _l4_times()
    assert cal["train_batch"] == 192 and cal["train_step_s"] == pytest.approx(times["train_step_s"])
    assert cal["predict_batch"] == 256 and cal["predict_batch_s"] == pytest.approx(times["predict_batch_s"])
    assert cal["launch_s"] == 35.0 and cal["save_s"] == 5.0 and cal["train_warmup_s"] == 40.0
    (roof,) = _projections(paper, {}, DryRunOptions())
    assert "roofline" in roof["mfu_source"] and roof["calibration"]["train_step_s"] != pytest.approx(cal["train_step_s"])


@pytest.mark.parametrize("change, words", [
    ({"train_step_s": float("nan")}, "calibration.train_step_s must be a finite number"),
    ({"train_step_s": "0.9"}, "calibration.train_step_s must be a finite number"),
    ({"train_batch": True}, "calibration.train_batch must be a whole number"),
    ({"train_batch": 10 ** 12}, "calibration.train_batch must be a whole number"),
    ({"train_batch": 10 ** 400}, "numbers longer than 40 digits are refused"),
    ({"train_flops_per_step": 1e300}, "calibration.train_flops_per_step must be a finite number"),
    ({"predict_batch_s": 0}, "calibration.predict_batch_s is 0"),
    ({"device": ["L4"]}, "calibration.device must be a short string"),
    ({"source": "projected"}, "not measured"),
    ({"device": "cpu"}, "not a GPU of the peak table"),
    ({"train_step_s": 1e-6}, "outside (0, 1]"),
    ({"launch_s": None}, "calibration.launch_s must be a finite number"),
])
def test_a_bad_calibration_record_is_refused_naming_the_file_and_field(change: dict, words: str,
                                                                       tmp_path: Path) -> None:
    from bundle.dry_run import DryRunError, measured_calibration

    path = _l4_record(tmp_path, **change)
    with pytest.raises(DryRunError) as e:
        measured_calibration(path)
    assert str(path) in str(e.value) and words in str(e.value)


@pytest.mark.parametrize("content, words", [
    (b"", "not valid JSON"), (b"[" * 10000, "nested more than"), (b"[1, 2]", "no calibration object"),
    (b'{"calibration": {"device": "NVIDIA L4"}}', "calibration.train_batch is missing"),
    (b"\x00\xff", "not UTF-8"), (b'{"calibration": 1, "calibration": 2}', "appears more than once"),
])
def test_a_calibration_file_that_is_not_a_record_is_refused(content: bytes, words: str, tmp_path: Path) -> None:
    from bundle.dry_run import DryRunError, measured_calibration

    path = tmp_path / "run.json"
    path.write_bytes(content)
    with pytest.raises(DryRunError) as e:
        measured_calibration(path)
    assert str(path) in str(e.value) and words in str(e.value), str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DryRunError, match="no run.json or plan.json"):
        measured_calibration(tmp_path / "empty")


def test_dry_run_command_refuses_a_bad_calibration_before_running(tmp_path: Path) -> None:
    from bundle.cli import dry_run_cmd

    bad = tmp_path / "run.json"
    bad.write_text('{"calibration": {"device": "NVIDIA L4", "train_batch": -1}}')
    start = time.time()
    result = CliRunner().invoke(dry_run_cmd, ["--calibration", str(bad), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"--calibration: {bad}: calibration." in result.output, result.output
    assert time.time() - start < 30 and not (tmp_path / "out").exists()  # refused before the rehearsal
