"""The `trm` console script, assembled where the layers meet: the engine's commands (trm_core.cli)
with the notebook layer's (submission.cli: dry-run, report) and the packaging layer's (bundle.cli:
bundle). Each layer owns its commands; trm_core imports neither of the layers above it.

    trm --help                 every command
    python -m trm_cli ...      the same, from a checkout
"""

from bundle.cli import bundle_cmd
from submission.cli import dry_run_cmd, report_cmd
from trm_core.cli import make_group

main = make_group(report_cmd, dry_run_cmd, bundle_cmd)

__all__ = ["main"]
