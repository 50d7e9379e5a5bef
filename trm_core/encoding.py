"""Token encoding of ARC grids on a C x C canvas, and the crop that turns a predicted sequence back
into a grid.

Inputs: grids (np.uint8 [h, w], values 0..9), a canvas side C (30 for the released checkpoints,
smaller for tests and the demo) and a top-left offset. Outputs: flat token sequences
(np.uint8 [C*C]) in the reference vocabulary, label sequences (np.int32, PAD -> -100) and, going
back, cropped grids.

Layout (the reference `np_grid_to_seq_translational_augment`): colour c -> token c + 2 at
(offset + cell), then an EOS L-border directly below the grid (row r0 + h, columns of the grid)
and directly right of it (column c0 + w, rows of the grid), each only where it falls inside the
canvas, with no corner cell. Everything else is PAD. The input and the output of one pair share
one offset.

`crop` reproduces the reference `_crop` exactly: the largest-area top-left rectangle of colour
tokens, found by scanning rows with a running minimum width; strict `>` keeps the first maximum.
"""

import numba
import numpy as np

PAD = 0
EOS = 1
COLOR_OFFSET = 2
VOCAB_SIZE = 12
IGNORE_LABEL = -100
MAX_COLOR = 9


def _check_fits(grid: np.ndarray, canvas: int, offset: tuple[int, int], what: str) -> None:
    shape = grid.shape
    if len(shape) != 2:
        raise ValueError(f"{what}: expected a 2-D grid, got shape {shape}")
    h, w = shape
    r0, c0 = int(offset[0]), int(offset[1])
    if h < 1 or w < 1:
        raise ValueError(f"{what}: grid is {h}x{w}; both sides must be at least 1")
    if r0 < 0 or c0 < 0 or r0 + h > canvas or c0 + w > canvas:
        raise ValueError(
            f"{what}: a {h}x{w} grid at offset ({r0}, {c0}) does not fit the {canvas}x{canvas} canvas "
            f"(offset row must be in 0..{canvas - h}, column in 0..{canvas - w})"
        )
    if grid.max() > MAX_COLOR:
        raise ValueError(f"{what}: colour {int(grid.max())} is outside 0..{MAX_COLOR}")


def _draw(board: np.ndarray, grid: np.ndarray, r0: int, c0: int) -> None:
    """Write one grid and its EOS border into `board` (uint8 [C, C], already PAD)."""
    h, w = grid.shape
    canvas = board.shape[0]
    board[r0 : r0 + h, c0 : c0 + w] = grid + COLOR_OFFSET
    if r0 + h < canvas:
        board[r0 + h, c0 : c0 + w] = EOS
    if c0 + w < canvas:
        board[r0 : r0 + h, c0 + w] = EOS


