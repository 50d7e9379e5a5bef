"""The training commands of `trm`: pretrain (a fresh model on public tasks), posttrain (adapt a
checkpoint to new tasks on their demonstration pairs) and study (post-training arms side by side).

Their option groups (--steps, --lr, ...) are shared with `trm solve`; every default is read from
TrainConfig, DataConfig or StudyConfig, never typed again here.
"""

from __future__ import annotations

import os

import click

from trm_cli.common import (apply, data_options, echo_err, load_checkpoint, load_task_set, locate_checkpoint,
                            log_options, logger_spec, recipe_settings, report_skipped)
from trm_core.config import (INITS, OPTIMIZERS, POST_MODE, POSTTRAIN_MODES, RULES, SPENDING, DataConfig,
                             StudyConfig, TrainConfig)

STUDY = StudyConfig()  # a study's defaults (its `train` is the recipe's for the default steps and batch)


RECIPE = "[default: the post-training recipe's, see docs/posttraining.md]"


def adapt_options(f):
    """How the post-training modes adapt (trm posttrain, trm solve, trm study)."""
    return apply([
        click.option("--freeze-fraction", type=float, default=None,
                     help=f"embeddings-then-full: share of steps with the trunk frozen {RECIPE}."),
        click.option("--lora-rank", type=int, default=TrainConfig.lora_rank, show_default=True),
        click.option("--lora-alpha", type=float, default=TrainConfig.lora_alpha, show_default=True),
        click.option("--init", type=click.Choice(INITS), default=StudyConfig.init,
                     show_default=True, help="Initial embedding rows of the new tasks."),
    ], f)


PRETRAIN_OR_RECIPE = ("[default: pretrain, TrainConfig's (the reference's pre-training values); posttrain and "
                      "solve, the post-training recipe's for the planned steps, see docs/posttraining.md]")


def spend_options(f):
    """How trm posttrain and trm solve spend their steps across tasks (docs/posttraining.md: per-task spending)."""
    return apply([
        click.option("--spend", type=click.Choice(SPENDING), default="uniform", show_default=True,
                     help="uniform: every task drawn alike; per-task: every task's demonstration pairs are checked "
                          "through its views and a fitted task leaves the batches, its share going to the others."),
        click.option("--fit-every", type=click.IntRange(1), default=None,
                     help="per-task: steps between fit checks [default: the planned steps / 20, at least 25]."),
        click.option("--fit-patience", type=click.IntRange(1), default=2, show_default=True,
                     help="per-task: consecutive fitted checks before a task leaves the batches."),
    ], f)


def fit_schedule(opts: dict, steps: int):
    """The FitSchedule the --spend options describe for a run of `steps` (None: uniform); pops them."""
    spend, every, patience = opts.pop("spend"), opts.pop("fit_every"), opts.pop("fit_patience")
    if spend == "uniform":
        return None
    from trm_core.config import fit_every
    from trm_core.fit import FitSchedule

    return FitSchedule(every=every or fit_every(steps), patience=patience)


