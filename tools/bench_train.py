"""Benchmark full training steps: ACT step, loss, backward, AdamATan2 and sparse SignSGD.

Prints ms/step, samples/s and MFU for a preset, batch size, dtype and device, with and without
torch.compile. With --reference DIR (a checkout of the reference TinyRecursiveModels code; its
`models/` package is imported from there, never copied here) the reference's model and loss head
are timed on the same batches in the same run, with the same trunk optimiser (ours: the
reference's CUDA-only AdamATan2 cannot run everywhere) and its own sparse SignSGD.

    python tools/bench_train.py --preset tiny --batch 64 --device cpu --compile both
    python tools/bench_train.py --preset paper --batch 96 --device cuda --compile both --reference ../TinyRecursiveModels
    python tools/bench_train.py --preset tiny --batch 32 --compile both --reference ../TinyRecursiveModels --rounds 5 --interleave
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch

from trm_core.loss import act_loss
from trm_core.model import TRM, TRMConfig, count_parameters, flops_per_sample
from trm_core.optim import AdamAtan2, SparseSignSGD
from trm_core.perf import device_name, mfu


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batches(cfg: TRMConfig, batch: int, n: int, device: torch.device) -> list[dict[str, torch.Tensor]]:
    """Synthetic but realistic rows: a grid of colours at the top-left, EOS border, PAD elsewhere."""
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        side = torch.randint(3, cfg.canvas, (batch,), generator=g)
        board = torch.zeros(batch, cfg.canvas, cfg.canvas, dtype=torch.int32)
        for i, s in enumerate(side.tolist()):
            board[i, :s, :s] = torch.randint(2, 12, (s, s), generator=g)
            if s < cfg.canvas:
                board[i, s, :s] = 1
                board[i, :s, s] = 1
        inputs = board.view(batch, -1)
        labels = torch.where(inputs == 0, -100, inputs)
        ids = torch.randint(1, cfg.num_puzzle_identifiers, (batch,), generator=g, dtype=torch.int32)
        out.append({"inputs": inputs.to(device), "labels": labels.to(device), "puzzle_identifiers": ids.to(device)})
    return out


def _time_steps(step_fn, batches, warmup: int, device: torch.device) -> tuple[float, float]:
    """(warm-up seconds, median seconds per timed step)."""
    t0 = time.perf_counter()
    for b in batches[:warmup]:
        step_fn(b)
    _sync(device)
    warm = time.perf_counter() - t0
    times = []
    for b in batches[warmup:]:
        t = time.perf_counter()
        step_fn(b)
        _sync(device)
        times.append(time.perf_counter() - t)
    return warm, statistics.median(times)


def _optimise(loss: torch.Tensor, batch: int, sign, adam) -> None:
    """Backward and both optimiser steps, the same for both implementations."""
    (loss / batch).backward()
    sign.step()
    sign.zero_grad()
    adam.step()
    adam.zero_grad(set_to_none=True)


def bench_ours(cfg: TRMConfig, batch: int, device: torch.device, steps: int, warmup: int, compile_: bool):
    return _time_steps(ours_step(cfg, batch, device, compile_), _batches(cfg, batch, warmup + steps, device), warmup,
                       device)


def ours_step(cfg: TRMConfig, batch: int, device: torch.device, compile_: bool):
    """One training step of the kit on a batch: ACT step, loss, backward, both optimisers."""
    model = TRM(cfg, generator=torch.Generator().manual_seed(0)).to(device).train()
    adam = AdamAtan2(model.parameters(), lr=1e-4)
    sign = SparseSignSGD(model.puzzle_emb, lr=1e-2)
    if compile_:
        model.recursion = torch.compile(model.recursion)
    state = {"carry": None}

    def step(b):
        if state["carry"] is None:
            state["carry"] = model.initial_carry(b)
        state["carry"], out = model(state["carry"], b)
        loss, _, _ = act_loss(state["carry"], out)
        _optimise(loss, batch, sign, adam)

    return step


def bench_reference(ref_dir: str, cfg: TRMConfig, batch: int, device: torch.device, steps: int, warmup: int,
                    compile_: bool):
    return _time_steps(reference_step(ref_dir, cfg, batch, device, compile_), _batches(cfg, batch, warmup + steps, device),
                       warmup, device)


def reference_step(ref_dir: str, cfg: TRMConfig, batch: int, device: torch.device, compile_: bool):
    """One training step of the reference's model and loss head, with the same trunk optimiser."""
    sys.path.insert(0, os.path.abspath(ref_dir))
    from models.losses import ACTLossHead  # noqa: E402  (the reference's own package)
    from models.sparse_embedding import CastedSparseEmbeddingSignSGD_Distributed  # noqa: E402

    arch = {k: getattr(cfg, k) for k in ("hidden_size", "num_heads", "expansion", "H_cycles", "L_cycles", "L_layers",
                                         "H_layers", "puzzle_emb_ndim", "rms_norm_eps", "rope_theta", "pos_encodings",
                                         "halt_max_steps", "halt_exploration_prob", "forward_dtype", "vocab_size",
                                         "num_puzzle_identifiers")}
    arch.update(seq_len=cfg.seq_len, batch_size=batch, mlp_t=False)
    if cfg.architecture == "hrm":  # the TRM repository's copy of HRM; puzzle_emb_len is derived there too
        from models.recursive_reasoning.hrm import HierarchicalReasoningModel_ACTV1 as Reference  # noqa: E402
    else:
        from models.recursive_reasoning.trm import TinyRecursiveReasoningModel_ACTV1 as Reference  # noqa: E402
        arch.update(puzzle_emb_len=cfg.puzzle_emb_len, no_ACT_continue=True)
    with torch.device(device):
        head = ACTLossHead(Reference(arch), loss_type="stablemax_cross_entropy")
    head.train()
    adam = AdamAtan2(head.parameters(), lr=1e-4)
    sign = CastedSparseEmbeddingSignSGD_Distributed(head.model.puzzle_emb.buffers(), world_size=1, lr=1e-2,
                                                   weight_decay=0.1)
    fn = torch.compile(head) if compile_ else head
    state = {"carry": None}

    def step(b):
        if state["carry"] is None:
            with torch.device(device):
                state["carry"] = head.initial_carry(b)
        state["carry"], loss, _, _, _ = fn(carry=state["carry"], batch=b, return_keys=[])
        _optimise(loss, batch, sign, adam)

    return step


