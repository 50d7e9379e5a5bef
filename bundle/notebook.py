"""Generate the submission notebook (.ipynb) from the readable cell templates beside this file.

Inputs: the bundle's id and trm-kit version, runner timing settings, the competition's slug (the
run and final cells answer the challenges in that competition's folder), the run configuration
chosen at `trm bundle` (bundle/run_config.py: runner options, accelerator, image pin).
Outputs: an nbformat 4.5 notebook dict (python3 kernelspec, language_info, a string id per cell):
a markdown cell saying what the notebook does and how its run is configured, then three code
cells, each the text of one template with its settings block filled in:
  cell_setup.py     start time, find the bundle under /kaggle/input, offline pip install;
                    ACCELERATOR, EXPECTED_GPUS and RUN_CONFIG say what the run was built for
  cell_run.py       `python -m submission.run` as a subprocess with the deadline, the chosen
                    runner options in EXTRA_ARGS
  cell_finalize.py  validate and repair submission.json (standard library only, never raises),
                    its `# <safe_io>` block replaced by the text of trm_core/safe_io.py
Each template runs its `main()` under `if __name__ == "__main__":`, which holds in a notebook
kernel, so importing a template does nothing while the cell runs it. Nothing time-varying is
written: the same settings give the same bytes (a rebuild keeps its bundle id and notebook).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bundle.manifest import MARKER_NAME
from bundle.metadata import DEFAULT_COMPETITION
from bundle.run_config import RunConfig
from submission.clock import RUNNER_KILL_GRACE_S, RUNNER_MARGIN_S, TIME_LIMIT_S
from trm_core import safe_io

TEMPLATE_DIR = Path(__file__).resolve().parent
NOTEBOOK_NAME = "trm-submit.ipynb"
_SETTINGS_RE = re.compile(r"^# <settings>.*?\n(.*?)^# </settings>\n", re.S | re.M)
_SAFE_IO_RE = re.compile(r"^# <safe_io>.*?\n.*?^# </safe_io>\n", re.S | re.M)
_FUTURE = "from __future__ import annotations\n"
_SLUG_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,99}")  # one folder name, never a path


@dataclass(frozen=True)
class NotebookSettings:
    """Values written into the generated cells."""

    bundle_id: str  # the manifest's bundle_id: the setup cell prefers that bundle among the inputs
    trm_version: str  # trm-kit version to install from the bundle's wheels
    time_limit_s: int = TIME_LIMIT_S  # Kaggle's session limit for a code-competition run
    runner_margin_s: int = RUNNER_MARGIN_S  # runner deadline = start + limit - margin
    kill_grace_s: int = RUNNER_KILL_GRACE_S  # runner killed this long after its deadline
    runner_module: str = "submission.run"
    # the competition whose folder (<input>/competitions/<slug>/ or <input>/<slug>/) holds the
    # challenges the run and final cells answer; "" searches the inputs and refuses several files
    competition: str = DEFAULT_COMPETITION
    # runner options, accelerator and image pin chosen at `trm bundle`; None (a notebook made outside a
    # bundle build: the local dry run, tests) claims no machine, so the setup cell checks no GPU count
    run: RunConfig | None = None

    def __post_init__(self) -> None:
        for name in ("time_limit_s", "runner_margin_s", "kill_grace_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name}={value!r}: give a finite number of seconds")
        if self.time_limit_s <= 0:
            raise ValueError(f"time_limit_s={self.time_limit_s}: give a positive number of seconds")
        if self.runner_margin_s + 300 >= self.time_limit_s:
            raise ValueError(f"runner_margin_s={self.runner_margin_s} leaves no time within "
                             f"time_limit_s={self.time_limit_s}")
        if self.kill_grace_s < 0 or self.runner_margin_s < 0:
            raise ValueError("runner_margin_s and kill_grace_s must be >= 0")
        if self.competition and not _SLUG_RE.fullmatch(self.competition):
            raise ValueError(f"competition {self.competition!r}: a Kaggle competition slug (lowercase letters, "
                             "digits, hyphens), or '' to search the inputs")


def fill_template(name: str, values: dict[str, Any]) -> str:
    """Template text with its settings block set to `values` (each key must be a template setting)."""
    text = (TEMPLATE_DIR / name).read_text()
    m = _SETTINGS_RE.search(text)
    if m is None:
        raise ValueError(f"{name}: no '# <settings>' ... '# </settings>' block")
    known = re.findall(r"^([A-Z_][A-Z0-9_]*) = ", m.group(1), re.M)
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{name}: no setting named {', '.join(unknown)} (it has {', '.join(known)})")
    for key, value in values.items():
        # repr(nan) is `nan`, a name the cell does not define: it would fail when run, not here
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{name}: setting {key} = {value!r}; give a finite number")
    lines = []
    for line in m.group(1).splitlines():
        key = line.split(" = ", 1)[0]
        lines.append(f"{key} = {values[key]!r}" if key in values else line)
    block = "# <settings> (generated for this bundle)\n" + "\n".join(lines) + "\n# </settings>\n"
    return text[: m.start()] + block + text[m.end():]


def inline_safe_io(text: str) -> str:
    """`text` with its `# <safe_io>` block replaced by the source of trm_core/safe_io.py, so the
    cell runs with the standard library alone. The template itself starts with the `__future__`
    import that safe_io's text carries (it must come first in a cell), so that line is dropped."""
    m = _SAFE_IO_RE.search(text)
    if m is None:
        raise ValueError("no '# <safe_io>' ... '# </safe_io>' block to fill")
    if _FUTURE not in text[: m.start()]:
        raise ValueError(f"a template taking safe_io's text must start with {_FUTURE.strip()!r}")
    source = Path(safe_io.__file__).read_text().replace(_FUTURE, "", 1)
    block = f"# <safe_io> (trm_core/safe_io.py)\n{source.rstrip()}\n# </safe_io>\n"
    return text[: m.start()] + block + text[m.end():]


