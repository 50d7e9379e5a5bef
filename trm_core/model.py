"""The recursive models: the TRM and HRM recursions and the ACT wrapper (their config and presets,
TRMConfig, live in trm_core/config.py, torch-free, and are re-exported here).

Two architectures share every layer (trm_core/layers.py) and the ACT wrapper; `architecture`
in the config picks the recursion. TRM (arXiv 2510.04871) updates both states with one shared
module; HRM (arXiv 2506.21734) has separate H_level and L_level stacks, a one-step gradient and
the bootstrapped q_continue target in training.

Input: a batch dict of int32 tensors `inputs` [B, S] (tokens of a C x C canvas, S = C*C),
`labels` [B, S] and `puzzle_identifiers` [B]. Output of one call: one ACT step, i.e. the new
carry and `logits` [B, S, vocab] (forward dtype), `q_halt_logits` and `q_continue_logits` [B]
(float32), plus `target_q_continue` [B] for HRM in training. Reproduces the reference numerics
(parameters fp32 cast at use, activations in `forward_dtype`, norms and RoPE in fp32) with the
reference's module names, so a reference state dict loads after stripping its
`_orig_mod.model.inner.` prefix (see checkpoint.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from trm_core.config import ARCHITECTURES, POS_ENCODINGS, TRMConfig  # noqa: F401 - re-exported
from trm_core.layers import (  # noqa: F401 - re-exported: the layers' historical home
    Attention, Block, CastedEmbedding, CastedLinear, PuzzleEmbedding, ReasoningModule, RotaryEmbedding,
    apply_rope, rms_norm, rotate_half, trunc_normal_,
)



@dataclass
class Carry:
    """State carried between ACT steps (and, in training, between batches)."""

    z_H: torch.Tensor  # (B, S_total, D) answer state y, forward dtype
    z_L: torch.Tensor  # (B, S_total, D) latent state z
    steps: torch.Tensor  # (B,) int32 ACT steps taken by the row's current example
    halted: torch.Tensor  # (B,) bool; halted rows take the next batch's row at the next step
    current_data: dict[str, torch.Tensor] = field(default_factory=dict)  # the example each row is refining


class TRM(nn.Module):
    """A recursive model (TRM or HRM, by `cfg.architecture`) with its ACT wrapper.

    One forward call = one ACT step.
    """

    def __init__(self, cfg: TRMConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.config = cfg
        dtype, D = cfg.dtype, cfg.hidden_size
        self.embed_scale = math.sqrt(D)
        self.embed_tokens = CastedEmbedding(cfg.vocab_size, D, dtype)
        self.lm_head = CastedLinear(D, cfg.vocab_size, bias=False)
        self.q_head = CastedLinear(D, 2, bias=True)
        self.puzzle_emb = PuzzleEmbedding(cfg.num_puzzle_identifiers, cfg.puzzle_emb_ndim, dtype)
        self.rotary_emb = RotaryEmbedding(cfg.head_dim, cfg.total_len, cfg.rope_theta) \
            if cfg.pos_encodings == "rope" else None
        self.embed_pos = CastedEmbedding(cfg.total_len, D, dtype) if cfg.pos_encodings == "learned" else None
        # TRM: L_level updates both z_L and z_H. HRM: H_level updates z_H.
        self.H_level = ReasoningModule(cfg, cfg.H_layers) if cfg.architecture == "hrm" else None
        self.L_level = ReasoningModule(cfg, cfg.L_layers)
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
        # Drawn after TRM's tensors, so a TRM's initialisation does not depend on these options.
        if self.H_level is not None:
            for name, p in self.H_level.named_parameters():
                trunc_normal_(p, 1 / math.sqrt(p.shape[1]), generator)
        if self.embed_pos is not None:
            trunc_normal_(self.embed_pos.embedding_weight, 1 / math.sqrt(D), generator)

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

    def rope(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(cos, sin) tables for the blocks; (None, None) with learned positions."""
        if self.rotary_emb is None:
            return None, None
        return self.rotary_emb.cos_cached, self.rotary_emb.sin_cached

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
        if self.embed_pos is not None:
            # The references scale by 1/sqrt(2) to keep the variance of the sum.
            x = 0.707106781 * (x + self.embed_pos.embedding_weight.to(x.dtype))
        return self.embed_scale * x

    def recursion(self, z_H: torch.Tensor, z_L: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One ACT step's H_cycles outer cycles of (L_cycles z_L updates, one z_H update).

        z_L is always injected with z_H + x and z_H with z_L. TRM runs whole outer cycles without
        gradient but the last; HRM (its own H_level for z_H) keeps gradient only in the very last
        z_L and z_H update (the one-step gradient).
        """
        cfg = self.config
        cos, sin = self.rope()
        H, L = cfg.H_cycles, cfg.L_cycles
        L_level, H_level = self.L_level, self.H_level
        if self.checkpoint_activations and torch.is_grad_enabled():
            def checkpointed(module: nn.Module):
                def call(h: torch.Tensor, inj: torch.Tensor, cos: torch.Tensor | None,
                         sin: torch.Tensor | None) -> torch.Tensor:
                    return activation_checkpoint(module, h, inj, cos, sin, use_reentrant=False)
                return call
            L_level = checkpointed(self.L_level)
            if self.H_level is not None:
                H_level = checkpointed(self.H_level)
        if self.H_level is None:  # TRM
            with torch.no_grad():
                for _ in range(H - 1):
                    for _ in range(L):
                        z_L = self.L_level(z_L, z_H + x, cos, sin)
                    z_H = self.L_level(z_H, z_L, cos, sin)
            for _ in range(L):
                z_L = L_level(z_L, z_H + x, cos, sin)
            return L_level(z_H, z_L, cos, sin), z_L
        with torch.no_grad():  # HRM
            for i in range(H):
                for j in range(L):
                    if i < H - 1 or j < L - 1:
                        z_L = self.L_level(z_L, z_H + x, cos, sin)
                if i < H - 1:
                    z_H = self.H_level(z_H, z_L, cos, sin)
        z_L = L_level(z_L, z_H + x, cos, sin)
        return H_level(z_H, z_L, cos, sin), z_L

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
            is_last = steps >= cfg.halt_max_steps
            halted = is_last
            if self.training and cfg.halt_max_steps > 1:
                q_halt, q_continue = outputs["q_halt_logits"], outputs["q_continue_logits"]
                # TRM halts on q_halt alone; HRM when halting looks better than continuing.
                halted = halted | (q_halt > (q_continue if cfg.architecture == "hrm" else 0))
                # Exploration: with some probability a row must run at least U{2..max} steps.
                if draws is None:
                    draws = self.exploration_draws(q_halt.shape[0], generator, q_halt.device)
                u, min_steps = draws
                explore = u < cfg.halt_exploration_prob
                halted = halted & (steps >= explore * min_steps)
                if cfg.architecture == "hrm":
                    # Bootstrapped Q target: the q values one more step from the new carry, same data.
                    next_H, _ = self.recursion(z_H, z_L, x)
                    next_q = self.q_head(next_H[:, 0]).to(torch.float32)  # (B, 2)
                    outputs["target_q_continue"] = torch.sigmoid(
                        torch.where(is_last, next_q[..., 0], torch.maximum(next_q[..., 0], next_q[..., 1])))
        new_carry = Carry(z_H=z_H.detach(), z_L=z_L.detach(), steps=steps, halted=halted, current_data=data)
        return new_carry, outputs


def count_parameters(model: TRM) -> int:
    """Trunk parameters (the puzzle-embedding table and H/L init are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters())


def flops_per_sample(cfg: TRMConfig, train: bool) -> float:
    """Matmul FLOPs of one ACT step for one sequence (multiply-add = 2).

    TRM: H_cycles*(L_cycles+1) calls of its module, the last L_cycles+1 with a backward (about 2x
    forward). HRM: H_cycles*L_cycles L_level calls and H_cycles H_level calls, the last of each
    with a backward, and in training a second forward for the Q target.
    """
    S, D, I = cfg.total_len, cfg.hidden_size, cfg.intermediate_size
    per_token_block = 2 * (D * 3 * D + D * D + D * 2 * I + I * D) + 2 * 2 * S * D  # projections + QK^T and AV
    call_L = cfg.L_layers * S * per_token_block
    head = 2 * S * D * cfg.vocab_size
    if cfg.architecture == "hrm":
        call_H = cfg.H_layers * S * per_token_block
        forward = cfg.H_cycles * (cfg.L_cycles * call_L + call_H)
        if not train:
            return forward + head
        return forward + 2 * (call_L + call_H) + 3 * head + forward
    calls = cfg.H_cycles * (cfg.L_cycles + 1)
    if not train:
        return calls * call_L + head
    grad_calls = cfg.L_cycles + 1
    return (calls + 2 * grad_calls) * call_L + 3 * head
