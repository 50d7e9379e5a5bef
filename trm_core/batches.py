"""The two batch streams the trainer and the predictor read, built on `Variants` (trm_core/variants.py).

Inputs: Variants, a global batch size, the rank and world size, a canvas side C.
Outputs:
- `TrainSampler`: batches {"inputs", "labels", "puzzle_identifiers"} (torch int32 [B, C*C],
  [B, C*C] with PAD -> -100, [B]) packed as the reference packs them.
- `PredictViews`: every test input under the first K variants of its task, untranslated, in
  `ViewBatch`es that carry the per-row (task, test index, variant, augmentation) needed to invert
  the predictions.
Nothing is written to disk and no augmented grid is kept: memory grows with the number of tasks
(plus one batch), never with tasks x variants x examples. Grids are encoded by one numba kernel
(colour map, dihedral transform, offset, EOS border) straight into the batch tensor.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import numba
import numpy as np
import torch

from trm_core.augment import Augmentation
from trm_core.encoding import COLOR_OFFSET, EOS, IGNORE_LABEL, PAD
from trm_core.variants import SWAPS_SIDES, Variants, check_canvas


@numba.njit(cache=True)
def _encode_rows(flat, starts, shapes, grid_ids, codes, offsets, out):
    # flat uint8 [cells]; starts int64 [G]; shapes int64 [G, 2]; grid_ids int64 [n] (-1 leaves the row as
    # filled); codes uint8 [n, 11] (dihedral id, colour map); offsets int64 [n, 2]; out int32 [n, C, C].
    # Writes colour map then dihedral transform of each grid at its offset, plus the EOS L-border.
    canvas = out.shape[1]
    for j in range(grid_ids.shape[0]):
        g = grid_ids[j]
        if g < 0:
            continue
        h, w, base, k = shapes[g, 0], shapes[g, 1], starts[g], codes[j, 0]
        swap = k == 1 or k == 3 or k == 6 or k == 7
        th = w if swap else h
        tw = h if swap else w
        r0, c0 = offsets[j, 0], offsets[j, 1]
        for i in range(th):
            for c in range(tw):
                # source cell of transformed cell (i, c), numpy dihedral semantics (see augment.dihedral)
                if k == 0:
                    si, sc = i, c
                elif k == 1:
                    si, sc = c, w - 1 - i
                elif k == 2:
                    si, sc = h - 1 - i, w - 1 - c
                elif k == 3:
                    si, sc = h - 1 - c, i
                elif k == 4:
                    si, sc = i, w - 1 - c
                elif k == 5:
                    si, sc = h - 1 - i, c
                elif k == 6:
                    si, sc = c, i
                else:
                    si, sc = h - 1 - c, w - 1 - i
                out[j, r0 + i, c0 + c] = codes[j, 1 + flat[base + si * w + sc]] + COLOR_OFFSET
        if r0 + th < canvas:
            for c in range(tw):
                out[j, r0 + th, c0 + c] = EOS
        if c0 + tw < canvas:
            for i in range(th):
                out[j, r0 + i, c0 + tw] = EOS


class _GridStore:
    """Every grid the batches need in one flat uint8 buffer, so one jitted loop encodes a whole batch."""

    def __init__(self, grids: list[np.ndarray]):
        self.shapes = np.array([g.shape for g in grids], dtype=np.int64).reshape(-1, 2)  # [G, 2]
        self.starts = np.zeros(len(grids), dtype=np.int64)  # [G]
        np.cumsum(self.shapes.prod(axis=1)[:-1], out=self.starts[1:])
        self.flat = np.concatenate([g.reshape(-1) for g in grids]) if grids else np.zeros(0, dtype=np.uint8)

    def encode(self, grid_ids: np.ndarray, codes: np.ndarray, offsets: np.ndarray, canvas: int,
               fill: int) -> np.ndarray:
        """int32 [n, C*C]: grid grid_ids[j] augmented by codes[j] at offsets[j]; rows with id -1 stay `fill`."""
        n = len(grid_ids)
        real = grid_ids >= 0
        extent = self.shapes[grid_ids[real]]
        extent = np.where(SWAPS_SIDES[codes[real, 0]][:, None], extent[:, ::-1], extent)
        if np.any(offsets[real] < 0) or np.any(offsets[real] + extent > canvas):
            raise ValueError(f"a grid does not fit the {canvas}x{canvas} canvas at its offset")  # guards the jit
        out = np.full((n, canvas, canvas), fill, dtype=np.int32)
        _encode_rows(self.flat, self.starts, self.shapes, grid_ids.astype(np.int64),
                     np.ascontiguousarray(codes, dtype=np.uint8), offsets.astype(np.int64), out)
        return out.reshape(n, canvas * canvas)


def _trusted_augmentation(code: list[int]) -> Augmentation:
    """An Augmentation from a code row this module generated, without re-validating it: building
    one per prediction row is otherwise most of the cost of a batch of views."""
    aug = object.__new__(Augmentation)
    object.__setattr__(aug, "dihedral", code[0])
    object.__setattr__(aug, "perm", tuple(code[1:]))
    return aug


def _check_split(global_batch_size: int, rank: int, world_size: int) -> int:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in 0..world_size-1, got rank {rank} of world_size {world_size}")
    if global_batch_size < 1 or global_batch_size % world_size:
        raise ValueError(f"global_batch_size {global_batch_size} must be a positive multiple of world_size {world_size}")
    return global_batch_size // world_size


class TrainSampler:
    """Training batches, the reference way, generated on the fly.

    The sampler walks a stream of epochs; epoch e draws everything from
    Generator(Philox(SeedSequence([seed, e]))): a permutation of the tasks, then per task in that
    order one variant uniformly, a random order of its examples, the one example kept at offset
    (0, 0) and random offsets for the others. Puzzles are packed into global batches in stream
    order: a puzzle adds its first min(examples, max_examples_per_puzzle, room left) examples, and
    the rest of a puzzle that straddles the batch end is dropped. Packing runs across epoch
    boundaries (as the reference packs the epochs of one iteration), so a global batch may be
    larger than one epoch; only full batches are yielded. Rank r takes rows [r*B, (r+1)*B) of each,
    so the same seed gives the same global batches whatever the world size.

    Examples are the train pairs, plus the test pairs with known outputs when include_test_pairs
    (pre-training on a public set). Each puzzle's draws do not depend on where it lands in a batch,
    so the position (epoch, puzzle) is a complete state: state_dict() after n batches and
    load_state_dict() on a fresh sampler yield exactly batch n+1 onward. One iterator at a time.

    Per-task spending (`set_weights`, used by the per-task fit schedule of trm_core/fit.py): a task
    of weight 0 is not drawn, and the batch fills up from the puzzles that follow it in the stream;
    a task of weight 1/k is drawn in the epochs e with (e + its task index) % k == 0 (k = 2: every
    other epoch, half the share). The weights change no draw, only which puzzles are packed, so with
    every weight 1 (the default) the batches are the reference's, bit for bit. The weights and the
    rows handed out per task (`rows_drawn`, a record) belong to the state.
    """

    def __init__(self, variants: Variants, global_batch_size: int, *, seed: int = 0, rank: int = 0,
                 world_size: int = 1, canvas: int = 30, translate: bool = True,
                 max_examples_per_puzzle: int | None = None, include_test_pairs: bool = False,
                 epochs: int | None = None):
        self.local_batch_size = _check_split(global_batch_size, rank, world_size)
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if max_examples_per_puzzle is not None and max_examples_per_puzzle < 1:
            raise ValueError(f"max_examples_per_puzzle must be >= 1 or None, got {max_examples_per_puzzle}")
        if len(variants) == 0:
            raise ValueError("no tasks to train on")
        check_canvas(variants.tasks.values(), canvas, include_test_outputs=include_test_pairs)
        self.variants = variants
        self.global_batch_size = global_batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.canvas, self.translate = canvas, translate
        self.max_examples_per_puzzle = max_examples_per_puzzle
        self.include_test_pairs = include_test_pairs
        self.epochs = epochs
        self._examples: list[list[tuple[np.ndarray, np.ndarray]]] = []
        for task in variants.tasks.values():
            pairs = list(task.train)
            if include_test_pairs and task.test_outputs is not None:
                pairs += list(zip(task.test_inputs, task.test_outputs))
            self._examples.append(pairs)
        # grids of example e of task t: input 2 * (first[t] + e), output one after it
        self._store = _GridStore([g for pairs in self._examples for pair in pairs for g in pair])
        self._first_example = np.zeros(len(self._examples) + 1, dtype=np.int64)
        np.cumsum([len(pairs) for pairs in self._examples], out=self._first_example[1:])
        # per example of every task (flat, task by task): the larger height and width of input and output
        self._extent = np.array([[max(i.shape[0], o.shape[0]), max(i.shape[1], o.shape[1])]
                                 for pairs in self._examples for i, o in pairs], dtype=np.int64).reshape(-1, 2)
        self._sizes = np.array([len(pairs) for pairs in self._examples], dtype=np.int64)
        self._counts = variants.counts()
        if epochs is not None and epochs * self.examples_per_epoch < global_batch_size:
            raise ValueError(
                f"{epochs} epoch(s) of {self.examples_per_epoch} examples cannot fill one global batch of "
                f"{global_batch_size}; lower the batch size or train more epochs"
            )
        self._epoch = 0
        self._puzzle = 0  # position in epoch self._epoch's task order where the next batch starts
        self._draws_cache: tuple[int, list] | None = None
        self._period = np.ones(len(self._examples), dtype=np.int64)  # task of weight 1/k: k; weight 0: 0
        self.rows_drawn = np.zeros(len(self._examples), dtype=np.int64)  # rows handed out per task (global)

    @property
    def examples_per_epoch(self) -> int:
        cap = self.max_examples_per_puzzle
        return sum(len(ex) if cap is None else min(len(ex), cap) for ex in self._examples)

    def estimated_batches(self, epochs: int) -> int:
        """epochs * examples per epoch // global batch: the reference's total_steps formula (an upper bound)."""
        return epochs * self.examples_per_epoch // self.global_batch_size

    @property
    def epoch(self) -> int:
        """The epoch the next batch starts in."""
        return self._epoch

    @property
    def weights(self) -> dict[str, float]:
        """Each task's share of the draws: 1 (every epoch), 1/k (one epoch in k) or 0 (not drawn)."""
        return {tid: (1.0 / k if k else 0.0) for tid, k in zip(self.variants.task_ids, self._period.tolist())}

    def set_weights(self, weights: dict[str, float]) -> None:
        """Change the share of the tasks named (the others keep theirs) from the next batch on.

        A weight is 0 or 1/k for a whole k >= 1; at least one task must keep a weight above 0.
        """
        period = self._period.copy()
        for tid, w in weights.items():
            k = 0 if w == 0 else round(1.0 / w) if w > 0 else -1
            if k < 0 or (k and abs(1.0 / k - w) > 1e-9):
                raise ValueError(f"task {tid}: weight must be 0 or 1/k for a whole k >= 1, got {w!r}")
            period[self.variants.task_index(tid)] = k
        if not period.any():
            raise ValueError("set_weights: every task would have weight 0; keep at least one task drawn")
        self._period = period

    def rows_by_task(self) -> dict[str, int]:
        """Rows handed out so far (over all ranks) per task id: the row-steps each task received."""
        return dict(zip(self.variants.task_ids, self.rows_drawn.tolist()))

    def _drawn(self, task: int, epoch: int) -> bool:
        k = int(self._period[task])
        return k == 1 or (k > 1 and (epoch + task) % k == 0)

    def _draws(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Everything epoch `epoch` draws, in stream order: rows int64 [E, 5] (task, variant, example,
        row offset, col offset), puzzle p owning rows [starts[p], starts[p+1]) in a random order."""
        if self._draws_cache is not None and self._draws_cache[0] == epoch:
            return self._draws_cache[1]
        rng = np.random.Generator(np.random.Philox(np.random.SeedSequence([self.seed, epoch])))
        order = rng.permutation(len(self._examples))  # [P] tasks in epoch order
        sizes = self._sizes[order]  # [P]
        variant = rng.integers(0, self._counts[order])  # [P] one variant per task, uniform
        starts = np.zeros(len(order) + 1, dtype=np.int64)
        np.cumsum(sizes, out=starts[1:])
        puzzle = np.repeat(np.arange(len(order)), sizes)  # [E] puzzle of each row
        local = np.arange(starts[-1]) - starts[puzzle]  # [E] 0..n-1 within its puzzle
        example = local[np.lexsort((rng.random(starts[-1]), puzzle))]  # a random order inside each puzzle
        untranslated = rng.integers(0, sizes)  # [P] the example each puzzle keeps at (0, 0)
        task = order[puzzle]  # [E]
        extent = self._extent[self._first_example[task] + example]  # [E, 2] larger input/output sides
        code_rows = self.variants.offsets[task] + variant[puzzle]
        extent = np.where(SWAPS_SIDES[self.variants.codes[code_rows, 0]][:, None], extent[:, ::-1], extent)
        offsets = rng.integers(0, self.canvas - extent + 1)  # [E, 2] row, col
        if not self.translate:
            offsets[:] = 0
        offsets[example == untranslated[puzzle]] = 0
        rows = np.column_stack([task, variant[puzzle], example, offsets]).astype(np.int64)
        self._draws_cache = (epoch, (rows, starts))
        return rows, starts

    def _global_batches(self) -> Iterator[np.ndarray]:
        """Global batches from the current position, each int64 [global_batch, 5]: task, variant, example,
        row offset, col offset. Advances the position as each batch is handed out."""
        size, cap = self.global_batch_size, self.max_examples_per_puzzle
        epoch, puzzle = self._epoch, self._puzzle
        parts, filled = [], 0
        while self.epochs is None or epoch < self.epochs:
            rows, starts = self._draws(epoch)
            n_puzzles = len(starts) - 1
            while puzzle < n_puzzles:
                lo, hi = int(starts[puzzle]), int(starts[puzzle + 1])
                if hi > lo and not self._drawn(int(rows[lo, 0]), epoch):  # weight 0, or not its epoch
                    puzzle += 1
                    continue
                k = min(hi - lo, size - filled, hi - lo if cap is None else cap)
                parts.append(rows[lo : lo + k])
                filled += k
                puzzle += 1
                if filled == size:
                    self._epoch, self._puzzle = (epoch, puzzle) if puzzle < n_puzzles else (epoch + 1, 0)
                    batch = np.concatenate(parts)
                    self.rows_drawn += np.bincount(batch[:, 0], minlength=len(self.rows_drawn))
                    yield batch
                    parts, filled = [], 0
            epoch, puzzle = epoch + 1, 0
        # a short tail is dropped

    def _encode(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        """rows int64 [B, 5] (task, variant, example, row, col) -> the batch tensors."""
        task, variant, example = rows[:, 0], rows[:, 1], rows[:, 2]
        code_rows = self.variants.offsets[task] + variant
        codes = self.variants.codes[code_rows]  # [B, 11]
        grid_in = 2 * (self._first_example[task] + example)
        inputs = self._store.encode(grid_in, codes, rows[:, 3:], self.canvas, PAD)
        labels = self._store.encode(grid_in + 1, codes, rows[:, 3:], self.canvas, IGNORE_LABEL)
        return {
            "inputs": torch.from_numpy(inputs),  # int32 [B, C*C]
            "labels": torch.from_numpy(labels),  # int32 [B, C*C], PAD -> -100
            "puzzle_identifiers": torch.from_numpy((1 + code_rows).astype(np.int32)),  # int32 [B]
        }

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        lo = self.rank * self.local_batch_size
        for rows in self._global_batches():
            yield self._encode(rows[lo : lo + self.local_batch_size])

    def state_dict(self) -> dict:
        return {
            "epoch": self._epoch,
            "puzzle": self._puzzle,
            "seed": self.seed,
            "global_batch_size": self.global_batch_size,
            "max_examples_per_puzzle": self.max_examples_per_puzzle,
            "include_test_pairs": self.include_test_pairs,
            "translate": self.translate,
            "canvas": self.canvas,
            "variants": self.variants.fingerprint(),
            "periods": self._period.tolist(),  # per task: 1 every epoch, k one epoch in k, 0 never
            "rows_drawn": self.rows_drawn.tolist(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume where `state` was taken; everything that shapes the global batches must match
        (the world size may differ)."""
        mine = self.state_dict()
        for key in ("seed", "global_batch_size", "max_examples_per_puzzle", "include_test_pairs", "translate",
                    "canvas", "variants"):
            if state.get(key) != mine[key]:
                raise ValueError(f"sampler state has {key}={state.get(key)!r} but this sampler has {mine[key]!r}; "
                                 f"resuming would give different batches")
        epoch, puzzle = int(state["epoch"]), int(state["puzzle"])
        if epoch < 0 or not 0 <= puzzle < len(self._examples):
            raise ValueError(f"sampler state position (epoch {epoch}, puzzle {puzzle}) is out of range")
        n = len(self._examples)
        periods = state.get("periods", [1] * n)  # a state written before per-task weights: all drawn
        rows = state.get("rows_drawn", [0] * n)
        if len(periods) != n or len(rows) != n or min(periods) < 0 or not any(periods):
            raise ValueError(f"sampler state has per-task periods {periods!r} / rows {len(rows)} for {n} tasks")
        self._epoch, self._puzzle = epoch, puzzle
        self._period = np.array(periods, dtype=np.int64)
        self.rows_drawn = np.array(rows, dtype=np.int64)


@dataclass(frozen=True)
class View:
    """What one prediction row is: a task's test input seen through one of its variants."""

    task_id: str
    test_index: int
    variant: int  # index in the task's variant list, 0 = original
    augmentation: Augmentation  # invert() maps the row's cropped prediction back to the task's frame
    identifier: int  # puzzle-embedding row


@dataclass(frozen=True)
class ViewBatch:
    """One local batch of prediction rows; padding rows have PAD inputs, id 0 and view None."""

    inputs: torch.Tensor  # int32 [B, C*C]
    labels: torch.Tensor  # int32 [B, C*C], -100 where the output is unknown (or on padding rows)
    puzzle_identifiers: torch.Tensor  # int32 [B]
    views: tuple[View | None, ...]  # [B]

    @property
    def valid(self) -> torch.Tensor:
        """bool [B]: False on padding rows."""
        return torch.tensor([v is not None for v in self.views], dtype=torch.bool)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"inputs": self.inputs, "labels": self.labels, "puzzle_identifiers": self.puzzle_identifiers}


