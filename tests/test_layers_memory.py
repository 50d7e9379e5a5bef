"""The blocks' memory-lean autograd Functions against the plain autograd they replace.

RMSNormFn, SwiGLUFn and RopeQKVFn change only what backward keeps: forward must be identical
and gradients must agree (gradcheck in float64, closeness in bfloat16), the model must still
compile to one graph, and the bytes a step saves per row must fall by the amount counted below.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import trm_core.layers as layers
from trm_core.layers import RMSNormFn, RopeQKVFn, RotaryEmbedding, SwiGLUFn, apply_rope, rms_norm, swiglu
from trm_core.model import TRM, TRMConfig

ROOT = Path(__file__).resolve().parent.parent


def _rope_plain(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int) -> torch.Tensor:
    q, k, v = qkv.split(heads, dim=2)
    q, k = apply_rope(q, k, cos, sin)
    return torch.cat((q, k, v), dim=2)


# The layers as plain autograd writes them (the reference's structure), to compare against.
def _attention_plain(self, h, cos, sin):
    B, S, D = h.shape
    q, k, v = self.qkv_proj(h).view(B, S, 3 * self.num_heads, self.head_dim).split(self.num_heads, dim=2)
    if cos is not None:
        q, k = apply_rope(q, k, cos, sin)
    y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return self.o_proj(y.transpose(1, 2).reshape(B, S, D))


def _swiglu_plain(self, h):
    return self.down_proj(swiglu(self.gate_up_proj(h)))


def _block_plain(self, h, cos, sin):
    h = rms_norm(h + self.self_attn(h, cos, sin), self.eps)
    return rms_norm(h + self.mlp(h), self.eps)


def _use_plain_layers(monkeypatch) -> None:
    monkeypatch.setattr(layers.Attention, "forward", _attention_plain)
    monkeypatch.setattr(layers.SwiGLU, "forward", _swiglu_plain)
    monkeypatch.setattr(layers.Block, "forward", _block_plain)


def _tables(S: int, hd: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    rope = RotaryEmbedding(hd, S, 10000.0)
    return rope.cos_cached.to(dtype), rope.sin_cached.to(dtype)


def test_functions_pass_gradcheck_in_float64() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 8, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: RMSNormFn.apply(t, 1e-5), (x,))
    gu = torch.randn(2, 5, 12, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(SwiGLUFn.apply, (gu,))
    cos, sin = _tables(5, 4, torch.float64)
    qkv = torch.randn(2, 5, 3 * 2, 4, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: RopeQKVFn.apply(t, cos, sin, 2), (qkv,))


@pytest.mark.parametrize("dtype, rtol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_functions_equal_plain_autograd(dtype: torch.dtype, rtol: float) -> None:
    g = torch.Generator().manual_seed(1)
    cos, sin = _tables(7, 8, torch.float32)
    # (function, plain ops, shape, whether the gradient is the plain one bit for bit)
    cases = [
        (lambda t: RMSNormFn.apply(t, 1e-5), lambda t: rms_norm(t, 1e-5), (3, 7, 32), False),
        (SwiGLUFn.apply, swiglu, (3, 7, 48), True),
        (lambda t: RopeQKVFn.apply(t, cos, sin, 2), lambda t: _rope_plain(t, cos, sin, 2), (3, 7, 6, 8), True),
    ]
    for fn, plain, shape, exact in cases:
        x = (3 * torch.randn(shape, generator=g)).to(dtype)
        dy = torch.randn(shape[:-1] + (plain(x).shape[-1],), generator=g).to(dtype)
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = fn(a), plain(b)
        assert ya.dtype == yb.dtype == dtype
        assert torch.equal(ya, yb), "forward must be bit-identical to the plain ops"
        ya.backward(dy)
        yb.backward(dy)
        assert a.grad.dtype == dtype and (not exact or torch.equal(a.grad, b.grad))
        ga, gb = a.grad.double(), b.grad.double()
        assert float((ga - gb).norm() / gb.norm()) < rtol
        # and bf16 gradients stay within a few roundings of the float64 truth
        if dtype == torch.bfloat16:
            c = x.double().requires_grad_()
            plain(c).backward(dy.double())
            assert float((ga - c.grad).norm() / c.grad.norm()) < rtol


def test_the_model_step_matches_plain_layers(monkeypatch) -> None:
    """A whole training step (loss and every gradient) with the Functions equals the plain ops."""
    from trm_core.loss import act_loss

    cfg = TRMConfig.from_name("tiny", num_puzzle_identifiers=3)
    batch = {"inputs": torch.randint(2, 12, (3, cfg.seq_len), generator=torch.Generator().manual_seed(2),
                                     dtype=torch.int32)}
    batch["labels"] = batch["inputs"].clone()
    batch["puzzle_identifiers"] = torch.tensor([0, 1, 2], dtype=torch.int32)

    def step() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model = TRM(cfg, generator=torch.Generator().manual_seed(0)).train()
        with torch.no_grad():
            model.q_head.weight.normal_(generator=torch.Generator().manual_seed(3))
        carry = model.initial_carry(batch)
        carry, out = model(carry, batch, draws=(torch.ones(3), torch.full((3,), 2, dtype=torch.int32)))
        loss, _, _ = act_loss(carry, out)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    loss, grads = step()
    _use_plain_layers(monkeypatch)
    plain_loss, plain_grads = step()
    assert torch.allclose(loss, plain_loss, rtol=1e-6)
    assert grads.keys() == plain_grads.keys()
    for name, g in grads.items():
        ref = plain_grads[name]
        assert float((g - ref).norm()) <= 1e-5 * float(ref.norm()) + 1e-9, name


def _bench_memory():
    spec = importlib.util.spec_from_file_location("bench_memory", ROOT / "tools" / "bench_memory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_saved_bytes_per_row_fall_by_the_counted_amount(monkeypatch) -> None:
    """bf16, tiny widths. Per token and block with gradient, the Functions drop the fp32 copies of
    both norm inputs (2 x 4D bytes), silu(gate) (2I) and the rotated q and k (2 x 2D, now views of
    one qkv buffer next to v). They add the output of each module call whose output nothing else
    keeps (2D): the z_L updates, which plain autograd frees (the last z_H feeds the heads' linear)."""
    bench = _bench_memory()
    cfg = TRMConfig.from_name("tiny", forward_dtype="bfloat16", num_puzzle_identifiers=4)
    per_row = lambda: bench.per_row(lambda r: bench.saved_kit(cfg, r, torch.device("cpu"), False), (1, 2))[0]
    lean = per_row()
    _use_plain_layers(monkeypatch)
    plain = per_row()
    D, I, S = cfg.hidden_size, cfg.intermediate_size, cfg.total_len
    calls = cfg.L_cycles + 1  # TRM module calls with gradient in one step: L_cycles z_L, one z_H
    dropped = calls * cfg.L_layers * S * (2 * 4 * D + 2 * I + 2 * 2 * D)
    added = cfg.L_cycles * S * 2 * D
    assert plain - lean == dropped - added
    assert lean < 0.75 * plain


def test_the_recursion_still_compiles_to_one_graph() -> None:
    cfg = TRMConfig.from_name("tiny", H_cycles=1, L_cycles=1, canvas=4)
    model = TRM(cfg, generator=torch.Generator().manual_seed(0)).train()
    x = torch.randn(2, cfg.total_len, cfg.hidden_size)
    z = torch.zeros_like(x)
    explain = torch._dynamo.explain(model.recursion)(z, z.clone(), x)
    assert explain.graph_count == 1 and explain.graph_break_count == 0, explain.break_reasons
