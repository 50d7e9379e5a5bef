"""The prediction commands of `trm`: predict (K views, vote, submission.json), evaluate (pass@K and
the coverage report against known solutions) and solve (flow 1: post-train, predict, vote, write).

predict and evaluate share `_voted` (tasks -> predictions -> vote); solve runs trm_core.pipeline.solve.
Defaults are read from PredictConfig (views, batch), TrainConfig and DataConfig (post-training).
"""

from __future__ import annotations

import contextlib
import signal
import threading

import click

from trm_cli.common import (apply, data_options, echo_err, load_checkpoint, load_task_set, raw_challenges_of,
                            recipe_settings, report_skipped)
from trm_core.config import RULES, PredictConfig
from trm_cli.train import fit_schedule, open_logger, posttrain_options, training_configs



def _view_options(batch_flag: str):
    """Views, ACT steps and the vote's options; `batch_flag` names the prediction batch (trm solve's
    --batch-size is the training batch, so there it is --predict-batch)."""
    def decorate(f):
        return apply([
            click.option("--views", type=int, default=PredictConfig.num_views, show_default=True,
                         help="Views per test input (K), the original included."),
            click.option(batch_flag, "predict_batch", type=int, default=PredictConfig.batch_size,
                         show_default=True, help="Rows per prediction forward."),
            click.option("--halt-steps", type=int, default=None,
                         help="ACT steps per view (default and most: the model's halt_max_steps)."),
            click.option("--exit", "exit_rule", type=click.Choice(["fixed", "q-halt", "stable"]), default="fixed",
                         show_default=True, help="When a view is read: after every step (fixed), at its first "
                         "q_halt > 0 (q-halt), or once its grid is unchanged for --stable-steps steps (stable)."),
            click.option("--stable-steps", type=int, default=PredictConfig.stable_steps,
                         show_default=True, help="Unchanged steps before --exit stable reads a view."),
            click.option("--round-views", type=int, default=PredictConfig.round_views, show_default=True,
                         help="Adaptive view count: views per round; a test input whose two attempts are settled "
                              "gets no more (0: every input gets --views)."),
            click.option("--settle-margin", type=int, default=PredictConfig.settle_margin,
                         show_default=True, help="With --round-views: also settle an input whose 2nd attempt leads "
                              "the 3rd by this many votes (0: only when the views left cannot change them)."),
            click.option("--rule", type=click.Choice(RULES), default="reference", show_default=True,
                         help="Ranking rule of the vote."),
            click.option("--fill", type=click.Choice(["fallback", "duplicate"]), default="fallback",
                         show_default=True, help="Second attempt when only one candidate exists."),
        ], f)
    return decorate


def _predict_options(f, several: bool = False):
    """The model and view options; `several`: --checkpoint may be given more than once (trm evaluate)."""
    more = " Repeat it to score several checkpoints on the same tasks and views." if several else ""
    return apply([
        click.option("--checkpoint", "ckpt_path", required=True, multiple=several,
                     help="Kit checkpoint directory, a reference step_N file (with --config), "
                          "hf:owner/repo/path/file, or a registry name (pretrained/registry.json)." + more),
        click.option("--config", default=None, help="Arch config of a reference checkpoint (file, preset or "
                     "registry name)."),
        _view_options("--batch-size"),
        click.option("--device", default=None),
        click.option("--seed", type=int, default=0, show_default=True),
    ], f)


def _evaluate_options(f):
    return _predict_options(f, several=True)


def _predict_config(opts: dict):
    from trm_core.config import PredictConfig

    try:
        return PredictConfig(num_views=opts["views"], batch_size=opts["predict_batch"], halt_steps=opts["halt_steps"],
                             exit_rule=opts["exit_rule"], stable_steps=opts["stable_steps"],
                             round_views=opts["round_views"], settle_margin=opts["settle_margin"], rule=opts["rule"])
    except ValueError as e:
        raise click.ClickException(str(e)) from None


