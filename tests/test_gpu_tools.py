"""tools/gpu_check.py and tools/bench_memory.py stay working: run on the CPU at the tiny preset."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def _check(*extra: str, timeout: int) -> str:
    cmd = [sys.executable, str(ROOT / "tools" / "gpu_check.py"), "--preset", "tiny", "--device", "cpu",
           "--train-batch", "4", "--predict-batch", "8", "--steps", "2", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_gpu_check_runs_at_tiny_scale_on_cpu() -> None:
    out = _check("--no-compile", "--rehearsal-s", "0", timeout=600)
    assert "# gpu_check: cpu, torch" in out and "0 section(s) failed" in out
    assert "SDPA backend on the model's layout: " in out and "backend on the model's layout: none" not in out
    assert "L_cycles 4: training saves" in out and "L_cycles 6: training saves" in out
    assert "train eager" in out and "samples/s" in out and "predict eager" in out and "views/s" in out
    # the golden fixture replayed on the device, within tolerance; with every error zero the worst
    # tensor shown may be an integer one, compared exactly
    for phase in ("debug", "eval", "train"):
        assert f"fidelity tiny (float32) {phase}: " in out
        assert re.search(rf"fidelity tiny \(float32\) {phase}: \d+ tensors, 0 over tolerance, 0 not produced; "
                         rf"worst \S+ (max_abs|exact)", out), out


def test_gpu_check_fidelity_flags_a_tensor_over_its_tolerance(monkeypatch) -> None:
    tools = str(ROOT / "tools")
    sys.path.insert(0, tools)
    try:
        import gpu_check
    finally:  # gpu_check puts tools/ on the path too: take it off, or tools/bundle.py shadows the bundle package
        while tools in sys.path:
            sys.path.remove(tools)
    real = gpu_check._fixture_outputs

    def off_by_one_percent(folder, device):
        got = real(folder, device)
        got["eval.step1.logits"] = got["eval.step1.logits"] * 1.01
        return got

    monkeypatch.setattr(gpu_check, "_fixture_outputs", off_by_one_percent)
    found = gpu_check.fixtures()
    assert found, "no reference fixture under model/ (set TRM_REFERENCE_FIXTURES)"
    assert gpu_check.default_fixture(False) == found[0] and gpu_check.default_fixture(True) == found[-1]
    lines = gpu_check.fidelity_rows(found[0], torch.device("cpu"))
    assert "0 over tolerance" in lines[0] and "0 over tolerance" in lines[2]
    assert ", 1 over tolerance" in lines[1] and "worst eval.step1.logits" in lines[1]


@pytest.mark.slow
def test_gpu_check_compiled_and_rehearsal_on_cpu() -> None:
    out = _check("--rehearsal-s", "90", timeout=900)
    assert "train compiled" in out and "predict compiled" in out
    assert "compiled vs eager: logits max |diff|" in out
    assert "rehearsal submission: valid" in out and "0 section(s) failed" in out


def test_bench_memory_counts_saved_activations_per_row() -> None:
    import importlib.util

    # loaded from its file: putting tools/ on sys.path would let tools/bundle.py shadow the bundle package
    spec = importlib.util.spec_from_file_location("bench_memory", ROOT / "tools" / "bench_memory.py")
    bench_memory = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_memory)
    figures = bench_memory.main(["--preset", "tiny", "--dtype", "float32", "--checkpoint-activations"])
    kit, ck = figures["trm-kit"], figures["trm-kit checkpointed"]
    # tiny: 145 tokens x 64 wide; a step keeps several block activations per layer call: megabytes per row
    assert 1 * 2**20 < kit < 100 * 2**20
    assert ck < 0.8 * kit  # recomputation keeps only the cycle's inputs