def train_options(f):
    """The optimiser, data and run options of trm pretrain, trm posttrain and trm solve."""
    return log_options(apply([
        click.option("--steps", type=int, default=None, help="Optimiser steps (or give --epochs)."),
        click.option("--epochs", type=int, default=None, help="Epochs over the tasks; converted to steps."),
        click.option("--batch-size", "batch_size", type=int, default=None,
                     help=f"Global batch {PRETRAIN_OR_RECIPE}."),
        click.option("--lr", type=float, default=None, help=f"Trunk learning rate {PRETRAIN_OR_RECIPE}."),
        click.option("--puzzle-emb-lr", type=float, default=None,
                     help=f"Puzzle-embedding learning rate {PRETRAIN_OR_RECIPE}."),
        click.option("--weight-decay", type=float, default=TrainConfig.weight_decay, show_default=True),
        click.option("--warmup", type=int, default=None, help=f"Warm-up steps {PRETRAIN_OR_RECIPE}."),
        click.option("--lr-min-ratio", type=float, default=None,
                     help=f"1 = constant after warm-up {PRETRAIN_OR_RECIPE}."),
        click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=None,
                     help="AdamATan2 variant [default: the checkpoint's recipe (the one it was trained with); "
                          "'original' when it records none, or for pretrain]."),
        click.option("--ema/--no-ema", default=None,
                     help="Keep an EMA of the trained weights [default: the checkpoint's recipe; on when it "
                          "records none, or for pretrain]."),
        click.option("--ema-rate", type=float, default=None, help=f"EMA rate {PRETRAIN_OR_RECIPE}."),
        click.option("--variants", "num_variants", type=int, default=DataConfig.num_variants,
                     show_default=True, help="Augmented variants per task (one embedding row each)."),
        click.option("--translate/--no-translate", default=DataConfig.translate, show_default=True),
        click.option("--seed", type=int, default=TrainConfig.seed, show_default=True),
        click.option("--device", default=None, help="cpu, cuda (default: cuda when available)."),
        click.option("--micro-batch", "micro_batch", type=click.IntRange(min=0), default=None,
                     help="Rows per forward/backward on each process; gradients accumulate to the global batch "
                          "[default: the most that fits the GPU's memory, measured; CPU: the whole local batch]."),
        click.option("--compile/--no-compile", "compile_", default=None,
                     help="torch.compile the recursion, falling back to eager if compiling fails "
                          "[default: on CUDA only]."),
        click.option("--compile-limit", "compile_limit_s", type=click.FloatRange(min=0),
                     default=TrainConfig.compile_limit_s, show_default=True,
                     help="Seconds the first compiled step may take before it is redone eagerly (0: no limit)."),
        click.option("--checkpoint-activations", is_flag=True,
                     help="Recompute the gradient-carrying cycle in backward: less memory, about 30% more compute."),
        click.option("--log-every", type=int, default=TrainConfig.log_every, show_default=True),
        click.option("--checkpoint-every", type=int, default=TrainConfig.checkpoint_every,
                     show_default=True, help="Steps between resumable checkpoints (0: at the end or on stop only)."),
        click.option("--max-minutes", type=float, default=None, help="Stop training cleanly after this long."),
    ], f))


def run_folder_option(f):
    return click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
                        help="Run folder: checkpoint/, train_state.pt (resumable), metrics.jsonl.")(f)


# the options train_options leaves unset (None) when not given, and the TrainConfig fields they set
_RECIPE_OPTIONS = {"batch_size": "global_batch_size", "lr": "lr", "puzzle_emb_lr": "puzzle_emb_lr",
                   "warmup": "warmup_steps", "lr_min_ratio": "lr_min_ratio", "ema_rate": "ema_rate",
                   "freeze_fraction": "freeze_fraction"}