def _voted(opts: dict, saved: str | None = None, need_solutions: bool = False, tasks=None, stop=None):
    """The tasks of --data (`tasks`: already loaded), their predictions (`saved`, else --checkpoint
    under --views; `stop()` ends them between batches) and the vote."""
    from trm_core.distributed import default_device
    from trm_core.pipeline import predict_views
    from trm_core.predictions import Predictions
    from trm_core.vote import vote

    if tasks is None:
        tasks = load_task_set(opts["data"], opts["solutions"], opts["split"], strict=False)
        report_skipped(tasks)
    missing = [t.id for t in tasks.tasks.values() if t.test_outputs is None]
    if need_solutions and missing:
        raise click.ClickException(f"no solutions for {len(missing)} task(s), e.g. {missing[:3]}: pass --solutions")
    if saved:
        try:
            preds = Predictions.load(saved)
        except ValueError as e:
            raise click.ClickException(str(e)) from None
    else:
        cfg = _predict_config(opts)
        if cfg.exit_rule != "fixed" or cfg.round_views:
            echo_err(f"settle: exit {cfg.exit_rule}" + (f" (stable {cfg.stable_steps} steps)" if cfg.exit_rule == "stable"
                     else "") + (f", rounds of {cfg.round_views} views, margin {cfg.settle_margin}, rule {cfg.rule}"
                                 if cfg.round_views else ", every input gets --views"))
        try:
            preds, _ = predict_views(load_checkpoint(opts["ckpt_path"], opts["config"]), tasks, cfg, seed=opts["seed"],
                                     device=opts["device"] or default_device(), stop=stop, log=echo_err)
        except ValueError as e:  # e.g. --halt-steps above the checkpoint's halt_max_steps
            raise click.ClickException(str(e)) from None
    return tasks, preds, vote(preds, opts["rule"])


def _fallback_first(out_path: str, raw: dict) -> None:
    """The submission for every task given, the test input as both attempts: written before any
    prediction, so whatever stops the command a valid file is there."""
    from trm_core.pipeline import write_answers

    try:
        write_answers(out_path, {}, raw)
    except OSError as e:
        raise click.ClickException(f"{out_path}: cannot write the submission: {e.strerror or e}") from None


def _no_usable_task(data: str, tasks, raw: dict, out_path: str) -> click.ClickException:
    """The loud ending of a command given no task it can use (its fallback output already written)."""
    why = f": {tasks.problems[0]}" if tasks.problems else ""
    more = f" (and {len(tasks.problems) - 1} more problem(s); trm tasks check lists them)" if len(tasks.problems) > 1 \
        else ""
    return click.ClickException(f"NO USABLE TASK in {data}{why}{more}; {out_path} holds only the fallback "
                                f"for the {len(raw)} task(s) it names")


@contextlib.contextmanager
def _stop_on_sigterm():
    """Yield a stop() that turns true once SIGTERM arrives, so prediction ends between batches and
    the views made so far are still voted and written (main thread only; elsewhere never true)."""
    got: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
    try:
        yield lambda: bool(got)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if got:
        echo_err("SIGTERM: prediction stopped; the views made so far were voted and written")


@click.command("predict")
@_predict_options
@data_options
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="submission.json to write.")
@click.option("--predictions", "preds_path", type=click.Path(dir_okay=False), default=None,
              help="Also save every view's prediction (.npz) for trm evaluate --predictions.")
def predict_cmd(out_path: str, preds_path: str | None, **opts) -> None:
    """Predict every test input under K augmented views, vote, and write a Kaggle submission.
    OUT always ends up holding an entry for every task given: the fallback (the test input) is
    written first and replaced by the voted answers; SIGTERM stops prediction and writes what it has."""
    from trm_core.pipeline import write_answers
    from trm_core.submission_file import build_submission

    tasks = load_task_set(opts["data"], opts["solutions"], opts["split"], strict=False)
    # every task given gets an entry: the model's answer, else the fallback (unreadable tasks too)
    raw = raw_challenges_of(opts["data"], opts["split"], tasks)
    _fallback_first(out_path, raw)
    if not tasks.tasks:
        report_skipped(tasks, raising=False)
        raise _no_usable_task(opts["data"], tasks, raw, out_path)
    report_skipped(tasks)
    with _stop_on_sigterm() as stop:
        tasks, preds, voted = _voted(opts, tasks=tasks, stop=stop)
    if preds_path:
        preds.save(preds_path)
    write_answers(out_path, build_submission(voted, {t: raw[t] for t in tasks.tasks}, fill=opts["fill"]), raw)
    click.echo(out_path)


@click.command("evaluate")
@_evaluate_options
@data_options
@click.option("--predictions", "preds_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Score saved predictions instead of running the model (--checkpoint is then ignored).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None,
              help="Write pass@K and the coverage report as JSON.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Also write a run folder: report.html, predictions.npz, submission.json, coverage.json and the "
                   "tasks (challenges.json, solutions.json), so `trm report` can redraw it. With several "
                   "--checkpoint: one such folder per checkpoint, and checkpoints.json comparing them.")
