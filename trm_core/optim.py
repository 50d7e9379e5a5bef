"""What updates the weights: the trunk optimiser, the puzzle-embedding optimiser, the lr schedule, the EMA.

- `AdamAtan2`: Adam with atan2 in place of the epsilon division, in the two variants released TRM
  checkpoints were trained with: "original" (imoneoi/adam-atan2, the reference trainer) and
  "lucidrains" (adam-atan2-pytorch, the Trelis fork: a = 1.27, b = 1, bias correction 1 inside
  atan2). Inputs: the trunk parameters and their `.grad`. Output: parameters updated in place.
- `SparseSignSGD`: sign SGD with lazy decoupled weight decay for the puzzle-embedding table,
  which lives outside `model.parameters()`. Inputs: the embedding's `weights` [N, D],
  `local_weights.grad` [B, D] and `local_ids` [B]. Output: the rows read this step, updated in place.
- `lr_at`: the warm-up + cosine schedule as a pure function of the 1-based step.
- `EMA`: exponential moving average of the trainable (trunk) parameters.

All update math runs in float32. Scalars (bias corrections, decay factors) are computed in Python
double and cast to float32 by the tensor ops, as the reference implementations do.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from trm_core.config import OPTIMIZERS as VARIANTS  # the two AdamATan2 variants, named where the settings are


class AdamAtan2(torch.optim.Optimizer):
    """Adam-atan2: no epsilon, the update is atan2(m, sqrt(v)), bounded by pi/2 per element.

    Per parameter with its own step count k (parameters whose grad is None are skipped entirely:
    no decay, no moment update, k not advanced):
      original:   p *= 1 - lr*wd;  m = lerp(m, g, 1-b1);  v = lerp(v, g*g, 1-b2)
                  p -= lr/(1-b1^k) * atan2(m, sqrt(v) / sqrt(1-b2^k))
      lucidrains: m, v as above;  u = atan2(m * (1/(1-b1^k)), sqrt(v * (b*b/(1-b2^k))))
                  p *= 1 - lr*wd;  p -= (lr*a) * u
    `lr` may be 0 at construction: the schedule sets `param_groups[i]["lr"]` before each step.
    `foreach=True` (default) runs the multi-tensor path (a few kernels per step instead of a few
    per parameter); `foreach=False` is the plain per-parameter loop. Both give the same bits.
    Moments are float32 whatever the parameter dtype; a low-precision parameter is updated in
    float32 and rounded back.
    """

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict], lr: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.95), weight_decay: float = 0.1,
                 variant: str = "original", a: float = 1.27, b: float = 1.0, foreach: bool = True) -> None:
        if lr < 0.0:
            raise ValueError(f"AdamAtan2: lr must be >= 0, got {lr}")
        if not all(0.0 <= beta < 1.0 for beta in betas) or len(betas) != 2:
            raise ValueError(f"AdamAtan2: betas must be two values in [0, 1), got {betas}")
        if weight_decay < 0.0:
            raise ValueError(f"AdamAtan2: weight_decay must be >= 0, got {weight_decay}")
        if variant not in VARIANTS:
            raise ValueError(f"AdamAtan2: variant must be one of {VARIANTS}, got {variant!r}")
        defaults = dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay, variant=variant,
                        a=a, b=b, foreach=foreach)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            live = [p for p in group["params"] if p.grad is not None]
            for p in live:
                if p.grad.is_sparse:
                    raise RuntimeError(f"AdamAtan2: sparse gradients are not supported (param shape {tuple(p.shape)})")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
                state["step"] += 1
            if group["foreach"]:
                self._step_foreach(group, live)
            else:
                for p in live:
                    self._step_one(group, p)
        return loss

    def _step_one(self, group: dict, p: torch.Tensor) -> None:
        """The simple path: one parameter at a time."""
        state = self.state[p]
        lr, wd, (beta1, beta2), k = group["lr"], group["weight_decay"], group["betas"], state["step"]
        m, v = state["exp_avg"], state["exp_avg_sq"]
        p32, g = p.float(), p.grad.float()  # both are the tensors themselves when already fp32
        m.lerp_(g, 1.0 - beta1)
        v.lerp_(g * g, 1.0 - beta2)
        bc1, bc2 = 1.0 - beta1 ** k, 1.0 - beta2 ** k
        if group["variant"] == "original":
            # bias correction 1 outside atan2, bias correction 2 divides the denominator
            p32.mul_(1.0 - lr * wd)
            u = torch.atan2(m, v.sqrt().div_(math.sqrt(bc2)))
            p32.add_(u, alpha=-(lr / bc1))
        else:
            b = group["b"]
            u = m.mul(1.0 / bc1).atan2_(v.mul(b * b / bc2).sqrt_())
            p32.mul_(1.0 - lr * wd)
            p32.add_(u, alpha=-(lr * group["a"]))
        if p32 is not p:
            p.copy_(p32)

    def _step_foreach(self, group: dict, live: list[torch.Tensor]) -> None:
        """The multi-tensor path: the same operations, batched over parameters sharing (device, step)."""
        lr, wd, (beta1, beta2) = group["lr"], group["weight_decay"], group["betas"]
        buckets: dict[tuple[torch.device, int], list[torch.Tensor]] = {}
        for p in live:
            buckets.setdefault((p.device, self.state[p]["step"]), []).append(p)
        for (_, k), params in buckets.items():
            p32 = [p.float() for p in params]
            grads = [p.grad.float() for p in params]
            ms = [self.state[p]["exp_avg"] for p in params]
            vs = [self.state[p]["exp_avg_sq"] for p in params]
            torch._foreach_lerp_(ms, grads, 1.0 - beta1)
            torch._foreach_lerp_(vs, torch._foreach_mul(grads, grads), 1.0 - beta2)
            bc1, bc2 = 1.0 - beta1 ** k, 1.0 - beta2 ** k
            if group["variant"] == "original":
                torch._foreach_mul_(p32, 1.0 - lr * wd)
                us = torch._foreach_sqrt(vs)
                torch._foreach_div_(us, math.sqrt(bc2))
                for m, u in zip(ms, us):  # there is no _foreach_atan2
                    torch.atan2(m, u, out=u)
                torch._foreach_add_(p32, us, alpha=-(lr / bc1))
            else:
                b = group["b"]
                dens = torch._foreach_mul(vs, b * b / bc2)
                torch._foreach_sqrt_(dens)
                us = torch._foreach_mul(ms, 1.0 / bc1)
                for u, den in zip(us, dens):
                    u.atan2_(den)
                torch._foreach_mul_(p32, 1.0 - lr * wd)
                torch._foreach_add_(p32, us, alpha=-(lr * group["a"]))
            for p, q in zip(params, p32):
                if q is not p:
                    p.copy_(q)

    def load_state_dict(self, state_dict: dict) -> None:
        # torch casts floating state to each parameter's dtype; the moments must stay float32.
        super().load_state_dict(state_dict)
        params = [p for group in self.param_groups for p in group["params"]]
        for idx, saved in state_dict["state"].items():
            p = params[idx]
            for key in ("exp_avg", "exp_avg_sq"):
                self.state[p][key] = saved[key].to(device=p.device, dtype=torch.float32)


class SparseSignSGD:
    """Sign SGD with lazy decoupled weight decay for the puzzle-embedding table.

    `embedding` exposes `weights` [N, D] (updated in place), `local_weights` [B, D] (the leaf the
    forward read; its .grad is the row gradient) and `local_ids` [B]. Attributes are read at each
    step because the forward may replace the tensors. With torch.distributed initialised and more
    than one rank in `process_group`, gradients and ids of all ranks are gathered first, so every
    rank applies the same update. Then, per distinct id, the gradient rows are summed and
        w = w * (1 - lr*wd) - lr * sign(g_sum)        (sign(0) = 0)
    for those rows only; rows absent from the batch are untouched. The schedule sets
    `param_groups[0]["lr"]`, as for a torch optimiser.
    """

    def __init__(self, embedding: nn.Module, lr: float = 0.0, weight_decay: float = 0.1,
                 process_group: dist.ProcessGroup | None = None) -> None:
        if lr < 0.0:
            raise ValueError(f"SparseSignSGD: lr must be >= 0, got {lr}")
        if weight_decay < 0.0:
            raise ValueError(f"SparseSignSGD: weight_decay must be >= 0, got {weight_decay}")
        for name in ("weights", "local_weights", "local_ids"):
            if not hasattr(embedding, name):
                raise TypeError(f"SparseSignSGD: the embedding has no `{name}` attribute "
                                "(expected weights [N, D], local_weights [B, D], local_ids [B])")
        self.embedding = embedding
        self.process_group = process_group
        self.param_groups = [{"lr": lr, "weight_decay": weight_decay}]

    def _gathered(self, grad: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not (dist.is_available() and dist.is_initialized()):
            return grad, ids
        world = dist.get_world_size(self.process_group)
        if world == 1:
            return grad, ids
        # every rank holds the same local batch size, as in the reference
        all_grad = grad.new_empty((world * grad.shape[0], *grad.shape[1:]))
        all_ids = ids.new_empty((world * ids.shape[0],))
        dist.all_gather_into_tensor(all_grad, grad.contiguous(), group=self.process_group)
        dist.all_gather_into_tensor(all_ids, ids.contiguous(), group=self.process_group)
        return all_grad, all_ids

    @torch.no_grad()
    def step(self) -> None:
        emb = self.embedding
        grad = emb.local_weights.grad
        if grad is None:
            return
        lr, wd = self.param_groups[0]["lr"], self.param_groups[0]["weight_decay"]
        grad, ids = self._gathered(grad, emb.local_ids)  # (B, D), (B,)
        # Sum rows per distinct id without torch.unique (which waits for the device to learn the
        # number of ids): a stable sort keeps each id's rows in batch order, so the sums are the
        # reference's scatter_add sums, bit for bit.
        sorted_ids, order = torch.sort(ids, stable=True)  # (B,)
        first = torch.ones_like(sorted_ids, dtype=torch.bool)
        first[1:] = sorted_ids[1:] != sorted_ids[:-1]
        slot = torch.cumsum(first, 0) - 1  # (B,) index of each row's distinct id
        sums = torch.zeros(grad.shape, dtype=torch.float32, device=grad.device)
        sums.index_add_(0, slot, grad[order].float())  # (B, D), rows past the distinct count stay 0
        rows = emb.weights[sorted_ids]  # (B, D), a repeated id gives identical rows
        rows.mul_(1.0 - lr * wd).add_(torch.sign(sums[slot]).to(rows.dtype), alpha=-lr)
        emb.weights.index_put_((sorted_ids,), rows)  # duplicates write the same values

    def zero_grad(self, set_to_none: bool = True) -> None:
        lw = self.embedding.local_weights
        if lw.grad is None:
            return
        if set_to_none:
            lw.grad = None
        else:
            lw.grad.zero_()

    def state_dict(self) -> dict:
        return {"param_groups": [dict(g) for g in self.param_groups]}

    def load_state_dict(self, state_dict: dict) -> None:
        groups = state_dict.get("param_groups")
        if not isinstance(groups, list) or len(groups) != 1 or not {"lr", "weight_decay"} <= set(groups[0]):
            raise ValueError("SparseSignSGD.load_state_dict: expected {'param_groups': [{'lr', 'weight_decay'}]}, "
                             f"got {state_dict!r}")
        self.param_groups = [dict(groups[0])]


def lr_at(step: int, base_lr: float, warmup_steps: int, total_steps: int, min_ratio: float = 1.0) -> float:
    """The learning rate at 1-based `step`: linear warm-up, then cosine from base_lr to base_lr*min_ratio.

    step < warmup: base*step/warmup. Otherwise base*(r + (1-r)*0.5*(1 + cos(pi*progress))) with
    progress = (step - warmup)/(total - warmup), clamped to 1 (the reference never steps past
    total_steps). min_ratio = 1 (the reference default) gives a constant rate after warm-up.
    """
    if warmup_steps < 0 or total_steps < 0:
        raise ValueError(f"lr_at: warmup_steps ({warmup_steps}) and total_steps ({total_steps}) must be >= 0")
    if not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"lr_at: min_ratio must be in [0, 1], got {min_ratio}")
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return base_lr * (min_ratio + max(0.0, (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))))


def set_lr(optimizer: torch.optim.Optimizer | SparseSignSGD, lr: float) -> None:
    """Set every param group's lr (what the schedule does before each step)."""
    for group in optimizer.param_groups:
        group["lr"] = lr


