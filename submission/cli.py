"""The `trm` command of the notebook layer: report (the HTML page of a run, with the runner's timing
section when the folder holds one). The dry run, which renders the notebook, is bundle/cli.py's.

A plain click command; the `trm` console script (trm_cli) registers it on the core group.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from trm_core.report import TOP_CANDIDATES

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
