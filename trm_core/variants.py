"""Task variants and the identifier map: which augmentations of each task the model sees, and their names.

Inputs: tasks (a TaskSet or {task_id: Task}), a variant count, a seed.
Output: `Variants`: per task its deterministic list of augmentations (the original first), stored as
uint8 codes [n, 11] (dihedral id + colour map), and the identifier map: id 0 is "<blank>", then
every variant of every task in task order, named as the reference names them ("task" for the
original, "task|||t{k}|||{perm}" for the others). The batch streams built on it live in
trm_core/batches.py.

Variant de-duplication follows the reference: trials (uniform dihedral id, uniform permutation of
colours 1..9) are accepted when the augmented task differs from every variant accepted so far,
up to 5 * num_variants trials and num_variants + 1 members. "The augmented task" is the multiset
of augmented (input, output) train pairs plus the augmented test inputs; solutions are left out,
so a task gets the same variants with or without its solutions file (the reference hashes
solutions when it has them and a constant [[0]] when it does not). Instead of sha256 over
materialised grids, each trial is hashed with a 64-bit linear hash that needs no augmented grid:
a grid's hash is sum over cells of w(shape, cell) * key(colour) (mod 2**64), which for a colour map
p equals sum over colours c of V[c] * key(p[c]), with V[c] = the summed cell weights of colour c in
the dihedrally transformed grid. V is computed once per task for the 8 dihedral ids, so 5,000
trials cost one small uint64 matrix product; pairs and the multiset are combined with splitmix64.
Two different augmented tasks collide with probability about 2**-64 per pair of trials; the tests
check the result against a sha256 reimplementation of the reference rule on real tasks.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Iterable, Mapping

import numpy as np

from trm_core.augment import NUM_COLORS, NUM_DIHEDRAL, Augmentation, inverse_dihedral
from trm_core.tasks import Task, TaskSet


BLANK_NAME = "<blank>"
BLANK_ID = 0
RETRIES_FACTOR = 5  # the reference tries up to 5 * num_variants augmentations per task
CODE_SIZE = 1 + NUM_COLORS  # dihedral id + colour map
SWAPS_SIDES = np.array([k in (1, 3, 6, 7) for k in range(NUM_DIHEDRAL)])  # transposing dihedral ids

# splitmix64 constants; fixed so variant sets are the same on every machine
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)
_PAIR_MUL = np.uint64(0xD6E8FEB86659FD93)
_SALT_OUT = np.uint64(0x2545F4914F6CDD1D)
_SALT_TEST = np.uint64(0x9FB21C651E98DF25)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, elementwise on a uint64 array (wrapping arithmetic)."""
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * _MUL1
    x = (x ^ (x >> np.uint64(27))) * _MUL2
    return x ^ (x >> np.uint64(31))


_COLOUR_KEYS_SEED = np.arange(NUM_COLORS, dtype=np.uint64) + np.uint64(0x51ED270B27A3F5C1)


def _position_weights(shape: tuple[int, int], cache: dict) -> np.ndarray:
    """uint64 [8, h*w]: for each dihedral id k, the weight every cell of an (h, w) grid lands on.

    A cell's weight is a random-looking function of where it ends up after transform k and of the
    transformed shape, so summing weights over the original grid's cells hashes the transformed
    grid without building it. Cached per shape.
    """
    weights = cache.get(shape)
    if weights is None:
        h, w = shape
        weights = np.empty((NUM_DIHEDRAL, h * w), dtype=np.uint64)
        for k in range(NUM_DIHEDRAL):
            th, tw = (w, h) if SWAPS_SIDES[k] else (h, w)
            keys = (np.uint64(th) << np.uint64(40)) | (np.uint64(tw) << np.uint64(20)) | np.arange(th * tw, dtype=np.uint64)
            # weights laid out in the transformed frame, carried back to the original cells
            weights[k] = inverse_dihedral(_mix(_mix(keys)).reshape(th, tw), k).reshape(-1)
        cache[shape] = weights
    return weights


