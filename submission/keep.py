"""What a run keeps for afterwards: the files `trm report` draws a downloaded Kaggle output from,
written into `<working>/trm-run/` beside run.json and plan.json.

  challenges.json            the test challenges answered (a copy: a downloaded output holds no input)
  metrics.jsonl              the post-training log, one JSON object per logged interval
  predictions.npz            every view the final vote used (trm_core.predictions, deflated)
  baseline-predictions.npz   the un-adapted model's views (the baseline pass, or its fill-in)
  packages.txt               the live image's packages as `pip freeze` writes them (importlib.metadata:
                             no subprocess), with the Python version on the first line
  timing-report.json, .txt   the timing report (submission/report.py) of the final run.json; the GPU
                             names are in it and in run.json (environment.hardware.gpu_names)

Input: where each comes from (`Sources`), the time by which keeping must be over, a clock.
Output: the files, and a record {name: bytes written, or "skipped: why"} that run.json keeps
under "kept". Keeping never risks the submission, which is final before it starts, nor the
deadline: each file is estimated first (its bytes at KEEP_RATE; the predictions also at the
measured cost of the final vote, which read the same shards) and written only when twice the
estimate fits before `until`; the package list stops where `until` falls. Nothing raises: a
file that cannot be written is named in the record. A file of an earlier run in the same folder
is removed first, so the folder never mixes two runs.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from submission.record import strict_dumps
from trm_core.safe_io import write_atomic

CHALLENGES, METRICS, PACKAGES = "challenges.json", "metrics.jsonl", "packages.txt"
PREDICTIONS, BASELINE = "predictions.npz", "baseline-predictions.npz"  # trm_lab.report's names
TIMING_JSON, TIMING_TEXT = "timing-report.json", "timing-report.txt"
KEPT = (CHALLENGES, METRICS, PACKAGES, PREDICTIONS, BASELINE, TIMING_JSON, TIMING_TEXT)
KEEP_RATE = 10e6  # bytes per second a copy or a deflate is assumed to manage at worst (measured: 6 MB/s deflating on a loaded CPU)
FIXED_S = 0.05  # and what any file costs besides its bytes (open, fsync, rename)
MAX_COPY_BYTES = 256 << 20  # a challenges file or training log larger than this is not copied


@dataclass(frozen=True)
class Sources:
    """Where each kept file comes from (None or []: the run has none)."""

    challenges: Path | None = None
    metrics: Path | None = None
    predictions: list[str] = field(default_factory=list)  # shard files of the final vote
    baseline: list[str] = field(default_factory=list)  # shard files of the un-adapted model
    vote_s: float = 0.0  # the measured cost of reading and voting these shards (the final vote's)


def keep(run_dir: Path, src: Sources, until: float, clock: Callable[[], float],
         log: Callable[[str], None]) -> dict[str, Any]:
    """Write what fits before `until` into run_dir; returns {name: bytes or "skipped: why"}."""
    kept: dict[str, Any] = {}
    for name in KEPT:
        _remove(run_dir / name)

    def fits(name: str, estimate_s: float) -> bool:
        left = until - clock()
        if left >= 2 * estimate_s:
            return True
        kept[name] = f"skipped: {left:.1f} s left, {estimate_s:.2f} s estimated (twice that is needed)"
        return False

    def attempt(name: str, write: Callable[[], None]) -> None:
        try:
            write()
            kept[name] = (run_dir / name).stat().st_size
        except Exception as e:  # noqa: BLE001 - the record names it; the run is over and valid
            kept[name] = f"skipped: {type(e).__name__}: {e}"
            _remove(run_dir / name)

    for name, path in ((METRICS, src.metrics), (CHALLENGES, src.challenges)):
        size = _size(path)
        if size is None:
            kept[name] = "skipped: the run has none"
        elif size > MAX_COPY_BYTES:
            kept[name] = f"skipped: {size} bytes, more than {MAX_COPY_BYTES}"
        elif fits(name, FIXED_S + size / KEEP_RATE):
            attempt(name, lambda p=path, n=name: _copy(p, run_dir / n))
    if fits(PACKAGES, FIXED_S):
        attempt(PACKAGES, lambda: write_atomic(run_dir / PACKAGES, packages(until, clock)))
    for name, files in ((PREDICTIONS, src.predictions), (BASELINE, src.baseline)):
        sizes = [s for s in (_size(Path(f)) for f in files) if s is not None]
        if not sizes:
            kept[name] = "skipped: the run has none"
        elif fits(name, FIXED_S + src.vote_s + sum(sizes) / KEEP_RATE):
            attempt(name, lambda f=files, n=name: _save_predictions(f, run_dir / n))
    saved = sum(v for v in kept.values() if isinstance(v, int))
    skipped = [f"{k} ({v.removeprefix('skipped: ')})" for k, v in kept.items() if isinstance(v, str)]
    log(f"kept in {run_dir}: {saved / 1e6:.2f} MB" + (f"; not kept: {'; '.join(skipped)}" if skipped else ""))
    return kept


def write_timing(run_dir: Path, record: dict[str, Any]) -> dict[str, Any]:
    """The timing report of `record` (run.json's content) as JSON and text in run_dir; returns
    {name: bytes or "skipped: why"}."""
    from submission.report import render, timing_report

    try:
        report = timing_report(record)
        write_atomic(run_dir / TIMING_JSON, strict_dumps(report))
        write_atomic(run_dir / TIMING_TEXT, render(report) + "\n")
        return {n: (run_dir / n).stat().st_size for n in (TIMING_JSON, TIMING_TEXT)}
    except Exception as e:  # noqa: BLE001 - `trm report` derives it from run.json instead
        for n in (TIMING_JSON, TIMING_TEXT):
            _remove(run_dir / n)
        return {TIMING_JSON: f"skipped: {type(e).__name__}: {e}"}


def packages(until: float, clock: Callable[[], float]) -> str:
    """The installed distributions, `name==version` sorted, after a `# python X.Y.Z` line; stops
    (saying so) at `until`."""
    from importlib import metadata

    found: set[str] = set()
    cut = False
    for dist in metadata.distributions():
        if clock() >= until:
            cut = True
            break
        try:
            name = dist.metadata["Name"]
            if name:
                found.add(f"{name}=={dist.version}")
        except Exception:  # noqa: BLE001 - a broken dist-info folder is left out
            continue
    head = [f"# python {sys.version.split()[0]}"] + (["# cut short: out of time"] if cut else [])
    return "\n".join(head + sorted(found, key=str.lower)) + "\n"


def _remove(path: Path) -> None:
    """`path` gone if it can be (a folder of that name, or a read-only one, stays: the write names it)."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def _size(path: Path | None) -> int | None:
    try:
        return path.stat().st_size if path is not None and path.is_file() else None
    except OSError:
        return None


def _copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _save_predictions(files: list[str], dst: Path) -> None:
    """The shards merged as the vote merged them (repeats dropped, unreadable shards left out),
    deflated, written atomically."""
    from submission.assemble import merge_shards

    merged = merge_shards(files)
    if merged is None:
        raise ValueError("no shard could be read")
    tmp = dst.with_name(dst.stem + ".tmp.npz")
    merged.save(tmp, compressed=True)
    os.replace(tmp, dst)
