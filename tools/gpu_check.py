"""One-GPU check: what the GPU path really does on this machine, in one script (under 8 minutes on
one GPU at the paper preset).

Prints, with the device name and versions: the attention (SDPA) backend taken on the model's real
layout; peak memory per row for training and prediction at L_cycles 4 and 6 (a fit at two small
batches) and the largest batch that fits a 22 GiB L4; training samples/s and MFU eager vs compiled,
with the compile warm-up; prediction views/s eager vs compiled; how far compiled logits and
predictions are from eager ones; and a runner rehearsal through real subprocesses (memory-fitted
calibration, train, predict, vote, write) with its plan and outcome. On a CPU it runs the same
code at a small preset (the test suite runs it at `tiny`), where peak memory is not measurable
and the saved-activation bytes per row (tools/bench_memory.py) stand in for it.

    python tools/gpu_check.py                       # paper preset on the GPU
    python tools/gpu_check.py --preset tiny --device cpu --no-compile --rehearsal-s 0
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_memory  # noqa: E402  (a sibling script)
import bench_train  # noqa: E402

from trm_core import checkpoint, memory  # noqa: E402
from trm_core.model import TRM, TRMConfig, flops_per_sample  # noqa: E402
from trm_core.perf import device_name, mfu  # noqa: E402
from trm_core.predict import predict_batch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
L4_BYTES = 22 * memory.GIB


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sdpa_backend(cfg: TRMConfig, device: torch.device) -> str:
    """The first SDPA backend, in torch's own order of preference, that accepts the model's layout:
    (B, H, S, hd) views of a (B, S, 3H, hd) projection, non-causal, unmasked, forward dtype."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    B, S, H, hd = 2, cfg.total_len, cfg.num_heads, cfg.head_dim
    qkv = torch.randn(B, S, 3 * H, hd, device=device, dtype=cfg.dtype)
    q, k, v = (t.transpose(1, 2) for t in qkv.split(H, dim=2))
    order = [SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    for backend in order:
        try:
            with sdpa_kernel(backend):
                torch.nn.functional.scaled_dot_product_attention(q, k, v)
            return backend.name.lower()
        except RuntimeError:
            continue
    return "none"


def memory_rows(cfg: TRMConfig, device: torch.device) -> list[str]:
    lines = []
    for l_cycles in (4, 6):
        c = cfg.with_(L_cycles=l_cycles)
        model = TRM(c, generator=torch.Generator().manual_seed(0)).to(device)
        if device.type == "cuda":
            train = memory.measure_peak(lambda r: memory.train_step_peak(model, r, device), (2, 4), device)
            pred = memory.measure_peak(lambda r: memory.predict_batch_peak(model, r, device), (8, 16), device)
            extra = memory.optimiser_bytes(model) * 1.5
            fits = train.largest_batch(L4_BYTES - extra)
            lines.append(f"L_cycles {l_cycles}: training {train.render()}, prediction {pred.render()}; a 22 GiB L4 fits "
                         f"{fits} training rows per micro-batch and {pred.largest_batch(L4_BYTES)} prediction rows "
                         f"({100 * memory.HEADROOM:.0f}% headroom)")
        else:
            per_row, _ = bench_memory.per_row(lambda r: bench_memory.saved_kit(c, r, device, False), (1, 2))
            lines.append(f"L_cycles {l_cycles}: training saves {per_row / 2**20:.2f} MiB per row (saved tensors; "
                         f"peak memory is measured on CUDA only)")
        del model
    return lines


def train_rows(cfg: TRMConfig, device: torch.device, batch: int, steps: int, compiles: list[bool]) -> list[str]:
    flops = flops_per_sample(cfg, train=True) * batch
    lines = []
    for c in compiles:
        warm, sec = bench_train.bench_ours(cfg, batch, device, steps, 2, c)
        util = mfu(flops / sec, device, cfg.dtype)
        lines.append(f"train {'compiled' if c else 'eager   '}: {batch / sec:9.1f} samples/s, MFU "
                     f"{'n/a' if util is None else f'{100 * util:.1f}%'}, warm-up {warm:.1f} s (batch {batch})")
    return lines


def predict_rows(cfg: TRMConfig, device: torch.device, batch: int, compiles: list[bool]) -> list[str]:
    model = TRM(cfg, generator=torch.Generator().manual_seed(0)).to(device).eval()
    rows = memory._dummy_batch(cfg, batch, device)
    steps = cfg.halt_max_steps
    out: dict[bool, tuple[torch.Tensor, torch.Tensor]] = {}
    lines = []
    eager = model.recursion
    for c in compiles:
        model.recursion = torch.compile(eager) if c else eager
        t0 = time.perf_counter()
        first = predict_batch(model, rows, steps)
        _sync(device)
        warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(2):
            predict_batch(model, rows, steps)
        _sync(device)
        sec = (time.perf_counter() - t0) / 2
        with torch.inference_mode():
            carry = model.initial_carry(rows)
            for _ in range(steps):
                carry, o = model(carry, rows)
        out[c] = (first[0], o["logits"].float())
        lines.append(f"predict {'compiled' if c else 'eager   '}: {batch / sec:9.1f} views/s, first batch {warm:.1f} s "
                     f"(batch {batch}, {steps} ACT steps)")
    if len(out) == 2:
        (te, le), (tc, lc) = out[False], out[True]
        diff = float((le - lc).abs().max())
        agree = float((te == tc).float().mean())
        lines.append(f"compiled vs eager: logits max |diff| {diff:.3g}, predicted tokens agree {100 * agree:.3f}%")
    return lines


def rehearsal(cfg: TRMConfig, device: torch.device, budget_s: float) -> list[str]:
    """The runner end to end in real subprocesses on the placeholder tasks, with a random
    checkpoint of this preset: the memory fit sizes calibration, then train, predict, vote, write."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp_p = Path(tmp)
        ckpt_cfg = cfg.with_(num_puzzle_identifiers=2)
        checkpoint.save(checkpoint.slim(checkpoint.from_model(TRM(ckpt_cfg, generator=torch.Generator().manual_seed(0)))),
                        tmp_p / "ckpt")
        inputs = ROOT / "submission" / "placeholder"
        now = time.time()
        cmd = [sys.executable, "-m", "submission.run", "--start-time", str(now), "--deadline", str(now + budget_s),
               "--input-dir", str(inputs), "--working-dir", str(tmp_p / "w"), "--checkpoint", str(tmp_p / "ckpt"),
               "--scratch-dir", str(tmp_p / "s"), "--device", device.type, "--views-min", "2", "--views-target", "8",
               "--views-max", "16", "--max-steps", "50", "--reserve-min", "2"]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=budget_s + 120)
        lines = [f"rehearsal: runner exit {proc.returncode} in {time.time() - now:.0f} s of {budget_s:.0f} s"]
        run = tmp_p / "w" / "trm-run" / "run.json"
        if not run.is_file():
            return lines + ["rehearsal: no run.json", proc.stdout[-2000:]]
        record = json.loads(run.read_text())
        cal = record.get("calibration") or {}
        if cal.get("train_memory"):
            tm = memory.MemoryFit.from_json(cal["train_memory"])
            lines.append(f"rehearsal memory fit: training {tm.render(cal['memory_budget_bytes'])}; "
                         f"micro-batch {cal['train_micro_batch'] or cal['train_batch']} of {cal['train_batch']}")
        if cal:
            lines.append(f"rehearsal calibration: compile train {cal.get('train_compile')}, predict "
                         f"{cal.get('predict_compile')}, warm-up {cal.get('train_warmup_s', 0):.1f} s")
        lines.append("rehearsal phases: " + ", ".join(f"{p['name']} {p['status']}" for p in record["phases"]))
        ooms = [p for p in record.get("problems", []) if "oom" in p.lower() or "out of memory" in p.lower()]
        lines.append(f"rehearsal: {len(record.get('problems', []))} problem(s), {len(ooms)} out of memory; "
                     f"train {(record.get('train') or {}).get('steps_done')} steps "
                     f"(compile {(record.get('train') or {}).get('compile')}), "
                     f"{(record.get('predict') or {}).get('from_model')} test inputs answered by the model")
        from trm_core.submission_file import validate_file

        challenges = json.loads((inputs / "arc-agi_test_challenges.json").read_text())
        problems = validate_file(tmp_p / "w" / "submission.json", challenges)
        lines.append(f"rehearsal submission: {'valid' if not problems else f'{len(problems)} problem(s)'}")
        return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="paper")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--train-batch", type=int, default=None, help="rows per timed step (default: 64 GPU, 8 CPU)")
    p.add_argument("--predict-batch", type=int, default=None, help="rows per timed batch (default: 256 GPU, 16 CPU)")
    p.add_argument("--steps", type=int, default=5, help="timed training steps")
    p.add_argument("--no-compile", action="store_true", help="eager only (a CPU without a compiler)")
    p.add_argument("--rehearsal-s", type=float, default=240.0, help="runner rehearsal budget (0: skip)")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    gpu = device.type == "cuda"
    if gpu:
        memory.set_alloc_conf()
        torch.backends.cuda.matmul.allow_tf32 = True
    cfg = TRMConfig.from_name(args.preset, num_puzzle_identifiers=64, halt_exploration_prob=0.1)
    compiles = [False] if args.no_compile else [False, True]
    t0 = time.time()
    cuda = f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}" if gpu else "no CUDA"
    print(f"# gpu_check: {device_name(device)}, torch {torch.__version__}, {cuda}, python {sys.version.split()[0]}; "
          f"preset {args.preset} ({cfg.forward_dtype}, seq {cfg.total_len}, H{cfg.H_cycles}xL{cfg.L_cycles})",
          flush=True)
    sections = [
        ("attention", lambda: [f"SDPA backend on the model's layout: {sdpa_backend(cfg, device)}"]),
        ("memory", lambda: memory_rows(cfg, device)),
        ("training", lambda: train_rows(cfg, device, args.train_batch or (64 if gpu else 8), args.steps, compiles)),
        ("prediction", lambda: predict_rows(cfg, device, args.predict_batch or (256 if gpu else 16), compiles)),
    ]
    if args.rehearsal_s > 0:
        sections.append(("rehearsal", lambda: rehearsal(cfg, device, args.rehearsal_s)))
    failed = 0
    for name, fn in sections:
        try:
            for line in fn():
                print(line, flush=True)
        except Exception as e:  # noqa: BLE001 - one failing section does not hide the others
            failed += 1
            print(f"{name}: FAILED {type(e).__name__}: {e}", flush=True)
        if gpu:
            torch.cuda.empty_cache()
    print(f"# gpu_check done in {time.time() - t0:.0f} s, {failed} section(s) failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
