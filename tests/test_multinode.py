"""Multi-node pre-training: two torchrun "nodes" on localhost meet at a static rendezvous (node 0
hosts the store at --master-addr:--master-port) and train one model together over gloo, as two
machines would over the network. Static, not c10d: a fixed-size job needs no elastic membership, and
a c10d agent polls whichever agent hosts the store for new nodes all through training, so an agent
that outlives the host fails with RendezvousConnectionError."""

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
               "--node-rank", str(node), "--master-addr", "127.0.0.1", "--master-port", str(port),
               "-m", "trm_cli", "pretrain", "--preset", "tiny",
               "--data", str(PLACEHOLDER / "arc-agi_test_challenges.json"),
               "--solutions", str(PLACEHOLDER / "arc-agi_test_solutions.json"), "--steps", "2", "--batch-size", "4",
               "--warmup", "1", "--variants", "1", "--log-every", "1", "--device", "cpu",
               "--out", str(tmp_path / "run")]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outs = [p.communicate(timeout=600)[0] for p in procs]
    logs = "\n".join(f"--- node {i} (exit {p.returncode}) ---\n{out[-2500:]}"
                     for i, (p, out) in enumerate(zip(procs, outs)))
    assert [p.returncode for p in procs] == [0, 0], logs
    assert "steps of 4 on 2 x cpu" in outs[0] + outs[1]  # one group of two processes, not two runs
    ckpt = checkpoint.load(tmp_path / "run" / "checkpoint")
    assert ckpt.manifest["train"]["step"] == 2 and ckpt.manifest["train"]["global_batch_size"] == 4
