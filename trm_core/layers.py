"""The building blocks both architectures share: init, norm, casted linear and embedding tables,
the puzzle embedding, RoPE, attention, SwiGLU, the post-norm block and the reasoning module.

Every module takes its widths from a model config (trm_core.config.TRMConfig) and keeps the
reference's parameter names, so reference state dicts load into the modules unchanged.
Parameters are fp32 and cast to the activation dtype at use; norms and RoPE run in fp32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from trm_core.config import TRMConfig


def trunc_normal_(t: torch.Tensor, std: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """JAX-style truncated normal at +-2 sigma where `std` is the std *after* truncation."""
    if std == 0:
        return t.zero_()
    lo, hi = -2.0, 2.0
    sqrt2 = math.sqrt(2)
    a, b = math.erf(lo / sqrt2), math.erf(hi / sqrt2)
    z = (b - a) / 2
    c = (2 * math.pi) ** -0.5
    pdf_u, pdf_l = c * math.exp(-0.5 * lo**2), c * math.exp(-0.5 * hi**2)
    comp_std = std / math.sqrt(1 - (hi * pdf_u - lo * pdf_l) / z - ((pdf_u - pdf_l) / z) ** 2)
    with torch.no_grad():
        t.uniform_(a, b, generator=generator)
        t.erfinv_()
        t.mul_(sqrt2 * comp_std)
        t.clip_(lo * comp_std, hi * comp_std)
    return t


def rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    # Weightless, computed in fp32 whatever the activation dtype. Plain autograd keeps the fp32 copy
    # of x for backward; the blocks use RMSNormFn, which computes the same forward.
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.square().mean(-1, keepdim=True) + eps)).to(x.dtype)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # fp32 for the half types (as the plain ops), float64 kept as is (gradcheck)
    return torch.float64 if dtype == torch.float64 else torch.float32


class RMSNormFn(torch.autograd.Function):
    """rms_norm with a backward from its output: keeps y (activation dtype, which the next linear
    layer keeps anyway, so it costs no extra bytes) and the fp32 rstd [..., 1], not an fp32 copy of x.

    y = x * r with r = rsqrt(mean(x^2) + eps)  =>  dx = r * (dy - y * mean(dy * y)).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, eps: float) -> torch.Tensor:
        x32 = x.to(_compute_dtype(x.dtype))
        rstd = torch.rsqrt(x32.square().mean(-1, keepdim=True) + eps)  # (..., 1) fp32
        y = (x32 * rstd).to(x.dtype)
        ctx.save_for_backward(y, rstd)
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor) -> tuple[torch.Tensor, None]:
        y, rstd = ctx.saved_tensors
        y32, dy32 = y.to(rstd.dtype), dy.to(rstd.dtype)
        dx = rstd * (dy32 - y32 * (dy32 * y32).mean(-1, keepdim=True))
        return dx.to(dy.dtype), None


class CastedLinear(nn.Module):
    """fp32 weight [out, in] cast to the activation dtype at use; optional LoRA adapter."""

    def __init__(self, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.lora_scale = 0.0
        self.lora_A: nn.Parameter | None = None
        self.lora_B: nn.Parameter | None = None

    def add_lora(self, rank: int, alpha: float, generator: torch.Generator | None = None) -> None:
        """Adapter y += (alpha/rank) * B(A(x)) in fp32; A Kaiming-uniform(a=sqrt 5), B zeros."""
        out_features, in_features = self.weight.shape
        A = torch.empty(rank, in_features, device=self.weight.device)
        bound = 1 / math.sqrt(in_features)  # kaiming_uniform_ with a = sqrt(5)
        A.uniform_(-bound, bound, generator=generator)
        self.lora_A = nn.Parameter(A)
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, device=self.weight.device))
        self.lora_scale = alpha / rank

    @torch.no_grad()
    def merge_lora(self) -> None:
        """Fold the adapter into the base weight (W += scale * B A) and drop it."""
        if self.lora_A is not None:
            self.weight += self.lora_scale * (self.lora_B @ self.lora_A)
            self.lora_A = self.lora_B = None
            self.lora_scale = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        y = F.linear(x, self.weight.to(x.dtype), bias)
        if self.lora_A is not None:
            y = y + (self.lora_scale * F.linear(F.linear(x.float(), self.lora_A), self.lora_B)).to(x.dtype)
        return y


