"""`python -m trm_cli`: the `trm` command from a checkout, and the module torchrun starts
(`torchrun --nproc-per-node 4 -m trm_cli pretrain ...`).

A torchrun process that finished its command leaves at once, status 0, without the interpreter's
teardown: there gloo's threads, destroyed in no fixed order after the process group, now and then
abort a finished process (SIGABRT, "terminate called without an active exception"), and torchrun
then calls the whole run failed. A failure still exits through the normal path with its status.
"""

import os
import sys

from trm_cli import main

try:
    main(prog_name="trm")
except SystemExit as e:
    if e.code in (0, None) and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    raise