def _colour_sums(task: Task, cache: dict) -> np.ndarray:
    """V uint64 [8, G, 10]: per dihedral id and grid, the summed cell weights of each colour.

    Grids G = train inputs and outputs interleaved (in0, out0, in1, ...), then the test inputs.
    """
    grids = [g for pair in task.train for g in pair] + list(task.test_inputs)
    n = len(grids)
    ks = np.arange(NUM_DIHEDRAL, dtype=np.int64)[:, None] * (n * NUM_COLORS)  # [8, 1]
    index = [ks + (j * NUM_COLORS) + g.reshape(1, -1).astype(np.int64) for j, g in enumerate(grids)]  # [8, h*w] each
    weights = [_position_weights(g.shape, cache) for g in grids]
    sums = np.zeros(NUM_DIHEDRAL * n * NUM_COLORS, dtype=np.uint64)
    np.add.at(sums, np.concatenate([i.reshape(-1) for i in index]), np.concatenate([w.reshape(-1) for w in weights]))
    return sums.reshape(NUM_DIHEDRAL, n, NUM_COLORS)


def _task_hashes(sums: np.ndarray, num_train: int, codes: np.ndarray) -> np.ndarray:
    """uint64 [T] hash of the augmented task for each code row of `codes` (uint8 [T, 11])."""
    colour_keys = _mix(_COLOUR_KEYS_SEED)
    keys = colour_keys[codes[:, 1:]]  # [T, 10]: key of the colour each original colour maps to
    grid_hash = np.empty((codes.shape[0], sums.shape[1]), dtype=np.uint64)  # [T, G]
    for k in range(NUM_DIHEDRAL):
        rows = np.nonzero(codes[:, 0] == k)[0]
        if rows.size:
            grid_hash[rows] = keys[rows] @ sums[k].T  # wraps mod 2**64
    h_in = grid_hash[:, 0 : 2 * num_train : 2]
    h_out = grid_hash[:, 1 : 2 * num_train : 2]
    h_test = grid_hash[:, 2 * num_train :]
    pairs = _mix(h_in * _PAIR_MUL + _mix(h_out ^ _SALT_OUT))
    tests = _mix(h_test * _PAIR_MUL + _SALT_TEST)
    # order-free sums: the reference compares sorted lists of pair hashes, i.e. multisets
    return _mix(pairs).sum(axis=1, dtype=np.uint64) + _mix(tests).sum(axis=1, dtype=np.uint64)


def _task_rng(seed: int, task_id: str) -> np.random.Generator:
    """Per-task generator: a task's variants do not depend on which other tasks are loaded."""
    key = int.from_bytes(hashlib.sha256(task_id.encode("utf-8")).digest()[:16], "little")
    return np.random.Generator(np.random.Philox(np.random.SeedSequence([seed, key])))


@functools.cache
def _permutation_table(m: int) -> np.ndarray:
    """uint8 [m!, m]: every permutation of 0..m-1 (m = 9: 362,880 rows, 3.3 MB), built on first use."""
    table = np.zeros((1, 0), dtype=np.uint8)
    for k in range(1, m + 1):
        # permutations of k items: each first item f, followed by the (k-1)-permutations relabelled around f
        table = np.concatenate([np.hstack([np.full((len(table), 1), f, dtype=np.uint8), table + (table >= f)])
                                for f in range(k)])
    return table


def _trial_codes(rng: np.random.Generator, n: int, permute_background: bool) -> np.ndarray:
    """uint8 [n, 11] random trials: dihedral id, then a colour map (colour 0 fixed unless permute_background).

    A uniform permutation of colours 1..9 is one uniform row of the 9! table; with the background
    permuted too, colour 0 is then inserted at a uniform position (9! * 10 = 10! equally likely maps).
    """
    codes = np.empty((n, CODE_SIZE), dtype=np.uint8)
    codes[:, 0] = rng.integers(0, NUM_DIHEDRAL, size=n)
    perms = _permutation_table(NUM_COLORS - 1)[rng.integers(0, math.factorial(NUM_COLORS - 1), size=n)] + 1  # [n, 9]
    if not permute_background:
        codes[:, 1] = 0
        codes[:, 2:] = perms
        return codes
    zero_at = rng.integers(0, NUM_COLORS, size=n)[:, None]  # [n, 1]
    cols = np.arange(NUM_COLORS)[None, :]
    source = np.clip(cols - (cols > zero_at), 0, NUM_COLORS - 2)  # column of perms each output column reads
    codes[:, 1:] = np.where(cols == zero_at, 0, np.take_along_axis(perms, source, axis=1))
    return codes


