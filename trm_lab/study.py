"""The adaptation study: post-train one checkpoint on held-out tasks under several arms and
follow each arm's fit and test accuracy against optimiser steps (arXiv 2511.02886, Figure 3).

Inputs: a checkpoint, held-out tasks with test solutions, and a StudyConfig (arms, steps, the
evaluation interval, the view count K, the shared training settings).
Outputs, in `out_dir`:
  arms/<arm>/        the arm's run folder (resumable train_state.pt, checkpoint/, metrics.jsonl),
                     curve.jsonl (one evaluation per interval) and, at its last step,
                     coverage.json and predictions.npz
  study.json         every figure, the configuration, seeds, versions, machine, wall time per arm
  study.md           arm x step -> pass@2, oracle, demonstration-pair exact accuracy
  study.png          pass@2 and demonstration-pair exact accuracy against steps (needs matplotlib)
  report.html        the same curves and the final table in the HTML report (trm_lab/report.py)

Spending (`spend`): "uniform" draws every task alike (the reference); "per-task" runs the trained
arms with a FitSchedule (trm_core/fit.py): every `fit_every` steps each task's demonstration pairs
are checked through its trained views, and a task fitted at `fit_patience` consecutive checks
leaves the batches, so the others get its share. Every evaluation also records `fitted_tasks` (the
tasks whose demonstration pairs the vote of K views answers, the same check) and `row_steps` (rows
each task was handed so far), under either spending, so the two compare.

Arms: the four post-training modes (full, embeddings, embeddings-then-full, lora) start from the
checkpoint's trunk with fresh embedding rows; `scratch` is the same architecture freshly
initialised and trained on the same pairs; `none` is the un-adapted checkpoint (evaluated once, at
step 0). Every trained arm sees the same variants, the same batches in the same order, the same
seeds and the same schedule. At each interval the arm's checkpoint (its EMA weights when EMA is on)
is evaluated on the demonstration pairs as given (loss, token accuracy, exact accuracy, after the
model's full ACT steps) and on the test inputs: K views, vote, pass@1, pass@2 and the oracle (the
right answer among any of the K views), per test input as Kaggle counts them.

An arm is trained in segments that end at the evaluation steps: the trainer stops there, saves
its state and checkpoint, the checkpoint is evaluated, and the next segment resumes from the
saved state, so a segmented arm trains exactly as one uninterrupted run, and a study that is
killed resumes every arm from its last evaluation.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trm_core import __version__
from trm_core import checkpoint as ckpt_io
from trm_core.checkpoint import Checkpoint
from trm_core.batches import TrainSampler
from trm_core.variants import Variants
from trm_core.encoding import encode_grid, to_labels
from trm_core.evaluate import coverage
from trm_core.fit import FitSchedule, check_fit
from trm_core.loggers import LoggerSpec
from trm_core.loss import stablemax_cross_entropy
from trm_core.model import TRM
from trm_core.config import POSTTRAIN_MODES, PredictConfig, StudyConfig
from trm_core.predict import predict
from trm_core.recipes import prepare_posttrain
from trm_core.tasks import TaskSet
from trm_core.train import train
from trm_core.vote import vote

CURVE_FILE = "curve.jsonl"


def fit_schedule(cfg: StudyConfig) -> FitSchedule | None:
    """The trained arms' per-task spending (None: uniform)."""
    if cfg.spend == "uniform":
        return None
    return FitSchedule(every=cfg.fit_every, patience=cfg.fit_patience, views=cfg.views, batch_size=cfg.predict_batch)


@dataclass
class ArmResult:
    arm: str
    curve: list[dict[str, Any]] = field(default_factory=list)  # one evaluation per interval
    wall_s: float = 0.0  # training + evaluation time of this arm (summed over resumed segments)
    changed: list[str] = field(default_factory=list)  # state entries that differ from the arm's start


# ---- evaluation --------------------------------------------------------------------------------