class CastedEmbedding(nn.Module):
    """fp32 token table cast to the activation dtype at every lookup."""

    def __init__(self, num: int, dim: int, cast_to: torch.dtype) -> None:
        super().__init__()
        self.cast_to = cast_to
        self.embedding_weight = nn.Parameter(torch.empty(num, dim))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.embedding_weight.to(self.cast_to))


class PuzzleEmbedding(nn.Module):
    """One learned vector per task variant, trained by sparse SignSGD (optim.py), not by Adam.

    `weights` [N_ids, D] is a persistent buffer, so it is outside model.parameters(). In train
    mode the forward copies the rows it reads into the leaf `local_weights` [B, D] and records
    `local_ids` [B]; backward leaves the row gradients in `local_weights.grad` for the optimiser.
    """

    def __init__(self, num: int, dim: int, cast_to: torch.dtype) -> None:
        super().__init__()
        self.cast_to = cast_to
        self.register_buffer("weights", torch.zeros(num, dim), persistent=True)
        self.local_weights = torch.zeros(0, dim, requires_grad=True)
        self.local_ids = torch.zeros(0, dtype=torch.int32)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.weights[ids].to(self.cast_to)
        with torch.no_grad():
            rows = self.weights[ids]
        self.local_weights = rows.detach().requires_grad_(True)  # (B, D) leaf
        self.local_ids = ids.to(torch.int32)
        return self.local_weights.to(self.cast_to)


