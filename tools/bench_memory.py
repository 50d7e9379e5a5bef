"""Benchmark memory: the activations one training step keeps for backward, per row.

Counts every tensor autograd saves during one ACT step and its loss (saved-tensor hooks; each
storage counted once, so views of one buffer are not double-counted) at two batch sizes; the
difference over the rows is the saved bytes per row, the part of peak training memory that
grows with the batch (weights, gradients and optimiser state do not). With --reference DIR (a
checkout of the reference TinyRecursiveModels code; its `models/` package is imported from
there, never copied) the reference's model and loss head are measured the same way in the same run.

    python tools/bench_memory.py --preset paper --dtype bfloat16
    python tools/bench_memory.py --preset paper --dtype bfloat16 --reference ../TinyRecursiveModels
    python tools/bench_memory.py --preset paper --l-cycles 6 --checkpoint-activations
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from trm_core.loss import act_loss
from trm_core.model import TRM, TRMConfig

MIB = 2**20


class SavedBytes:
    """Context manager: the bytes of distinct storages autograd saves for backward inside it."""

    def __init__(self) -> None:
        self.storages: dict[int, int] = {}
        self.kinds: dict[int, str] = {}  # storage -> "dtype [shape]" of the first tensor saved from it

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        self.storages[s.data_ptr()] = max(self.storages.get(s.data_ptr(), 0), s.nbytes())
        self.kinds.setdefault(s.data_ptr(), f"{str(t.dtype).removeprefix('torch.')} {list(t.shape)}")
        return t

    def __enter__(self) -> SavedBytes:
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._ctx.__exit__(*exc)

    @property
    def total(self) -> int:
        return sum(self.storages.values())

    def by_kind(self) -> dict[str, tuple[int, int]]:
        """{"dtype [shape]": (storages, bytes)}: where the saved bytes go."""
        out: dict[str, tuple[int, int]] = {}
        for ptr, nbytes in self.storages.items():
            n, b = out.get(self.kinds[ptr], (0, 0))
            out[self.kinds[ptr]] = (n + 1, b + nbytes)
        return out


def _batch(cfg: TRMConfig, rows: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(rows)
    inputs = torch.randint(2, cfg.vocab_size, (rows, cfg.seq_len), generator=g, dtype=torch.int32)
    return {"inputs": inputs.to(device), "labels": inputs.clone().to(device),
            "puzzle_identifiers": torch.ones(rows, dtype=torch.int32, device=device)}


def saved_kit(cfg: TRMConfig, rows: int, device: torch.device, checkpoint: bool) -> SavedBytes:
    model = TRM(cfg, generator=torch.Generator().manual_seed(0)).to(device).train()
    model.checkpoint_activations = checkpoint
    batch = _batch(cfg, rows, device)
    carry = model.initial_carry(batch)
    with SavedBytes() as saved:
        carry, out = model(carry, batch)
        loss, _, _ = act_loss(carry, out)
    loss.backward()  # the graph is complete and usable
    return saved


def saved_reference(ref_dir: str, cfg: TRMConfig, rows: int, device: torch.device) -> SavedBytes:
    if cfg.architecture != "trm":
        raise SystemExit(f"--reference measures the reference TRM; preset architecture is {cfg.architecture!r}")
    sys.path.insert(0, os.path.abspath(ref_dir))
    from models.losses import ACTLossHead  # noqa: E402  (the reference's own package)
    from models.recursive_reasoning.trm import TinyRecursiveReasoningModel_ACTV1  # noqa: E402

    arch = {k: getattr(cfg, k) for k in ("hidden_size", "num_heads", "expansion", "H_cycles", "L_cycles", "L_layers",
                                         "puzzle_emb_ndim", "puzzle_emb_len", "rms_norm_eps", "rope_theta",
                                         "halt_max_steps", "halt_exploration_prob", "forward_dtype", "vocab_size",
                                         "num_puzzle_identifiers")}
    arch.update(H_layers=0, pos_encodings=cfg.pos_encodings, seq_len=cfg.seq_len, batch_size=rows, mlp_t=False,
                no_ACT_continue=True)
    with torch.device(device):
        head = ACTLossHead(TinyRecursiveReasoningModel_ACTV1(arch), loss_type="stablemax_cross_entropy")
    head.train()
    batch = _batch(cfg, rows, device)
    with torch.device(device):
        carry = head.initial_carry(batch)
    with SavedBytes() as saved:
        carry, loss, _, _, _ = head(carry=carry, batch=batch, return_keys=[])
    loss.backward()
    return saved


def per_row(measure, rows: tuple[int, int]) -> tuple[float, SavedBytes]:
    """(bytes per row, what was saved at rows[1]) from two batch sizes."""
    a, b = measure(rows[0]), measure(rows[1])
    return (b.total - a.total) / (rows[1] - rows[0]), b


def print_breakdown(name: str, saved: SavedBytes) -> None:
    """The saved storages grouped by dtype and shape, largest first (shapes carry the batch)."""
    print(f"# {name}: saved storages by dtype [shape] of the first tensor saved from each")
    for kind, (n, b) in sorted(saved.by_kind().items(), key=lambda kv: -kv[1][1]):
        if b >= MIB:
            print(f"#   {b / MIB:9.1f} MiB  {n:4d} x  {kind}")


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="paper")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    p.add_argument("--l-cycles", type=int, help="override the preset's L_cycles (the released checkpoints: 4)")
    p.add_argument("--canvas", type=int)
    p.add_argument("--rows", type=int, nargs=2, default=(1, 2), help="the two batch sizes")
    p.add_argument("--device", default="cpu")
    p.add_argument("--checkpoint-activations", action="store_true", help="also measure with activation checkpointing")
    p.add_argument("--reference", metavar="DIR", help="checkout of the reference code to measure side by side")
    p.add_argument("--breakdown", action="store_true", help="print where the saved bytes go (at the larger batch)")
    args = p.parse_args(argv)

    changes = {k: v for k, v in (("L_cycles", args.l_cycles), ("canvas", args.canvas)) if v}
    cfg = TRMConfig.from_name(args.preset, forward_dtype=args.dtype, num_puzzle_identifiers=4, **changes)
    device = torch.device(args.device)
    rows = tuple(args.rows)
    print(f"# bench_memory: preset={args.preset} dtype={cfg.forward_dtype} canvas={cfg.canvas} seq={cfg.total_len} "
          f"{cfg.architecture} H{cfg.H_cycles}xL{cfg.L_cycles} layers={cfg.L_layers}"
          f"{f'+{cfg.H_layers}' if cfg.architecture == 'hrm' else ''} hidden={cfg.hidden_size} rows={rows} "
          f"device={device} torch={torch.__version__}")
    figures: dict[str, float] = {}
    kit, kit_saved = per_row(lambda r: saved_kit(cfg, r, device, False), rows)
    figures["trm-kit"] = kit
    if args.breakdown:
        print_breakdown("trm-kit", kit_saved)
    print(f"trm-kit                  {kit / MIB:9.1f} MiB saved per row")
    if args.checkpoint_activations:
        ck, _ = per_row(lambda r: saved_kit(cfg, r, device, True), rows)
        figures["trm-kit checkpointed"] = ck
        print(f"trm-kit checkpointed     {ck / MIB:9.1f} MiB saved per row  ({ck / kit:.2f}x)")
    if args.reference:
        ref, ref_saved = per_row(lambda r: saved_reference(args.reference, cfg, r, device), rows)
        figures["reference"] = ref
        if args.breakdown:
            print_breakdown("reference", ref_saved)
        print(f"reference                {ref / MIB:9.1f} MiB saved per row")
        print(f"trm-kit / reference      {kit / ref:9.2f}x")
    return figures


if __name__ == "__main__":
    main()