def variant_codes(task: Task, num_variants: int, seed: int, permute_background: bool = False,
                  cache: dict | None = None) -> np.ndarray:
    """The deterministic variant list of one task as uint8 codes [n, 11], n <= num_variants + 1, original first."""
    identity = np.zeros((1, CODE_SIZE), dtype=np.uint8)
    identity[0, 1:] = np.arange(NUM_COLORS)
    if num_variants == 0:
        return identity
    trials = _trial_codes(_task_rng(seed, task.id), RETRIES_FACTOR * num_variants, permute_background)
    codes = np.concatenate([identity, trials])
    sums = _colour_sums(task, {} if cache is None else cache)
    # Most tasks reach num_variants + 1 distinct variants well before 5x the trials: hash a first
    # slice and the rest only when needed. The accepted set is the same either way.
    first_slice = min(len(codes), 2 * num_variants + 1)
    hashes = _task_hashes(sums, len(task.train), codes[:first_slice])
    if len(np.unique(hashes)) < num_variants + 1 and first_slice < len(codes):
        hashes = np.concatenate([hashes, _task_hashes(sums, len(task.train), codes[first_slice:])])
    _, first = np.unique(hashes, return_index=True)  # first occurrence of each distinct augmented task
    keep = np.sort(first)[: num_variants + 1]  # trials in draw order; index 0 (the original) always first
    return codes[keep]


def check_canvas(tasks: Iterable[Task], canvas: int, include_test_outputs: bool = False) -> None:
    """Raise ValueError naming the task and grid if a grid to be encoded does not fit the canvas.

    Sides are checked both ways because dihedral variants transpose grids.
    """
    for task in tasks:
        grids = [(f"train[{i}].{k}", g) for i, pair in enumerate(task.train) for k, g in zip(("input", "output"), pair)]
        grids += [(f"test[{i}].input", g) for i, g in enumerate(task.test_inputs)]
        if include_test_outputs and task.test_outputs is not None:
            grids += [(f"test[{i}].output", g) for i, g in enumerate(task.test_outputs)]
        for where, g in grids:
            if max(g.shape) > canvas:
                raise ValueError(
                    f"task {task.id}: {where} is {g.shape[0]}x{g.shape[1]}, larger than the {canvas}x{canvas} canvas; "
                    f"use a canvas of at least {max(g.shape)} or load with max_side={canvas} (strict=False skips such tasks)"
                )