def training_configs(tasks, mode: str, opts: dict, canvas: int, include_test_pairs: bool = False,
                     train_extra: dict | None = None, chosen=None):
    """The TrainConfig and DataConfig the options describe (--epochs converted to steps).

    pretrain: an option not given takes TrainConfig's default. A post-training mode: the
    post-training recipe for the planned steps (trm_core.config.post_config, the variant and EMA
    `chosen` from the checkpoint), the options given win."""
    from dataclasses import fields

    from trm_core.batches import TrainSampler
    from trm_core.config import POST_BATCH
    from trm_core.config import DataConfig
    from trm_core.config import TrainConfig, post_config
    from trm_core.variants import Variants

    data = DataConfig(num_variants=opts["num_variants"], variant_seed=opts["seed"], sampler_seed=opts["seed"],
                      translate=opts["translate"], include_test_pairs=include_test_pairs)
    extra = dict(train_extra or {})
    given = {field: extra.pop(k, opts.get(k)) for k, field in _RECIPE_OPTIONS.items()}
    given = {k: v for k, v in given.items() if v is not None}
    batch = given.get("global_batch_size")
    if batch is None:
        batch = TrainConfig.global_batch_size if mode == "pretrain" else POST_BATCH[_device_kind(opts["device"])]
    steps, epochs = opts["steps"], opts["epochs"]
    if (steps is None) == (epochs is None):
        raise click.ClickException("give exactly one of --steps and --epochs")
    if steps is None:
        examples = TrainSampler(Variants(tasks, 0), 1, canvas=canvas,
                                include_test_pairs=include_test_pairs).examples_per_epoch
        steps = max(1, epochs * examples // batch)
    rest = dict(weight_decay=opts["weight_decay"], seed=opts["seed"], log_every=opts["log_every"],
                checkpoint_every=opts["checkpoint_every"], compile=opts["compile_"],
                compile_limit_s=opts["compile_limit_s"],
                micro_batch_size=-1 if opts["micro_batch"] is None else opts["micro_batch"],
                checkpoint_activations=opts["checkpoint_activations"], **extra)
    try:
        if mode == "pretrain":
            defaults = {f.name: f.default for f in fields(TrainConfig) if f.name in _RECIPE_OPTIONS.values()}
            optimizer = TrainConfig.optimizer if opts["optimizer"] is None else opts["optimizer"]
            ema = TrainConfig.ema if opts["ema"] is None else opts["ema"]
            cfg = TrainConfig(steps=steps, mode=mode, optimizer=optimizer, ema=ema,
                              **{**defaults, **given, "global_batch_size": batch}, **rest)
        else:
            cfg = post_config(steps, batch, mode, chosen, **{k: v for k, v in given.items() if k != "global_batch_size"},
                              **rest)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    return cfg, data


def _device_kind(device: str | None) -> str:
    """"cuda" or "cpu": the device --device names, or the one a run would pick."""
    if device:
        return "cuda" if device.startswith("cuda") else "cpu"
    from trm_core.distributed import default_device

    return "cuda" if str(default_device()).startswith("cuda") else "cpu"


def open_logger(opts: dict, out_dir: str, config: dict):
    spec = logger_spec(opts["log_to"], opts["wandb_project"], opts["wandb_mode"])
    try:
        return spec.open(out_dir, config, name=os.path.basename(os.path.normpath(out_dir)))
    except ImportError as e:
        raise click.ClickException(str(e)) from None


def _run_training(recipe, tasks, mode: str, opts: dict, canvas: int, include_test_pairs: bool = False,
                  train_extra: dict | None = None, chosen=None, spend: dict | None = None, **recipe_kwargs) -> None:
    import time
    from dataclasses import asdict

    from trm_core.config import describe_settings
    from trm_core.distributed import process_group
    from trm_core.train import ResumeError

    cfg, data = training_configs(tasks, mode, opts, canvas, include_test_pairs, train_extra, chosen)
    if spend is not None:
        recipe_kwargs["fit"] = fit_schedule(spend, cfg.steps)
    deadline = time.time() + 60 * opts["max_minutes"] if opts["max_minutes"] else None
    with process_group(opts["device"]) as (rank, world, device):
        if rank == 0:
            echo_err(f"{mode}: {len(tasks)} tasks, {cfg.steps} steps of {cfg.global_batch_size} on {world} x {device}")
            if mode != "pretrain":
                fit = recipe_kwargs.get("fit")
                echo_err(f"post-training settings: {describe_settings(asdict(cfg))}; spending "
                         + (f"per-task, a fit check every {fit.every} steps" if fit else "uniform"))
        config = {"mode": mode, "tasks": len(tasks), "train": asdict(cfg), "data": asdict(data)}
        logger = open_logger(opts, opts["out_dir"], config) if rank == 0 else None
        try:
            result = recipe(tasks=tasks, train_cfg=cfg, data=data, out_dir=opts["out_dir"], device=device,
                            deadline=deadline, logger=logger, **recipe_kwargs)
        except ResumeError as e:  # a damaged train_state.pt in --out: its message says what to do
            raise click.ClickException(str(e)) from None
        finally:
            if logger is not None:
                logger.close()
        if rank == 0:
            state = "stopped early" if result.stopped_early else "done"
            click.echo(f"{result.checkpoint}  (step {result.steps_done}, {state}, "
                       f"{result.samples_per_s:.1f} samples/s, micro-batch {result.micro_batch}, "
                       f"compile {result.compile})")


@click.command("pretrain")
@data_options
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
@train_options
@run_folder_option
def pretrain_cmd(data: str, solutions: str | None, split: str | None, preset: str, canvas: int | None,
                 include_test_pairs: bool, max_side: int | None, exclude: tuple[str, ...], export_dir: str | None,
                 **opts) -> None:
    """Pre-train a fresh TRM or HRM (by --preset) on public tasks.

    Multi-GPU: torchrun --nproc-per-node 4 -m trm_cli pretrain ... (each process takes its
    slice of every global batch).
    """
    from trm_core import checkpoint
    from trm_core.model import TRMConfig
    from trm_core.recipes import pretrain
    from trm_core.tasks import TaskSet

    try:
        cfg = TRMConfig.from_name(preset, **({"canvas": canvas} if canvas else {}))
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    tasks = load_task_set(data, solutions, split, strict=False, max_side=max_side or min(30, cfg.canvas - 1))
    dropped = _excluded(tasks, exclude)
    if dropped:
        tasks = TaskSet({k: v for k, v in tasks.tasks.items() if k not in dropped}, tasks.problems)
    report_skipped(tasks)
    source = data + (f" (max side {max_side or cfg.canvas - 1}, excluding {len(dropped)} ids)" if dropped else "")
    _run_training(pretrain, tasks, "pretrain", opts, cfg.canvas, include_test_pairs, model_cfg=cfg, source=source)
    if export_dir and os.environ.get("RANK", "0") == "0":
        out = checkpoint.convert(os.path.join(opts["out_dir"], "checkpoint"), None, export_dir)
        click.echo(f"slim copy: {out}")


def _excluded(tasks, paths: tuple[str, ...]) -> set[str]:
    """Ids of `tasks` that one of the task files in `paths` names, or that share a pair with one of them."""
    from trm_core.tasks import task_pairs

    ids: set[str] = set()
    keys: set[bytes] = set()
    for path in paths:
        found = load_task_set(path, _solutions_beside(path), None, strict=False)
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


def checkpoint_options(f):
    return apply([
        click.option("--checkpoint", "ckpt_path", required=True,
                     help="Kit checkpoint directory, a reference step_N file (with --config), "
                          "hf:owner/repo/path/file, or a registry name (pretrained/registry.json)."),
        click.option("--config", default=None,
                     help="Arch config of a reference checkpoint (file, preset or registry name)."),
    ], f)


def mode_option(f):
    return click.option("--mode", type=click.Choice(POSTTRAIN_MODES),
                        default=POST_MODE, show_default=True, help="Post-training mode.")(f)


def posttrain_options(f):
    """What a post-training run is given: the checkpoint, the tasks, the mode and how it adapts, the
    optimiser and run options, how the steps are spent (trm posttrain and trm solve alike)."""
    return apply([checkpoint_options, data_options, mode_option, adapt_options, train_options, spend_options], f)


@click.command("posttrain")
@posttrain_options
@run_folder_option
def posttrain_cmd(ckpt_path: str, config: str | None, data: str, solutions: str | None, split: str | None,
                  mode: str, freeze_fraction: float, lora_rank: int, lora_alpha: float, init: str, **opts) -> None:
    """Adapt a checkpoint to new tasks on their demonstration pairs (test-time training)."""
    from trm_core.recipes import posttrain

    ckpt = load_checkpoint(ckpt_path, config)
    tasks = load_task_set(data, solutions, split, strict=False)
    report_skipped(tasks)
    chosen = recipe_settings(ckpt, opts["optimizer"], opts["ema"])
    _run_training(posttrain, tasks, mode, opts, ckpt.config.canvas, ckpt=ckpt, source=data, init=init,
                  train_extra={"freeze_fraction": freeze_fraction, "lora_rank": lora_rank, "lora_alpha": lora_alpha},
                  chosen=chosen, spend={k: opts.pop(k) for k in ("spend", "fit_every", "fit_patience")})


def _study_options(f):
    return apply([
        click.option("--arms", default=",".join(StudyConfig.arms), show_default=True,
                     help="Comma-separated arms: none, full, embeddings, embeddings-then-full, lora, scratch."),
        click.option("--steps", type=click.IntRange(1), default=STUDY.steps, show_default=True,
                     help="Optimiser steps per trained arm."),
        click.option("--eval-every", type=click.IntRange(1), default=StudyConfig.eval_every,
                     show_default=True, help="Steps between evaluations (the last step is always evaluated)."),
        click.option("--views", type=click.IntRange(1), default=StudyConfig.views, show_default=True,
                     help="K: views per test input, the original included (at most --variants + 1)."),
        click.option("--batch-size", type=click.IntRange(1), default=STUDY.batch_size,
                     show_default=True, help="Global training batch."),
        click.option("--variants", "num_variants", type=click.IntRange(0), default=StudyConfig.num_variants,
                     show_default=True, help="Augmented variants per task (one embedding row each)."),
        click.option("--lr", type=float, default=None, help=f"Trunk learning rate, scratch's too {RECIPE}."),
        click.option("--puzzle-emb-lr", type=float, default=None, help=f"Embedding-row learning rate {RECIPE}."),
        click.option("--weight-decay", type=float, default=STUDY.train.weight_decay, show_default=True),
        click.option("--warmup", type=click.IntRange(0), default=None, help=f"Warm-up steps {RECIPE}."),
        click.option("--lr-min-ratio", type=float, default=None, help=f"1 = constant after warm-up {RECIPE}."),
        click.option("--ema/--no-ema", default=None,
                     help="Train and evaluate the EMA of the trained weights [default: the checkpoint's recipe]."),
        click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=None,
                     help="AdamATan2 variant [default: the checkpoint's recipe; 'original' when it records none]."),
        click.option("--ema-rate", type=float, default=None, help=f"EMA rate {RECIPE}."),
        adapt_options,
        click.option("--translate/--no-translate", default=StudyConfig.translate, show_default=True),
        click.option("--rule", type=click.Choice(RULES),
                     default=StudyConfig.rule, show_default=True, help="Ranking rule of the vote."),
        click.option("--seed", type=int, default=STUDY.seed, show_default=True),
        click.option("--spend", type=click.Choice(SPENDING), default=StudyConfig.spend,
                     show_default=True, help="uniform: every task drawn alike; per-task: a task whose demonstration "
                                             "pairs are fitted leaves the batches (docs/posttraining.md: per-task spending)."),
        click.option("--fit-every", type=click.IntRange(1), default=StudyConfig.fit_every,
                     show_default=True, help="per-task: steps between fit checks."),
        click.option("--fit-patience", type=click.IntRange(1), default=StudyConfig.fit_patience,
                     show_default=True, help="per-task: consecutive fitted checks before a task leaves the batches."),
        click.option("--jobs", type=click.IntRange(1), default=1, show_default=True,
                     help="Arms trained at once, in separate processes (CPU threads are split among them)."),
        click.option("--device", default=None, help="cpu, cuda (default: cuda when available)."),
        click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
                     help="Study folder: study.json, study.md, study.png, report.html, arms/<arm>/ "
                          "(resumed when it exists)."),
    ], f)


