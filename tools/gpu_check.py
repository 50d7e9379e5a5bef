"""One-GPU check: what the GPU path really does on this machine, in one script (under 8 minutes on
one GPU at the paper preset).

Prints, with the device name and versions: the attention (SDPA) backend taken on the model's real
layout; peak memory per row for training and prediction at L_cycles 4 and 6 (a fit at two small
batches) and the largest batch that fits a 22 GiB L4; training samples/s and MFU eager vs compiled,
with the compile warm-up; prediction views/s eager vs compiled; how far compiled logits and
predictions are from eager ones; the reference's golden fixture (paper size, bf16) replayed on
the device, with each phase's worst error against its tolerance; and a runner rehearsal through real subprocesses (memory-fitted
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
from trm_core.loss import act_loss  # noqa: E402
from trm_core.model import TRM, TRMConfig, flops_per_sample  # noqa: E402
from trm_core.perf import device_name, mfu  # noqa: E402
from trm_core.predict import predict_batch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
L4_BYTES = 22 * memory.GIB
# the reference's golden fixtures (tests/conftest.py reads the same variable)
FIXTURES = Path(os.environ.get("TRM_REFERENCE_FIXTURES", ROOT.parent / "shared" / "fixtures" / "reference"))


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


def _fixture_outputs(folder: Path, device: torch.device) -> dict[str, torch.Tensor]:
    """What the reference recorded, computed by the kit on `device`: the eval steps and one train step."""
    from safetensors.torch import load_file

    tensors = load_file(folder / "tensors.safetensors")
    batch = {k[len("batch."):]: v.to(device) for k, v in tensors.items() if k.startswith("batch.")}
    n_steps = len({k.split(".")[1] for k in tensors if k.startswith("eval.step")})
    model = checkpoint.build_model(checkpoint.load(next(folder.glob("step_*")), folder / "config.json")).to(device)
    got: dict[str, torch.Tensor] = {}

    def record(prefix: str, carry, out, loss, metrics, preds) -> None:
        got.update({f"{prefix}logits": out["logits"], f"{prefix}q_halt_logits": out["q_halt_logits"],
                    f"{prefix}q_continue_logits": out["q_continue_logits"], f"{prefix}preds": preds,
                    f"{prefix}steps": carry.steps, f"{prefix}halted": carry.halted,
                    f"{prefix}all_finish": carry.halted.all(), f"{prefix}loss": loss, f"{prefix}z_H": carry.z_H,
                    f"{prefix}z_L": carry.z_L})
        got.update({f"{prefix}metrics.{k}": v for k, v in metrics.items()})

    model.eval()
    with torch.inference_mode():
        x = got["debug.input_embeddings"] = model.input_embeddings(batch["inputs"], batch["puzzle_identifiers"])
        cos, sin = model.rope()
        got["debug.L_level_call0"] = model.L_level(model.L_init.expand_as(x), model.H_init.expand_as(x) + x, cos, sin)
        carry = model.initial_carry(batch)
        for step in range(n_steps):
            carry, out = model(carry, batch)
            record(f"eval.step{step}.", carry, out, *act_loss(carry, out))
    model.train()
    carry = model.initial_carry(batch)
    carry, out = model(carry, batch)
    loss, metrics, preds = act_loss(carry, out)
    (loss / batch["inputs"].shape[0]).backward()
    record("train.", carry, out, loss, metrics, preds)
    got["train.lm_loss"], got["train.q_halt_loss"] = metrics["lm_loss"], metrics["q_halt_loss"]
    got["train.local_ids"] = model.puzzle_emb.local_ids
    grads = {n: p.grad for n, p in model.named_parameters()}
    grads["puzzle_emb.local_weights"] = model.puzzle_emb.local_weights.grad
    for name, g in grads.items():
        if g is not None:
            got[f"train.grad.{name}"], got[f"train.grad_norm.{name}"] = g, g.double().norm()
    return {k: v.detach().cpu() for k, v in got.items()}


def fixtures() -> list[str]:
    """The fixture folders under FIXTURES/model/ (each holding tensors.safetensors), smallest first:
    discovered, so another fixture set of the same layout works unchanged."""
    root = FIXTURES / "model"
    found = [d for d in root.iterdir() if (d / "tensors.safetensors").is_file()] if root.is_dir() else []
    return [d.name for d in sorted(found, key=lambda d: ((d / "tensors.safetensors").stat().st_size, d.name))]


def default_fixture(gpu: bool) -> str:
    """The largest fixture on a GPU, the smallest on a CPU (where a large one takes minutes);
    'none' when there is none."""
    found = fixtures()
    return (found[-1] if gpu else found[0]) if found else "none"


def fidelity_rows(name: str, device: torch.device) -> list[str]:
    """The fixture `name` (under FIXTURES/model/) replayed on `device`: per phase, the tensor with the
    largest error relative to its tolerance, and how many tensors exceed theirs (the same rules as
    tests/test_reference_fidelity.py; a tensor without a threshold gets the float32 defaults)."""
    folder = FIXTURES / "model" / name
    if not (folder / "tensors.safetensors").is_file():
        raise FileNotFoundError(f"no fixture at {folder} (set TRM_REFERENCE_FIXTURES)")
    from safetensors.torch import load_file

    ref = load_file(folder / "tensors.safetensors")
    tolerances = json.loads((folder / "tolerances.json").read_text())["tensors"]
    got = _fixture_outputs(folder, device)
    cfg = json.loads((folder / "config.json").read_text())
    lines = []
    for phase in ("debug.", "eval.", "train."):
        names = [k for k in ref if k.startswith(phase)]
        worst: tuple[float, str] = (-1.0, "")
        over, missing = 0, 0
        for k in names:
            if k not in got:
                missing += 1
                continue
            a, r = got[k], ref[k]
            tol = tolerances.get(k) or ({"exact": True} if not r.is_floating_point() else
                                        {"rel_l2": 1e-4, "max_abs": 2e-5 * max(1.0, float(r.abs().max()))})
            if tuple(a.shape) != tuple(r.shape):
                over += 1
                continue
            if "exact_where_ref_margin_gt" in tol:
                top2 = ref[k.rsplit(".", 1)[0] + ".logits"].float().topk(2, dim=-1).values
                sure = (top2[..., 0] - top2[..., 1]) > tol["exact_where_ref_margin_gt"]
                mismatch = a.long() != r.long()
                frac = float(mismatch.float().mean())
                ratio = float("inf") if (mismatch & sure).any() else frac / tol["max_mismatch_fraction"]
                text = f"{k} mismatch {frac:.4f} (<= {tol['max_mismatch_fraction']})"
            elif tol.get("exact"):
                ratio = 0.0 if torch.equal(a.to(r.dtype), r) else float("inf")
                text = f"{k} {'exact' if ratio == 0 else 'not exact'}"
            else:
                d = a.double() - r.double()
                max_abs = float(d.abs().max()) if r.numel() else 0.0
                rel = float(d.norm() / r.double().norm()) if float(r.double().norm()) > 0 else float(d.norm())
                ratio = max(max_abs / tol["max_abs"], rel / tol["rel_l2"])
                text = f"{k} max_abs {max_abs:.3g} (<= {tol['max_abs']:g}), rel_l2 {rel:.3g} (<= {tol['rel_l2']:g})"
            over += ratio > 1
            worst = max(worst, (ratio, text))
        lines.append(f"fidelity {name} ({cfg.get('forward_dtype')}) {phase[:-1]}: {len(names)} tensors, {over} over "
                     f"tolerance, {missing} not produced; worst {worst[1]}")
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
    p.add_argument("--fixture", default=None,
                   help="reference fixture under $TRM_REFERENCE_FIXTURES/model to replay (default: the largest found "
                        "on a GPU, the smallest on a CPU, where a large one takes minutes); 'none' skips it")
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
    fixture = args.fixture or default_fixture(gpu)
    if fixture != "none":
        sections.append(("fidelity", lambda: fidelity_rows(fixture, device)))
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
