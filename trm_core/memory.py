"""Memory-aware batch sizing: a straight-line fit of peak device memory against rows per batch.

Input: peak bytes measured (torch.cuda.max_memory_allocated, or any allocator's peak) at two or
more small batch sizes, and a device budget in bytes. Output: a `MemoryFit` (bytes per row and an
intercept: weights, optimiser state, workspace) and the largest batch that fits the budget after a
stated headroom. Peak memory of a TRM step is linear in rows (every activation is per row; the
weights, moments and cos/sin tables are not), so two points fix it; a third point, when given,
only checks the line. The fit replaces a search that halves the batch after each out-of-memory:
it costs two small steps instead of failed big ones.

Nothing is measured at import time; `measure_peak` touches CUDA only when called on a CUDA device.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

HEADROOM = 0.10  # share of the budget left free: fragmentation, allocator slack, a bigger-than-measured row
ALLOC_CONF = "expandable_segments:True"  # PYTORCH_CUDA_ALLOC_CONF: fewer fragmentation OOMs at a planned peak
GIB = 1024**3


@dataclass(frozen=True)
class MemoryFit:
    """peak(rows) = intercept + bytes_per_row * rows, from measured points."""

    bytes_per_row: float
    intercept: float
    points: tuple[tuple[int, int], ...]  # (rows, peak bytes) as measured

    def peak(self, rows: int) -> float:
        return self.intercept + self.bytes_per_row * rows

    def largest_batch(self, budget_bytes: float, headroom: float = HEADROOM, multiple: int = 1) -> int:
        """Most rows (a multiple of `multiple`) whose fitted peak is within budget x (1 - headroom); 0 if none."""
        usable = budget_bytes * (1.0 - headroom) - self.intercept
        if self.bytes_per_row <= 0:
            raise ValueError("MemoryFit: bytes_per_row must be > 0 to size a batch")
        rows = int(usable // self.bytes_per_row)
        return max(0, rows // multiple * multiple)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["points"] = [list(p) for p in self.points]
        d["mib_per_row"] = self.bytes_per_row / 2**20
        d["intercept_mib"] = self.intercept / 2**20
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> MemoryFit:
        return cls(float(d["bytes_per_row"]), float(d["intercept"]), tuple((int(r), int(b)) for r, b in d["points"]))

    def render(self, budget_bytes: float | None = None, headroom: float = HEADROOM) -> str:
        line = f"{self.bytes_per_row / 2**20:.1f} MiB/row + {self.intercept / 2**20:.0f} MiB"
        if budget_bytes:
            line += (f"; {self.largest_batch(budget_bytes, headroom)} rows fit {budget_bytes / GIB:.1f} GiB "
                     f"with {100 * headroom:.0f}% headroom")
        return line


def fit(points: Sequence[tuple[int, int | float]]) -> MemoryFit:
    """Least-squares line through (rows, peak bytes); at least two distinct row counts."""
    pts = [(int(r), float(b)) for r, b in points]
    if len({r for r, _ in pts}) < 2:
        raise ValueError(f"MemoryFit: need peaks at two different batch sizes, got {pts}")
    n = len(pts)
    mr = sum(r for r, _ in pts) / n
    mb = sum(b for _, b in pts) / n
    slope = sum((r - mr) * (b - mb) for r, b in pts) / sum((r - mr) ** 2 for r, _ in pts)
    if slope <= 0:
        raise ValueError(f"MemoryFit: peak memory did not grow with rows ({pts}); measure at larger batches")
    return MemoryFit(bytes_per_row=slope, intercept=max(0.0, mb - slope * mr),
                     points=tuple((r, int(b)) for r, b in pts))


def measure_peak(run: Callable[[int], Any], rows: Sequence[int], device: Any,
                 peak_bytes: Callable[[], int] | None = None, reset: Callable[[], None] | None = None) -> MemoryFit:
    """Run `run(r)` for each r in `rows` and fit the peaks. On CUDA the peak is
    torch.cuda.max_memory_allocated (reset before each run); tests pass a fake allocator's
    `peak_bytes` and `reset`."""
    import torch

    device = torch.device(device)
    if peak_bytes is None:
        if device.type != "cuda":
            raise ValueError("measure_peak: peak memory is only measured on CUDA (pass peak_bytes elsewhere)")
        peak_bytes = lambda: torch.cuda.max_memory_allocated(device)  # noqa: E731

        def reset() -> None:
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
    points = []
    for r in rows:
        if reset:
            reset()
        run(r)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        points.append((int(r), int(peak_bytes())))
    return fit(points)


def device_budget(device: Any) -> int | None:
    """Bytes this process may allocate on `device`: what is free now plus what torch already holds
    (None off CUDA)."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device))


