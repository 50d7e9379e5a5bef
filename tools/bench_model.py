"""Benchmark one ACT step of the model: forward (evaluation) and forward+backward (training).

Prints ms per ACT step, samples/s, achieved FLOP/s and MFU (on known GPUs) for a preset, batch
size, dtype and device, with the configuration that produced them.

    python tools/bench_model.py --preset tiny --batch 16 --device cpu
    python tools/bench_model.py --preset paper --batch 2 --device cpu --steps 2
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch

from trm_core.loss import act_loss
from trm_core.model import TRM, TRMConfig, count_parameters, flops_per_sample
from trm_core.perf import device_name, mfu


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(cfg: TRMConfig, batch_size: int, device: torch.device, steps: int, warmup: int, compile_: bool) -> dict:
    g = torch.Generator().manual_seed(0)
    model = TRM(cfg.with_(num_puzzle_identifiers=batch_size + 1), generator=g).to(device)
    inputs = torch.randint(2, cfg.vocab_size, (batch_size, cfg.seq_len), generator=g, dtype=torch.int32)
    batch = {"inputs": inputs.to(device), "labels": inputs.to(device),
             "puzzle_identifiers": torch.arange(1, batch_size + 1, dtype=torch.int32, device=device)}
    if compile_:
        model.recursion = torch.compile(model.recursion)
    results = {}
    for phase in ("forward", "forward+backward"):
        train = phase != "forward"
        model.train(train)
        carry = model.initial_carry(batch)
        times = []
        for i in range(warmup + steps):
            _sync(device)
            t0 = time.perf_counter()
            if train:
                carry, out = model(carry, batch)
                loss, _, _ = act_loss(carry, out)
                (loss / batch_size).backward()
                model.zero_grad(set_to_none=True)
            else:
                with torch.inference_mode():
                    carry, out = model(carry, batch)
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
        sec = sorted(times)[len(times) // 2]  # median
        flops = flops_per_sample(cfg, train=train) * batch_size
        results[phase] = {"ms_per_step": sec * 1e3, "samples_per_s": batch_size / sec,
                          "tflops": flops / sec / 1e12, "mfu": mfu(flops / sec, device, cfg.dtype)}
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], help="override the preset's forward_dtype")
    p.add_argument("--canvas", type=int, help="override the preset's canvas")
    p.add_argument("--steps", type=int, default=5, help="timed ACT steps per phase (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--compile", action="store_true", help="torch.compile the recursion")
    args = p.parse_args()

    changes = {k: v for k, v in (("forward_dtype", args.dtype), ("canvas", args.canvas)) if v}
    cfg = TRMConfig.from_name(args.preset, **changes)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    print(f"# bench_model: preset={args.preset} batch={args.batch} dtype={cfg.forward_dtype} canvas={cfg.canvas} "
          f"arch={cfg.architecture} seq={cfg.total_len} H{cfg.H_cycles}xL{cfg.L_cycles} "
          f"layers={cfg.H_layers}/{cfg.L_layers} hidden={cfg.hidden_size} "
          f"params={count_parameters(TRM(cfg.with_(num_puzzle_identifiers=1))):,} compile={args.compile}")
    print(f"# device={device_name(device)} torch={torch.__version__} threads={torch.get_num_threads()} "
          f"cpu={platform.processor() or platform.machine()} cores={os.cpu_count()} python={sys.version.split()[0]}")
    res = bench(cfg, args.batch, device, args.steps, args.warmup, args.compile)
    for phase, r in res.items():
        m = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        print(f"{phase:17s} {r['ms_per_step']:10.1f} ms/ACT step  {r['samples_per_s']:8.2f} samples/s  "
              f"{r['tflops']:8.4f} TFLOP/s  MFU {m}")


if __name__ == "__main__":
    main()
