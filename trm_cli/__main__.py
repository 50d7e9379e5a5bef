"""`python -m trm_cli`: the `trm` command from a checkout."""

from trm_cli import main

main(prog_name="trm")
