"""The Tiny Recursive Model: config, layers, the recursive core and the ACT wrapper, in one file.

Input: a batch dict of int32 tensors `inputs` [B, S] (tokens of a C x C canvas, S = C*C),
`labels` [B, S] and `puzzle_identifiers` [B]. Output of one call: one ACT step, i.e. the new
carry and `logits` [B, S, vocab] (forward dtype), `q_halt_logits` and `q_continue_logits` [B]
(float32). Reproduces the reference TRM numerics (parameters fp32 cast at use, activations in
`forward_dtype`, norms and RoPE in fp32) with the reference's module names, so a reference
state dict loads after stripping its `_orig_mod.model.inner.` prefix (see checkpoint.py).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint as activation_checkpoint

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class TRMConfig:
    """Architecture of a TRM, with the reference's field names (config/arch/trm.yaml)."""

    hidden_size: int = 512  # width of every token state
    num_heads: int = 8  # attention heads; head_dim = hidden_size // num_heads
    expansion: float = 4.0  # SwiGLU width factor before the reference's 2/3 and multiple-of-256 rounding
    H_cycles: int = 3  # outer cycles per ACT step; all but the last run without gradient
    L_cycles: int = 4  # z_L updates per outer cycle (the released ARC checkpoints use 4)
    L_layers: int = 2  # transformer blocks in the one shared reasoning module
    puzzle_emb_ndim: int = 512  # width of the per-variant embedding (0 = none)
    puzzle_emb_len: int = 16  # prefix slots; only slot 0 carries the embedding. Cannot be read from weights
    num_puzzle_identifiers: int = 1  # rows of the puzzle-embedding table, blank row 0 included
    vocab_size: int = 12  # PAD, EOS and ten colours
    canvas: int = 30  # grids live on a canvas x canvas board; seq_len = canvas**2
    rms_norm_eps: float = 1e-5  # epsilon of the weightless RMSNorm
    rope_theta: float = 10000.0  # RoPE base
    halt_max_steps: int = 16  # ACT steps; evaluation always runs exactly this many
    halt_exploration_prob: float = 0.1  # training: chance a row must run at least U{2..max} steps
    forward_dtype: str = "bfloat16"  # activation dtype: "bfloat16", "float32" or "float16"

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ValueError(f"TRMConfig: {what}")

        need(self.hidden_size > 0 and self.num_heads > 0, "hidden_size and num_heads must be positive")
        need(self.hidden_size % self.num_heads == 0,
             f"hidden_size {self.hidden_size} must be a multiple of num_heads {self.num_heads}")
        need((self.hidden_size // self.num_heads) % 2 == 0, "head_dim must be even for RoPE")
        need(self.H_cycles >= 1 and self.L_cycles >= 1 and self.L_layers >= 1,
             "H_cycles, L_cycles and L_layers must be >= 1")
        need(self.expansion > 0, "expansion must be positive")
        need(self.puzzle_emb_ndim >= 0, "puzzle_emb_ndim must be >= 0")
        need(self.puzzle_emb_len >= 0, "puzzle_emb_len must be >= 0")
        need(self.puzzle_emb_ndim <= self.puzzle_emb_len * self.hidden_size,
             f"puzzle_emb_ndim {self.puzzle_emb_ndim} does not fit in puzzle_emb_len "
             f"{self.puzzle_emb_len} x hidden_size {self.hidden_size}")
        need(self.num_puzzle_identifiers >= 1, "num_puzzle_identifiers must be >= 1 (row 0 is blank)")
        need(self.vocab_size >= 2, "vocab_size must be >= 2")
        need(1 <= self.canvas <= 64, f"canvas must be in 1..64, got {self.canvas}")
        need(self.halt_max_steps >= 1, "halt_max_steps must be >= 1")
        need(0.0 <= self.halt_exploration_prob <= 1.0, "halt_exploration_prob must be in [0, 1]")
        need(self.forward_dtype in DTYPES, f"forward_dtype must be one of {sorted(DTYPES)}")

    @property
    def seq_len(self) -> int:
        return self.canvas * self.canvas

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def intermediate_size(self) -> int:
        # The reference rounds 2/3 of expansion * hidden, then up to a multiple of 256.
        inter = round(self.expansion * self.hidden_size * 2 / 3)
        return -(-inter // 256) * 256

    @property
    def total_len(self) -> int:
        return self.seq_len + self.puzzle_emb_len

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.forward_dtype]

    def with_(self, **changes: Any) -> TRMConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TRMConfig:
        """From our own dict or a reference arch config (config.json / all_config.yaml `arch`).

        Reference-only keys are translated (seq_len -> canvas) or checked (pos_encodings must be
        rope, mlp_t false, no_ACT_continue true); bookkeeping keys (name, loss, batch_size,
        H_layers) are ignored.
        """
        d = dict(d.get("arch", d))
        if d.get("pos_encodings", "rope") != "rope":
            raise ValueError(f"TRMConfig: pos_encodings={d['pos_encodings']!r} is not supported (only rope)")
        if d.get("mlp_t", False):
            raise ValueError("TRMConfig: mlp_t=True (the Sudoku variant) is not supported")
        if not d.get("no_ACT_continue", True):
            raise ValueError("TRMConfig: no_ACT_continue=False is not supported (the reference branch is broken)")
        if "seq_len" in d and "canvas" not in d:
            canvas = math.isqrt(int(d["seq_len"]))
            if canvas * canvas != int(d["seq_len"]):
                raise ValueError(f"TRMConfig: seq_len {d['seq_len']} is not a square canvas")
            d["canvas"] = canvas
        if d.get("puzzle_emb_len", 1) == 0 and d.get("puzzle_emb_ndim", 0) > 0:
            # Reference rule: 0 means ceil(ndim / hidden).
            d["puzzle_emb_len"] = -(-int(d["puzzle_emb_ndim"]) // int(d["hidden_size"]))
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def from_name(cls, name: str, **changes: Any) -> TRMConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return replace(PRESETS[name], **changes)


PRESETS: dict[str, TRMConfig] = {
    # The released ARC-AGI-2 checkpoints (TRM-ARC-AGI-II, arcprize verification, Sanjin2024).
    "paper": TRMConfig(),
    # Trelis all-200k / hard-1M: identical weights layout, one prefix slot.
    "trelis-emb1": TRMConfig(puzzle_emb_len=1),
    # Tests and the CPU demo: small width, few cycles, small canvas.
    "tiny": TRMConfig(hidden_size=64, num_heads=4, H_cycles=2, L_cycles=2, puzzle_emb_ndim=64,
                      puzzle_emb_len=1, canvas=12, halt_max_steps=4, forward_dtype="float32"),
}


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
    # Weightless, computed in fp32 whatever the activation dtype.
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.square().mean(-1, keepdim=True) + eps)).to(x.dtype)


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


class Attention(nn.Module):
    def __init__(self, cfg: TRMConfig) -> None:
        super().__init__()
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.qkv_proj = CastedLinear(cfg.hidden_size, 3 * cfg.hidden_size, bias=False)
        self.o_proj = CastedLinear(cfg.hidden_size, cfg.hidden_size, bias=False)

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, S, D = h.shape
        qkv = self.qkv_proj(h).view(B, S, 3 * self.num_heads, self.head_dim)  # (B, S, 3H, hd)
        q, k, v = qkv.split(self.num_heads, dim=2)
        q, k = apply_rope(q, k, cos, sin)
        # Non-causal and unmasked: PAD positions are attended to, as in the reference.
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.o_proj(y.transpose(1, 2).reshape(B, S, D))


class SwiGLU(nn.Module):
    def __init__(self, cfg: TRMConfig) -> None:
        super().__init__()
        self.gate_up_proj = CastedLinear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down_proj = CastedLinear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(h).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    """Post-norm transformer block: h = norm(h + attn(h)); h = norm(h + mlp(h))."""

    def __init__(self, cfg: TRMConfig) -> None:
        super().__init__()
        self.eps = cfg.rms_norm_eps
        self.self_attn = Attention(cfg)
        self.mlp = SwiGLU(cfg)

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        h = rms_norm(h + self.self_attn(h, cos, sin), self.eps)
        return rms_norm(h + self.mlp(h), self.eps)


class ReasoningModule(nn.Module):
    """The one shared module, used for both the z_L and the z_H update: blocks(h + injection)."""

    def __init__(self, cfg: TRMConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.L_layers))

    def forward(self, h: torch.Tensor, injection: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        h = h + injection
        for layer in self.layers:
            h = layer(h, cos, sin)
        return h


@dataclass
class Carry:
    """State carried between ACT steps (and, in training, between batches)."""

    z_H: torch.Tensor  # (B, S_total, D) answer state y, forward dtype
    z_L: torch.Tensor  # (B, S_total, D) latent state z
    steps: torch.Tensor  # (B,) int32 ACT steps taken by the row's current example
    halted: torch.Tensor  # (B,) bool; halted rows take the next batch's row at the next step
    current_data: dict[str, torch.Tensor] = field(default_factory=dict)  # the example each row is refining


class TRM(nn.Module):
    """Tiny Recursive Model with its ACT wrapper. One forward call = one ACT step."""

    def __init__(self, cfg: TRMConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.config = cfg
        dtype, D = cfg.dtype, cfg.hidden_size
        self.embed_scale = math.sqrt(D)
        self.embed_tokens = CastedEmbedding(cfg.vocab_size, D, dtype)
        self.lm_head = CastedLinear(D, cfg.vocab_size, bias=False)
        self.q_head = CastedLinear(D, 2, bias=True)
        self.puzzle_emb = PuzzleEmbedding(cfg.num_puzzle_identifiers, cfg.puzzle_emb_ndim, dtype)
        self.rotary_emb = RotaryEmbedding(cfg.head_dim, cfg.total_len, cfg.rope_theta)
        self.L_level = ReasoningModule(cfg)
        self.register_buffer("H_init", torch.zeros(D, dtype=dtype), persistent=True)
        self.register_buffer("L_init", torch.zeros(D, dtype=dtype), persistent=True)
        # Training only: recompute the gradient-carrying module calls in backward instead of keeping
        # their activations (less memory, about one more forward of compute). Not architecture.
        self.checkpoint_activations = False
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Reference initialisation: LeCun truncated normals, zero q weight, q bias -5."""
        D = self.config.hidden_size
        trunc_normal_(self.embed_tokens.embedding_weight, 1 / math.sqrt(D), generator)
        trunc_normal_(self.lm_head.weight, 1 / math.sqrt(D), generator)
        for name, p in self.L_level.named_parameters():
            trunc_normal_(p, 1 / math.sqrt(p.shape[1]), generator)
        self.q_head.weight.zero_()
        self.q_head.bias.fill_(-5.0)
        self.puzzle_emb.weights.zero_()
        h = torch.empty(D)
        self.H_init.copy_(trunc_normal_(h, 1.0, generator))
        self.L_init.copy_(trunc_normal_(h, 1.0, generator))

    def add_lora(self, rank: int, alpha: float, generator: torch.Generator | None = None) -> None:
        """Put a LoRA adapter on every linear layer, the lm and q heads included."""
        for m in self.modules():
            if isinstance(m, CastedLinear):
                m.add_lora(rank, alpha, generator)

    def merge_lora(self) -> None:
        for m in self.modules():
            if isinstance(m, CastedLinear):
                m.merge_lora()

    # ---- the recursive core -------------------------------------------------------------

    def input_embeddings(self, inputs: torch.Tensor, puzzle_identifiers: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        x = self.embed_tokens(inputs.to(torch.int32))  # (B, S, D)
        if cfg.puzzle_emb_len > 0:
            B = inputs.shape[0]
            if cfg.puzzle_emb_ndim > 0:
                pe = self.puzzle_emb(puzzle_identifiers)  # (B, ndim)
                pe = F.pad(pe, (0, cfg.puzzle_emb_len * cfg.hidden_size - cfg.puzzle_emb_ndim))
            else:
                pe = x.new_zeros(B, cfg.puzzle_emb_len * cfg.hidden_size)
            x = torch.cat((pe.view(B, cfg.puzzle_emb_len, cfg.hidden_size), x), dim=1)  # (B, S_total, D)
        return self.embed_scale * x

    def recursion(self, z_H: torch.Tensor, z_L: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """H_cycles outer cycles of (L_cycles z_L updates, one z_H update); only the last has grad."""
        cfg = self.config
        cos, sin = self.rotary_emb.cos_cached, self.rotary_emb.sin_cached
        with torch.no_grad():
            for _ in range(cfg.H_cycles - 1):
                for _ in range(cfg.L_cycles):
                    z_L = self.L_level(z_L, z_H + x, cos, sin)
                z_H = self.L_level(z_H, z_L, cos, sin)
        level = self.L_level
        if self.checkpoint_activations and torch.is_grad_enabled():
            def level(h: torch.Tensor, inj: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
                return activation_checkpoint(self.L_level, h, inj, cos, sin, use_reentrant=False)
        for _ in range(cfg.L_cycles):
            z_L = level(z_L, z_H + x, cos, sin)
        z_H = level(z_H, z_L, cos, sin)
        return z_H, z_L

    def heads(self, z_H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.lm_head(z_H)[:, self.config.puzzle_emb_len:]  # (B, S, vocab)
        q = self.q_head(z_H[:, 0]).to(torch.float32)  # (B, 2) from the puzzle slot
        return logits, q

    # ---- the ACT wrapper -----------------------------------------------------------------

    def initial_carry(self, batch: dict[str, torch.Tensor]) -> Carry:
        B = batch["inputs"].shape[0]
        device = batch["inputs"].device
        z = torch.zeros(B, self.config.total_len, self.config.hidden_size, dtype=self.config.dtype, device=device)
        return Carry(z_H=z, z_L=z.clone(), steps=torch.zeros(B, dtype=torch.int32, device=device),
                     halted=torch.ones(B, dtype=torch.bool, device=device),
                     current_data={k: torch.zeros_like(v) for k, v in batch.items()})

    def exploration_draws(self, rows: int, generator: torch.Generator | None = None,
                          device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The uniforms (B,) and minimum steps (B,) int32 one training step's halting exploration uses.

        Drawn for a whole batch at once, so a batch split into micro-batches halts exactly as it would
        in one forward (slice the draws with the rows)."""
        u = torch.rand((rows,), generator=generator, device=device)
        min_steps = torch.randint(2, self.config.halt_max_steps + 1, (rows,), generator=generator, device=device,
                                  dtype=torch.int32)
        return u, min_steps

    def forward(self, carry: Carry, batch: dict[str, torch.Tensor],
                generator: torch.Generator | None = None,
                draws: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[Carry, dict[str, torch.Tensor]]:
        """One ACT step. In training, `draws` (from exploration_draws) replaces drawing from `generator`."""
        cfg = self.config
        halted = carry.halted
        # Halted rows restart from H_init/L_init on the new batch row; the others keep their example.
        z_H = torch.where(halted.view(-1, 1, 1), self.H_init, carry.z_H)
        z_L = torch.where(halted.view(-1, 1, 1), self.L_init, carry.z_L)
        steps = torch.where(halted, 0, carry.steps)
        data = {k: torch.where(halted.view((-1,) + (1,) * (v.ndim - 1)), batch[k], v)
                for k, v in carry.current_data.items()}

        x = self.input_embeddings(data["inputs"], data["puzzle_identifiers"])
        z_H, z_L = self.recursion(z_H, z_L, x)
        logits, q = self.heads(z_H)
        outputs = {"logits": logits, "q_halt_logits": q[..., 0], "q_continue_logits": q[..., 1]}

        with torch.no_grad():
            steps = steps + 1
            halted = steps >= cfg.halt_max_steps
            if self.training and cfg.halt_max_steps > 1:
                q_halt = outputs["q_halt_logits"]
                halted = halted | (q_halt > 0)
                # Exploration: with some probability a row must run at least U{2..max} steps.
                if draws is None:
                    draws = self.exploration_draws(q_halt.shape[0], generator, q_halt.device)
                u, min_steps = draws
                explore = u < cfg.halt_exploration_prob
                halted = halted & (steps >= explore * min_steps)
        new_carry = Carry(z_H=z_H.detach(), z_L=z_L.detach(), steps=steps, halted=halted, current_data=data)
        return new_carry, outputs


def count_parameters(model: TRM) -> int:
    """Trunk parameters (the puzzle-embedding table and H/L init are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters())


def flops_per_sample(cfg: TRMConfig, train: bool) -> float:
    """Matmul FLOPs of one ACT step for one sequence (multiply-add = 2).

    A training step runs H_cycles*(L_cycles+1) module calls of which the last L_cycles+1 carry a
    backward (about 2x forward); evaluation runs every call forward only.
    """
    S, D, I = cfg.total_len, cfg.hidden_size, cfg.intermediate_size
    per_token_block = 2 * (D * 3 * D + D * D + D * 2 * I + I * D) + 2 * 2 * S * D  # projections + QK^T and AV
    call = cfg.L_layers * S * per_token_block
    calls = cfg.H_cycles * (cfg.L_cycles + 1)
    head = 2 * S * D * cfg.vocab_size
    if not train:
        return calls * call + head
    grad_calls = cfg.L_cycles + 1
    return (calls + 2 * grad_calls) * call + 3 * head
