"""The workbench above the engine: the adaptation study (study.py), the HTML report of a run or a
study (report.py, drawn by page.py and draw.py). It uses trm_core and is used by the notebook
runner (its report), the bundle's dry run and the `trm` commands; trm_core never imports it."""

TOP_CANDIDATES = 5  # vote candidates the report draws per test input (here, so `trm --help` needs no numpy)