def _code_cell(cell_id: str, source: str) -> dict[str, Any]:
    return {"cell_type": "code", "execution_count": None, "id": cell_id, "metadata": {},
            "outputs": [], "source": source.splitlines(keepends=True)}


def _intro(s: NotebookSettings) -> str:
    return (
        "# trm-kit submission\n\n"
        f"Generated for bundle `{s.bundle_id}` (trm-kit {s.trm_version}). Attach the bundle dataset and the "
        f"competition (`{s.competition or 'any slug'}`: its folder's challenges are answered), keep the internet "
        "off, and run all cells.\n\n"
        f"{_run_lines(s.run)}\n"
        f"1. **Setup**: records the start time, finds `{MARKER_NAME}` under `/kaggle/input` (extracted or zipped), "
        "installs trm-kit from the bundle's wheels with `pip --no-index` (the image's torch is kept).\n"
        f"2. **Run**: `python -m {s.runner_module}` as a subprocess, deadline = start + "
        f"{s.time_limit_s / 3600:g} h - {s.runner_margin_s // 60} min; stopped {s.kill_grace_s // 60} min "
        "after that if still running.\n"
        "3. **Final check**: rewrites `/kaggle/working/submission.json` so every task and test input has two "
        "valid attempts (standard library only; runs even if the install failed).\n\n"
        "Outside Kaggle, `TRM_KAGGLE_INPUT` and `TRM_KAGGLE_WORKING` replace `/kaggle/input` and "
        "`/kaggle/working`; `python -m bundle.execute` runs the code cells in order.\n"
    )


def _run_lines(run: RunConfig | None) -> str:
    """The run configuration, as the markdown cell states it."""
    if run is None:
        return ("**Run configuration**: none chosen (not generated by `trm bundle`): the runner's defaults, "
                "no accelerator checked.\n")
    acc = run.accelerator
    machine = f"`{acc.machine_shape}`, {acc.gpus} GPU{'s' if acc.gpus != 1 else ''}" if acc.machine_shape else "CPU only"
    pin = f"`{run.image_pin}`" if run.image_pin else "not set (Kaggle's default)"
    args = " ".join(f"`{a}`" for a in run.runner_args()) or "none (the runner's defaults)"
    return ("**Run configuration** (chosen at `trm bundle`):\n\n"
            f"- accelerator: `{acc.name}`, {acc.description} ({machine})\n"
            f"- image pin (`docker_image_pinning_type`): {pin}\n"
            f"- runner options: {args}\n")


def build_notebook(settings: NotebookSettings) -> dict[str, Any]:
    """The notebook as a JSON-ready dict."""
    run_config = settings.run
    setup = fill_template("cell_setup.py", {"BUNDLE_ID": settings.bundle_id,
                                            "PACKAGE_VERSION": settings.trm_version,
                                            "MARKER_NAME": MARKER_NAME,
                                            "ACCELERATOR": run_config.accelerator.name if run_config else "",
                                            "EXPECTED_GPUS": run_config.accelerator.gpus if run_config else 0,
                                            "RUN_CONFIG": run_config.to_json() if run_config else {}})
    run = fill_template("cell_run.py", {"RUNNER_MODULE": settings.runner_module,
                                        "TIME_LIMIT_S": settings.time_limit_s,
                                        "RUNNER_MARGIN_S": settings.runner_margin_s,
                                        "KILL_GRACE_S": settings.kill_grace_s,
                                        "COMPETITION": settings.competition,
                                        "EXTRA_ARGS": run_config.runner_args() if run_config else []})
    final = inline_safe_io(fill_template("cell_finalize.py", {"COMPETITION": settings.competition}))
    cells = [
        {"cell_type": "markdown", "id": "trm-about", "metadata": {}, "source": _intro(settings).splitlines(keepends=True)},
        _code_cell("trm-setup", setup),
        _code_cell("trm-run", run),
        _code_cell("trm-final", final),
    ]
    return {
        "cells": cells,
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python", "pygments_lexer": "ipython3", "file_extension": ".py",
                              "mimetype": "text/x-python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def write_notebook(settings: NotebookSettings, path: Path) -> Path:
    path.write_text(json.dumps(build_notebook(settings), indent=1) + "\n")
    return path


def code_cells(notebook: dict[str, Any]) -> list[str]:
    """Source text of every code cell, in order."""
    return ["".join(c["source"]) if isinstance(c["source"], list) else c["source"]
            for c in notebook["cells"] if c["cell_type"] == "code"]