class EMA:
    """Exponential moving average of trainable parameters: shadow = (1-decay)*param + decay*shadow.

    Built from a module (its parameters with requires_grad, i.e. the trunk; buffers such as the
    puzzle-embedding table are not averaged) or from (name, param) pairs. Call `update()` after
    every optimiser step. `copy_to(module)` writes the averages into a module with the same
    parameter names (pass the unwrapped module, not a compiled or DDP wrapper); `applied(module)`
    does so for the duration of a `with` block and then restores the live weights, which is how a
    checkpoint of EMA trunk + live embedding table is written.
    """

    def __init__(self, module_or_params: nn.Module | Iterable[tuple[str, torch.Tensor]], decay: float = 0.999) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA: decay must be in [0, 1], got {decay}")
        if isinstance(module_or_params, nn.Module):
            named = list(module_or_params.named_parameters())
        else:
            named = list(module_or_params)
        named = [(n, p) for n, p in named if p.requires_grad]
        self.decay = decay
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        if not self.params:
            return
        # (1-mu)*p + mu*s with each product rounded separately, as the reference helper computes it
        torch._foreach_mul_(self.shadow, self.decay)
        torch._foreach_add_(self.shadow, torch._foreach_mul([p.detach() for p in self.params], 1.0 - self.decay))

    def _targets(self, module: nn.Module | None) -> list[torch.Tensor]:
        if module is None:
            return self.params
        by_name = dict(module.named_parameters())
        missing = [n for n in self.names if n not in by_name]
        if missing:
            raise KeyError(f"EMA: module has no parameters named {missing[:5]} (of {len(missing)} missing); "
                           "pass the unwrapped module the EMA was built from")
        return [by_name[n] for n in self.names]

    @torch.no_grad()
    def copy_to(self, module: nn.Module | None = None) -> None:
        """Overwrite the parameters (the tracked ones, or `module`'s of the same names) with the averages."""
        for p, s in zip(self._targets(module), self.shadow):
            p.copy_(s)

    @contextlib.contextmanager
    def applied(self, module: nn.Module | None = None) -> Iterator[None]:
        """Inside the block the parameters hold the averages; afterwards the live values come back."""
        targets = self._targets(module)
        with torch.no_grad():
            live = [p.detach().clone() for p in targets]
            for p, s in zip(targets, self.shadow):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, x in zip(targets, live):
                    p.copy_(x)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": dict(zip(self.names, self.shadow))}

    @torch.no_grad()
    def load_state_dict(self, state_dict: dict) -> None:
        shadow = state_dict["shadow"]
        if set(shadow) != set(self.names):
            raise KeyError(f"EMA.load_state_dict: names differ; missing {sorted(set(self.names) - set(shadow))[:5]}, "
                           f"unexpected {sorted(set(shadow) - set(self.names))[:5]}")
        self.decay = float(state_dict["decay"])
        for name, s in zip(self.names, self.shadow):
            s.copy_(shadow[name])