def evaluate_cmd(preds_path: str | None, report_path: str | None, out_dir: str | None, **opts) -> None:
    """pass@K (per task and per test output) and the coverage report against known solutions.
    With several --checkpoint, each is scored on the same tasks and views, and one table compares them."""
    import json

    from trm_core.evaluate import coverage

    specs = opts.pop("ckpt_path")
    if len(specs) > 1:
        if preds_path:
            raise click.ClickException("--predictions scores one saved set of predictions; give one --checkpoint "
                                       "with it, or several without it")
        _evaluate_several(specs, opts, report_path, out_dir)
        return
    opts["ckpt_path"] = specs[0]
    tasks, preds, voted = _voted(opts, saved=preds_path, need_solutions=True)
    solved = {t.id: [o.tolist() for o in t.test_outputs] for t in tasks.tasks.values()}
    report = coverage(voted, solved, skip_empty=True)
    click.echo(report.render())
    if report_path:
        with open(report_path, "w") as f:
            json.dump(report.to_json(), f, indent=1)
    if out_dir:
        page = _evaluation_folder(out_dir, tasks, preds, voted, report, opts["fill"])
        echo_err(f"report: {page}")


def _evaluate_several(specs: tuple[str, ...], opts: dict, report_path: str | None, out_dir: str | None) -> None:
    """Score each checkpoint on the same tasks and views; print one table (pass@K and oracle per test
    output, the Kaggle way); --report holds every report, --out a folder per checkpoint plus
    checkpoints.json."""
    import json
    import re
    from pathlib import Path

    from trm_core.evaluate import coverage
    from trm_core.safe_io import write_atomic

    tasks = load_task_set(opts["data"], opts["solutions"], opts["split"], strict=False)
    report_skipped(tasks)
    solved = None
    rows, reports = [], []
    for i, spec in enumerate(specs, start=1):
        echo_err(f"checkpoint {i}/{len(specs)}: {spec}")
        tasks, preds, voted = _voted({**opts, "ckpt_path": spec}, need_solutions=True, tasks=tasks)
        solved = solved or {t.id: [o.tolist() for o in t.test_outputs] for t in tasks.tasks.values()}
        report = coverage(voted, solved, skip_empty=True)
        row = {"checkpoint": spec, "pass@1": report.pass_at(1), "pass@2": report.pass_at(2),
               "oracle": report.oracle(), "test_inputs": len(report.pairs)}
        if out_dir:
            # numbered, so two checkpoints both named .../checkpoint get folders of their own
            row["folder"] = f"{i:02d}-" + re.sub(r"[^A-Za-z0-9._-]+", "_", spec.strip("/"))[-60:]
            page = _evaluation_folder(str(Path(out_dir) / row["folder"]), tasks, preds, voted, report, opts["fill"])
            echo_err(f"report: {page}")
        rows.append(row)
        reports.append({"checkpoint": spec, **report.to_json()})
    width = max(len("checkpoint"), *(len(r["checkpoint"]) for r in rows))
    click.echo(f"{len(specs)} checkpoints on {len(tasks)} tasks, {opts['views']} views, rule {opts['rule']} "
               f"(per test output, the Kaggle way)")
    click.echo(f"{'checkpoint':{width}}  {'pass@1':>7}  {'pass@2':>7}  {'oracle':>7}  {'test inputs':>11}")
    for r in rows:
        click.echo(f"{r['checkpoint']:{width}}  {r['pass@1']:>7.3f}  {r['pass@2']:>7.3f}  {r['oracle']:>7.3f}  "
                   f"{r['test_inputs']:>11}")
    if report_path:
        with open(report_path, "w") as f:
            json.dump({"checkpoints": reports}, f, indent=1)
    if out_dir:
        summary = {"tasks": len(tasks), "views": opts["views"], "rule": opts["rule"], "way": "kaggle",
                   "checkpoints": rows}
        write_atomic(Path(out_dir) / "checkpoints.json", json.dumps(summary, indent=1) + "\n")


def _evaluation_folder(out_dir: str, tasks, preds, voted, report, fill: str):
    """The files `trm report` reads, then report.html, in out_dir."""
    import json
    from pathlib import Path

    from trm_core.pipeline import challenges_of
    from trm_lab.report import PREDICTIONS_FILE, write_report
    from trm_core.safe_io import write_atomic
    from trm_core.submission_file import build_submission, write_submission
    from trm_core.tasks import write_kaggle

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_kaggle(tasks.tasks.values(), out / "challenges.json", out / "solutions.json")
    preds.save(out / PREDICTIONS_FILE)
    challenges = challenges_of(tasks)
    write_submission(out / "submission.json", build_submission(voted, challenges, fill=fill), challenges)
    write_atomic(out / "coverage.json", json.dumps(report.to_json(), indent=1) + "\n")
    return write_report(out)


