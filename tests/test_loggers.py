"""Metrics loggers: the loop trains identically with and without one, each logger receives exactly the
rows of metrics.jsonl, and TensorBoard and W&B (offline) store them, read back through their own
libraries' formats. The libraries are optional extras: their tests skip where they are not installed."""

from __future__ import annotations

import glob
import json
import struct
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from trm_cli import main
from trm_core.batches import TrainSampler
from trm_core.variants import Variants
from trm_core.loggers import NullLogger, TeeLogger, open_logger, scalars
from trm_core.model import TRM, TRMConfig
from trm_core.tasks import Task, write_kaggle
from trm_core.config import TrainConfig
from trm_core.train import METRICS_FILE, train

CANVAS = 6
TIMING = ("samples_per_s", "eta_s", "mfu")  # wall-clock figures: differ between any two runs


def _tasks() -> list[Task]:
    rng = np.random.default_rng(0)
    tasks = []
    for k in range(3):
        pairs = [(g, np.ascontiguousarray(g[:, ::-1])) for g in rng.integers(0, 4, (3, 4, 4)).astype(np.uint8)]
        tasks.append(Task(f"t{k}", pairs[:2], [pairs[2][0]], [pairs[2][1]]))
    return tasks


class Recorder:
    def __init__(self) -> None:
        self.rows: list[tuple[dict, int]] = []
        self.closed = False

    def log(self, metrics, step) -> None:
        self.rows.append((dict(metrics), step))

    def close(self) -> None:
        self.closed = True


def _train(out: Path, logger=None) -> dict[str, torch.Tensor]:
    variants = Variants(_tasks(), 2, seed=0)
    cfg = TRMConfig.from_name("tiny", hidden_size=16, num_heads=2, H_cycles=1, L_cycles=1, halt_max_steps=2,
                              puzzle_emb_ndim=16, canvas=CANVAS, num_puzzle_identifiers=variants.num_identifiers)
    model = TRM(cfg, generator=torch.Generator().manual_seed(0))
    tc = TrainConfig(steps=6, global_batch_size=4, warmup_steps=1, lr=1e-3, log_every=2, ema=False)
    train(model, TrainSampler(variants, 4, seed=1, canvas=CANVAS), tc, out_dir=out, log=lambda line: None,
          logger=logger)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def test_the_loop_is_identical_with_logging_off_and_on(tmp_path: Path) -> None:
    off = _train(tmp_path / "off")
    rec = Recorder()
    on = _train(tmp_path / "on", rec)
    assert off.keys() == on.keys() and all(torch.equal(off[k], on[k]) for k in off)
    rows_off, rows_on = _jsonl(tmp_path / "off" / METRICS_FILE), _jsonl(tmp_path / "on" / METRICS_FILE)
    assert _without_timing(rows_off) == _without_timing(rows_on)
    # the logger got each metrics.jsonl row, at its step, and the loop leaves closing to the caller
    assert [step for _, step in rec.rows] == [r["step"] for r in rows_on] == [2, 4, 6]
    assert [json.loads(json.dumps(m)) for m, _ in rec.rows] == rows_on
    assert not rec.closed


def test_open_logger_choices(tmp_path: Path, monkeypatch) -> None:
    assert isinstance(open_logger([], tmp_path), NullLogger)
    with pytest.raises(ValueError, match="unknown logger 'mlflow'"):
        open_logger(["mlflow"], tmp_path)
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ImportError, match=r"trm-kit\[wandb\]"):
        open_logger(["wandb"], tmp_path)
    assert scalars({"step": 3, "loss": 1.5, "mfu": float("nan"), "flag": True, "name": "x"}) == {"train/loss": 1.5}


def test_a_missing_library_is_a_clean_cli_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)
    write_kaggle(_tasks(), tmp_path / "challenges.json", tmp_path / "solutions.json")
    r = CliRunner().invoke(main, ["pretrain", "--data", str(tmp_path / "challenges.json"), "--steps", "1",
                                  "--batch-size", "4", "--variants", "1", "--out", str(tmp_path / "run"),
                                  "--log-to", "wandb", "--device", "cpu"])
    assert r.exit_code == 1 and "pip install 'trm-kit[wandb]'" in r.output and "Traceback" not in r.output