@click.command("study")
@checkpoint_options
@data_options
@_study_options
@log_options
def study_cmd(ckpt_path: str, config: str | None, data: str, solutions: str | None, split: str | None,
              log_to: tuple[str, ...], wandb_project: str, wandb_mode: str, arms: str, jobs: int,
              device: str | None, out_dir: str, **settings) -> None:
    """Post-train a checkpoint on held-out tasks under several arms and follow fit and pass@2 against steps."""
    from trm_core.config import post_config
    from trm_core.distributed import default_device
    from trm_lab.study import render_table, run_study

    path, config, _ = locate_checkpoint(ckpt_path, config)
    ckpt = load_checkpoint(ckpt_path, config)  # fail early on a bad checkpoint
    tasks = load_task_set(data, solutions, split, strict=False, max_side=ckpt.config.canvas - 1)
    report_skipped(tasks)
    settings["warmup_steps"] = settings.pop("warmup")
    # the checkpoint's recipe (its variant, EMA and recorded rates) is read here, where a registry
    # name is still known, and becomes the arms' shared TrainConfig (they load the weights by path)
    chosen = recipe_settings(ckpt, settings.pop("optimizer"), settings.pop("ema"))
    steps, batch = settings.pop("steps"), settings.pop("batch_size")
    given = {k: settings.pop(k) for k in _RECIPE_OPTIONS.values() if k in settings}
    given = {k: v for k, v in given.items() if v is not None}
    given.update({k: settings.pop(k) for k in ("weight_decay", "lora_rank", "lora_alpha", "seed")})
    ckpt_path = str(path)
    try:
        train = post_config(steps, batch, POST_MODE, chosen, **given)
        cfg = StudyConfig(train=train, arms=tuple(a.strip() for a in arms.split(",") if a.strip()), **settings)
        metrics_to = logger_spec(log_to, wandb_project, wandb_mode)
        metrics_to.check()
        study = run_study(ckpt_path, tasks, cfg, out_dir, config=config, source=data,
                          device=device or default_device(), jobs=jobs, metrics_to=metrics_to)
    except (ImportError, ValueError) as e:  # ImportError: a --log-to library that is not installed
        raise click.ClickException(str(e)) from None
    click.echo(render_table(study))