def encode_grid(grid: np.ndarray, canvas: int = 30, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """One grid -> uint8 tokens [canvas*canvas] with the grid at `offset` and its EOS border."""
    grid = np.asarray(grid, dtype=np.uint8)
    _check_fits(grid, canvas, offset, "encode_grid")
    board = np.zeros((canvas, canvas), dtype=np.uint8)
    _draw(board, grid, int(offset[0]), int(offset[1]))
    return board.reshape(-1)


def encode_pair(
    inp: np.ndarray, out: np.ndarray, canvas: int = 30, offset: tuple[int, int] = (0, 0)
) -> tuple[np.ndarray, np.ndarray]:
    """A demonstration pair -> (input tokens, label tokens), both raw uint8 [canvas*canvas], one shared offset."""
    return encode_grid(inp, canvas, offset), encode_grid(out, canvas, offset)


def encode_into(board: np.ndarray, grid: np.ndarray, offset: tuple[int, int] = (0, 0)) -> None:
    """Fill a caller-owned row `board` (uint8 [C*C] or [C, C]) with the encoding of `grid`.

    The batch builders in batches.py use this to write straight into their batch arrays.
    """
    canvas = int(round(board.size**0.5))
    _check_fits(grid, canvas, offset, "encode_into")
    view = board.reshape(canvas, canvas)
    view[:] = PAD
    _draw(view, grid, int(offset[0]), int(offset[1]))


def to_labels(tokens: np.ndarray) -> np.ndarray:
    """Label tokens -> int32 with PAD -> IGNORE_LABEL (-100). EOS stays supervised, as in the reference."""
    labels = np.asarray(tokens).astype(np.int32)
    labels[labels == PAD] = IGNORE_LABEL
    return labels


def translation_range(shapes: list[tuple[int, int]], canvas: int = 30) -> tuple[int, int]:
    """Largest (row, column) offset at which every grid of `shapes` still fits the canvas."""
    max_h = max(s[0] for s in shapes)
    max_w = max(s[1] for s in shapes)
    if max_h > canvas or max_w > canvas:
        raise ValueError(f"a {max_h}x{max_w} grid does not fit the {canvas}x{canvas} canvas")
    return canvas - max_h, canvas - max_w


def random_offset(rng: np.random.Generator, shapes: list[tuple[int, int]], canvas: int = 30) -> tuple[int, int]:
    """A uniformly random shared offset for grids of `shapes`: row drawn first, then column."""
    max_r, max_c = translation_range(shapes, canvas)
    r0 = int(rng.integers(0, max_r + 1))
    c0 = int(rng.integers(0, max_c + 1))
    return r0, c0


@numba.njit(cache=True)
def _crop_shape(board: np.ndarray) -> tuple[int, int]:
    # board: [C, C] tokens. Row r (1-based) of the candidate rectangle has width = the leading
    # run of colour tokens in that row, never wider than the row above (running minimum).
    rows, cols = board.shape
    best_area = 0
    best_r = 0
    best_c = 0
    width = cols
    for r in range(1, rows + 1):
        for c in range(1, width + 1):
            token = board[r - 1, c - 1]
            if token < COLOR_OFFSET or token > COLOR_OFFSET + MAX_COLOR:
                width = c - 1
                break
        area = r * width
        if area > best_area:  # strict: the first maximum wins
            best_area = area
            best_r = r
            best_c = width
    return best_r, best_c


@numba.njit(cache=True)
def _crop_shapes(boards: np.ndarray) -> np.ndarray:
    # boards: [N, C, C] -> [N, 2] (rows, cols) of each crop
    shapes = np.zeros((boards.shape[0], 2), dtype=np.int64)
    for i in range(boards.shape[0]):
        r, c = _crop_shape(boards[i])
        shapes[i, 0] = r
        shapes[i, 1] = c
    return shapes


def _as_boards(tokens: np.ndarray, canvas: int) -> np.ndarray:
    tokens = np.asarray(tokens)
    if tokens.shape[-1] != canvas * canvas:
        raise ValueError(
            f"crop: sequences of length {tokens.shape[-1]} do not match a {canvas}x{canvas} canvas "
            f"(expected {canvas * canvas} tokens)"
        )
    if tokens.dtype.kind not in "iu":
        raise ValueError(f"crop: tokens must be integers, got dtype {tokens.dtype}")
    return np.ascontiguousarray(tokens).reshape(*tokens.shape[:-1], canvas, canvas)


def crop(tokens: np.ndarray, canvas: int = 30) -> np.ndarray:
    """Predicted tokens [C*C] -> grid uint8 [h, w] (reference `_crop`; a PAD/EOS first cell gives 0x0)."""
    board = _as_boards(tokens, canvas)
    if board.ndim != 2:
        raise ValueError(f"crop: expected one sequence of {canvas * canvas} tokens, got shape {np.shape(tokens)}")
    r, c = _crop_shape(board)
    return (board[:r, :c] - COLOR_OFFSET).astype(np.uint8)


def crop_shapes(tokens: np.ndarray, canvas: int = 30) -> np.ndarray:
    """Many sequences [N, C*C] -> int64 [N, 2] crop shapes, in one jitted pass."""
    boards = _as_boards(tokens, canvas)
    if boards.ndim != 3:
        raise ValueError(f"crop_shapes: expected [N, {canvas * canvas}] tokens, got shape {np.shape(tokens)}")
    return _crop_shapes(boards)


def crop_batch(tokens: np.ndarray, canvas: int = 30) -> list[np.ndarray]:
    """Many sequences [N, C*C] -> list of N grids, each exactly what `crop` returns for its row."""
    boards = _as_boards(tokens, canvas)
    if boards.ndim != 3:
        raise ValueError(f"crop_batch: expected [N, {canvas * canvas}] tokens, got shape {np.shape(tokens)}")
    shapes = _crop_shapes(boards)
    return [(b[:r, :c] - COLOR_OFFSET).astype(np.uint8) for b, (r, c) in zip(boards, shapes)]