def test_tensorboard_logs_the_metrics(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = open_logger(["tensorboard"], tmp_path, {"mode": "pretrain"})
    _train(tmp_path, logger)
    logger.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    rows = _jsonl(tmp_path / METRICS_FILE)
    for key in ("loss", "accuracy", "exact_accuracy", "lr"):
        got = events.Scalars(f"train/{key}")
        assert [e.step for e in got] == [r["step"] for r in rows]
        assert np.allclose([e.value for e in got], [r[key] for r in rows], rtol=1e-6)
    assert "train/mfu" not in events.Tags()["scalars"]  # NaN on a CPU: left out
    assert events.Tags()["tensors"]  # the config, as text


def _wandb_records(path: str) -> list:
    """Records of a W&B transaction log (.wandb): a 7-byte file header, then LevelDB-style log
    records (crc32c, length, type) in 32 KiB blocks, each a protobuf Record."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    block, pos, out, buf = 32768, 7, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if pos + 7 + n > len(data):  # a record still being written
            break
        chunk, pos = data[pos + 7:pos + 7 + n], pos + 7 + n
        if kind == 0:  # zero padding up to the block's end
            pos += (block - pos % block) % block
        elif kind == 1:
            out.append(chunk)
        elif kind == 2:
            buf = chunk
        elif kind == 3:
            buf += chunk
        elif kind == 4:
            out.append(buf + chunk)
    records = []
    for raw in out:
        r = pb.Record()
        r.ParseFromString(raw)
        records.append(r)
    return records


def test_wandb_offline_logs_the_metrics(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("wandb")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    rec = Recorder()
    logger = TeeLogger([open_logger(["wandb"], tmp_path, {"mode": "pretrain", "steps": 6}, name="t"), rec])
    _train(tmp_path, logger)
    logger.close()
    assert rec.closed
    files = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(files) == 1  # offline: the run stays on disk for `wandb sync`
    # finish() can return before wandb's service has written the last records: wait for its exit record
    deadline = time.time() + 120
    while True:
        records = _wandb_records(files[0])
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.time() > deadline:
            break
        time.sleep(0.5)
    history = [r.history for r in records if r.WhichOneof("record_type") == "history"]
    rows = _jsonl(tmp_path / METRICS_FILE)
    assert [h.step.num for h in history] == [r["step"] for r in rows]
    for h, row in zip(history, rows):
        items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in h.item}
        for key in ("loss", "accuracy", "exact_accuracy"):
            assert items[f"train/{key}"] == pytest.approx(row[key], rel=1e-12)
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    config = {u.key: json.loads(u.value_json) for u in run.config.update}
    assert config["steps"] == 6 and run.display_name == "t"


def test_trm_pretrain_log_to_tensorboard(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    write_kaggle(_tasks(), tmp_path / "challenges.json", tmp_path / "solutions.json")
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["pretrain", "--data", str(tmp_path / "challenges.json"), "--steps", "4",
                                  "--batch-size", "4", "--variants", "1", "--warmup", "1", "--log-every", "2",
                                  "--canvas", "6", "--out", str(out), "--log-to", "tensorboard", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [row["step"] for row in _jsonl(out / METRICS_FILE)]


def test_trm_study_log_to_tensorboard(tmp_path: Path, micro_checkpoint) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    write_kaggle(_tasks(), tmp_path / "c_challenges.json", tmp_path / "c_solutions.json")
    out = tmp_path / "study"
    r = CliRunner().invoke(main, ["study", "--checkpoint", str(micro_checkpoint), "--data",
                                  str(tmp_path / "c_challenges.json"), "--solutions", str(tmp_path / "c_solutions.json"),
                                  "--arms", "none,full", "--steps", "4", "--eval-every", "2", "--views", "2",
                                  "--variants", "1", "--batch-size", "2", "--warmup", "0", "--out", str(out),
                                  "--log-to", "tensorboard"])
    assert r.exit_code == 0, r.output
    # one logger per trained arm, kept open across the arm's segments (steps 1-2, then 3-4)
    events = EventAccumulator(str(out / "arms" / "full" / "tensorboard"))
    events.Reload()
    rows = _jsonl(out / "arms" / "full" / "run" / METRICS_FILE)
    assert [e.step for e in events.Scalars("train/loss")] == [row["step"] for row in rows] and rows[-1]["step"] == 4
    assert not (out / "arms" / "none" / "tensorboard").exists()  # evaluated only, never trained