def set_alloc_conf(env: dict[str, str] | None = None) -> dict[str, str]:
    """Add expandable segments to PYTORCH_CUDA_ALLOC_CONF (kept if already set); must happen before
    CUDA initialises, so the runner sets it in its workers' environment."""
    env = os.environ if env is None else env
    conf = env.get("PYTORCH_CUDA_ALLOC_CONF", "")
    if "expandable_segments" not in conf:
        env["PYTORCH_CUDA_ALLOC_CONF"] = f"{conf},{ALLOC_CONF}" if conf else ALLOC_CONF
    return env


# ---- a TRM's fits -----------------------------------------------------------------------------


def _dummy_batch(cfg: Any, rows: int, device: Any) -> dict[str, Any]:
    import torch

    g = torch.Generator().manual_seed(rows)
    inputs = torch.randint(0, cfg.vocab_size, (rows, cfg.seq_len), generator=g, dtype=torch.int32)
    return {"inputs": inputs.to(device), "labels": inputs.clone().to(device),
            "puzzle_identifiers": torch.zeros(rows, dtype=torch.int32, device=device)}


def train_step_peak(model: Any, rows: int, device: Any) -> None:
    """One ACT step, loss and backward of `rows` rows on `model` (gradients dropped afterwards):
    what a training micro-batch allocates at its peak."""
    from trm_core.loss import act_loss

    batch = _dummy_batch(model.config, rows, device)
    was_training = model.training
    model.train()
    carry = model.initial_carry(batch)
    carry, out = model(carry, batch)
    loss, _, _ = act_loss(carry, out)
    loss.backward()
    for p in model.parameters():
        p.grad = None
    model.puzzle_emb.local_weights = model.puzzle_emb.local_weights.detach()
    model.train(was_training)


def predict_batch_peak(model: Any, rows: int, device: Any) -> None:
    """The ACT steps of one prediction batch of `rows` rows (the model's halt_max_steps)."""
    from trm_core.predict import predict_batch

    was_training = model.training
    model.eval()
    predict_batch(model, _dummy_batch(model.config, rows, device), model.config.halt_max_steps)
    model.train(was_training)


def optimiser_bytes(model: Any) -> int:
    """AdamATan2's two fp32 moments per trunk parameter, allocated at the first step (after any fit)."""
    return 2 * sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)


def carry_bytes_per_row(cfg: Any) -> int:
    """The ACT carry a training process keeps for every local row (z_H and z_L), twice while a step
    joins its micro-batches' carries."""
    return 2 * 2 * cfg.total_len * cfg.hidden_size * cfg.dtype.itemsize


def choose_micro_batch(fit: MemoryFit, local_batch: int, budget_bytes: float, cfg: Any, extra_bytes: float = 0.0,
                       headroom: float = HEADROOM) -> int:
    """Largest micro-batch (<= local_batch) whose step fits next to the local batch's carry and
    `extra_bytes` (optimiser state); raises a ValueError naming the figures when not one row fits."""
    spare = budget_bytes - local_batch * carry_bytes_per_row(cfg) - extra_bytes
    rows = fit.largest_batch(spare, headroom) if spare > 0 else 0
    if rows < 1:
        raise ValueError(f"not one training row fits: {fit.render()} with {local_batch} carried rows and "
                         f"{extra_bytes / 2**20:.0f} MiB of optimiser state in {budget_bytes / GIB:.1f} GiB "
                         f"({100 * headroom:.0f}% headroom); lower the global batch or use --checkpoint-activations")
    return min(rows, local_batch)
