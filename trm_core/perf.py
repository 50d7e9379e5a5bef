"""Throughput arithmetic: peak FLOP/s of known accelerators, model FLOP utilisation (MFU), and the
roofline of the eager model (the second half of this file).

Input: a device name as torch reports it (e.g. "NVIDIA L4") and a dtype. Output: the dense
tensor-core peak in FLOP/s (None when unknown, e.g. a CPU), and MFU = achieved / peak.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from trm_core.config import TRMConfig
from trm_core.layers import ReasoningModule, RotaryEmbedding

# Dense (no sparsity) tensor-core peaks from the vendors' datasheets, FLOP/s.
PEAK_BF16 = {
    "L4": 121e12,
    "T4": 65e12,  # fp16 only: the T4 has no bf16 tensor cores
    "A10G": 70e12,
    "A100": 312e12,
    "L40S": 362e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,  # SXM
    "H200": 989e12,
    "RTX PRO 6000": 500e12,
}
PEAK_FP32 = {"L4": 30.3e12, "T4": 8.1e12, "A10G": 31.2e12, "A100": 19.5e12, "L40S": 91.6e12,
             "H100 PCIe": 51e12, "H100": 67e12, "H200": 67e12, "RTX PRO 6000": 125e12}

# Memory bandwidth from the same datasheets, bytes/s (the roofline of memory-bound eager kernels).
BANDWIDTH = {"L4": 300e9, "T4": 320e9, "A10G": 600e9, "A100": 1555e9, "L40S": 864e9, "H100 PCIe": 2000e9,
             "H100": 3350e9, "H200": 4800e9, "RTX PRO 6000": 1792e9}


def gpu_key(device_name: str) -> str | None:
    """Map a torch device name ("NVIDIA H100 80GB HBM3", "NVIDIA L4") to a table key."""
    name = device_name.upper()
    if "H100" in name and "PCIE" in name:
        return "H100 PCIe"
    for key in sorted(PEAK_BF16, key=len, reverse=True):
        if key.upper() in name:
            return key
    return None


def peak_flops(device_name: str, dtype: torch.dtype = torch.bfloat16) -> float | None:
    key = gpu_key(device_name)
    if key is None:
        return None
    table = PEAK_FP32 if dtype == torch.float32 else PEAK_BF16
    return table.get(key)


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def mfu(flops_per_second: float, device: torch.device | str, dtype: torch.dtype) -> float | None:
    peak = peak_flops(device_name(device), dtype)
    return flops_per_second / peak if peak else None


# ---- roofline ------------------------------------------------------------------------------------
#
# Roofline of the eager model: measured FLOPs and memory traffic per row, and the utilisation a
# GPU can reach with them.
#
# Input: a TRMConfig, a GPU's dense bf16 peak and memory bandwidth (trm_core.perf). Output: FLOPs
# and bytes per row for a training step and a prediction ACT step, their ratio (arithmetic intensity,
# FLOP/byte) and the roofline bound on MFU, min(1, bandwidth x intensity / peak).
#
# Bytes are measured, not modelled: one reasoning-module call (all L_layers blocks) runs on one row
# at the config's width and two small sequence lengths, forward only and forward + backward, under a
# dispatch mode that adds up the bytes every aten op reads and writes; bytes per token and the
# weights' share come from the two, so a paper-size figure costs a fraction of a second. FLOPs are
# the analytic count every MFU here uses. A TRM step is H_cycles x (L_cycles + 1) such calls of which the
# last L_cycles + 1 carry a backward; an HRM step is H_cycles x L_cycles L_level calls and H_cycles
# H_level calls (each level measured with its own layer count), the last of each with a backward, and
# in training a second forward for the Q target (as trm_core.model.flops_per_sample counts them);
# embeddings, heads and loss are small next to them and left out. Each eager op is assumed to go to memory and back,
# so this is the eager code's traffic; a compiled graph fuses elementwise ops and moves less.

class _Traffic(TorchDispatchMode):
    """Adds up the bytes of every tensor each op takes and returns."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        leaves = torch.utils._pytree.tree_leaves
        ins = [t for t in leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        outs = [t for t in leaves(out) if isinstance(t, torch.Tensor)]
        if any(t.untyped_storage().data_ptr() in {i.untyped_storage().data_ptr() for i in ins} for t in outs):
            return out  # a view (reshape, transpose, split, detach): no traffic; in-place ops (rare here) too
        self.bytes += sum(t.numel() * t.element_size() for t in ins + outs)
        return out


@dataclass(frozen=True)
class Traffic:
    train_flops: float  # per row, one training ACT step (forward and backward)
    train_bytes: float
    predict_flops: float  # per row, one evaluation ACT step
    predict_bytes: float

    @property
    def train_intensity(self) -> float:
        return self.train_flops / self.train_bytes

    @property
    def predict_intensity(self) -> float:
        return self.predict_flops / self.predict_bytes

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "train_intensity": self.train_intensity, "predict_intensity": self.predict_intensity}


