"""Build the offline Kaggle bundle (same as `trm bundle`): wheels, slim checkpoint, notebook, metadata.

    python tools/bundle.py --checkpoint CKPT --out DIR [--target kaggle-2026] [--wheels-dir DIR]
                           [--owner O --slug S] [--competition SLUG] [--push]

Run `python tools/bundle.py --help` for every option.
"""

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing
    from trm_cli import main

    main(args=["bundle", *sys.argv[1:]], prog_name="tools/bundle.py")
