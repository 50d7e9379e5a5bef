"""Multi-node pre-training: two torchrun "nodes" on localhost meet at a c10d rendezvous and train
one model together over gloo, as two machines would over the network."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from trm_core import checkpoint

ROOT = Path(__file__).resolve().parent.parent
PLACEHOLDER = ROOT / "submission" / "placeholder"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_node_rendezvous_on_localhost_trains(tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRM_PG_TIMEOUT_S": "120"}
    procs = []
    for node in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--node-rank", str(node), "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
               "--rdzv-id", "trm-test", "-m", "trm_core.cli", "pretrain", "--preset", "tiny",
               "--data", str(PLACEHOLDER / "arc-agi_test_challenges.json"),
               "--solutions", str(PLACEHOLDER / "arc-agi_test_solutions.json"), "--steps", "2", "--batch-size", "4",
               "--warmup", "1", "--variants", "1", "--log-every", "1", "--device", "cpu",
               "--out", str(tmp_path / "run")]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    assert "steps of 4 on 2 x cpu" in outs[0] + outs[1]  # one group of two processes, not two runs
    ckpt = checkpoint.load(tmp_path / "run" / "checkpoint")
    assert ckpt.manifest["train"]["step"] == 2 and ckpt.manifest["train"]["global_batch_size"] == 4