def _call(module: ReasoningModule, cfg: TRMConfig, grad: bool) -> tuple[float, float]:
    rope = RotaryEmbedding(cfg.head_dim, cfg.total_len, cfg.rope_theta) if cfg.pos_encodings == "rope" else None
    cos, sin = (rope.cos_cached, rope.sin_cached) if rope is not None else (None, None)
    g = torch.Generator().manual_seed(0)
    h = torch.randn(1, cfg.total_len, cfg.hidden_size, generator=g).to(cfg.dtype)
    inj = torch.randn(1, cfg.total_len, cfg.hidden_size, generator=g).to(cfg.dtype)
    traffic, flops = _Traffic(), FlopCounterMode(display=False)  # FLOPs: a cross-check when debugging
    with torch.set_grad_enabled(grad):
        if grad:
            h.requires_grad_(True)
        with flops, traffic:
            out = module(h, inj, cos, sin)
            if grad:
                out.float().sum().backward()
    return float(flops.get_total_flops()), float(traffic.bytes)


def measure(cfg: TRMConfig, rows: int = 64) -> Traffic:
    """FLOPs and bytes per row of a training step and a prediction step at a local batch of `rows`.

    Traffic is measured for one reasoning-module call on one row at two small canvases and fitted
    as weights + bytes per token (every activation is per token; the weights' casts are not), then
    taken to the config's sequence length, with the weight part shared by `rows` rows and scaled by
    the number of calls. FLOPs are trm_core.model.flops_per_sample's, as in every MFU figure here.
    """
    from trm_core.model import flops_per_sample

    def per_call(layers: int) -> tuple[float, float]:
        """(forward, forward + backward) bytes per row of one call of a module of `layers` blocks."""
        points = {}
        for canvas in (4, 6):
            small = cfg.with_(canvas=canvas)
            module = ReasoningModule(small, layers)
            points[small.total_len] = (_call(module, small, grad=False)[1], _call(module, small, grad=True)[1])
        (s0, (f0, g0)), (s1, (f1, g1)) = sorted(points.items())

        def at_length(a: float, b: float) -> float:
            per_token = (b - a) / (s1 - s0)
            weights = max(0.0, a - per_token * s0)
            return per_token * cfg.total_len + weights / rows

        return at_length(f0, f1), at_length(g0, g1)

    b_fwd, b_grad = per_call(cfg.L_layers)
    if cfg.architecture == "hrm":
        h_fwd, h_grad = per_call(cfg.H_layers)
        l_calls, h_calls = cfg.H_cycles * cfg.L_cycles, cfg.H_cycles
        forward = l_calls * b_fwd + h_calls * h_fwd
        # The one-step gradient (last L_level and H_level call), then the Q target's no-grad forward.
        train_bytes = (l_calls - 1) * b_fwd + b_grad + (h_calls - 1) * h_fwd + h_grad + forward
        return Traffic(train_flops=flops_per_sample(cfg, train=True), train_bytes=train_bytes,
                       predict_flops=flops_per_sample(cfg, train=False), predict_bytes=forward)
    calls = cfg.H_cycles * (cfg.L_cycles + 1)
    grad_calls = cfg.L_cycles + 1
    return Traffic(train_flops=flops_per_sample(cfg, train=True),
                   train_bytes=(calls - grad_calls) * b_fwd + grad_calls * b_grad,
                   predict_flops=flops_per_sample(cfg, train=False), predict_bytes=calls * b_fwd)


def roofline_mfu(intensity: float, peak_flops: float, bandwidth: float) -> float:
    """The most of `peak_flops` a kernel stream of `intensity` FLOP/byte can use at `bandwidth` B/s."""
    return min(1.0, bandwidth * intensity / peak_flops)
