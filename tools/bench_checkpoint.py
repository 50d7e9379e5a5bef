"""Benchmark slim conversion on a full-size reference checkpoint.

Writes a checkpoint in the released format (torch.save of the compiled loss head's state dict:
`_orig_mod.model.inner.*` keys, bf16 H_init/L_init, an fp32 puzzle-embedding table of N rows)
with random weights, then times `trm_core.checkpoint.convert(..., slim_table=True)` and reports
the file sizes, the slim ratio and the peak resident memory. With the default N (the released
ARC-AGI-2 checkpoints' 1,191,730 identifiers) the file is within a few kB of their size.

    python tools/bench_checkpoint.py --rows 1191730 --preset paper --dir /tmp/ckpt-bench
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from trm_core import checkpoint
from trm_core.model import TRM, TRMConfig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_191_730, help="puzzle identifiers (table rows)")
    p.add_argument("--preset", default="paper")
    p.add_argument("--dir", default="/tmp/trm-bench-checkpoint", help="scratch folder (removed afterwards)")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = p.parse_args()

    cfg = TRMConfig.from_name(args.preset)
    work = Path(args.dir)
    work.mkdir(parents=True, exist_ok=True)
    print(f"# bench_checkpoint: preset={args.preset} rows={args.rows:,} cpu={platform.processor() or platform.machine()} "
          f"cores={os.cpu_count()} torch={torch.__version__}")
    try:
        model = TRM(cfg.with_(num_puzzle_identifiers=1), generator=torch.Generator().manual_seed(0))
        state = {f"_orig_mod.model.inner.{k}": v for k, v in model.state_dict().items() if k != "puzzle_emb.weights"}
        table = torch.empty(args.rows, cfg.puzzle_emb_ndim)
        table.normal_(0, 0.02, generator=torch.Generator().manual_seed(1))
        state["_orig_mod.model.inner.puzzle_emb.weights"] = table
        src = work / "step_1"
        t0 = time.perf_counter()
        torch.save(state, src)
        print(f"write reference file: {time.perf_counter() - t0:.1f} s, {src.stat().st_size:,} bytes")
        del state, table

        # The conversion runs as `trm convert` in a child process, so its peak memory is its own.
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "trm_cli", "convert", str(src), "--config", args.preset,
                        "--out", str(work / "slim")], check=True)
        seconds = time.perf_counter() - t0
        out = work / "slim"
        checkpoint.load(out)  # the result loads
        slim = sum(f.stat().st_size for f in out.iterdir())
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
        print(f"trm convert (slim): {seconds:.1f} s, peak RSS {peak:,.0f} MiB")
        print(f"sizes: reference {src.stat().st_size / 1e6:,.1f} MB -> slim {slim / 1e6:.1f} MB "
              f"(ratio {src.stat().st_size / slim:.0f}x)")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