@torch.inference_mode()
def demo_fit(model: TRM, variants: Variants, device: torch.device, batch_size: int = 256) -> dict[str, float]:
    """Loss, token accuracy and exact accuracy on every demonstration pair as given (variant 0,
    untranslated), after the model's full ACT steps; means over pairs."""
    canvas = model.config.canvas
    rows = [(encode_grid(x, canvas), to_labels(encode_grid(y, canvas)), variants.identifier(t.id))
            for t in variants.tasks.values() for x, y in t.train]
    model.to(device).eval()
    loss = acc = exact = 0.0
    for lo in range(0, len(rows), batch_size):
        chunk = rows[lo:lo + batch_size]
        batch = {"inputs": torch.from_numpy(np.stack([r[0] for r in chunk]).astype(np.int32)).to(device),
                 "labels": torch.from_numpy(np.stack([r[1] for r in chunk])).to(device),
                 "puzzle_identifiers": torch.tensor([r[2] for r in chunk], dtype=torch.int32, device=device)}
        carry = model.initial_carry(batch)
        for _ in range(model.config.halt_max_steps):
            carry, out = model(carry, batch)
        labels = batch["labels"]
        mask = labels != -100
        n = mask.sum(-1).clamp_min(1)
        ce = stablemax_cross_entropy(out["logits"], labels, valid_mask=mask).sum(-1) / n
        right = (out["logits"].argmax(-1) == labels) & mask
        loss += float(ce.sum())
        acc += float((right.sum(-1) / n).sum())
        exact += float((right.sum(-1) == mask.sum(-1)).sum())
    count = max(len(rows), 1)
    return {"demo_loss": loss / count, "demo_token_accuracy": acc / count, "demo_exact_accuracy": exact / count,
            "demo_pairs": len(rows)}


def evaluate_model(model: TRM, variants: Variants, tasks: TaskSet, cfg: StudyConfig, device: torch.device,
                   out_dir: Path | None = None) -> dict[str, Any]:
    """Demonstration-pair fit, then pass@1 / pass@2 / oracle over K views of every test input."""
    fit = demo_fit(model, variants, device, cfg.predict_batch)
    per_task = check_fit(model, variants, views=cfg.views, batch_size=cfg.predict_batch, device=device, rule=cfg.rule)
    fit["fitted_tasks"] = sum(f.fitted for f in per_task.values())
    fit["fitted"] = [tid for tid, f in per_task.items() if f.fitted]
    preds = predict(model, variants, PredictConfig(num_views=cfg.views, batch_size=cfg.predict_batch), device=device)
    report = coverage(vote(preds, cfg.rule), {t.id: t.test_outputs for t in tasks})
    if out_dir is not None:
        preds.save(out_dir / "predictions.npz")
        (out_dir / "coverage.json").write_text(json.dumps(report.to_json(), indent=1))
    solved = [f"{p.task_id}:{p.test_index}" for p in report.pairs if p.passed(2)]
    return {**fit, "pass@1": report.pass_at(1), "pass@2": report.pass_at(2), "oracle": report.oracle(),
            "test_inputs": len(report.pairs), "solved": solved}


# ---- one arm -----------------------------------------------------------------------------------


def _start_model(arm: str, ckpt: Checkpoint, tasks: TaskSet, variants: Variants, cfg: StudyConfig) -> TRM:
    """The arm's model before its first step (a resumed segment then loads its saved state)."""
    if arm == "scratch":
        config = ckpt.config.with_(num_puzzle_identifiers=variants.num_identifiers)
        return TRM(config, generator=torch.Generator().manual_seed(cfg.seed))
    from trm_core.config import DataConfig

    data = DataConfig(num_variants=cfg.num_variants, variant_seed=cfg.seed, sampler_seed=cfg.seed,
                      translate=cfg.translate)
    model, _ = prepare_posttrain(ckpt, tasks, data, cfg.init, cfg.seed)
    return model