class Variants:
    """Every task's variant list and the identifier map (0 = blank, then task by task, original first)."""

    def __init__(self, tasks: TaskSet | Mapping[str, Task] | Iterable[Task], num_variants: int, seed: int = 0,
                 permute_background: bool = False):
        if num_variants < 0:
            raise ValueError(f"num_variants must be >= 0, got {num_variants}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if isinstance(tasks, TaskSet):
            tasks = tasks.tasks
        task_list = list(tasks.values()) if isinstance(tasks, Mapping) else list(tasks)
        self.tasks: dict[str, Task] = {}
        for task in task_list:
            if task.id in self.tasks:
                raise ValueError(f"task {task.id} appears twice")
            self.tasks[task.id] = task
        self.task_ids: list[str] = list(self.tasks)
        self.num_variants = num_variants
        self.seed = seed
        self.permute_background = permute_background
        self._index = {tid: i for i, tid in enumerate(self.task_ids)}
        cache: dict = {}
        codes = [variant_codes(t, num_variants, seed, permute_background, cache) for t in self.tasks.values()]
        self.codes = np.concatenate(codes) if codes else np.zeros((0, CODE_SIZE), dtype=np.uint8)  # uint8 [V, 11]
        self.offsets = np.zeros(len(codes) + 1, dtype=np.int64)  # task i owns code rows [offsets[i], offsets[i+1])
        np.cumsum([len(c) for c in codes], out=self.offsets[1:])
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return len(self.task_ids)

    @property
    def num_identifiers(self) -> int:
        """Rows the puzzle embedding needs: the blank plus every variant."""
        return 1 + int(self.offsets[-1])

    def task_index(self, task_id: str) -> int:
        try:
            return self._index[task_id]
        except KeyError:
            raise KeyError(f"task {task_id} is not in this variant set") from None

    def count(self, task_id: str) -> int:
        i = self.task_index(task_id)
        return int(self.offsets[i + 1] - self.offsets[i])

    def counts(self) -> np.ndarray:
        """int64 [n_tasks]: variants per task (original included), in task order."""
        return np.diff(self.offsets)

    def augmentation(self, task_id: str, variant: int) -> Augmentation:
        return Augmentation.from_code(self.codes[self._row(task_id, variant)])

    def augmentations(self, task_id: str) -> list[Augmentation]:
        i = self.task_index(task_id)
        return [Augmentation.from_code(c) for c in self.codes[self.offsets[i] : self.offsets[i + 1]]]

    def _row(self, task_id: str, variant: int) -> int:
        i = self.task_index(task_id)
        n = int(self.offsets[i + 1] - self.offsets[i])
        if not 0 <= variant < n:
            raise IndexError(f"task {task_id} has variants 0..{n - 1}, asked for {variant}")
        return int(self.offsets[i]) + variant

    def identifier(self, task_id: str, variant: int = 0) -> int:
        """Puzzle-embedding row of a task's variant (variant 0 = the original)."""
        return 1 + self._row(task_id, variant)

    def lookup(self, identifier: int) -> tuple[str, int, Augmentation]:
        """identifier -> (task id, variant index, augmentation). The blank id 0 has no task."""
        if not 1 <= identifier < self.num_identifiers:
            raise IndexError(f"identifier {identifier} is not a variant id (1..{self.num_identifiers - 1})")
        row = identifier - 1
        i = int(np.searchsorted(self.offsets, row, side="right")) - 1
        return self.task_ids[i], row - int(self.offsets[i]), Augmentation.from_code(self.codes[row])

    def name(self, identifier: int) -> str:
        if identifier == BLANK_ID:
            return BLANK_NAME
        task_id, _, aug = self.lookup(identifier)
        return aug.name(task_id)

    def identifier_of(self, name: str) -> int:
        """Reference-style name -> identifier (KeyError if that variant is not in the set)."""
        if name == BLANK_NAME:
            return BLANK_ID
        task_id, aug = Augmentation.parse(name)
        i = self.task_index(task_id)
        block = self.codes[self.offsets[i] : self.offsets[i + 1]]
        hit = np.nonzero((block == aug.code()).all(axis=1))[0]
        if hit.size == 0:
            raise KeyError(f"variant {name} is not among the {len(block)} variants of task {task_id}")
        return 1 + int(self.offsets[i]) + int(hit[0])

    def identifiers(self) -> list[str]:
        """The full identifier map, index = id; built on demand (hundreds of thousands of strings)."""
        identity = "0" + "".join(str(c) for c in range(NUM_COLORS))
        # each code row as one ASCII string "k" + ten perm digits, without building Augmentations
        rows = (self.codes + ord("0")).astype(np.uint8).view(f"S{CODE_SIZE}").reshape(-1)
        names = [BLANK_NAME]
        for i, task_id in enumerate(self.task_ids):
            for code in rows[self.offsets[i] : self.offsets[i + 1]].tolist():
                code = code.decode("ascii")
                names.append(task_id if code == identity else f"{task_id}|||t{code[0]}|||{code[1:]}")
        return names

    def posed(self, tasks: Mapping[str, Task]) -> Variants:
        """The same identifier map (variant codes, embedding rows) over other contents of the same task
        ids: e.g. each task's demonstration inputs posed as its test inputs, to predict them through
        the rows the task trained (trm_core/fit.py). The variants are not drawn again."""
        if list(tasks) != self.task_ids:
            raise ValueError("posed: the tasks must be this set's task ids, in the same order")
        other = object.__new__(Variants)
        other.__dict__.update(self.__dict__)
        other.tasks = dict(tasks)
        other._fingerprint = None
        return other

    def fingerprint(self) -> str:
        """sha256 over the tasks (ids, train pairs, test inputs; not solutions) and the variant codes:
        equal fingerprints mean the same tasks under the same identifier map."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            for task in self.tasks.values():
                h.update(task.id.encode("utf-8") + b"\0")
                for grid in [g for pair in task.train for g in pair] + list(task.test_inputs):
                    h.update(np.asarray(grid.shape, dtype=np.int64).tobytes() + np.ascontiguousarray(grid).tobytes())
                h.update(b"\1")
            h.update(self.offsets.tobytes())
            h.update(self.codes.tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint


__all__ = ["BLANK_ID", "BLANK_NAME", "Variants", "check_canvas", "variant_codes"]
