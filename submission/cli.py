"""The `trm` command of the notebook layer: report (the HTML page of a run, with the runner's timing
section when the folder holds one). The dry run, which renders the notebook, is bundle/cli.py's.

A plain click command; the `trm` console script (trm_cli) registers it on the core group.
"""

from __future__ import annotations

from pathlib import Path

import click

from trm_lab import TOP_CANDIDATES

def run_report(run_dir, out=None, top: int = TOP_CANDIDATES, problems: list[str] | None = None, run=None):
    """report.html for run_dir (`run`: its RunData, already read), with the timing section when the
    folder (or its trm-run/) holds a timing report, else when its run.json is the runner's record
    (a Kaggle output whose run had no time left to write the report); a timing report that cannot
    be read or drawn is left out and named in `problems`."""
    from submission.record import FORMAT
    from submission.report import timing_report, timing_section
    from trm_core import jsonio
    from trm_lab.report import run_file, write_report

    sections = []
    timing = run_file(run_dir, "timing-report.json")
    record = run.record if run is not None else None
    if timing is None and isinstance(record, dict) and record.get("format") == FORMAT:
        timing = run_file(run_dir, "run.json")
    if timing is not None:
        try:
            report = jsonio.load(timing, duplicates=[])
            if not isinstance(report, dict):
                raise ValueError(f"{timing}: expected a JSON object, got {type(report).__name__}")
            if timing.name == "run.json":
                report = timing_report(report)
            sections.append(timing_section(report))
        except Exception as e:  # noqa: BLE001 - any shape the renderer cannot draw: named, left out
            why = str(e) if isinstance(e, jsonio.JSONInputError) or str(e).startswith(str(timing)) else \
                f"{timing}: not drawn ({type(e).__name__}: {e})"
            click.echo(why, err=True)
            if problems is not None:
                problems.append(why)
    return write_report(run_dir, out, sections=sections, top=top, run=run)


@click.command("report")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "-o", "out", type=click.Path(dir_okay=False), default=None,
              help="Where to write the page (default: RUN_DIR/report.html).")
@click.option("--top", type=click.IntRange(1, 50), default=TOP_CANDIDATES, show_default=True,
              help="Vote candidates drawn per test input.")
@click.option("--challenges", type=click.Path(exists=True, dir_okay=False), default=None,
              help="The tasks, when RUN_DIR holds none (default: its challenges.json, or trm-run/challenges.json).")
@click.option("--solutions", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Their test outputs, to mark and score the attempts (default: RUN_DIR's solutions.json).")
def report_cmd(run_dir: str, out: str | None, top: int, challenges: str | None, solutions: str | None) -> None:
    """Draw the HTML report of RUN_DIR (a dry run, an evaluation, a study or a training run folder,
    or a downloaded Kaggle output: submission.json and trm-run/). A file that cannot be read is
    named (the page draws the rest) and the exit status is 1."""
    from trm_lab.report import load_run

    try:
        run = load_run(run_dir, challenges=challenges, solutions=solutions)
    except FileNotFoundError as e:
        raise click.ClickException(str(e)) from None
    if not (run.tasks or run.metrics or run.study or run.record):
        if run.unreadable:
            raise click.ClickException(f"{run.unreadable[0]}; nothing else to report in {run_dir}")
        raise click.ClickException(f"{run_dir}: nothing to report (no challenges.json, metrics.jsonl, study.json "
                                   "or run.json, here or in trm-run/)")
    timing: list[str] = []
    page = run_report(run_dir, out, top, timing, run)
    click.echo(page)
    problems = run.unreadable + timing
    if problems:
        for line in problems[1:]:
            click.echo(line, err=True)
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise click.ClickException(f"{problems[0]}{more}; {page} drawn without it")