def _read_curve(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _append(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def changed_entries(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> list[str]:
    """State entries whose values differ (LoRA adapters are folded into the weights they adapt)."""
    return sorted(k for k, v in before.items() if k in after and not torch.equal(v, after[k].to(v.dtype)))


def run_arm(arm: str, ckpt: Checkpoint, tasks: TaskSet, cfg: StudyConfig, arm_dir: Path, *,
            device: torch.device | str = "cpu", log: Callable[[str], None] | None = None,
            metrics_to: LoggerSpec | None = None) -> ArmResult:
    """Train (or, for `none`, only evaluate) one arm, evaluating at every interval; resumable.

    metrics_to: loggers (TensorBoard, W&B) that also receive the arm's training metrics, under arm_dir.
    """
    device = torch.device(device)
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    arm_dir.mkdir(parents=True, exist_ok=True)
    curve_path = arm_dir / CURVE_FILE
    curve = _read_curve(curve_path)
    done = {r["step"] for r in curve}
    variants = Variants(tasks, cfg.num_variants, cfg.seed)
    result = ArmResult(arm, curve, sum(r.get("train_s", 0.0) + r.get("eval_s", 0.0) for r in curve))
    start = _start_model(arm, ckpt, tasks, variants, cfg)
    start_state = {k: v.detach().clone() for k, v in start.state_dict().items()}

    if arm == "none":
        if 0 not in done:
            t0 = time.perf_counter()
            record = {"step": 0, **evaluate_model(start, variants, tasks, cfg, device, arm_dir), "train_s": 0.0}
            _record(result, curve_path, record, eval_s=time.perf_counter() - t0, log=log, cfg=cfg)
        return result

    run_dir = arm_dir / "run"
    train_cfg = cfg.train_config(arm)
    model = start
    pending = [b for b in cfg.eval_steps if b not in done]
    logger = (metrics_to or LoggerSpec()).open(arm_dir, {"arm": arm, **asdict(cfg)}, name=arm) if pending else None
    try:
        for boundary in pending:
            if model is None:
                model = _start_model(arm, ckpt, tasks, variants, cfg)
            sampler = TrainSampler(variants, cfg.batch_size, seed=cfg.seed, canvas=ckpt.config.canvas,
                                   translate=cfg.translate)
            t0 = time.perf_counter()
            train(model, sampler, train_cfg, device=device, out_dir=run_dir, stop=lambda s, b=boundary: s >= b,
                  manifest={"study_arm": arm}, logger=logger, fit=fit_schedule(cfg),
                  log=lambda line: log(f"[{arm}] {line}") if "resumed" not in line else None)
            train_s = time.perf_counter() - t0
            row_steps = sampler.rows_by_task()
            t0 = time.perf_counter()
            trained = ckpt_io.build_model(ckpt_io.load(run_dir / "checkpoint"))
            last = boundary == cfg.steps
            record = {"step": boundary,
                      **evaluate_model(trained, variants, tasks, cfg, device, arm_dir if last else None)}
            record["train_s"] = train_s
            record["row_steps"] = row_steps
            _record(result, curve_path, record, eval_s=time.perf_counter() - t0, log=log, cfg=cfg)
            model = None  # the next segment rebuilds the model and resumes from the saved state
    finally:
        if logger is not None:
            logger.close()
    final = ckpt_io.load(run_dir / "checkpoint")
    result.changed = changed_entries(start_state, final.state)
    return result


def _record(result: ArmResult, curve_path: Path, record: dict[str, Any], *, eval_s: float,
            log: Callable[[str], None], cfg: StudyConfig) -> None:
    """Add one evaluation to the arm's curve (on disk first, so a kill loses nothing) and log it."""
    record["eval_s"] = eval_s
    _append(curve_path, record)
    result.curve.append(record)
    result.wall_s += record["train_s"] + eval_s
    log(_progress(result.arm, record, cfg, result.wall_s, record["step"]))


def _progress(arm: str, r: dict[str, Any], cfg: StudyConfig, wall_s: float, step: int) -> str:
    eta = ""
    if step:
        eta = f" | ETA {_fmt(wall_s / step * (cfg.steps - step))}"
    return (f"[{arm}] step {r['step']}/{cfg.steps} | demo loss {r['demo_loss']:.3f} exact "
            f"{r['demo_exact_accuracy']:.3f} | tasks fitted {r.get('fitted_tasks', '?')} | "
            f"test pass@2 {r['pass@2']:.3f} oracle {r['oracle']:.3f} "
            f"({r['test_inputs']} inputs) | {_fmt(wall_s)}{eta}")


def _fmt(seconds: float) -> str:
    s = max(0, int(seconds))
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _arm_worker(arm: str, ckpt_path: str, config: str | None, tasks: TaskSet, cfg: StudyConfig, arm_dir: str,
                device: str, threads: int, metrics_to: LoggerSpec | None = None) -> ArmResult:
    """One arm in its own process (parallel arms on a CPU)."""
    torch.set_num_threads(threads)
    ckpt = ckpt_io.load(ckpt_path, config)
    return run_arm(arm, ckpt, tasks, cfg, Path(arm_dir), device=device, metrics_to=metrics_to)


# ---- the study ---------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def versions() -> dict[str, str]:
    import numba

    return {"trm_kit": __version__, "torch": torch.__version__, "numpy": np.__version__, "numba": numba.__version__}


def run_study(ckpt_path: str | os.PathLike, tasks: TaskSet, cfg: StudyConfig, out_dir: str | os.PathLike, *,
              config: str | None = None, source: str = "", device: torch.device | str = "cpu", jobs: int = 1,
              log: Callable[[str], None] | None = None, metrics_to: LoggerSpec | None = None) -> dict[str, Any]:
    """Run every arm (resuming what a previous run left in `out_dir`) and write the study files.

    jobs > 1 runs that many arms at once in separate processes, splitting the CPU threads among them.
    """
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    missing = [t.id for t in tasks if t.test_outputs is None]
    if missing:
        raise ValueError(f"the study scores test inputs: {len(missing)} task(s) have no solutions, e.g. {missing[:3]}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = ckpt_io.load(ckpt_path, config)
    _check_same_study(out, cfg, str(ckpt_path), source)
    recipe = ckpt_io.manifest_recipe(ckpt.manifest, "the checkpoint's manifest")
    if recipe is not None and recipe.optimizer != cfg.train.optimizer:
        log(f"WARNING: the arms post-train with AdamATan2 {cfg.train.optimizer}; the checkpoint was trained with "
            f"{recipe.optimizer} ({recipe.source}): build StudyConfig.train with config.study_train(recipe=...)")
    t0 = time.perf_counter()
    n_inputs = sum(len(t.test_inputs) for t in tasks)
    log(f"study: {len(cfg.arms)} arms x {cfg.steps} steps of {cfg.batch_size} on {len(tasks)} tasks "
        f"({n_inputs} test inputs, K = {cfg.views}), evaluating every {cfg.eval_every} steps, {jobs} at a time")
    results: dict[str, ArmResult] = {}
    if jobs <= 1:
        for arm in cfg.arms:
            results[arm] = run_arm(arm, ckpt, tasks, cfg, out / "arms" / arm, device=device, log=log,
                                   metrics_to=metrics_to)
    else:
        threads = max(1, torch.get_num_threads() // jobs)
        with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
            futures = {arm: pool.submit(_arm_worker, arm, str(ckpt_path), config, tasks, cfg,
                                        str(out / "arms" / arm), str(device), threads, metrics_to)
                       for arm in cfg.arms}
            results = {arm: f.result() for arm, f in futures.items()}
    first = next((a for a in cfg.arms if a != "none"), POSTTRAIN_MODES[0])  # the trained arms share all but the mode
    study = {
        "config": asdict(cfg), "train": asdict(cfg.train_config(first)), "checkpoint": str(ckpt_path),
        "checkpoint_provenance": ckpt.manifest.get("provenance", {}),
        "data": source, "tasks": len(tasks), "test_inputs": n_inputs, "task_ids": list(tasks.tasks),
        "seeds": {"variants": cfg.seed, "sampler": cfg.seed, "exploration": cfg.seed, "scratch_init": cfg.seed},
        "versions": versions(), "machine": {**machine(), "jobs": jobs, "device": str(device)},
        "wall_s": time.perf_counter() - t0,
        "arms": {arm: {"curve": r.curve, "wall_s": r.wall_s, "changed": r.changed} for arm, r in results.items()},
    }
    write_outputs(study, out)
    log(f"study written to {out}: study.json, study.md" + (", study.png" if (out / "study.png").exists() else
                                                          " (no study.png: matplotlib is not installed)"))
    try:
        from trm_lab.report import write_report

        log(f"report: {write_report(out, title=f'trm-kit study: {out.resolve().name}')}")
    except Exception as e:  # noqa: BLE001 - the page is a view of study.json, never worth the study
        log(f"report.html not written: {type(e).__name__}: {e}")
    return study


def _check_same_study(out: Path, cfg: StudyConfig, ckpt_path: str, source: str) -> None:
    """Refuse to resume arms that were trained under other settings."""
    marker = out / "study-config.json"
    mine = {"config": {k: v for k, v in asdict(cfg).items() if k != "arms"}, "checkpoint": ckpt_path, "data": source}
    mine["config"]["arms"] = None
    mine["config"]["train"].pop("log_every")  # how often it logs is no setting of the arms
    if marker.is_file():
        theirs = json.loads(marker.read_text())
        if theirs != json.loads(json.dumps(mine)):
            diff = sorted(k for k in mine["config"] if theirs["config"].get(k) != mine["config"][k])
            raise ValueError(f"{out} holds a study with other settings ({diff or 'checkpoint or data'}); "
                             "use a new --out or the same settings to resume")
    else:
        marker.write_text(json.dumps(mine, indent=1))


# ---- outputs -----------------------------------------------------------------------------------


def _ema(train: dict[str, Any]) -> str:
    return f"{train['ema_rate']:g}" if train.get("ema") and train.get("ema_rate") is not None else \
        ("on" if train.get("ema") else "off")


def _train_of(study: dict[str, Any]) -> dict[str, Any]:
    """The settings the arms trained with: study.json's `train`, with the steps, batch and seed that
    a study written before StudyConfig held a TrainConfig kept in its `config`."""
    cfg, train = study["config"], dict(study.get("train") or study["config"])
    for key, old in (("steps", "steps"), ("global_batch_size", "batch_size"), ("seed", "seed")):
        train.setdefault(key, cfg.get(old))
    return train


def render_table(study: dict[str, Any]) -> str:
    """study.md: the arm x step table and the final row of every arm."""
    cfg = study["config"]
    train = _train_of(study)
    n = study["test_inputs"]
    lines = [f"# Adaptation study", "",
             f"{study['tasks']} tasks, {n} test inputs ({study['data'] or 'tasks given'}); checkpoint "
             f"`{study['checkpoint']}`; {train['steps']} steps of {train['global_batch_size']} rows, lr {train['lr']:g}, "
             f"embedding lr {train['puzzle_emb_lr']:g}, warm-up {train.get('warmup_steps')}, {cfg['num_variants']} "
             f"variants per task, K = {cfg['views']} views, EMA {_ema(train)}, seed {train['seed']}. pass@2 and oracle are counted per "
             "test input (the Kaggle way); demo exact is the share of demonstration pairs reproduced exactly; "
             f"fitted counts the tasks whose every demonstration pair the vote of K views answers (spending: "
             f"{cfg.get('spend', 'uniform')}).", "",
             "| arm | step | pass@2 | oracle | demo exact | demo token acc | demo loss | fitted |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]

    def row(arm: str, r: dict[str, Any]) -> str:
        p2, orc = round(r["pass@2"] * n), round(r["oracle"] * n)
        return (f"| {arm} | {r['step']} | {p2}/{n} ({r['pass@2']:.1%}) | {orc}/{n} ({r['oracle']:.1%}) | "
                f"{r['demo_exact_accuracy']:.3f} | {r['demo_token_accuracy']:.3f} | {r['demo_loss']:.3f} | "
                f"{r.get('fitted_tasks', '')} |")

    for arm, a in study["arms"].items():
        lines += [row(arm, r) for r in a["curve"]]
    lines += ["", "Final evaluation of each arm:", "",
              "| arm | step | pass@2 | oracle | demo exact | demo token acc | demo loss | fitted | wall |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for arm, a in study["arms"].items():
        if a["curve"]:
            lines.append(row(arm, a["curve"][-1]) + f" {_fmt(a['wall_s'])} |")
    return "\n".join(lines) + "\n"


def plot(study: dict[str, Any], path: Path) -> bool:
    """study.png: pass@2 and demonstration-pair exact accuracy against steps, one line per arm.
    Returns False (and writes nothing) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    steps = _train_of(study)["steps"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4), constrained_layout=True)
    for ax, key, title in ((axes[0], "pass@2", "test pass@2 (per test input)"),
                           (axes[1], "demo_exact_accuracy", "demonstration pairs solved exactly"),
                           (axes[2], "demo_loss", "demonstration-pair loss (as given)")):
        for arm, a in study["arms"].items():
            xs = [r["step"] for r in a["curve"]]
            ys = [r[key] for r in a["curve"]]
            if arm == "none" and xs:
                ax.plot([0, steps], [ys[0], ys[0]], "k--", label="none (un-adapted)")
            elif xs:
                ax.plot(xs, ys, marker="o", markersize=3, label=arm)
        ax.set_xlabel("optimiser steps")
        ax.set_title(title)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{study['tasks']} tasks, {study['test_inputs']} test inputs, K = {study['config']['views']}",
                 fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_outputs(study: dict[str, Any], out: Path) -> None:
    from trm_core.safe_io import write_atomic, write_json_atomic

    write_json_atomic(out / "study.json", study)
    write_atomic(out / "study.md", render_table(study))
    plot(study, out / "study.png")

