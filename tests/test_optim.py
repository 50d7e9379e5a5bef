"""Optimisers, lr schedule and EMA (trm_core/optim.py).

The golden part replays every `*.safetensors` file found in `<fixtures>/optim/` step by step and
compares parameters, moments and step counters after every step. A file's kind comes from its name
(adam_atan2_original*, adam_atan2_lucidrains*, sparse_signsgd*); a file of no known kind fails.
Hyper-parameters come from `meta.json` (keyed by file stem, then kind) when it has them, else
from the documented reference values.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from spawned import leave
import torch
from safetensors.torch import load_file
from torch import nn

from conftest import reference_root
from trm_core.optim import EMA, AdamAtan2, SparseSignSGD, lr_at, set_lr

KINDS = ("adam_atan2_original", "adam_atan2_lucidrains", "sparse_signsgd")


# ---------------------------------------------------------------------------------------------
# helpers


def _fixture_files() -> list[Path]:
    folder = reference_root() / "optim"
    return sorted(folder.glob("*.safetensors")) if folder.is_dir() else []


def _kind(path: Path) -> str | None:
    found = [k for k in KINDS if path.name.startswith(k)]
    return found[0] if len(found) == 1 else None


def _cases() -> list:
    cases = []
    for path in _fixture_files():
        kind = _kind(path)
        paths = ("foreach", "loop") if kind is not None and kind.startswith("adam_atan2") else ("-",)
        cases += [pytest.param(path, kind, p, id=f"{path.stem}-{p}") for p in paths]
    return cases


def _meta(path: Path, kind: str) -> dict:
    meta_file = path.parent / "meta.json"
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    entry = meta.get(path.stem, meta.get(kind, {}))
    return entry.get("constructor", entry)


def _steps(tensors: dict[str, torch.Tensor], path: Path) -> int:
    n = 0
    while f"step{n}.lr" in tensors:
        n += 1
    assert n > 0, f"{path}: no step0.lr tensor, so no step to replay"
    return n


def _ordered(x: torch.Tensor) -> torch.Tensor:
    # float32 bits mapped to integers that are monotone in the float value, so a difference of
    # these integers counts the float32 values (ulps) between two numbers
    i = x.contiguous().view(torch.int32).to(torch.int64)
    return torch.where(i < 0, -(i & 0x7FFFFFFF), i)


def _assert_ulps(got: torch.Tensor, ref: torch.Tensor, max_ulps: int, what: str) -> None:
    assert got.shape == ref.shape and got.dtype == ref.dtype == torch.float32, what
    ulps = (_ordered(got) - _ordered(ref)).abs().max().item() if got.numel() else 0
    assert ulps <= max_ulps, f"{what}: {ulps} ulps apart (allowed {max_ulps}); max abs diff {(got - ref).abs().max().item()}"


def _assert_matches(got: torch.Tensor, ref: torch.Tensor, kind: str, what: str) -> None:
    if kind == "adam_atan2_original":
        # the fixture is a float32 port of the CUDA kernel with fused multiply-adds; plain torch
        # float32 differs by a few ulps, so a relative tolerance (README: rtol 1e-6)
        torch.testing.assert_close(got, ref, rtol=1e-6, atol=0.0, msg=lambda m: f"{what}: {m}")
    else:
        # same operations in the same order: bitwise on the machine that made the fixtures,
        # one ulp allowed for other CPU instruction sets
        _assert_ulps(got, ref, 1, what)


class StandInEmbedding(nn.Module):
    """The three attributes SparseSignSGD reads, filled the way the reference forward fills them."""

    def __init__(self, weights: torch.Tensor, batch: int) -> None:
        super().__init__()
        self.register_buffer("weights", weights.clone())
        self.local_weights = torch.zeros(batch, weights.shape[1], requires_grad=True)
        self.local_ids = torch.zeros(batch, dtype=torch.int32)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.local_weights.copy_(self.weights[ids])
            self.local_ids.copy_(ids)
        return self.local_weights


def _replay_adam(path: Path, kind: str, foreach: bool) -> None:
    t = load_file(str(path))
    hp = _meta(path, kind)
    names = sorted(k[len("init."):] for k in t if k.startswith("init."))
    assert names, f"{path}: no init.<param> tensors"
    params = {n: nn.Parameter(t[f"init.{n}"].clone()) for n in names}
    opt = AdamAtan2(list(params.values()), lr=0.0, betas=tuple(hp.get("betas", (0.9, 0.95))),
                    weight_decay=hp.get("weight_decay", 0.1), variant=kind[len("adam_atan2_"):],
                    a=hp.get("a", 1.27), b=hp.get("b", 1.0), foreach=foreach)
    for s in range(_steps(t, path)):
        for n, p in params.items():
            p.grad = t[f"step{s}.grad.{n}"].clone() if t[f"step{s}.grad_present.{n}"].item() else None
        set_lr(opt, t[f"step{s}.lr"].item())
        opt.step()
        for n, p in params.items():
            where = f"{path.name} step {s} {n}"
            state = opt.state[p]
            _assert_matches(p.detach(), t[f"step{s}.param.{n}"], kind, f"{where} param")
            if state:
                _assert_matches(state["exp_avg"], t[f"step{s}.exp_avg.{n}"], kind, f"{where} exp_avg")
                _assert_matches(state["exp_avg_sq"], t[f"step{s}.exp_avg_sq.{n}"], kind, f"{where} exp_avg_sq")
            else:  # never had a gradient: no state, so the recorded moments must be zero
                assert not t[f"step{s}.exp_avg.{n}"].any() and not t[f"step{s}.exp_avg_sq.{n}"].any(), where
            assert float(state.get("step", 0)) == t[f"step{s}.state_steps.{n}"].item(), f"{where} step counter"


def _replay_signsgd(path: Path, kind: str) -> None:
    t = load_file(str(path))
    hp = _meta(path, kind)
    n_steps = _steps(t, path)
    emb = StandInEmbedding(t["init.weights"], batch=t["step0.ids"].shape[0])
    opt = SparseSignSGD(emb, lr=0.0, weight_decay=hp.get("weight_decay", 0.1))
    for s in range(n_steps):
        out = emb(t[f"step{s}.ids"])
        assert torch.equal(emb.local_weights, t[f"step{s}.local_weights"]), f"{path.name} step {s}: rows read"
        (out * t[f"step{s}.local_weights_grad"]).sum().backward()
        set_lr(opt, t[f"step{s}.lr"].item())
        opt.step()
        opt.zero_grad()
        _assert_matches(emb.weights, t[f"step{s}.weights"], kind, f"{path.name} step {s} weights")


# ---------------------------------------------------------------------------------------------
# golden trajectories


def test_optim_fixtures_present():
    assert _fixture_files(), f"no *.safetensors under {reference_root() / 'optim'}: set TRM_REFERENCE_FIXTURES"


@pytest.mark.parametrize("path, kind, impl", _cases())
def test_reference_trajectory(path: Path, kind: str | None, impl: str):
    if kind is None:
        pytest.fail(f"{path}: unknown optimiser fixture; its name must start with one of {KINDS}")
    if kind == "sparse_signsgd":
        _replay_signsgd(path, kind)
    else:
        _replay_adam(path, kind, foreach=impl == "foreach")


# ---------------------------------------------------------------------------------------------
# AdamAtan2


def _random_run(variant: str, foreach: bool, steps: int, dtype=torch.float32, opt_state=None, start=0):
    g = torch.Generator().manual_seed(0)
    shapes = [(7, 5), (5,), (3, 4, 2), (1,)]
    params = [nn.Parameter(torch.randn(s, generator=g).to(dtype)) for s in shapes]
    grads = [[torch.randn(s, generator=g) * 10.0 ** (i % 3 - 1) for s in shapes] for i in range(steps)]
    opt = AdamAtan2(params, lr=0.0, variant=variant, foreach=foreach)
    if opt_state is not None:
        params_state, opt_sd = opt_state
        with torch.no_grad():
            for p, x in zip(params, params_state):
                p.copy_(x)
        opt.load_state_dict(opt_sd)
    for i in range(start, steps):
        for j, p in enumerate(params):
            # param j skips steps where (i + j) % 3 == 0, so step counts differ between params
            p.grad = None if (i + j) % 3 == 0 else grads[i][j].to(dtype)
        set_lr(opt, 1e-3 * (i + 1))
        opt.step()
    return params, opt


@pytest.mark.parametrize("variant", ["original", "lucidrains"])
def test_foreach_and_loop_give_the_same_bits(variant):
    a, opt_a = _random_run(variant, foreach=True, steps=7)
    b, opt_b = _random_run(variant, foreach=False, steps=7)
    counts = {opt_a.state[p]["step"] for p in a}
    assert len(counts) > 1  # the run really mixes step counts
    for p, q in zip(a, b):
        assert torch.equal(p, q)
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(torch.as_tensor(opt_a.state[p][key]), torch.as_tensor(opt_b.state[q][key]))


@pytest.mark.parametrize("variant", ["original", "lucidrains"])
def test_resume_from_state_dict_is_exact(variant):
    full, _ = _random_run(variant, foreach=True, steps=7)
    half, opt = _random_run(variant, foreach=True, steps=3)
    saved = ([p.detach().clone() for p in half], opt.state_dict())
    resumed, _ = _random_run(variant, foreach=True, steps=7, opt_state=saved, start=3)
    for p, q in zip(full, resumed):
        assert torch.equal(p, q)


def test_grad_none_and_frozen_params_are_untouched():
    live = nn.Parameter(torch.ones(4))
    frozen = nn.Parameter(torch.ones(4), requires_grad=False)
    idle = nn.Parameter(torch.ones(4))
    opt = AdamAtan2([live, frozen, idle], lr=0.1, weight_decay=0.5)
    live.grad = torch.ones(4)
    opt.step()
    assert not torch.equal(live, torch.ones(4))
    assert torch.equal(frozen, torch.ones(4)) and torch.equal(idle, torch.ones(4))  # no decay either
    assert frozen not in opt.state and idle not in opt.state


def test_first_step_size():
    # step 1 from zero moments: m = (1-b1) g, v = (1-b2) g^2, whatever the scale of g.
    # original (bias correction 1 outside atan2): lr/(1-b1) * atan2(0.1, 1) = 10 lr atan(0.1)
    # lucidrains (inside, times a):               a lr atan2(1, 1)        = 1.27 lr pi/4
    for variant, size in (("original", 10 * math.atan(0.1)), ("lucidrains", 1.27 * math.pi / 4)):
        p = nn.Parameter(torch.full((3,), 2.0))
        opt = AdamAtan2([p], lr=0.01, weight_decay=0.0, variant=variant)
        p.grad = torch.tensor([3.0, -1e-6, 1e6])
        opt.step()
        expected = 2.0 - 0.01 * size * torch.tensor([1.0, -1.0, 1.0])
        torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=0.0)


def test_low_precision_params_keep_float32_moments():
    p32, _ = _random_run("lucidrains", foreach=True, steps=4)
    p16, opt = _random_run("lucidrains", foreach=True, steps=4, dtype=torch.bfloat16)
    for p, q in zip(p16, p32):
        assert p.dtype == torch.bfloat16 and opt.state[p]["exp_avg"].dtype == torch.float32
        torch.testing.assert_close(p.float(), q.detach(), rtol=0.02, atol=0.02)
    fresh = AdamAtan2([nn.Parameter(p.detach().clone()) for p in p16], variant="lucidrains")
    fresh.load_state_dict(opt.state_dict())
    for p, q in zip(fresh.param_groups[0]["params"], p16):
        assert fresh.state[p]["exp_avg_sq"].dtype == torch.float32
        assert torch.equal(fresh.state[p]["exp_avg_sq"], opt.state[q]["exp_avg_sq"])


def test_rejects_bad_arguments():
    p = [nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="variant"):
        AdamAtan2(p, variant="adamw")
    with pytest.raises(ValueError, match="betas"):
        AdamAtan2(p, betas=(0.9, 1.0))
    AdamAtan2(p, lr=0.0)  # the schedule sets lr later


# ---------------------------------------------------------------------------------------------
# SparseSignSGD


def _signsgd_by_definition(weights, grad, ids, lr, wd):
    """unique + scatter_add + update of those rows only, written the plain way."""
    uniq, inv = torch.unique(ids, return_inverse=True)
    sums = torch.zeros(len(uniq), grad.shape[1]).scatter_add_(0, inv.long().unsqueeze(-1).expand_as(grad), grad)
    out = weights.clone()
    out[uniq.long()] = weights[uniq.long()] * (1 - lr * wd) - lr * torch.sign(sums)
    return out


def test_signsgd_matches_definition_with_many_duplicates():
    g = torch.Generator().manual_seed(1)
    weights = torch.randn(50, 8, generator=g)
    emb = StandInEmbedding(weights, batch=64)
    opt = SparseSignSGD(emb, lr=0.03, weight_decay=0.1)
    expected = weights.clone()
    for _ in range(3):
        ids = torch.randint(0, 12, (64,), generator=g, dtype=torch.int32)  # rows 12..49 never read
        grad = torch.randn(64, 8, generator=g).round()  # integers: exact cancellations happen
        (emb(ids) * grad).sum().backward()
        expected = _signsgd_by_definition(expected, grad, ids, 0.03, 0.1)
        opt.step()
        opt.zero_grad()
        assert emb.local_weights.grad is None
        assert torch.equal(emb.weights, expected)
    assert torch.equal(emb.weights[12:], weights[12:])


def test_signsgd_without_grad_is_a_no_op_and_state_round_trips():
    emb = StandInEmbedding(torch.ones(4, 2), batch=2)
    opt = SparseSignSGD(emb, lr=0.5)
    opt.step()
    assert torch.equal(emb.weights, torch.ones(4, 2))
    set_lr(opt, 0.25)
    other = SparseSignSGD(emb)
    other.load_state_dict(opt.state_dict())
    assert other.param_groups[0] == {"lr": 0.25, "weight_decay": 0.1}
    with pytest.raises(ValueError, match="param_groups"):
        other.load_state_dict({})
    with pytest.raises(TypeError, match="local_ids"):
        SparseSignSGD(nn.Linear(2, 2))


def _gloo_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    g = torch.Generator().manual_seed(7)
    weights = torch.randn(10, 4, generator=g)
    ids = torch.randint(0, 6, (world, 5), generator=g, dtype=torch.int32)
    grads = torch.randn(world, 5, 4, generator=g)
    emb = StandInEmbedding(weights, batch=5)
    opt = SparseSignSGD(emb, lr=0.1, weight_decay=0.1)
    (emb(ids[rank]) * grads[rank]).sum().backward()
    opt.step()
    torch.save({"weights": emb.weights, "ids": ids, "grads": grads, "init": weights}, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()
    leave()  # written and destroyed: no teardown (tests/spawned.py)


def test_signsgd_gathers_across_ranks(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_gloo_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    expected = _signsgd_by_definition(r0["init"], r0["grads"].reshape(-1, 4), r0["ids"].reshape(-1), 0.1, 0.1)
    assert torch.equal(r0["weights"], expected) and torch.equal(r1["weights"], expected)


# ---------------------------------------------------------------------------------------------
# schedule


def test_warmup_is_linear_from_step_one():
    assert lr_at(1, 1e-4, 2000, 10_000) == pytest.approx(1e-4 / 2000)
    assert lr_at(1000, 1e-4, 2000, 10_000) == pytest.approx(0.5e-4)
    assert lr_at(1999, 2.0, 2000, 10_000) == pytest.approx(2.0 * 1999 / 2000)


def test_min_ratio_one_is_constant_after_warmup():
    assert {lr_at(s, 1e-2, 100, 1000) for s in (100, 101, 550, 1000)} == {1e-2}
    assert lr_at(5, 1e-2, 0, 1000) == 1e-2  # no warm-up


def test_cosine_endpoints_and_midpoint():
    base, warm, total, r = 3e-4, 10, 110, 0.1
    assert lr_at(warm, base, warm, total, r) == pytest.approx(base)
    assert lr_at(60, base, warm, total, r) == pytest.approx(base * (r + (1 - r) * 0.5))
    assert lr_at(total, base, warm, total, r) == pytest.approx(base * r)
    assert lr_at(total + 50, base, warm, total, r) == pytest.approx(base * r)  # clamped past the end
    lrs = [lr_at(s, base, warm, total, r) for s in range(warm, total + 1)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    with pytest.raises(ValueError, match="min_ratio"):
        lr_at(1, base, warm, total, 1.5)


def test_one_schedule_drives_both_optimisers():
    p = nn.Parameter(torch.zeros(2))
    adam = AdamAtan2([p])
    sign = SparseSignSGD(StandInEmbedding(torch.zeros(3, 2), batch=1))
    for opt, base in ((sign, 1e-2), (adam, 1e-4)):
        set_lr(opt, lr_at(50, base, 100, 1000))
    assert sign.param_groups[0]["lr"] == pytest.approx(0.5e-2)
    assert adam.param_groups[0]["lr"] == pytest.approx(0.5e-4)


# ---------------------------------------------------------------------------------------------
# EMA


class Trunk(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.frozen = nn.Parameter(torch.ones(2), requires_grad=False)
        self.register_buffer("table", torch.zeros(4, 2))


def test_ema_follows_the_reference_formula_and_tracks_trainable_params_only():
    torch.manual_seed(0)
    model = Trunk()
    ema = EMA(model, decay=0.999)
    assert ema.names == ["lin.weight", "lin.bias"]
    expected = [p.detach().clone() for p in (model.lin.weight, model.lin.bias)]
    for _ in range(5):
        with torch.no_grad():
            for p in model.lin.parameters():
                p.add_(torch.randn_like(p))
        ema.update()
        expected = [(1.0 - 0.999) * p.detach() + 0.999 * s for p, s in zip(model.lin.parameters(), expected)]
        for got, want in zip(ema.shadow, expected):
            assert torch.equal(got, want)


def test_ema_apply_copy_and_state_dict():
    torch.manual_seed(0)
    model = Trunk()
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        model.lin.weight.add_(1.0)
        model.table.fill_(3.0)
    ema.update()
    live = model.lin.weight.detach().clone()
    with ema.applied(model):
        assert torch.equal(model.lin.weight, ema.shadow[0])
        assert not torch.equal(model.lin.weight, live)
        saved = {k: v.clone() for k, v in model.state_dict().items()}
    assert torch.equal(model.lin.weight, live)  # live weights restored
    assert torch.equal(saved["table"], torch.full((4, 2), 3.0))  # buffers stay live, not averaged
    assert torch.equal(saved["frozen"], torch.ones(2))

    other = Trunk()
    ema2 = EMA(other, decay=0.9)
    ema2.load_state_dict(ema.state_dict())
    assert ema2.decay == 0.5
    ema2.copy_to(other)
    assert torch.equal(other.lin.weight, ema.shadow[0]) and torch.equal(other.lin.bias, ema.shadow[1])
    with pytest.raises(KeyError, match="names differ"):
        ema2.load_state_dict({"decay": 0.5, "shadow": {"x": torch.zeros(1)}})
    with pytest.raises(KeyError, match="unwrapped"):
        ema.copy_to(nn.Linear(3, 2))
