"""Augmentations of ARC grids: the eight dihedral transforms, colour permutations, their exact
inverses, the reference's variant names, and the grid hash the voter and the de-duplication use.

Inputs: grids (np.uint8 [h, w], values 0..9) and augmentations. Outputs: transformed grids,
names such as "007bbfb7|||t3|||0712345698" and back, sha256 hex digests.

Semantics are the reference's (dataset/common.py, dataset/build_arc_dataset.py):
- dihedral ids 0..7 = identity, rot90 k=1, 2, 3 (counter-clockwise, numpy), fliplr, flipud,
  transpose, anti-transpose; DIHEDRAL_INVERSE maps each id to the id that undoes it;
- an augmentation maps colours first, then applies the dihedral transform; colour 0 (background)
  stays fixed unless permute_background is asked for;
- a name is "{task}|||t{k}|||{ten perm digits}"; a name without "|||" is the original task.
The translation offset used in training lives in the sampler (batches.py), not here: it is drawn
per example per epoch and never needs inverting, because predictions are made untranslated.
"""

import hashlib
from dataclasses import dataclass

import numpy as np

DIHEDRAL_INVERSE = (0, 3, 2, 1, 4, 5, 6, 7)
NUM_DIHEDRAL = 8
NUM_COLORS = 10
IDENTITY_PERM = tuple(range(NUM_COLORS))
NAME_SEP = "|||"


def dihedral(grid: np.ndarray, k: int) -> np.ndarray:
    """Dihedral transform `k` (0..7) of a 2-D grid, as a C-contiguous copy.

    Numpy semantics: 1..3 = np.rot90(grid, k) (counter-clockwise), 4 = fliplr, 5 = flipud,
    6 = transpose, 7 = fliplr(rot90(grid, 1)), the anti-transpose.
    """
    if k == 0:
        out = grid
    elif k == 1:
        out = grid.T[::-1]
    elif k == 2:
        out = grid[::-1, ::-1]
    elif k == 3:
        out = grid.T[:, ::-1]
    elif k == 4:
        out = grid[:, ::-1]
    elif k == 5:
        out = grid[::-1]
    elif k == 6:
        out = grid.T
    elif k == 7:
        out = grid[::-1, ::-1].T
    else:
        raise ValueError(f"dihedral id must be in 0..7, got {k}")
    return np.ascontiguousarray(out)


def inverse_dihedral(grid: np.ndarray, k: int) -> np.ndarray:
    """The transform that undoes `dihedral(., k)`."""
    if not 0 <= k < NUM_DIHEDRAL:
        raise ValueError(f"dihedral id must be in 0..7, got {k}")
    return dihedral(grid, DIHEDRAL_INVERSE[k])


def grid_hash(grid: np.ndarray) -> str:
    """sha256 hex of bytes([h, w]) + the uint8 grid bytes (row-major); the reference's grid key."""
    grid = np.asarray(grid, dtype=np.uint8)
    if grid.ndim != 2:
        raise ValueError(f"grid_hash: expected a 2-D grid, got shape {grid.shape}")
    h, w = grid.shape
    if h > 255 or w > 255:
        raise ValueError(f"grid_hash: a {h}x{w} grid cannot be hashed (sides are stored as one byte)")
    return hashlib.sha256(bytes([h, w]) + np.ascontiguousarray(grid).tobytes()).hexdigest()


@dataclass(frozen=True)
class Augmentation:
    """One variant of a task: colour permutation `perm` (colour c -> perm[c]), then dihedral transform."""

    dihedral: int = 0  # reference trans_id, 0..7
    perm: tuple[int, ...] = IDENTITY_PERM  # a permutation of 0..9; perm[0] == 0 unless the background is permuted

    def __post_init__(self) -> None:
        k = int(self.dihedral)
        if not 0 <= k < NUM_DIHEDRAL:
            raise ValueError(f"Augmentation.dihedral must be in 0..7, got {self.dihedral}")
        perm = tuple(int(c) for c in self.perm)
        if sorted(perm) != list(IDENTITY_PERM):
            raise ValueError(f"Augmentation.perm must be a permutation of 0..9, got {self.perm}")
        object.__setattr__(self, "dihedral", k)
        object.__setattr__(self, "perm", perm)

    @property
    def is_identity(self) -> bool:
        return self.dihedral == 0 and self.perm == IDENTITY_PERM

    def apply(self, grid: np.ndarray) -> np.ndarray:
        """Original-frame grid -> augmented grid (colour map first, then dihedral)."""
        lut = np.asarray(self.perm, dtype=np.uint8)
        return dihedral(lut[np.asarray(grid)], self.dihedral)

    def invert(self, grid: np.ndarray) -> np.ndarray:
        """Augmented-frame grid -> original frame; exact inverse of `apply`."""
        inv = np.argsort(np.asarray(self.perm)).astype(np.uint8)
        return inv[inverse_dihedral(np.asarray(grid), self.dihedral)]

    def inverse(self) -> "Augmentation":
        """The augmentation whose `apply` is this one's `invert` (colour maps and dihedrals commute)."""
        inv = tuple(int(c) for c in np.argsort(np.asarray(self.perm)))
        return Augmentation(DIHEDRAL_INVERSE[self.dihedral], inv)

    def name(self, task_id: str) -> str:
        """Reference variant name; the identity is the bare task id, as the reference names the original."""
        if self.is_identity:
            return task_id
        return f"{task_id}{NAME_SEP}t{self.dihedral}{NAME_SEP}{''.join(str(c) for c in self.perm)}"

    @classmethod
    def parse(cls, name: str) -> tuple[str, "Augmentation"]:
        """Parse "task|||t{k}|||{perm}" -> (task, Augmentation); a name without "|||" -> (name, identity)."""
        if NAME_SEP not in name:
            return name, cls()
        parts = name.split(NAME_SEP)
        if len(parts) != 3:
            raise ValueError(f"variant name {name!r}: expected 'task|||t<k>|||<10 digits>'")
        task_id, trans, digits = parts
        if not task_id:
            raise ValueError(f"variant name {name!r}: empty task id")
        if len(trans) != 2 or trans[0] != "t" or not trans[1].isdigit() or int(trans[1]) >= NUM_DIHEDRAL:
            raise ValueError(f"variant name {name!r}: transform {trans!r} is not t0..t7")
        if len(digits) != NUM_COLORS or not digits.isdigit() or sorted(digits) != list("0123456789"):
            raise ValueError(f"variant name {name!r}: colour map {digits!r} is not a permutation of the digits 0-9")
        return task_id, cls(int(trans[1]), tuple(int(c) for c in digits))

    def code(self) -> np.ndarray:
        """Compact form uint8 [11]: dihedral id, then the ten perm entries (how variants.py stores variants)."""
        return np.asarray((self.dihedral, *self.perm), dtype=np.uint8)

    @classmethod
    def from_code(cls, code: np.ndarray) -> "Augmentation":
        return cls(int(code[0]), tuple(int(c) for c in code[1 : 1 + NUM_COLORS]))

    @classmethod
    def random(cls, rng: np.random.Generator, permute_background: bool = False) -> "Augmentation":
        """One reference-style trial: uniform dihedral id, uniform permutation of colours 1..9 (or 0..9)."""
        k = int(rng.integers(0, NUM_DIHEDRAL))
        if permute_background:
            perm = rng.permutation(NUM_COLORS)
        else:
            perm = np.concatenate([[0], rng.permutation(np.arange(1, NUM_COLORS))])
        return cls(k, tuple(int(c) for c in perm))