class PredictViews:
    """Every test input x the first `num_views` variants of its task (original first), untranslated.

    Rows are enumerated lazily, in global batches of `global_batch_size`; rank r takes rows
    [r*B, (r+1)*B) of each, so shards are disjoint, their union is every row, and every rank yields
    the same number of batches. The last global batch is padded with PAD inputs and the blank id.
    order="task" walks task, variant, test input (the reference's stored order); order="variant"
    walks variant, task, test input, so a run cut short has seen every task under its first
    variants. Within one test input the rows are original-first in both orders.
    """

    def __init__(self, variants: Variants, num_views: int, global_batch_size: int, *, canvas: int = 30,
                 rank: int = 0, world_size: int = 1, order: str = "task"):
        self.local_batch_size = _check_split(global_batch_size, rank, world_size)
        if num_views < 1:
            raise ValueError(f"num_views must be >= 1 (the original counts as one), got {num_views}")
        if order not in ("task", "variant"):
            raise ValueError(f"order must be 'task' or 'variant', got {order!r}")
        check_canvas(variants.tasks.values(), canvas)
        self.variants = variants
        self.num_views = num_views
        self.global_batch_size = global_batch_size
        self.canvas, self.rank, self.world_size, self.order = canvas, rank, world_size, order
        self._tasks = list(variants.tasks.values())
        self._views = np.minimum(variants.counts(), num_views)  # views per task [n_tasks]
        # grids: every test input, then every known test output that fits the canvas
        inputs = [g for task in self._tasks for g in task.test_inputs]
        outputs = [g for task in self._tasks for g in (task.test_outputs or [])
                   if task.test_outputs is not None and max(g.shape) <= canvas]
        self._store = _GridStore(inputs + outputs)
        self._first_test = np.zeros(len(self._tasks) + 1, dtype=np.int64)
        np.cumsum([len(task.test_inputs) for task in self._tasks], out=self._first_test[1:])
        self._output_id = np.full(len(inputs), -1, dtype=np.int64)  # grid id of each test input's output, -1 = none
        next_id = len(inputs)
        for t, task in enumerate(self._tasks):
            for i, g in enumerate(task.test_outputs or []):
                if max(g.shape) <= canvas:
                    self._output_id[self._first_test[t] + i] = next_id
                    next_id += 1

    @property
    def num_rows(self) -> int:
        """Real (unpadded) rows over all ranks."""
        return int(sum(int(k) * len(t.test_inputs) for k, t in zip(self._views, self._tasks)))

    def __len__(self) -> int:
        return -(-self.num_rows // self.global_batch_size)

    def _rows(self) -> Iterator[tuple[int, int, int]]:
        """(task index, variant, test index) for every row, in order."""
        if self.order == "task":
            for t, task in enumerate(self._tasks):
                for v in range(int(self._views[t])):
                    for i in range(len(task.test_inputs)):
                        yield t, v, i
        else:
            for v in range(int(self._views.max(initial=0))):
                for t, task in enumerate(self._tasks):
                    if v < self._views[t]:
                        for i in range(len(task.test_inputs)):
                            yield t, v, i

    def _encode(self, rows: list[tuple[int, int, int]]) -> ViewBatch:
        """Up to B (task, variant, test index) rows -> a ViewBatch padded to B rows."""
        n = self.local_batch_size
        grid_in = np.full(n, -1, dtype=np.int64)  # padding rows: -1 keeps PAD inputs, -100 labels
        code_rows = np.full(n, -1, dtype=np.int64)
        views: list[View | None] = [None] * n
        for j, (t, v, i) in enumerate(rows):
            grid_in[j] = self._first_test[t] + i
            code_rows[j] = self.variants.offsets[t] + v
        codes = self.variants.codes[np.maximum(code_rows, 0)]  # [B, 11]; padding rows read row 0, unused
        for j, ((t, v, i), code) in enumerate(zip(rows, codes[: len(rows)].tolist())):
            views[j] = View(self._tasks[t].id, i, v, _trusted_augmentation(code), int(code_rows[j]) + 1)
        grid_out = np.where(grid_in >= 0, self._output_id[np.maximum(grid_in, 0)], -1)
        inputs = self._store.encode(grid_in, codes, np.zeros((n, 2), dtype=np.int64), self.canvas, PAD)
        labels = self._store.encode(grid_out, codes, np.zeros((n, 2), dtype=np.int64), self.canvas, IGNORE_LABEL)
        ids = (code_rows + 1).astype(np.int32)  # padding: -1 + 1 = 0, the blank id
        return ViewBatch(torch.from_numpy(inputs), torch.from_numpy(labels), torch.from_numpy(ids), tuple(views))

    def __iter__(self) -> Iterator[ViewBatch]:
        rows = self._rows()
        lo = self.rank * self.local_batch_size
        for _ in range(len(self)):
            chunk = list(itertools.islice(rows, self.global_batch_size))
            yield self._encode(chunk[lo : lo + self.local_batch_size])


__all__ = ["PredictViews", "TrainSampler", "View", "ViewBatch"]
