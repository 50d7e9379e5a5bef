"""Prediction records: every view's predicted grid, stored compactly, with its task, test index,
variant and q_halt logit; the container the predictor fills, shards merge and the voter reads.

Storage. A record's grid is kept as its own run of 8-byte words in one flat buffer: bytes
[h, w, cells row-major two per byte (first cell in the low nibble), zero padding to a whole word]
(a 10x10 grid takes 7 words). Compact records keep memory traffic low: voting is bound by how fast
the grids stream through the CPU. A fixed-width row of ROW = 2 + 900 bytes, one cell per byte
(`pack_grid`), is the bulk input format.
`save`/`load` keep a container in one .npz file.
"""

import zipfile
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from numba import njit

from trm_core.safe_io import MAX_SIDE

CELLS = MAX_SIDE * MAX_SIDE
ROW = 2 + CELLS  # fixed-width packed grid: [h, w, h*w cells row-major, unused tail]
MAX_WORDS = (2 + CELLS // 2 + 7) // 8  # 8-byte words a grid can take in compact storage (57)
# where a run folder keeps every view's answer (flow 1, the notebook run; read by `trm evaluate` and the report)
PREDICTIONS_FILE, BASELINE_FILE = "predictions.npz", "baseline-predictions.npz"


# ---------------------------------------------------------------------------------------------
# Packing grids
# ---------------------------------------------------------------------------------------------


def grid_shape(grid: np.ndarray, where: str) -> tuple[np.ndarray, int, int]:
    # validated (array, h, w); every empty grid (0x5, 3x0, ...) becomes the one 0x0 grid
    a = np.asarray(grid)
    if a.ndim != 2:
        raise ValueError(f"{where}: expected a 2-D grid [h, w], got shape {a.shape}")
    h, w = a.shape
    if h > MAX_SIDE or w > MAX_SIDE:
        raise ValueError(f"{where}: grid is {h}x{w}, each side must be <= {MAX_SIDE}")
    if h * w == 0:
        return a.reshape(0, 0), 0, 0
    if a.dtype.kind not in "iu" or a.min() < 0 or a.max() > 9:
        raise ValueError(f"{where}: grid values must be integers 0..9, got dtype {a.dtype}, "
                         f"range [{a.min()}, {a.max()}]")
    return a, h, w


def pack_grid(grid: np.ndarray, where: str = "grid") -> np.ndarray:
    """A grid [h, w] (0 <= h, w <= 30, values 0..9) as a fixed-width uint8 row [ROW], tail zero.
    `where` names the record in error messages."""
    a, h, w = grid_shape(grid, where)
    row = np.zeros(ROW, np.uint8)
    row[0], row[1] = h, w
    row[2:2 + h * w] = a.reshape(-1)
    return row


def unpack_grid(row: np.ndarray) -> np.ndarray:
    """The grid [h, w] uint8 held in a fixed-width packed row, as a copy."""
    h, w = int(row[0]), int(row[1])
    return row[2:2 + h * w].reshape(h, w).copy()


def compact_grid(grid: np.ndarray) -> np.ndarray:
    # validated grid -> its compact bytes [h, w, nibble pairs] (no padding)
    cells = np.asarray(grid, np.uint8).reshape(-1)
    if cells.size % 2:
        cells = np.append(cells, np.uint8(0))
    h, w = np.shape(grid)
    return np.concatenate([np.array([h, w], np.uint8), cells[0::2] | (cells[1::2] << 4)])


def uncompact_grid(raw: np.ndarray) -> np.ndarray:
    # compact bytes (a record's start onwards) -> grid [h, w] uint8
    h, w = int(raw[0]), int(raw[1])
    pairs = raw[2:2 + (h * w + 1) // 2]
    cells = np.empty(2 * pairs.size, np.uint8)
    cells[0::2] = pairs & 15
    cells[1::2] = pairs >> 4
    return cells[:h * w].reshape(h, w)


def check_packed(rows: np.ndarray, where: str = "rows") -> None:
    """Raise ValueError unless every row of rows [N, ROW] uint8 holds a valid packed grid."""
    if rows.ndim != 2 or rows.shape[1] != ROW or rows.dtype != np.uint8:
        raise ValueError(f"{where}: expected uint8 [N, {ROW}], got {rows.dtype} {rows.shape}")
    h = rows[:, 0].astype(np.int64)
    w = rows[:, 1].astype(np.int64)
    bad = np.flatnonzero((h > MAX_SIDE) | (w > MAX_SIDE) | ((h == 0) != (w == 0)))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{where}: row {i} has shape {h[i]}x{w[i]}; sides must be 1..{MAX_SIDE} "
                         "(or 0x0)")
    inside = np.arange(CELLS)[None, :] < (h * w)[:, None]  # [N, 900] cells that belong to the grid
    bad = np.flatnonzero(((rows[:, 2:] > 9) & inside).any(axis=1))
    if bad.size:
        raise ValueError(f"{where}: row {int(bad[0])} has a cell value > 9")


def _n_words(h: np.ndarray | int, w: np.ndarray | int) -> np.ndarray | int:
    return (2 + (h * w + 1) // 2 + 7) // 8


@njit(cache=True)
def _copy_rows(rows, out, at):
    # rows uint8 [B, ROW] -> compact records in out (uint8 view of the word buffer, zero beyond
    # the used part) starting at byte 8 * at[b] for row b; the unused tail of a row is never read
    for b in range(rows.shape[0]):
        n = np.int64(rows[b, 0]) * np.int64(rows[b, 1])
        base = 8 * at[b]
        out[base], out[base + 1] = rows[b, 0], rows[b, 1]
        for j in range(0, n - 1, 2):
            out[base + 2 + j // 2] = rows[b, 2 + j] | (rows[b, 3 + j] << np.uint8(4))
        if n % 2:
            out[base + 2 + n // 2] = rows[b, 1 + n]


# ---------------------------------------------------------------------------------------------
# Prediction records
# ---------------------------------------------------------------------------------------------


class Predictions:
    """Columnar, growable store of prediction records, one per augmented view.

    Columns (length N): task (int32 index into task_ids), test_index (int32), variant (int32),
    q_halt (float64, the raw logit), start (int64: where the record's grid begins in `data`).
    data (uint64 [W]) holds the grids in compact form (see the module docstring). Records keep their
    append order, which is the "first seen" order used to break exact ties.
    """

    def __init__(self, capacity: int = 256) -> None:
        capacity = max(int(capacity), 1)
        self._n = 0
        self._words = 0  # used length of _data
        self._task_ids: list[str] = []
        self._task_row: dict[str, int] = {}
        self._task = np.zeros(capacity, np.int32)
        self._test = np.zeros(capacity, np.int32)
        self._variant = np.zeros(capacity, np.int32)
        self._q = np.zeros(capacity, np.float64)
        self._start = np.zeros(capacity, np.int64)
        self._data = np.zeros(capacity * 4, np.uint64)  # about a 5x5 grid per record to start

    def _reserve(self, records: int, words: int) -> None:
        # grow by doubling; the word buffer is zero beyond its used part (padding relies on it)
        need = self._n + records
        if need > len(self._task):
            size = max(need, 2 * len(self._task))
            for name in ("_task", "_test", "_variant", "_q", "_start"):
                old = getattr(self, name)
                new = np.zeros(size, old.dtype)
                new[:self._n] = old[:self._n]
                setattr(self, name, new)
        need = self._words + words
        if need > len(self._data):
            new = np.zeros(max(need, 2 * len(self._data)), np.uint64)
            new[:self._words] = self._data[:self._words]
            self._data = new

    def _task_index(self, task_id: str) -> int:
        row = self._task_row.get(task_id)
        if row is None:
            row = self._task_row[task_id] = len(self._task_ids)
            self._task_ids.append(task_id)
        return row

    def __len__(self) -> int:
        return self._n

    @property
    def task_ids(self) -> tuple[str, ...]:
        """Task id table; `task` holds indices into it (first-seen order)."""
        return tuple(self._task_ids)

    @property
    def task(self) -> np.ndarray:
        return self._task[:self._n]

    @property
    def test_index(self) -> np.ndarray:
        return self._test[:self._n]

    @property
    def variant(self) -> np.ndarray:
        return self._variant[:self._n]

    @property
    def q_halt(self) -> np.ndarray:
        return self._q[:self._n]

    @property
    def start(self) -> np.ndarray:
        return self._start[:self._n]

    @property
    def data(self) -> np.ndarray:
        return self._data[:self._words]

    def append(self, task_id: str, test_index: int, variant: int, grid: np.ndarray,
               q_halt: float) -> None:
        """Add one record. grid [h, w] integers 0..9 in the original frame (0x0 allowed)."""
        a, h, w = grid_shape(grid, f"task {task_id} test {test_index} variant {variant}")
        words = _n_words(h, w)
        self._reserve(1, words)
        i, s = self._n, self._words
        packed = compact_grid(a)
        self._data.view(np.uint8)[8 * s:8 * s + packed.size] = packed
        self._task[i] = self._task_index(task_id)
        self._test[i] = test_index
        self._variant[i] = variant
        self._q[i] = q_halt
        self._start[i] = s
        self._n += 1
        self._words += words

    def extend(self, records: Iterable[tuple[str, int, int, np.ndarray, float]]) -> None:
        """Add (task_id, test_index, variant, grid, q_halt) records in order."""
        for task_id, test_index, variant, grid, q_halt in records:
            self.append(task_id, test_index, variant, grid, q_halt)

    def extend_packed(self, task_ids: Sequence[str], test_index: np.ndarray, variant: np.ndarray,
                      rows: np.ndarray, q_halt: np.ndarray) -> None:
        """Add B records at once: task_ids [B] str, test_index/variant [B] int, rows uint8
        [B, ROW] (see pack_grid; the unused tail may hold anything), q_halt [B] float.
        The fast path for a predictor."""
        b = len(task_ids)
        rows = np.ascontiguousarray(rows)
        check_packed(rows, where="extend_packed rows")
        for name, col in (("test_index", test_index), ("variant", variant), ("q_halt", q_halt),
                          ("rows", rows)):
            if len(col) != b:
                raise ValueError(f"extend_packed: {name} has {len(col)} entries, task_ids has {b}")
        words = _n_words(rows[:, 0].astype(np.int64), rows[:, 1].astype(np.int64))  # [B]
        at = self._words + np.concatenate([[0], np.cumsum(words)[:-1]]).astype(np.int64)
        self._reserve(b, int(words.sum()))
        _copy_rows(rows, self._data.view(np.uint8), at)
        s = slice(self._n, self._n + b)
        self._task[s] = [self._task_index(t) for t in task_ids]
        self._test[s] = test_index
        self._variant[s] = variant
        self._q[s] = q_halt
        self._start[s] = at
        self._n += b
        self._words += int(words.sum())

    def grid(self, i: int) -> np.ndarray:
        """The grid of record i, uint8 [h, w]."""
        if not 0 <= i < self._n:
            raise IndexError(f"record {i} out of range 0..{self._n - 1}")
        s = int(self._start[i])
        return uncompact_grid(self._data[s:s + MAX_WORDS].view(np.uint8))

    def record(self, i: int) -> tuple[str, int, int, np.ndarray, float]:
        """Record i as (task_id, test_index, variant, grid, q_halt)."""
        grid = self.grid(i)
        return (self._task_ids[self._task[i]], int(self._test[i]), int(self._variant[i]), grid,
                float(self._q[i]))

    @classmethod
    def merge(cls, parts: Sequence["Predictions"]) -> "Predictions":
        """Concatenate containers (e.g. one per rank, in rank order); task tables are re-mapped."""
        out = cls(capacity=max(1, sum(len(p) for p in parts)))
        out._reserve(0, sum(p._words for p in parts))
        for p in parts:
            n = len(p)
            remap = np.array([out._task_index(t) for t in p._task_ids] or [0], np.int32)
            s = slice(out._n, out._n + n)
            out._task[s] = remap[p.task]
            out._test[s] = p.test_index
            out._variant[s] = p.variant
            out._q[s] = p.q_halt
            out._start[s] = p.start + out._words
            out._data[out._words:out._words + p._words] = p.data
            out._n += n
            out._words += p._words
        return out

    # Pickling (torch.distributed.gather_object) and files keep only the used part.
    def __getstate__(self) -> dict:
        return {"task_ids": list(self._task_ids), "task": self.task.copy(),
                "test_index": self.test_index.copy(), "variant": self.variant.copy(),
                "q_halt": self.q_halt.copy(), "start": self.start.copy(), "data": self.data.copy()}

    def __setstate__(self, state: dict) -> None:
        self._task_ids = [str(t) for t in state["task_ids"]]
        self._task_row = {t: i for i, t in enumerate(self._task_ids)}
        self._task = np.array(state["task"], np.int32)
        self._n = len(self._task)
        self._test = np.array(state["test_index"], np.int32)
        self._variant = np.array(state["variant"], np.int32)
        self._q = np.array(state["q_halt"], np.float64)
        self._start = np.array(state["start"], np.int64)
        self._data = np.array(state["data"], np.uint64)
        self._words = len(self._data)

    def save(self, path: str | Path, compressed: bool = False) -> None:
        """Write the records to an .npz file (no pickles); `compressed` deflates it (a file kept for
        download: the views of one test input repeat each other, so it shrinks several-fold)."""
        state = self.__getstate__()
        state["task_ids"] = np.array(state["task_ids"], dtype=np.str_)
        (np.savez_compressed if compressed else np.savez)(path, **state)

    @classmethod
    def load(cls, path: str | Path) -> "Predictions":
        """Read records written by save(), checking that they are consistent; anything else (not a
        zip, truncated, object arrays, wrong shapes or types) is a ValueError naming the file."""
        try:
            with open(path, "rb") as f:
                if f.read(4) not in (b"PK\x03\x04", b"PK\x05\x06"):  # what np.savez writes
                    raise ValueError("not an .npz file: it does not start as a zip archive")
            with np.load(path, allow_pickle=False) as z:
                if not hasattr(z, "files"):
                    raise ValueError(f"a single {z.dtype} array, not an .npz of prediction columns")
                state = {k: z[k] for k in z.files}
        except FileNotFoundError:
            raise ValueError(f"{path}: file not found") from None
        except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error) as e:
            # a truncated or foreign file, or object arrays (refused: loading them would unpickle)
            raise ValueError(f"{path}: not a readable predictions file ({type(e).__name__}: {e})") from None
        missing = {"task_ids", "task", "test_index", "variant", "q_halt", "start", "data"} - set(state)
        if missing:
            raise ValueError(f"{path}: not a predictions file, missing arrays {sorted(missing)}")
        for name, kinds in (("task_ids", "U"), ("task", "iu"), ("test_index", "iu"), ("variant", "iu"),
                            ("q_halt", "fiu"), ("start", "iu"), ("data", "u")):
            if state[name].ndim != 1 or state[name].dtype.kind not in kinds:
                raise ValueError(f"{path}: array {name!r} is {state[name].dtype} with shape {state[name].shape}, "
                                 "not a column of a predictions file")
        out = cls.__new__(cls)
        try:
            out.__setstate__(state)
        except (ValueError, OverflowError) as e:
            raise ValueError(f"{path}: not a predictions file ({e})") from None
        n = len(out)
        if any(len(c) != n for c in (out._test, out._variant, out._q, out._start)):
            raise ValueError(f"{path}: columns have different lengths")
        if n and (out.task.min() < 0 or out.task.max() >= len(out._task_ids)):
            raise ValueError(f"{path}: task column indexes outside the task id table")
        bad = _check_records(out.data.view(np.uint8), out.start)
        if bad >= 0:
            raise ValueError(f"{path}: record {bad} does not hold a valid grid")
        return out


@njit(cache=True)
def _check_records(raw, start):
    # index of the first record whose grid is malformed or runs past the buffer, else -1
    for i in range(start.shape[0]):
        b = 8 * start[i]
        if start[i] < 0 or b + 8 > raw.shape[0]:
            return i
        h, w = np.int64(raw[b]), np.int64(raw[b + 1])
        n = h * w
        words = (2 + (n + 1) // 2 + 7) // 8
        if h > MAX_SIDE or w > MAX_SIDE or (h == 0) != (w == 0) or b + 8 * words > raw.shape[0]:
            return i
        for j in range(2, 8 * words):
            for nibble in range(2):
                value = (raw[b + j] >> (4 * nibble)) & 15
                if value > (9 if 2 * (j - 2) + nibble < n else 0):  # cells 0..9, the rest zero
                    return i
    return -1
