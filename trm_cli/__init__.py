"""The `trm` console script, the top layer: the commands on the engine (trm_cli.commands, .train,
.predict) with the notebook layer's (submission.cli: report) and the packaging layer's (bundle.cli:
bundle, dry-run). trm_core imports none of the layers above it.

    trm --help                 every command
    python -m trm_cli ...      the same, from a checkout (and under torchrun: __main__.py)
"""

from bundle.cli import bundle_cmd, dry_run_cmd
from submission.cli import report_cmd
from trm_cli.commands import make_group

main = make_group(report_cmd, dry_run_cmd, bundle_cmd)

__all__ = ["main"]