@click.command("solve")
@posttrain_options
@_view_options("--predict-batch")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Output folder: submission.json, predictions.npz, posttrain/ (checkpoint/, metrics.jsonl).")
def solve_cmd(ckpt_path: str, config: str | None, data: str, solutions: str | None, split: str | None, mode: str,
              freeze_fraction: float, lora_rank: int, lora_alpha: float, init: str, out_dir: str, **opts) -> None:
    """Flow 1: post-train a checkpoint on the tasks' demonstration pairs, predict under K views, vote,
    write OUT/submission.json (--steps 0: predict with the checkpoint as it is)."""
    import time

    from trm_core.distributed import process_group

    ckpt = load_checkpoint(ckpt_path, config)
    tasks = load_task_set(data, solutions, split, strict=False)
    if not tasks.tasks:  # the output folder still gets its submission: the fallback of every task named
        from pathlib import Path

        from trm_core.pipeline import SUBMISSION_FILE

        raw = raw_challenges_of(data, split, tasks)
        _fallback_first(str(Path(out_dir) / SUBMISSION_FILE), raw)
        report_skipped(tasks, raising=False)
        raise _no_usable_task(data, tasks, raw, str(Path(out_dir) / SUBMISSION_FILE))
    report_skipped(tasks)
    train_cfg, data_cfg, fit = None, None, None
    if opts["steps"] != 0:
        from dataclasses import asdict

        from trm_core.config import describe_settings

        chosen = recipe_settings(ckpt, opts["optimizer"], opts["ema"])
        extra = {"freeze_fraction": freeze_fraction, "lora_rank": lora_rank, "lora_alpha": lora_alpha}
        train_cfg, data_cfg = training_configs(tasks, mode, opts, ckpt.config.canvas, train_extra=extra, chosen=chosen)
        fit = fit_schedule(opts, train_cfg.steps)
        echo_err(f"post-training settings: {describe_settings(asdict(train_cfg))}; spending "
                 + (f"per-task, a fit check every {fit.every} steps" if fit else "uniform"))
    predict_cfg = _predict_config(opts)
    deadline = time.time() + 60 * opts["max_minutes"] if opts["max_minutes"] else None
    with process_group(opts["device"]) as (rank, world, device):
        if world > 1:
            raise click.ClickException("trm solve runs as one process: under torchrun, run trm posttrain, "
                                       "then trm predict with its checkpoint")
        solved = _solve(tasks, ckpt, out_dir, train_cfg, data_cfg, predict_cfg, opts, init, str(device),
                        raw_challenges_of(data, split, tasks), deadline, fit)
    click.echo(f"{solved.submission}  ({len(solved.answers)} tasks, {len(solved.predictions)} views predicted, "
               f"{'adapted' if solved.adapted else 'un-adapted'})")
    labelled = {t.id: [o.tolist() for o in t.test_outputs] for t in tasks if t.test_outputs is not None}
    if labelled:
        from trm_core.evaluate import score_submission

        click.echo(f"pass@2 {score_submission(solved.answers, labelled):.3f} over {len(labelled)} task(s) "
                   "with solutions")


def _solve(tasks, ckpt, out_dir, train_cfg, data_cfg, predict_cfg, opts: dict, init: str, device: str,
           raw: dict, deadline: float | None, fit=None):
    """pipeline.solve with the metrics logger of the post-training run open around it."""
    from dataclasses import asdict
    from pathlib import Path

    from trm_core.pipeline import POSTTRAIN_DIR, solve
    from trm_core.config import DataConfig

    logger = None
    if train_cfg is not None:
        config = {"mode": train_cfg.mode, "tasks": len(tasks), "train": asdict(train_cfg), "data": asdict(data_cfg)}
        logger = open_logger(opts, str(Path(out_dir) / POSTTRAIN_DIR), config)
    try:
        return solve(tasks, ckpt, out_dir, train_cfg, predict_cfg, data=data_cfg or DataConfig(), challenges=raw,
                     init=init, rule=opts["rule"], fill=opts["fill"], seed=opts["seed"], device=device,
                     train_deadline=deadline, log=echo_err, logger=logger, fit=fit)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    finally:
        if logger is not None:
            logger.close()