class RotaryEmbedding(nn.Module):
    """cos/sin tables [S_total, head_dim] in fp32 over every position, prefix included."""

    def __init__(self, dim: int, max_len: int, theta: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        freqs = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos_cached", emb.cos(), persistent=False)
        self.register_buffer("sin_cached", emb.sin(), persistent=False)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # q, k: (B, S, H, D); NeoX half-split convention, computed in fp32.
    dtype = q.dtype
    q, k = q.to(cos.dtype), k.to(cos.dtype)
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    return (q * cos + rotate_half(q) * sin).to(dtype), (k * cos + rotate_half(k) * sin).to(dtype)


class RopeQKVFn(torch.autograd.Function):
    """apply_rope on the q and k heads of a packed qkv (B, S, 3H, hd), into one new (B, S, 3H, hd).

    Attention then keeps q, k and v as views of that one buffer instead of the rotated q and k plus
    the whole projection output (v is a view of it). The tables' halves are equal (cat(freqs, freqs)),
    so with x = (x1, x2): y = (x1 c - x2 s, x2 c + x1 s), apply_rope's values bit for bit without its
    rotate_half copies. RoPE is linear with constant tables, so backward keeps nothing per row:
    dx = (dy1 c + dy2 s, dy2 c - dy1 s).
    """

    @staticmethod
    def _rotate(x: torch.Tensor, c: torch.Tensor, s: torch.Tensor, out: torch.Tensor) -> None:
        # x (B, S, 2H, hd) in the tables' dtype; c, s (S, 1, hd/2); writes the rotation into out
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        out[..., :half] = x1 * c - x2 * s
        out[..., half:] = x2 * c + x1 * s

    @staticmethod
    def forward(ctx, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_heads: int) -> torch.Tensor:
        n, half = 2 * num_heads, cos.shape[-1] // 2
        c, s = cos[:, None, :half], sin[:, None, :half]  # (S, 1, hd/2)
        out = torch.empty_like(qkv)
        RopeQKVFn._rotate(qkv[:, :, :n].to(cos.dtype), c, s, out[:, :, :n])
        out[:, :, n:] = qkv[:, :, n:]
        ctx.save_for_backward(cos, sin)
        ctx.num_heads = num_heads
        return out

    @staticmethod
    def backward(ctx, dout: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        cos, sin = ctx.saved_tensors
        n, half = 2 * ctx.num_heads, cos.shape[-1] // 2
        c, s = cos[:, None, :half], sin[:, None, :half]
        dqkv = torch.empty_like(dout)
        RopeQKVFn._rotate(dout[:, :, :n].to(cos.dtype), c, -s, dqkv[:, :, :n])  # the inverse rotation
        dqkv[:, :, n:] = dout[:, :, n:]
        return dqkv, None, None, None


class Attention(nn.Module):
    def __init__(self, cfg: TRMConfig) -> None:
        super().__init__()
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.qkv_proj = CastedLinear(cfg.hidden_size, 3 * cfg.hidden_size, bias=False)
        self.o_proj = CastedLinear(cfg.hidden_size, cfg.hidden_size, bias=False)

    def forward(self, h: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None) -> torch.Tensor:
        B, S, D = h.shape
        qkv = self.qkv_proj(h).view(B, S, 3 * self.num_heads, self.head_dim)  # (B, S, 3H, hd)
        if cos is not None:  # None: learned positions were added to the input instead
            qkv = RopeQKVFn.apply(qkv, cos, sin, self.num_heads)
        q, k, v = qkv.split(self.num_heads, dim=2)
        # Non-causal and unmasked: PAD positions are attended to, as in the reference.
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.o_proj(y.transpose(1, 2).reshape(B, S, D))


class SwiGLU(nn.Module):
    def __init__(self, cfg: TRMConfig) -> None:
        super().__init__()
        self.gate_up_proj = CastedLinear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down_proj = CastedLinear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.down_proj(SwiGLUFn.apply(self.gate_up_proj(h)))


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


class SwiGLUFn(torch.autograd.Function):
    """swiglu (silu(gate) * up of a packed (..., 2I)) keeping only its input: plain autograd keeps
    the input (gate and up are views of it) and silu(gate) besides; backward recomputes silu.

    Forward and backward run the plain ops' kernels, so both are bit-identical to plain autograd.
    """

    @staticmethod
    def forward(ctx, gate_up: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate_up)
        return swiglu(gate_up)

    @staticmethod
    def backward(ctx, dout: torch.Tensor) -> torch.Tensor:
        (gate_up,) = ctx.saved_tensors
        gate, up = gate_up.chunk(2, dim=-1)
        # the plain ops' own kernels, so the gradient is theirs bit for bit
        dgate = torch.ops.aten.silu_backward(dout * up, gate)
        return torch.cat((dgate, dout * F.silu(gate)), dim=-1)


class Block(nn.Module):
    """Post-norm transformer block: h = norm(h + attn(h)); h = norm(h + mlp(h))."""

    def __init__(self, cfg: TRMConfig) -> None:
        super().__init__()
        self.eps = cfg.rms_norm_eps
        self.self_attn = Attention(cfg)
        self.mlp = SwiGLU(cfg)

    def forward(self, h: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None) -> torch.Tensor:
        h = RMSNormFn.apply(h + self.self_attn(h, cos, sin), self.eps)
        return RMSNormFn.apply(h + self.mlp(h), self.eps)


class ReasoningModule(nn.Module):
    """A stack of `num_layers` blocks applied to h + injection (TRM's one module, HRM's H and L)."""

    def __init__(self, cfg: TRMConfig, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Block(cfg) for _ in range(num_layers))

    def forward(self, h: torch.Tensor, injection: torch.Tensor, cos: torch.Tensor | None,
                sin: torch.Tensor | None) -> torch.Tensor:
        h = h + injection
        for layer in self.layers:
            h = layer(h, cos, sin)
        return h