def interleaved(ours, reference, batches, warmup: int, device: torch.device) -> list[float]:
    """Per timed batch, the reference's step time over the kit's, the two steps run back to back
    (who goes first alternates): load that drifts over seconds hits both sides of each pair."""
    for b in batches[:warmup]:
        ours(b)
        reference(b)
    _sync(device)
    ratios = []
    for i, b in enumerate(batches[warmup:]):
        t = {}
        for name, fn in ((("kit", ours), ("ref", reference)) if i % 2 == 0 else (("ref", reference), ("kit", ours))):
            t0 = time.perf_counter()
            fn(b)
            _sync(device)
            t[name] = time.perf_counter() - t0
        ratios.append(t["ref"] / t["kit"])
    return ratios


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch", type=int, default=64, help="rows per step on this device")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], help="override the preset's forward_dtype")
    p.add_argument("--canvas", type=int)
    p.add_argument("--steps", type=int, default=8, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed first steps (compilation happens here)")
    p.add_argument("--compile", choices=["off", "on", "both"], default="off")
    p.add_argument("--reference", metavar="DIR", help="checkout of the reference code to time side by side")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat every configuration this many times, alternating the order, and report the "
                        "median round (a shared machine's load drifts; one run of each is not a comparison)")
    p.add_argument("--interleave", action="store_true",
                   help="with --reference: also time the kit's and the reference's steps back to back, batch by "
                        "batch, and report the ratio over the pairs (steadier than whole runs on a loaded machine)")
    args = p.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    changes = {k: v for k, v in (("forward_dtype", args.dtype), ("canvas", args.canvas)) if v}
    cfg = TRMConfig.from_name(args.preset, num_puzzle_identifiers=1000, halt_exploration_prob=0.1, **changes)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    print(f"# bench_train: preset={args.preset} batch={args.batch} dtype={cfg.forward_dtype} canvas={cfg.canvas} "
          f"arch={cfg.architecture} seq={cfg.total_len} H{cfg.H_cycles}xL{cfg.L_cycles} "
          f"layers={cfg.H_layers}/{cfg.L_layers} hidden={cfg.hidden_size} "
          f"params={count_parameters(TRM(cfg.with_(num_puzzle_identifiers=1))):,} steps={args.steps} "
          f"warmup={args.warmup}")
    print(f"# device={device_name(device)} torch={torch.__version__} threads={torch.get_num_threads()} "
          f"cpu={platform.processor() or platform.machine()} cores={os.cpu_count()} python={sys.version.split()[0]}")
    flops = flops_per_sample(cfg, train=True) * args.batch
    compiles = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    runs = [("trm-kit", c) for c in compiles] + ([("reference", c) for c in compiles] if args.reference else [])
    results: dict[tuple[str, bool], list[tuple[float, float]]] = {r: [] for r in runs}
    for rnd in range(args.rounds):
        for name, c in (runs if rnd % 2 == 0 else runs[::-1]):  # alternate who goes first
            if name == "trm-kit":
                results[(name, c)].append(bench_ours(cfg, args.batch, device, args.steps, args.warmup, c))
            else:
                results[(name, c)].append(bench_reference(args.reference, cfg, args.batch, device, args.steps,
                                                          args.warmup, c))
    for name, c in runs:
        warm = statistics.median(w for w, _ in results[(name, c)])
        sec = statistics.median(s for _, s in results[(name, c)])
        util = mfu(flops / sec, device, cfg.dtype)
        util_s = f"{100 * util:.1f}%" if util is not None else "n/a"
        spread = ""
        if args.rounds > 1:
            rates = sorted(args.batch / s for _, s in results[(name, c)])
            spread = f"  rounds {args.rounds}: {rates[0]:.1f}-{rates[-1]:.1f} samples/s"
        print(f"{name:10s} compile={'on ' if c else 'off'} {1e3 * sec:10.1f} ms/step {args.batch / sec:9.1f} samples/s "
              f"{flops / sec / 1e12:8.4f} TFLOP/s  MFU {util_s}  (warm-up {warm:.1f} s){spread}")
    if args.reference:
        for c in compiles:
            # per round, the kit's rate over the reference's measured in the same round
            ratios = sorted(r_s / k_s for (_, k_s), (_, r_s) in zip(results[("trm-kit", c)], results[("reference", c)]))
            print(f"trm-kit / reference compile={'on ' if c else 'off'}  samples/s ratio: median "
                  f"{statistics.median(ratios):.2f}x  min {ratios[0]:.2f}x  max {ratios[-1]:.2f}x  "
                  f"over {len(ratios)} round(s)")
        if args.interleave:
            for c in compiles:
                pairs: list[float] = []
                for _ in range(args.rounds):
                    pairs += interleaved(ours_step(cfg, args.batch, device, c),
                                         reference_step(args.reference, cfg, args.batch, device, c),
                                         _batches(cfg, args.batch, args.warmup + args.steps, device), args.warmup, device)
                pairs.sort()
                print(f"trm-kit / reference compile={'on ' if c else 'off'}  interleaved steps: median "
                      f"{statistics.median(pairs):.2f}x  min {pairs[0]:.2f}x  max {pairs[-1]:.2f}x  "
                      f"over {len(pairs)} step pairs")


if __name__ == "__main__":
    main()
